//! Streaming trace reader. Reads records one at a time; stops at the first problem with an error
//! that says where and why, after handing out every whole record before it.

use std::{
    fs::File,
    io::{self, BufReader, Read},
    path::Path,
};

use crate::{
    BufioOp, LockWait, Metadata, TraceEnd, TraceError, TraceErrorKind, TraceHeader,
    chunk::{self, Layout},
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
    offset: u64,
    records: u64,
    lock_waits: u64,
    bufio_ops: u64,
    metadata_records: u64,
    end_seen: bool,
    stopped: bool,
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
            lock_waits: 0,
            bufio_ops: 0,
            metadata_records: 0,
            end_seen: false,
            stopped: false,
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

    /// Whole records read so far.
    pub fn records_read(&self) -> u64 {
        self.records
    }

    /// The next record; `Ok(None)` after the end record of a finished file. After an error the
    /// reader stays stopped and returns `Ok(None)`.
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
            let mut header = [0u8; RECORD_HEADER_LEN];
            let got = read_up_to(&mut self.inner, &mut header).map_err(|e| self.error(e.into()))?;
            if self.end_seen {
                if got == 0 {
                    return Ok(None);
                }
                return Err(self.error(corrupt("file", "data after the end record".to_string())));
            }
            if got == 0 {
                return Err(self.error(TraceErrorKind::MissingEnd));
            }
            if got < RECORD_HEADER_LEN {
                return Err(self.error(truncated("a record header", RECORD_HEADER_LEN, got)));
            }
            if header[0..4] != RECORD_SYNC {
                return Err(self.error(corrupt(
                    "record header",
                    format!("no record starts here (found {:02x?})", &header[0..4]),
                )));
            }
            let stored_crc = le_u32(&header[24..28]);
            let computed = crc32c::crc32c(&header[..24]);
            if stored_crc != computed {
                return Err(self.error(TraceErrorKind::ChecksumMismatch {
                    what: "a record header",
                    stored: stored_crc,
                    computed,
                }));
            }
            let kind = header[4];
            let codec = header[5];
            let stored_len = le_u32(&header[8..12]);
            let raw_len = le_u32(&header[12..16]);
            let item_count = le_u32(&header[16..20]);
            let payload_crc = le_u32(&header[20..24]);
            if stored_len > MAX_PAYLOAD_LEN || raw_len > MAX_PAYLOAD_LEN {
                return Err(self.error(corrupt(
                    "record header",
                    format!("payload of {stored_len}/{raw_len} bytes exceeds {MAX_PAYLOAD_LEN}"),
                )));
            }

            self.stored.resize(stored_len as usize, 0);
            let got =
                read_up_to(&mut self.inner, &mut self.stored).map_err(|e| self.error(e.into()))?;
            if got < self.stored.len() {
                return Err(self.error(truncated(
                    "a record's payload",
                    RECORD_HEADER_LEN + self.stored.len(),
                    RECORD_HEADER_LEN + got,
                )));
            }
            let computed = crc32c::crc32c(&self.stored);
            if payload_crc != computed {
                return Err(self.error(TraceErrorKind::ChecksumMismatch {
                    what: "a record's payload",
                    stored: payload_crc,
                    computed,
                }));
            }

            let Some(kind) = RecordKind::from_u8(kind) else {
                if self.version.1 > FORMAT_MINOR {
                    // A record kind added by a newer minor version: skip it whole.
                    self.advance(stored_len);
                    continue;
                }
                return Err(self.error(corrupt(
                    "record header",
                    format!("unknown record kind {kind}"),
                )));
            };
            self.decompress(codec, raw_len)?;
            let record = match kind {
                RecordKind::LockWaits | RecordKind::LockWaitsV2 => {
                    let layout = if kind == RecordKind::LockWaits {
                        Layout::V1
                    } else {
                        Layout::V2
                    };
                    let events = chunk::decode_lock_waits(&self.raw, item_count, layout)
                        .map_err(|detail| self.error(corrupt("lock-wait chunk", detail)))?;
                    self.lock_waits += events.len() as u64;
                    Record::LockWaits(events)
                }
                RecordKind::BufioOps | RecordKind::BufioOpsV2 => {
                    let layout = if kind == RecordKind::BufioOps {
                        Layout::V1
                    } else {
                        Layout::V2
                    };
                    let ops = chunk::decode_bufio_ops(&self.raw, item_count, layout).map_err(
                        |detail| self.error(corrupt("dm-bufio operation chunk", detail)),
                    )?;
                    self.bufio_ops += ops.len() as u64;
                    Record::BufioOps(ops)
                }
                RecordKind::Metadata => {
                    let metadata = serde_json::from_slice(&self.raw)
                        .map_err(|e| self.error(corrupt("metadata record", e.to_string())))?;
                    self.metadata_records += 1;
                    Record::Metadata(metadata)
                }
                RecordKind::End => {
                    let end: TraceEnd = serde_json::from_slice(&self.raw)
                        .map_err(|e| self.error(corrupt("end record", e.to_string())))?;
                    let counted = (end.lock_waits, end.bufio_ops, end.metadata_records);
                    let held = (self.lock_waits, self.bufio_ops, self.metadata_records);
                    if counted != held {
                        return Err(self.error(corrupt(
                            "end record",
                            format!(
                                "it counts {counted:?} (lock waits, operations, metadata records), \
                                 the file holds {held:?}"
                            ),
                        )));
                    }
                    self.end_seen = true;
                    Record::End(end)
                }
            };
            self.advance(stored_len);
            return Ok(Some(record));
        }
    }

    fn advance(&mut self, stored_len: u32) {
        self.offset += (RECORD_HEADER_LEN as u64) + u64::from(stored_len);
        self.records += 1;
    }

    /// Leaves the payload's raw bytes in `self.raw`.
    fn decompress(&mut self, codec: u8, raw_len: u32) -> Result<(), TraceError> {
        match Codec::from_u8(codec) {
            Some(Codec::Raw) => {
                if raw_len as usize != self.stored.len() {
                    return Err(self.error(corrupt(
                        "record header",
                        format!(
                            "raw payload of {} bytes but a raw length of {raw_len}",
                            self.stored.len()
                        ),
                    )));
                }
                std::mem::swap(&mut self.raw, &mut self.stored);
            }
            Some(Codec::Zstd) => {
                self.raw.clear();
                self.raw.reserve(raw_len as usize);
                let n = self
                    .decompressor
                    .decompress_to_buffer(&self.stored[..], &mut self.raw)
                    .map_err(|e| self.error(corrupt("record payload", format!("zstd: {e}"))))?;
                if n != raw_len as usize {
                    return Err(self.error(corrupt(
                        "record payload",
                        format!("decompressed to {n} bytes, the header says {raw_len}"),
                    )));
                }
            }
            None => {
                return Err(self.error(corrupt("record header", format!("unknown codec {codec}"))));
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = Result<Record, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
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
