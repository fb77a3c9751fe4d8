//! The trace file layout, byte by byte. All integers are little-endian.
//!
//! ```text
//! file header
//!   0   8  magic            b"BUFSCOPE"
//!   8   2  format major     readers refuse a newer major
//!  10   2  format minor     additions only: a reader skips record kinds it does not know
//!  12   4  JSON length N
//!  16   4  crc32c           of the N JSON bytes
//!  20   4  crc32c           of bytes 0..20, checked before any length in them is trusted
//!  24   N  JSON             TraceHeader
//! record (repeated)
//!   0   4  sync             b"BFSR"
//!   4   1  kind             RecordKind
//!   5   1  codec            Codec of the payload
//!   6   2  reserved         0
//!   8   4  stored length    payload bytes as stored
//!  12   4  raw length       payload bytes after decompression
//!  16   4  item count       events or operations in a chunk, 1 for other records
//!  20   4  crc32c           of the stored payload
//!  24   4  crc32c           of bytes 0..24 of this header
//!  28      payload
//! ```
//! Because each header's own checksum is checked before its lengths are used, a damaged length is
//! told apart from a file that simply stops (cut short). A record whose payload fails its checksum
//! under a header that verifies is skipped whole; after a header that does not verify, a reader
//! finds the next record by scanning for a sync marker followed by a header that verifies.
//! The last record of a finished file is an end record; a file without one was cut short.
//!
//! History: 1.0 lock waits, metadata, end. 1.1 adds dm-bufio operation chunks (record kind 4)
//! and the end record's `bufio_ops` count. 1.2 writes lock waits as kind 5 (adding stack id,
//! operation and client columns) and operations as kind 6 (adding client-mutex wait and hold);
//! a 1.2 reader still reads kinds 1 and 4, while a 1.1 reader skips 5 and 6 and then finds the
//! end record's counts unmatched, so it reports the file as damaged instead of showing too little.
//! 1.3 writes lock waits as kind 7 (adding the lock's owner: thread, process and the dm-bufio
//! operation it was inside); operations stay kind 6. 1.4 writes lock waits as kind 8 (adding the
//! owner's stack). 1.5 writes operations as kind 9 (adding when each first tried for the client
//! lock and last let it go). 1.6 adds operation kinds 14-16, dm-bufio's background work
//! (`OpKind::GlobalCleanup` and after), in operation chunks and in lock waits' operation columns;
//! a 1.5 reader reports a chunk holding one as damaged and reads on.
//! Metadata types can be added without a new version: a reader that does not know a metadata
//! record's `type` (e.g. `threads`, added in 1.2) keeps it as unknown and reads on.

/// First eight bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"BUFSCOPE";
/// Format major version this build writes and the newest it reads.
pub const FORMAT_MAJOR: u16 = 1;
/// Format minor version this build writes.
pub const FORMAT_MINOR: u16 = 6;
/// Size of the fixed part of the file header.
pub const FILE_HEADER_LEN: usize = 24;
/// Sync marker at the start of every record.
pub const RECORD_SYNC: [u8; 4] = *b"BFSR";
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 28;
/// Largest JSON file header a reader accepts.
pub const MAX_HEADER_LEN: u32 = 1 << 20;
/// Largest stored or raw payload a reader accepts; anything larger is corruption, and the limit
/// keeps a damaged length from turning into a huge allocation.
pub const MAX_PAYLOAD_LEN: u32 = 64 << 20;
/// Most events (or operations) a writer puts in one chunk.
pub const MAX_CHUNK_EVENTS: usize = 1 << 16;

/// What a record holds.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A chunk of lock-wait events, columnar (see the chunk codec).
    LockWaits = 1,
    /// One JSON [`Metadata`](crate::Metadata) record.
    Metadata = 2,
    /// The JSON [`TraceEnd`](crate::TraceEnd) record that closes a finished file.
    End = 3,
    /// A chunk of dm-bufio operations, columnar (format 1.1 on).
    BufioOps = 4,
    /// Lock waits with stack, operation and client columns (format 1.2 on).
    LockWaitsV2 = 5,
    /// dm-bufio operations with client-mutex wait and hold columns (format 1.2 on).
    BufioOpsV2 = 6,
    /// Lock waits with the lock's owner columns too (format 1.3 on).
    LockWaitsV3 = 7,
    /// Lock waits with the owner's stack column too (format 1.4 on).
    LockWaitsV4 = 8,
    /// dm-bufio operations with client-lock attempt and release columns too (format 1.5 on).
    BufioOpsV5 = 9,
}

impl RecordKind {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::LockWaits),
            2 => Some(Self::Metadata),
            3 => Some(Self::End),
            4 => Some(Self::BufioOps),
            5 => Some(Self::LockWaitsV2),
            6 => Some(Self::BufioOpsV2),
            7 => Some(Self::LockWaitsV3),
            8 => Some(Self::LockWaitsV4),
            9 => Some(Self::BufioOpsV5),
            _ => None,
        }
    }
}

/// How a record's payload is stored.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

impl Codec {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Raw),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }
}
