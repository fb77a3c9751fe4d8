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

/// Entry points for the fuzz targets (fuzz/) and their seed-corpus tests, so that both exercise
/// exactly the same code. Not a public API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{LockWait, TraceError, TraceReader, chunk};

    /// Reads a whole trace from bytes; returns how many records were read.
    pub fn read_all_from_bytes(data: &[u8]) -> Result<usize, TraceError> {
        let mut reader = TraceReader::new(data, "<bytes>")?;
        let mut records = 0;
        while reader.next_record()?.is_some() {
            records += 1;
        }
        Ok(records)
    }

    /// Decodes the raw (decompressed) payload of a lock-wait chunk said to hold `expected`
    /// events.
    pub fn decode_chunk(raw: &[u8], expected: u32) -> Result<Vec<LockWait>, String> {
        chunk::decode(raw, expected)
    }

    /// Encodes events as one chunk's raw payload.
    pub fn encode_chunk(events: &[LockWait]) -> Vec<u8> {
        let mut raw = Vec::new();
        chunk::ChunkEncoder::default().encode(events, &mut raw);
        raw
    }
}
