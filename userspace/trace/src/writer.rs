//! Streaming trace writer: events are buffered into chunks, each chunk is encoded, compressed,
//! checksummed and written as soon as it fills or [`TraceWriter::flush`] is called.

use std::io::{self, Write};

use crate::{
    BufioOp, LockWait, Metadata, TraceEnd, TraceHeader,
    chunk::{ChunkEncoder, Layout},
    format::{
        Codec, FORMAT_MAJOR, FORMAT_MINOR, MAGIC, MAX_CHUNK_EVENTS, RECORD_HEADER_LEN, RECORD_SYNC,
        RecordKind,
    },
};

/// Tuning for [`TraceWriter`].
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// zstd level; 1–3 keep up with millions of events per second.
    pub zstd_level: i32,
    /// Events per chunk (at most [`MAX_CHUNK_EVENTS`]). Smaller chunks lose less when a file is
    /// cut off; larger ones compress better.
    pub chunk_events: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            zstd_level: 3,
            chunk_events: MAX_CHUNK_EVENTS,
        }
    }
}

/// Writes a trace file. Dropping a writer without [`finish`](Self::finish) still writes the
/// events it holds (the file then reads back as cut short), so nothing pushed is lost.
pub struct TraceWriter<W: Write> {
    out: Option<W>,
    options: WriterOptions,
    pending: Vec<LockWait>,
    pending_ops: Vec<BufioOp>,
    encoder: ChunkEncoder,
    compressor: zstd::bulk::Compressor<'static>,
    raw: Vec<u8>,
    stored: Vec<u8>,
    lock_waits: u64,
    bufio_ops: u64,
    metadata_records: u64,
    bytes_written: u64,
}

impl<W: Write> std::fmt::Debug for TraceWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceWriter")
            .field("options", &self.options)
            .field("lock_waits", &self.lock_waits())
            .field("bytes_written", &self.bytes_written)
            .finish_non_exhaustive()
    }
}

impl<W: Write> TraceWriter<W> {
    /// Writes the file header and returns a writer for the records.
    pub fn new(out: W, header: &TraceHeader) -> io::Result<Self> {
        Self::with_options(out, header, WriterOptions::default())
    }

    pub fn with_options(
        mut out: W,
        header: &TraceHeader,
        options: WriterOptions,
    ) -> io::Result<Self> {
        let json = serde_json::to_vec(header).map_err(io::Error::other)?;
        let mut fixed = Vec::with_capacity(24);
        fixed.extend_from_slice(&MAGIC);
        fixed.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
        fixed.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
        fixed.extend_from_slice(&(json.len() as u32).to_le_bytes());
        fixed.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        let fixed_crc = crc32c::crc32c(&fixed);
        fixed.extend_from_slice(&fixed_crc.to_le_bytes());
        out.write_all(&fixed)?;
        out.write_all(&json)?;
        let chunk_events = options.chunk_events.clamp(1, MAX_CHUNK_EVENTS);
        Ok(Self {
            out: Some(out),
            options: WriterOptions {
                chunk_events,
                ..options
            },
            pending: Vec::with_capacity(chunk_events),
            pending_ops: Vec::new(),
            encoder: ChunkEncoder::default(),
            compressor: zstd::bulk::Compressor::new(options.zstd_level)?,
            raw: Vec::new(),
            stored: Vec::new(),
            lock_waits: 0,
            bufio_ops: 0,
            metadata_records: 0,
            bytes_written: (fixed.len() + json.len()) as u64,
        })
    }

    /// Adds one event; a full chunk is written out.
    pub fn push(&mut self, event: LockWait) -> io::Result<()> {
        self.pending.push(event);
        if self.pending.len() >= self.options.chunk_events {
            self.write_lock_waits()?;
        }
        Ok(())
    }

    /// Adds one dm-bufio operation; a full chunk is written out.
    pub fn push_op(&mut self, op: BufioOp) -> io::Result<()> {
        self.pending_ops.push(op);
        if self.pending_ops.len() >= self.options.chunk_events {
            self.write_bufio_ops()?;
        }
        Ok(())
    }

    /// Writes one metadata record (after the events pushed so far).
    pub fn write_metadata(&mut self, metadata: &Metadata) -> io::Result<()> {
        self.write_chunk()?;
        let json = serde_json::to_vec(metadata).map_err(io::Error::other)?;
        self.raw.clear();
        self.raw.extend_from_slice(&json);
        self.write_record(RecordKind::Metadata, 1)?;
        self.metadata_records += 1;
        Ok(())
    }

    /// Writes the events held so far as a chunk and flushes the output, so that a crash after
    /// this point loses nothing before it.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_chunk()?;
        self.out_mut().flush()
    }

    /// Writes what is pending and the end record, flushes, and returns the output.
    pub fn finish(mut self, end_unix_ns: u64) -> io::Result<(W, TraceEnd)> {
        self.write_chunk()?;
        let end = TraceEnd {
            end_unix_ns,
            lock_waits: self.lock_waits,
            bufio_ops: self.bufio_ops,
            metadata_records: self.metadata_records,
        };
        let json = serde_json::to_vec(&end).map_err(io::Error::other)?;
        self.raw.clear();
        self.raw.extend_from_slice(&json);
        self.write_record(RecordKind::End, 1)?;
        let mut out = self.out.take().expect("present until finish");
        out.flush()?;
        Ok((out, end))
    }

    /// Lock-wait events pushed so far.
    pub fn lock_waits(&self) -> u64 {
        self.lock_waits + self.pending.len() as u64
    }

    /// dm-bufio operations pushed so far.
    pub fn bufio_ops(&self) -> u64 {
        self.bufio_ops + self.pending_ops.len() as u64
    }

    /// Bytes handed to the output so far (pending events not included).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    fn out_mut(&mut self) -> &mut W {
        self.out.as_mut().expect("present until finish")
    }

    /// Writes whatever events and operations are pending.
    fn write_chunk(&mut self) -> io::Result<()> {
        self.write_lock_waits()?;
        self.write_bufio_ops()
    }

    fn write_lock_waits(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.raw.clear();
        self.encoder
            .encode_lock_waits(&self.pending, Layout::V4, &mut self.raw);
        let count = self.pending.len() as u32;
        self.write_record(RecordKind::LockWaitsV4, count)?;
        self.lock_waits += u64::from(count);
        self.pending.clear();
        Ok(())
    }

    fn write_bufio_ops(&mut self) -> io::Result<()> {
        if self.pending_ops.is_empty() {
            return Ok(());
        }
        self.raw.clear();
        self.encoder
            .encode_bufio_ops(&self.pending_ops, Layout::V5, &mut self.raw);
        let count = self.pending_ops.len() as u32;
        self.write_record(RecordKind::BufioOpsV5, count)?;
        self.bufio_ops += u64::from(count);
        self.pending_ops.clear();
        Ok(())
    }

    /// Compresses `self.raw` (kept raw when that is not smaller) and writes it as one record.
    fn write_record(&mut self, kind: RecordKind, item_count: u32) -> io::Result<()> {
        self.stored.clear();
        self.stored
            .reserve(zstd::zstd_safe::compress_bound(self.raw.len()));
        self.compressor
            .compress_to_buffer(&self.raw[..], &mut self.stored)?;
        let (codec, payload) = if self.stored.len() < self.raw.len() {
            (Codec::Zstd, &self.stored)
        } else {
            (Codec::Raw, &self.raw)
        };
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[0..4].copy_from_slice(&RECORD_SYNC);
        header[4] = kind as u8;
        header[5] = codec as u8;
        header[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[12..16].copy_from_slice(&(self.raw.len() as u32).to_le_bytes());
        header[16..20].copy_from_slice(&item_count.to_le_bytes());
        header[20..24].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        let header_crc = crc32c::crc32c(&header[..24]);
        header[24..28].copy_from_slice(&header_crc.to_le_bytes());
        let written = (header.len() + payload.len()) as u64;
        let out = self.out.as_mut().expect("present until finish");
        out.write_all(&header)?;
        out.write_all(payload)?;
        self.bytes_written += written;
        Ok(())
    }
}

impl<W: Write> Drop for TraceWriter<W> {
    fn drop(&mut self) {
        if self.out.is_some() {
            // Errors cannot be reported from drop; callers who care call flush or finish.
            let _ = self.flush();
        }
    }
}
