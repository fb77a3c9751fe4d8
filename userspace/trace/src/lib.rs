//! bufscope trace files: a versioned, self-describing, streaming binary format.
//!
//! A file is a header (magic, format version, and a JSON description of where and how it was
//! recorded) followed by records. Each record is length-prefixed and checksummed (crc32c) and its
//! payload compressed (zstd): chunks of lock-wait events in a columnar encoding, metadata (loss
//! counts, clients, stacks, symbols) and a closing end record. A file cut off at any byte reads
//! back up to its last whole record; every error names the file, the offset and what was wrong.
//!
//! The layout, byte by byte, is in [`format`]. Readers accept every older format version.

mod chunk;
mod error;
pub mod format;
mod reader;
mod records;
mod writer;

pub use error::{TraceError, TraceErrorKind};
pub use reader::{Record, TraceReader};
pub use records::{LockWait, Metadata, Symbol, TraceEnd, TraceHeader};
pub use writer::{TraceWriter, WriterOptions};

/// Reads a whole trace from bytes, as the fuzz target does; returns how many records were read.
/// Exists for the fuzz target and its seed-corpus test, so both exercise exactly one entry point.
#[doc(hidden)]
pub fn read_all_from_bytes(data: &[u8]) -> Result<usize, TraceError> {
    let mut reader = TraceReader::new(data, "<bytes>")?;
    let mut records = 0;
    while reader.next_record()?.is_some() {
        records += 1;
    }
    Ok(records)
}
