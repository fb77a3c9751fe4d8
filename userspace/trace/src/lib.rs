//! bufscope trace files: a versioned, self-describing, streaming binary format.
//!
//! A file is a header (magic, format version, and a JSON description of where and how it was
//! recorded) followed by records. Each record is length-prefixed and checksummed (crc32c) and its
//! payload compressed (zstd): chunks of lock-wait events in a columnar encoding, metadata (loss
//! counts, clients, stacks, symbols, thread names), chunks of dm-bufio operations, and a closing
//! end record. A file cut off at any byte reads back up to its last whole record; a damaged record
//! is skipped, named and counted, and the records after it are read; every error names the file,
//! the offset and what was wrong.
//!
//! The layout, byte by byte, is in [`format`]. Readers accept every older format version.

mod chunk;
mod damage;
mod error;
pub mod format;
mod reader;
mod records;
mod writer;

pub use damage::{Damage, LostCounts, SkippedDamage, SkippedRecord};
pub use error::{TraceError, TraceErrorKind};
pub use reader::{Record, TraceReader};
pub use records::{
    BufioOp, ClientLock, ClientLocks, LockOwner, LockWait, Metadata, OpKind, OpResult, Owner,
    ProgramRun, Symbol, Thread, TraceEnd, TraceHeader,
};
pub use writer::{TraceWriter, WriterOptions};

/// Entry points for the fuzz targets (fuzz/) and their seed-corpus tests, so that both exercise
/// exactly the same code. Not a public API.
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::OnceLock;

    use crate::{
        BufioOp, LockWait, Metadata, OpKind, TraceError, TraceHeader, TraceReader, TraceWriter,
        WriterOptions,
        chunk::{self, Layout},
    };

    /// What reading a whole input gave.
    #[derive(Debug)]
    pub struct ReadOutcome {
        /// Records handed out.
        pub records: u64,
        /// Damaged stretches skipped.
        pub skipped: u64,
        /// Why reading stopped early, if it did.
        pub error: Option<TraceError>,
    }

    /// Reads a whole trace from bytes; an error opening it is returned as such. Panics if what
    /// the reader says it skipped does not add up (see [`check_skipped`]).
    pub fn read_all_from_bytes(data: &[u8]) -> Result<ReadOutcome, TraceError> {
        let mut reader = TraceReader::new(data, "<bytes>")?;
        let error = loop {
            match reader.next_record() {
                Ok(Some(_)) => {}
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        check_skipped(&reader, data.len() as u64);
        Ok(ReadOutcome {
            records: reader.records_read(),
            skipped: reader.skipped().records,
            error,
        })
    }

    /// The skipped stretches lie in the file, in order, apart, each of at least one byte, and
    /// the totals count them all.
    fn check_skipped(reader: &TraceReader<&[u8]>, len: u64) {
        let skipped = reader.skipped();
        assert!(skipped.listed.len() as u64 <= skipped.records);
        assert!(skipped.bytes <= len, "{skipped:?} of {len} bytes");
        let mut next = 0;
        for s in &skipped.listed {
            assert!(s.bytes > 0 && s.offset >= next, "{skipped:?}");
            next = s.offset + s.bytes;
            assert!(next <= len, "{skipped:?} of {len} bytes");
        }
    }

    /// A small finished trace of lock waits, operations and metadata in many records: what
    /// [`read_damaged`] damages.
    pub fn undamaged_trace() -> &'static [u8] {
        static TRACE: OnceLock<Vec<u8>> = OnceLock::new();
        TRACE.get_or_init(|| {
            let options = WriterOptions {
                chunk_events: 8,
                ..WriterOptions::default()
            };
            let mut writer =
                TraceWriter::with_options(Vec::new(), &TraceHeader::default(), options)
                    .expect("writes to memory");
            for i in 0..40u64 {
                writer
                    .push(LockWait {
                        start_ns: i * 1_000,
                        wait_ns: 100 + i * 37 % 500,
                        lock_addr: 0xffff_8880_0000_0040 + (i % 3) * 0x40,
                        tid: 10 + (i % 4) as u32,
                        ..LockWait::default()
                    })
                    .expect("writes to memory");
                writer
                    .push_op(BufioOp {
                        start_ns: i * 1_000 + 500,
                        duration_ns: 300 + i,
                        block: i % 16,
                        tid: 10 + (i % 4) as u32,
                        kind: if i % 2 == 0 {
                            OpKind::Read
                        } else {
                            OpKind::Release
                        },
                        ..BufioOp::default()
                    })
                    .expect("writes to memory");
                if i % 16 == 0 {
                    writer
                        .write_metadata(&Metadata::Stack {
                            id: i as u32,
                            frames: vec![0xffff_ffff_8100_0000 + i],
                        })
                        .expect("writes to memory");
                }
            }
            writer.finish(0).expect("writes to memory").0
        })
    }

    /// Damages [`undamaged_trace`] as `edits` say and reads it: each 5 bytes are a position
    /// (u32 LE, modulo the file's length) and a byte to xor there (at most 64 edits). Panics if
    /// the reader gets the damage wrong: one changed byte after the file header must cost
    /// exactly one record, whichever byte of whichever record it hits.
    pub fn read_damaged(edits: &[u8]) -> ReadOutcome {
        let undamaged = undamaged_trace();
        let whole = read_all_from_bytes(undamaged).expect("the undamaged trace reads");
        assert_eq!(
            (whole.skipped, whole.error.is_none()),
            (0, true),
            "{whole:?}"
        );
        let mut damaged = undamaged.to_vec();
        for edit in edits.chunks_exact(5).take(64) {
            let at = u32::from_le_bytes([edit[0], edit[1], edit[2], edit[3]]) as usize;
            let at = at % damaged.len();
            damaged[at] ^= edit[4];
        }
        // The bytes that differ in the end: two edits of one byte can cancel out.
        let changed: Vec<usize> = (0..damaged.len())
            .filter(|&i| damaged[i] != undamaged[i])
            .collect();
        let read = match read_all_from_bytes(&damaged) {
            Ok(read) => read,
            Err(error) => ReadOutcome {
                records: 0,
                skipped: 0,
                error: Some(error),
            },
        };
        let header_len = TraceReader::new(undamaged, "")
            .expect("the undamaged trace reads")
            .offset() as usize;
        if let [at] = changed[..]
            && at >= header_len
        {
            assert!(
                read.error.as_ref().is_none_or(|e| !e.is_truncation()),
                "{read:?}"
            );
            assert_eq!(
                read.records,
                whole.records - 1,
                "byte {at} changed: {read:?}"
            );
        }
        read
    }

    /// Decodes a chunk's raw (decompressed) payload said to hold `expected` items: `selector`
    /// modulo 10 picks lock waits V1, operations V1, lock waits V2, operations V2, lock waits V3
    /// (with owners), operations V2, lock waits V4 (with owner stacks), operations V2, lock
    /// waits V2, operations V5 (with client-lock attempt and release). Whatever
    /// decodes must survive an encode/decode round trip (panics otherwise). Returns the items
    /// decoded.
    pub fn check_chunk(selector: u8, raw: &[u8], expected: u32) -> Result<usize, String> {
        let mut encoder = chunk::ChunkEncoder::default();
        let mut again = Vec::new();
        let layout = match selector % 10 {
            0 | 1 => Layout::V1,
            4 => Layout::V3,
            6 => Layout::V4,
            9 => Layout::V5,
            _ => Layout::V2,
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

    /// Encodes lock waits with their owners as one chunk's raw payload (for seeds).
    pub fn encode_lock_wait_chunk_v3(events: &[LockWait]) -> Vec<u8> {
        let mut raw = Vec::new();
        chunk::ChunkEncoder::default().encode_lock_waits(events, Layout::V3, &mut raw);
        raw
    }

    /// Encodes lock waits with their owners and owner stacks as one chunk's raw payload (for
    /// seeds).
    pub fn encode_lock_wait_chunk_v4(events: &[LockWait]) -> Vec<u8> {
        let mut raw = Vec::new();
        chunk::ChunkEncoder::default().encode_lock_waits(events, Layout::V4, &mut raw);
        raw
    }

    /// Encodes dm-bufio operations as one chunk's raw payload (for seeds).
    pub fn encode_bufio_op_chunk(ops: &[BufioOp]) -> Vec<u8> {
        let mut raw = Vec::new();
        chunk::ChunkEncoder::default().encode_bufio_ops(ops, Layout::V2, &mut raw);
        raw
    }

    /// Encodes dm-bufio operations with their client-lock attempts and releases as one chunk's
    /// raw payload (for seeds).
    pub fn encode_bufio_op_chunk_v5(ops: &[BufioOp]) -> Vec<u8> {
        let mut raw = Vec::new();
        chunk::ChunkEncoder::default().encode_bufio_ops(ops, Layout::V5, &mut raw);
        raw
    }
}
