//! What a reader skipped in a damaged file: each damaged record by offset, index, size and why,
//! and what the end record says the skipped records held.

use serde::Serialize;

use crate::format::RecordKind;

/// Why a record was skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Damage {
    /// The header verified, so its lengths were trusted and the record skipped whole.
    #[error("payload checksum mismatch")]
    PayloadChecksum { stored: u32, computed: u32 },
    /// Header and payload verified, but the payload does not decode.
    #[error("{what} does not decode: {detail}")]
    Undecodable { what: &'static str, detail: String },
    /// No sync marker where a record should start.
    #[error("no record marker (found {found:02x?})")]
    NoSync { found: [u8; 4] },
    #[error("record header checksum mismatch")]
    HeaderChecksum { stored: u32, computed: u32 },
    /// The header verified but says something impossible (a payload larger than any reader
    /// accepts, an unknown kind or codec in a file of a version that has none).
    #[error("impossible record header: {detail}")]
    BadHeader { detail: String },
}

/// One stretch of damaged bytes the reader skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedRecord {
    /// File offset where the damaged record starts.
    pub offset: u64,
    /// Its index, counting records from 0 (a skipped stretch counts as one record).
    pub record: u64,
    /// Bytes skipped: the whole record when its header verified, else everything up to the next
    /// record whose header verifies.
    pub bytes: u64,
    /// The record's kind, when its header verified and names one.
    pub kind: Option<RecordKind>,
    /// Events or operations it held (1 for other records), when its header verified.
    pub items: Option<u32>,
    pub damage: Damage,
}

/// Counts of what a finished file's end record says the skipped records held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LostCounts {
    pub lock_waits: u64,
    pub bufio_ops: u64,
    pub metadata_records: u64,
}

/// Everything a reader skipped: totals, and the first [`SkippedDamage::MAX_LISTED`] stretches
/// each by name (so that a file of garbage cannot make the list grow without bound).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SkippedDamage {
    /// Stretches skipped.
    pub records: u64,
    /// Bytes skipped.
    pub bytes: u64,
    /// The first stretches, in file order.
    pub listed: Vec<SkippedRecord>,
    /// What the skipped records held, by the end record's counts; known once the end record of
    /// a finished file has been read (and not when the end record itself was the damaged one).
    pub lost: Option<LostCounts>,
}

impl SkippedDamage {
    /// Stretches listed by name; the rest are only counted.
    pub const MAX_LISTED: usize = 64;

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub(crate) fn add(&mut self, skipped: SkippedRecord) {
        self.records += 1;
        self.bytes += skipped.bytes;
        if self.listed.len() < Self::MAX_LISTED {
            self.listed.push(skipped);
        }
    }
}
