//! bufscope trace files: a versioned, self-describing, streaming binary format.
//!
//! A file is a header (magic, format version, and a JSON description of where and how it was
//! recorded) followed by records. Each record is length-prefixed and checksummed (crc32c) and its
//! payload compressed (zstd): chunks of lock-wait events in a columnar encoding, metadata (loss
//! counts, clients, stacks, symbols, thread names), chunks of dm-bufio operations, and a closing
//! end record. A file cut off at any byte reads back up to its last whole record; every error
//! names the file, the offset and what was wrong.
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
pub use records::{
    BufioOp, ClientLock, ClientLocks, LockWait, Metadata, OpKind, OpResult, ProgramRun, Symbol,
    Thread, TraceEnd, TraceHeader,
};
pub use writer::{TraceWriter, WriterOptions};

/// Entry points for the fuzz targets (fuzz/) and their seed-corpus tests, so that both exercise
/// exactly the same code. Not a public API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{
        BufioOp, LockWait, TraceError, TraceReader,
        chunk::{self, Layout},
    };

    /// Reads a whole trace from bytes; returns how many records were read.
    pub fn read_all_from_bytes(data: &[u8]) -> Result<usize, TraceError> {
        let mut reader = TraceReader::new(data, "<bytes>")?;
        let mut records = 0;
        while reader.next_record()?.is_some() {
            records += 1;
        }
        Ok(records)
    }

    /// Decodes a chunk's raw (decompressed) payload said to hold `expected` items: `selector`
    /// modulo 4 picks lock waits V1, operations V1, lock waits V2, operations V2. Whatever
    /// decodes must survive an encode/decode round trip (panics otherwise). Returns the items
    /// decoded.
    pub fn check_chunk(selector: u8, raw: &[u8], expected: u32) -> Result<usize, String> {
        let mut encoder = chunk::ChunkEncoder::default();
        let mut again = Vec::new();
        let layout = if selector % 4 < 2 {
            Layout::V1
        } else {
            Layout::V2
        };
        if selector.is_multiple_of(2) {
            let events = chunk::decode_lock_waits(raw, expected, layout)?;
            encoder.encode_lock_waits(&events, layout, &mut again);
            let decoded = chunk::decode_lock_waits(&again, expected, layout)
                .expect("re-encoded chunk decodes");
            assert_eq!(
                decoded, events,
                "lock waits changed in an encode/decode round trip"
            );
            Ok(events.len())
        } else {
            let ops = chunk::decode_bufio_ops(raw, expected, layout)?;
            encoder.encode_bufio_ops(&ops, layout, &mut again);
            let decoded = chunk::decode_bufio_ops(&again, expected, layout)
                .expect("re-encoded chunk decodes");
            assert_eq!(
                decoded, ops,
                "operations changed in an encode/decode round trip"
            );
            Ok(ops.len())
        }
    }

    /// Encodes lock waits as one chunk's raw payload (for seeds).
    pub fn encode_lock_wait_chunk(events: &[LockWait]) -> Vec<u8> {
        let mut raw = Vec::new();
        chunk::ChunkEncoder::default().encode_lock_waits(events, Layout::V2, &mut raw);
        raw
    }

    /// Encodes dm-bufio operations as one chunk's raw payload (for seeds).
    pub fn encode_bufio_op_chunk(ops: &[BufioOp]) -> Vec<u8> {
        let mut raw = Vec::new();
        chunk::ChunkEncoder::default().encode_bufio_ops(ops, Layout::V2, &mut raw);
        raw
    }
}
