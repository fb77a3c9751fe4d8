//! Streaming trace reader. Reads records one at a time; a damaged record costs only itself: it is
//! skipped, named and counted, and reading goes on from the next record. The reader stops with an
//! error that says where and why only where nothing after can be read, after handing out every
//! whole record before it.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, BufReader, Read},
    path::Path,
};

use crate::{
    BufioOp, LockWait, Metadata, TraceEnd, TraceError, TraceErrorKind, TraceHeader,
    chunk::{self, Layout},
    damage::{Damage, LostCounts, SkippedDamage, SkippedRecord},
    format::{
        Codec, FILE_HEADER_LEN, FORMAT_MAJOR, FORMAT_MINOR, MAGIC, MAX_HEADER_LEN, MAX_PAYLOAD_LEN,
        RECORD_HEADER_LEN, RECORD_SYNC, RecordKind,
    },
};

/// One record of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    LockWaits(Vec<LockWait>),
    BufioOps(Vec<BufioOp>),
    Metadata(Metadata),
    End(TraceEnd),
}

/// Reads a trace file record by record.
pub struct TraceReader<R: Read> {
    inner: R,
    source_name: String,
    header: TraceHeader,
    version: (u16, u16),
    /// Offset and index of the next record (records skipped as damaged included).
    offset: u64,
    records: u64,
    /// Records handed out.
    records_read: u64,
    lock_waits: u64,
    bufio_ops: u64,
    metadata_records: u64,
    end_seen: bool,
    /// The end record's header verified but its payload did not: the file finished.
    end_skipped: bool,
    stopped: bool,
    skipped: SkippedDamage,
    /// Bytes a resync read past the header it found, read before `inner`.
    pending: VecDeque<u8>,
    stored: Vec<u8>,
    raw: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl<R: Read> std::fmt::Debug for TraceReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceReader")
            .field("source_name", &self.source_name)
            .field("version", &self.version)
            .field("offset", &self.offset)
            .field("records", &self.records)
            .field("skipped", &self.skipped.records)
            .finish_non_exhaustive()
    }
}

impl TraceReader<BufReader<File>> {
    /// Opens a trace file and reads its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| TraceError {
            source_name: name.clone(),
            offset: 0,
            record: None,
            kind: TraceErrorKind::Io(e),
        })?;
        Self::new(BufReader::with_capacity(1 << 20, file), name)
    }
}

impl<R: Read> TraceReader<R> {
    /// Reads the header from `inner`; `source_name` names the source in errors.
    pub fn new(mut inner: R, source_name: impl Into<String>) -> Result<Self, TraceError> {
        let source_name = source_name.into();
        let fail = |offset: u64, kind| TraceError {
            source_name: source_name.clone(),
            offset,
            record: None,
            kind,
        };
        let mut fixed = [0u8; FILE_HEADER_LEN];
        let got = read_up_to(&mut inner, &mut fixed).map_err(|e| fail(0, e.into()))?;
        let magic_len = got.min(MAGIC.len());
        if fixed[..magic_len] != MAGIC[..magic_len] {
            return Err(fail(
                0,
                TraceErrorKind::NotATrace {
                    found: fixed[..magic_len].to_vec(),
                },
            ));
        }
        if got < FILE_HEADER_LEN {
            return Err(fail(0, truncated("the file header", FILE_HEADER_LEN, got)));
        }
        let stored = le_u32(&fixed[20..24]);
        let computed = crc32c::crc32c(&fixed[..20]);
        if stored != computed {
            return Err(fail(
                0,
                TraceErrorKind::ChecksumMismatch {
                    what: "the file header",
                    stored,
                    computed,
                },
            ));
        }
        let major = u16::from_le_bytes([fixed[8], fixed[9]]);
        let minor = u16::from_le_bytes([fixed[10], fixed[11]]);
        if major > FORMAT_MAJOR {
            return Err(fail(
                8,
                TraceErrorKind::UnsupportedVersion {
                    major,
                    minor,
                    supported: FORMAT_MAJOR,
                },
            ));
        }
        if major == 0 {
            return Err(fail(8, corrupt("file header", "format major version 0")));
        }
        let json_len = le_u32(&fixed[12..16]);
        if json_len > MAX_HEADER_LEN {
            return Err(fail(
                12,
                corrupt(
                    "file header",
                    format!("header length {json_len} exceeds {MAX_HEADER_LEN}"),
                ),
            ));
        }
        let mut json = vec![0u8; json_len as usize];
        let got = read_up_to(&mut inner, &mut json).map_err(|e| fail(0, e.into()))?;
        let json_offset = FILE_HEADER_LEN as u64;
        if got < json.len() {
            return Err(fail(
                json_offset,
                truncated("the file header", json.len(), got),
            ));
        }
        let stored = le_u32(&fixed[16..20]);
        let computed = crc32c::crc32c(&json);
        if stored != computed {
            return Err(fail(
                json_offset,
                TraceErrorKind::ChecksumMismatch {
                    what: "the file header",
                    stored,
                    computed,
                },
            ));
        }
        let header: TraceHeader = serde_json::from_slice(&json)
            .map_err(|e| fail(json_offset, corrupt("file header", e.to_string())))?;
        let decompressor =
            zstd::bulk::Decompressor::new().map_err(|e| fail(0, TraceErrorKind::Io(e)))?;
        Ok(Self {
            inner,
            source_name,
            header,
            version: (major, minor),
            offset: json_offset + u64::from(json_len),
            records: 0,
            records_read: 0,
            lock_waits: 0,
            bufio_ops: 0,
            metadata_records: 0,
            end_seen: false,
            end_skipped: false,
            stopped: false,
            skipped: SkippedDamage::default(),
            pending: VecDeque::new(),
            stored: Vec::new(),
            raw: Vec::new(),
            decompressor,
        })
    }

    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Format (major, minor) the file was written in.
    pub fn format_version(&self) -> (u16, u16) {
        self.version
    }

    /// Byte offset of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whole records handed out so far (records skipped as damaged not included).
    pub fn records_read(&self) -> u64 {
        self.records_read
    }

    /// Damaged records skipped so far.
    pub fn skipped(&self) -> &SkippedDamage {
        &self.skipped
    }

    /// The next record; `Ok(None)` after the end record of a finished file. Damaged records are
    /// skipped on the way (see [`TraceReader::skipped`]); an error means nothing after it can be
    /// read. After an error the reader stays stopped and returns `Ok(None)`.
    pub fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        if self.stopped {
            return Ok(None);
        }
        let result = self.read_record();
        if !matches!(result, Ok(Some(_))) {
            self.stopped = true;
        }
        result
    }

    fn error(&self, kind: TraceErrorKind) -> TraceError {
        TraceError {
            source_name: self.source_name.clone(),
            offset: self.offset,
            record: Some(self.records),
            kind,
        }
    }

    fn read_record(&mut self) -> Result<Option<Record>, TraceError> {
        loop {
            let mut bytes = [0u8; RECORD_HEADER_LEN];
            let got = fill(&mut self.pending, &mut self.inner, &mut bytes)
                .map_err(|e| self.error(e.into()))?;
            if self.end_seen {
                if got == 0 {
                    return Ok(None);
                }
                return Err(self.error(corrupt("file", "data after the end record".to_string())));
            }
            if got == 0 {
                if self.end_skipped {
                    // The end record was there, only damaged: the recording finished.
                    return Ok(None);
                }
                return Err(self.error(TraceErrorKind::MissingEnd));
            }
            if got < RECORD_HEADER_LEN {
                return Err(self.error(truncated("a record header", RECORD_HEADER_LEN, got)));
            }
            let header = match parse_header(&bytes) {
                Ok(header) => header,
                Err(damage) => {
                    // Its lengths cannot be trusted: read on from the next record that verifies.
                    let start = self.offset;
                    let Some((found, header)) = self.resync(&bytes)? else {
                        return Err(self.error(damage.into_error_kind()));
                    };
                    self.skip(SkippedRecord {
                        offset: start,
                        record: self.records,
                        bytes: found - start,
                        kind: None,
                        items: None,
                        damage,
                    });
                    header
                }
            };

            self.stored.resize(header.stored_len as usize, 0);
            let got = fill(&mut self.pending, &mut self.inner, &mut self.stored)
                .map_err(|e| self.error(e.into()))?;
            if got < self.stored.len() {
                return Err(self.error(truncated(
                    "a record's payload",
                    RECORD_HEADER_LEN + self.stored.len(),
                    RECORD_HEADER_LEN + got,
                )));
            }
            let computed = crc32c::crc32c(&self.stored);
            if header.payload_crc != computed {
                self.skip_whole(
                    &header,
                    Damage::PayloadChecksum {
                        stored: header.payload_crc,
                        computed,
                    },
                );
                continue;
            }
            let Some(kind) = RecordKind::from_u8(header.kind) else {
                if self.version.1 > FORMAT_MINOR {
                    // A record kind added by a newer minor version: skip it whole.
                    self.advance(header.stored_len);
                    continue;
                }
                let detail = format!("unknown record kind {}", header.kind);
                self.skip_whole(&header, Damage::BadHeader { detail });
                continue;
            };
            let decoded = self
                .decompress(header.codec, header.raw_len)
                .and_then(|()| self.decode(kind, header.item_count));
            let record = match decoded {
                Ok(record) => record,
                Err(damage) => {
                    self.skip_whole(&header, damage);
                    continue;
                }
            };
            match &record {
                Record::LockWaits(events) => self.lock_waits += events.len() as u64,
                Record::BufioOps(ops) => self.bufio_ops += ops.len() as u64,
                Record::Metadata(_) => self.metadata_records += 1,
                Record::End(end) => self.check_end(end)?,
            }
            self.advance(header.stored_len);
            self.records_read += 1;
            return Ok(Some(record));
        }
    }

    /// Checks the end record's counts against what was read. Records skipped as damaged explain
    /// counts the end record has and the file did not give; anything else is damage.
    fn check_end(&mut self, end: &TraceEnd) -> Result<(), TraceError> {
        let counted = (end.lock_waits, end.bufio_ops, end.metadata_records);
        let held = (self.lock_waits, self.bufio_ops, self.metadata_records);
        let explained = !self.skipped.is_empty()
            && held.0 <= counted.0
            && held.1 <= counted.1
            && held.2 <= counted.2;
        if counted != held && !explained {
            return Err(self.error(corrupt(
                "end record",
                format!(
                    "it counts {counted:?} (lock waits, operations, metadata records), the file \
                     holds {held:?}"
                ),
            )));
        }
        if !self.skipped.is_empty() {
            self.skipped.lost = Some(LostCounts {
                lock_waits: counted.0 - held.0,
                bufio_ops: counted.1 - held.1,
                metadata_records: counted.2 - held.2,
            });
        }
        self.end_seen = true;
        Ok(())
    }

    /// Decodes the raw payload in `self.raw`.
    fn decode(&self, kind: RecordKind, item_count: u32) -> Result<Record, Damage> {
        let undecodable = |what| move |detail: String| Damage::Undecodable { what, detail };
        Ok(match kind {
            RecordKind::LockWaits
            | RecordKind::LockWaitsV2
            | RecordKind::LockWaitsV3
            | RecordKind::LockWaitsV4 => {
                let layout = match kind {
                    RecordKind::LockWaits => Layout::V1,
                    RecordKind::LockWaitsV2 => Layout::V2,
                    RecordKind::LockWaitsV3 => Layout::V3,
                    _ => Layout::V4,
                };
                let events = chunk::decode_lock_waits(&self.raw, item_count, layout)
                    .map_err(undecodable("lock-wait chunk"))?;
                Record::LockWaits(events)
            }
            RecordKind::BufioOps | RecordKind::BufioOpsV2 | RecordKind::BufioOpsV5 => {
                let layout = match kind {
                    RecordKind::BufioOps => Layout::V1,
                    RecordKind::BufioOpsV2 => Layout::V2,
                    _ => Layout::V5,
                };
                let ops = chunk::decode_bufio_ops(&self.raw, item_count, layout)
                    .map_err(undecodable("dm-bufio operation chunk"))?;
                Record::BufioOps(ops)
            }
            RecordKind::Metadata => Record::Metadata(
                serde_json::from_slice(&self.raw)
                    .map_err(|e| undecodable("metadata record")(e.to_string()))?,
            ),
            RecordKind::End => Record::End(
                serde_json::from_slice(&self.raw)
                    .map_err(|e| undecodable("end record")(e.to_string()))?,
            ),
        })
    }

    /// Scans on from the byte after `damaged` (a record header at `self.offset` that did not
    /// verify) for the next sync marker whose header verifies. Returns that record's offset and
    /// header, with the reader positioned after the header; `None` when the input ends first.
    /// Memory stays bounded: one block of look-ahead, what follows the header kept for reading.
    fn resync(
        &mut self,
        damaged: &[u8; RECORD_HEADER_LEN],
    ) -> Result<Option<(u64, RecordHeader)>, TraceError> {
        const BLOCK: usize = 64 << 10;
        let mut window = damaged[1..].to_vec();
        let mut window_offset = self.offset + 1;
        let mut at_end = false;
        loop {
            // What is kept for the next round: the last bytes, which may begin a marker, or a
            // marker whose header is not all read yet.
            let mut keep_from = window.len().saturating_sub(RECORD_SYNC.len() - 1);
            let mut from = 0;
            while let Some(i) = window[from..]
                .windows(RECORD_SYNC.len())
                .position(|w| w == RECORD_SYNC)
            {
                let at = from + i;
                let Some(candidate) = window.get(at..at + RECORD_HEADER_LEN) else {
                    keep_from = at;
                    break;
                };
                let candidate: &[u8; RECORD_HEADER_LEN] =
                    candidate.try_into().expect("a header's length");
                if let Ok(header) = parse_header(candidate) {
                    let rest = &window[at + RECORD_HEADER_LEN..];
                    for &byte in rest.iter().rev() {
                        self.pending.push_front(byte);
                    }
                    return Ok(Some((window_offset + at as u64, header)));
                }
                from = at + 1;
            }
            if at_end {
                return Ok(None);
            }
            window.drain(..keep_from);
            window_offset += keep_from as u64;
            let old = window.len();
            window.resize(old + BLOCK, 0);
            let got = fill(&mut self.pending, &mut self.inner, &mut window[old..])
                .map_err(|e| self.error(e.into()))?;
            window.truncate(old + got);
            at_end = got < BLOCK;
        }
    }

    /// Notes a damaged stretch that starts at the reader's offset, and moves past it.
    fn skip(&mut self, skipped: SkippedRecord) {
        self.offset += skipped.bytes;
        self.records += 1;
        self.skipped.add(skipped);
    }

    /// Skips a record whose header verified (its payload already read): its lengths hold.
    fn skip_whole(&mut self, header: &RecordHeader, damage: Damage) {
        let kind = RecordKind::from_u8(header.kind);
        self.end_skipped |= kind == Some(RecordKind::End);
        self.skip(SkippedRecord {
            offset: self.offset,
            record: self.records,
            bytes: RECORD_HEADER_LEN as u64 + u64::from(header.stored_len),
            kind,
            items: Some(header.item_count),
            damage,
        });
    }

    fn advance(&mut self, stored_len: u32) {
        self.offset += (RECORD_HEADER_LEN as u64) + u64::from(stored_len);
        self.records += 1;
    }

    /// Leaves the payload's raw bytes in `self.raw`.
    fn decompress(&mut self, codec: u8, raw_len: u32) -> Result<(), Damage> {
        match Codec::from_u8(codec) {
            Some(Codec::Raw) => {
                if raw_len as usize != self.stored.len() {
                    return Err(Damage::BadHeader {
                        detail: format!(
                            "raw payload of {} bytes but a raw length of {raw_len}",
                            self.stored.len()
                        ),
                    });
                }
                std::mem::swap(&mut self.raw, &mut self.stored);
            }
            Some(Codec::Zstd) => {
                self.raw.clear();
                self.raw.reserve(raw_len as usize);
                let n = self
                    .decompressor
                    .decompress_to_buffer(&self.stored[..], &mut self.raw)
                    .map_err(|e| Damage::Undecodable {
                        what: "record payload",
                        detail: format!("zstd: {e}"),
                    })?;
                if n != raw_len as usize {
                    return Err(Damage::Undecodable {
                        what: "record payload",
                        detail: format!("decompressed to {n} bytes, the header says {raw_len}"),
                    });
                }
            }
            None => {
                return Err(Damage::BadHeader {
                    detail: format!("unknown codec {codec}"),
                });
            }
        }
        Ok(())
    }
}

/// A record header's fields, once its marker and checksum have verified.
#[derive(Clone, Copy, Debug)]
struct RecordHeader {
    kind: u8,
    codec: u8,
    stored_len: u32,
    raw_len: u32,
    item_count: u32,
    payload_crc: u32,
}

/// The header's fields if it starts with the sync marker, its checksum verifies and its lengths
/// are within what a reader accepts.
fn parse_header(bytes: &[u8; RECORD_HEADER_LEN]) -> Result<RecordHeader, Damage> {
    if bytes[0..4] != RECORD_SYNC {
        return Err(Damage::NoSync {
            found: bytes[0..4].try_into().expect("4 bytes"),
        });
    }
    let stored = le_u32(&bytes[24..28]);
    let computed = crc32c::crc32c(&bytes[..24]);
    if stored != computed {
        return Err(Damage::HeaderChecksum { stored, computed });
    }
    let header = RecordHeader {
        kind: bytes[4],
        codec: bytes[5],
        stored_len: le_u32(&bytes[8..12]),
        raw_len: le_u32(&bytes[12..16]),
        item_count: le_u32(&bytes[16..20]),
        payload_crc: le_u32(&bytes[20..24]),
    };
    if header.stored_len > MAX_PAYLOAD_LEN || header.raw_len > MAX_PAYLOAD_LEN {
        return Err(Damage::BadHeader {
            detail: format!(
                "payload of {}/{} bytes exceeds {MAX_PAYLOAD_LEN}",
                header.stored_len, header.raw_len
            ),
        });
    }
    Ok(header)
}

impl Damage {
    /// As the error of a reader that could not read past it.
    fn into_error_kind(self) -> TraceErrorKind {
        match self {
            Damage::NoSync { found } => corrupt(
                "record header",
                format!("no record starts here (found {found:02x?}), nor anywhere after"),
            ),
            Damage::HeaderChecksum { stored, computed } => TraceErrorKind::ChecksumMismatch {
                what: "a record header, and no record after it verifies",
                stored,
                computed,
            },
            Damage::PayloadChecksum { stored, computed } => TraceErrorKind::ChecksumMismatch {
                what: "a record's payload",
                stored,
                computed,
            },
            Damage::BadHeader { detail } => corrupt("record header", detail),
            Damage::Undecodable { what, detail } => corrupt(what, detail),
        }
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Reads into `buf` what a resync read ahead (`pending`), then from `inner`, until `buf` is full or
/// the input ends; returns the bytes read.
fn fill(pending: &mut VecDeque<u8>, inner: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let ahead = read_up_to(pending, buf)?;
    Ok(ahead + read_up_to(inner, &mut buf[ahead..])?)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}

fn truncated(what: &'static str, needed: usize, available: usize) -> TraceErrorKind {
    TraceErrorKind::Truncated {
        what,
        needed: needed as u64,
        available: available as u64,
    }
}

fn corrupt(what: &'static str, detail: impl Into<String>) -> TraceErrorKind {
    TraceErrorKind::Corrupt {
        what,
        detail: detail.into(),
    }
}
