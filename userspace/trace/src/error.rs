//! Reader errors: each names the file, the byte offset, the record and what was wrong.

use std::fmt;

/// What went wrong while reading a trace. A cause kept as the error's source (the I/O error) is
/// not repeated in its message: printing the chain of sources shows it once.
#[derive(Debug, thiserror::Error)]
pub enum TraceErrorKind {
    #[error("read failed")]
    Io(#[from] std::io::Error),
    #[error("not a bufscope trace file (it starts with {found:02x?}, not \"BUFSCOPE\")")]
    NotATrace { found: Vec<u8> },
    #[error(
        "written in trace format {major}.{minor}, newer than this bufscope reads \
         (up to {supported}.x): use a newer bufscope"
    )]
    UnsupportedVersion {
        major: u16,
        minor: u16,
        supported: u16,
    },
    #[error(
        "the file ends inside {what}: it needs {needed} bytes, {available} are left (cut off?)"
    )]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error(
        "the file ends after its last whole record without an end record: the recording did not \
         finish (every record before this offset was read)"
    )]
    MissingEnd,
    #[error(
        "checksum mismatch in {what}: stored {stored:#010x}, computed {computed:#010x} (damaged?)"
    )]
    ChecksumMismatch {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// A reader error with where it happened.
#[derive(Debug)]
pub struct TraceError {
    /// The file (or other source) being read.
    pub source_name: String,
    /// Byte offset of the record (or header) where reading stopped.
    pub offset: u64,
    /// Index of that record, counting from 0, when the error is inside one.
    pub record: Option<u64>,
    pub kind: TraceErrorKind,
}

impl TraceError {
    /// True when the data before `offset` is whole and only the rest is missing: a recording cut
    /// short, rather than damaged data.
    pub fn is_truncation(&self) -> bool {
        matches!(
            self.kind,
            TraceErrorKind::Truncated { .. } | TraceErrorKind::MissingEnd
        )
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: at offset {}", self.source_name, self.offset)?;
        if let Some(record) = self.record {
            write!(f, " (record {record})")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            TraceErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}
