//! A trace held in memory: every lock wait and dm-bufio operation with the names its metadata
//! gives them. `report`, `export` and `compare` work on this, whether it was read from a kernel
//! recording ([`TraceData::load`]) or made by running a recording through a reference design
//! ([`crate::models`]), so the kernel and the designs are measured by the same code.

use std::{io::Read, path::Path};

use bufscope_abi::LockFlags;
use bufscope_trace::{
    BufioOp, ClientLock, LockWait, Metadata, Record, SkippedDamage, TraceError, TraceHeader,
    TraceReader, TraceWriter,
};

use crate::{
    naming::{self, Names},
    units::{error_chain, thousands},
};

/// The lock classes compared between the kernel and the designs: dm-bufio's own locks, and
/// everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitClass {
    /// The client lock: the mutex, or a no-sleep client's spinlock.
    ClientMutex,
    TreeRead,
    TreeWrite,
    /// Locks that are not a dm-bufio client's.
    Other,
}

impl WaitClass {
    pub const ALL: [WaitClass; 4] = [
        WaitClass::ClientMutex,
        WaitClass::TreeRead,
        WaitClass::TreeWrite,
        WaitClass::Other,
    ];

    /// As the reference cache names its lock classes.
    pub fn name(self) -> &'static str {
        match self {
            WaitClass::ClientMutex => "client mutex",
            WaitClass::TreeRead => "tree lock (read)",
            WaitClass::TreeWrite => "tree lock (write)",
            WaitClass::Other => "other locks",
        }
    }
}

/// Everything of a trace that the analyses need.
#[derive(Debug, Default)]
pub struct TraceData {
    /// Where it came from: a path, or "<design> model of <path>".
    pub source: String,
    pub header: TraceHeader,
    /// Lock waits and operations in file order (by time within each chunk).
    pub waits: Vec<LockWait>,
    pub ops: Vec<BufioOp>,
    /// Client, stack, symbol and thread metadata, for names.
    pub names: Names,
    /// Every metadata record, in file order.
    pub metadata: Vec<Metadata>,
    /// The reference design that produced it, for a model run.
    pub design: Option<String>,
    /// The kernel's dm-bufio design as seen at recording ("classic" or "sharded").
    pub kernel_design: Option<String>,
    /// dm-bufio's cache size in bytes as the recording began (format 1.6 on).
    pub cache_size_bytes: Option<u64>,
    /// Records read.
    pub records: u64,
    /// Damaged records skipped (everything around them is kept).
    pub skipped: SkippedDamage,
    /// Why reading stopped early, when it did (what came before is kept).
    pub problem: Option<String>,
}

impl TraceData {
    /// Reads a whole trace file. A file that is not a trace is an error; a damaged record past
    /// the header is skipped and told in `skipped`; where nothing more can be read (a file cut
    /// short, damage with no whole record after it), reading ends and `problem` says why,
    /// keeping everything before it.
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        Ok(Self::read_all(
            TraceReader::open(path)?,
            path.display().to_string(),
        ))
    }

    /// Reads a whole trace from memory (e.g. a sample built into the binary), like [`load`].
    ///
    /// [`load`]: TraceData::load
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, TraceError> {
        Ok(Self::read_all(
            TraceReader::new(bytes, name)?,
            name.to_string(),
        ))
    }

    fn read_all<R: Read>(mut reader: TraceReader<R>, source: String) -> Self {
        let mut data = TraceData {
            source,
            header: reader.header().clone(),
            ..Default::default()
        };
        loop {
            match reader.next_record() {
                Ok(None) => break,
                Ok(Some(Record::LockWaits(waits))) => data.waits.extend(waits),
                Ok(Some(Record::BufioOps(ops))) => data.ops.extend(ops),
                Ok(Some(Record::Metadata(m))) => data.add_metadata(m),
                Ok(Some(_)) => {}
                Err(e) => {
                    data.problem = Some(error_chain(&e));
                    break;
                }
            }
        }
        data.records = reader.records_read();
        data.skipped = reader.skipped().clone();
        data
    }

    /// What reading skipped as damaged, in a line (see [`skipped_message`]).
    pub fn skipped_message(&self) -> Option<String> {
        skipped_message(&self.source, &self.skipped, self.records)
    }

    pub fn add_metadata(&mut self, m: Metadata) {
        self.names.add(&m);
        if let Metadata::Probes {
            bufio_design,
            cache_size_bytes,
            ..
        } = &m
        {
            if let Some(design) = bufio_design {
                self.kernel_design.get_or_insert_with(|| design.clone());
            }
            self.cache_size_bytes = self.cache_size_bytes.or(*cache_size_bytes);
        }
        self.metadata.push(m);
    }

    /// Which class of lock a wait was for.
    pub fn wait_class(&self, w: &LockWait) -> WaitClass {
        match self.names.bufio_lock(w.lock_addr) {
            // The client lock, a mutex or (a no-sleep client's) a spinlock: the designs' client
            // lock class either way.
            Some((_, ClientLock::Mutex | ClientLock::Spinlock)) => WaitClass::ClientMutex,
            Some((_, ClientLock::Tree(_))) if w.flags & LockFlags::WRITE != 0 => {
                WaitClass::TreeWrite
            }
            Some((_, ClientLock::Tree(_))) => WaitClass::TreeRead,
            None => WaitClass::Other,
        }
    }

    /// Event clock span: first start to last end over waits and operations.
    pub fn span_ns(&self) -> Option<(u64, u64)> {
        let starts = self
            .waits
            .iter()
            .map(|w| (w.start_ns, w.end_ns()))
            .chain(self.ops.iter().map(|o| (o.start_ns, o.end_ns())));
        starts.fold(None, |acc, (s, e)| match acc {
            None => Some((s, e)),
            Some((a, b)) => Some((a.min(s), b.max(e))),
        })
    }

    /// The thread's name as recorded, e.g. "bufio_hot/3". `None` when the file does not name it:
    /// files from before thread names were recorded, synthetic traces, and threads that had
    /// exited by the time the recorder first read one of their events.
    pub fn thread_name(&self, tid: u32) -> Option<&str> {
        self.names.thread_name(tid)
    }

    /// The thread's role (see [`naming::thread_role`]): `bufio_hot` for `bufio_hot/3`, `?`
    /// for a thread without a name.
    pub fn thread_role(&self, tid: u32) -> &str {
        naming::thread_role(self.thread_name(tid))
    }

    /// The lock's name for reports (see [`Names::lock_name`]).
    pub fn lock_name(&self, w: &LockWait) -> String {
        self.names.lock_name(w.lock_addr, w.flags)
    }

    /// Writes it as a trace file (metadata first, so a reader names locks as it goes). Refuses
    /// to overwrite an existing file unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), WriteTraceError> {
        let file = if force {
            std::fs::File::create(path)
        } else {
            std::fs::File::create_new(path)
        }
        .map_err(|source| {
            let path = path.to_path_buf();
            if !force && path.exists() {
                WriteTraceError::Exists { path, source }
            } else {
                WriteTraceError::Create { path, source }
            }
        })?;
        let written = (|| -> std::io::Result<()> {
            let mut writer = TraceWriter::new(std::io::BufWriter::new(file), &self.header)?;
            for m in &self.metadata {
                writer.write_metadata(m)?;
            }
            for op in &self.ops {
                writer.push_op(*op)?;
            }
            for w in &self.waits {
                writer.push(*w)?;
            }
            let end = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            writer.finish(end)?;
            Ok(())
        })();
        written.map_err(|source| WriteTraceError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Damaged stretches named one by one in [`skipped_message`]; the rest are counted.
const NAMED_IN_MESSAGE: usize = 5;

/// The line that says what a reader skipped as damaged in `source` and what it read, e.g.
/// "t.bftrace: skipped 1 damaged record at offset 233,378 (record 9, 109,955 bytes: payload
/// checksum mismatch); by the end record's counts it held 12,711 dm-bufio operations; read the
/// other 47 records". `None` when nothing was skipped.
pub fn skipped_message(source: &str, skipped: &SkippedDamage, records_read: u64) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let stretch = |s: &bufscope_trace::SkippedRecord| {
        format!(
            "at offset {} (record {}, {} bytes: {})",
            thousands(s.offset),
            s.record,
            thousands(s.bytes),
            s.damage
        )
    };
    let mut text = if let ([only], 1) = (&skipped.listed[..], skipped.records) {
        format!("{source}: skipped 1 damaged record {}", stretch(only))
    } else {
        let named: Vec<String> = skipped
            .listed
            .iter()
            .take(NAMED_IN_MESSAGE)
            .map(stretch)
            .collect();
        let unnamed = skipped.records - named.len() as u64;
        format!(
            "{source}: skipped {} damaged records, {} bytes: {}{}",
            thousands(skipped.records),
            thousands(skipped.bytes),
            named.join(", "),
            if unnamed > 0 {
                format!(" and {} more", thousands(unnamed))
            } else {
                String::new()
            }
        )
    };
    if let Some(lost) = skipped.lost {
        let held: Vec<String> = [
            (lost.lock_waits, "lock waits"),
            (lost.bufio_ops, "dm-bufio operations"),
            (lost.metadata_records, "metadata records"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{} {what}", thousands(n)))
        .collect();
        if !held.is_empty() {
            text.push_str(&format!(
                "; by the end record's counts {} held {}",
                if skipped.records == 1 { "it" } else { "they" },
                held.join(" and ")
            ));
        }
    }
    text.push_str(&format!(
        "; read the other {} records",
        thousands(records_read)
    ));
    Some(text)
}

/// Why [`TraceData::write`] failed; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum WriteTraceError {
    #[error("{} exists; pass --force to overwrite it", path.display())]
    Exists {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("creating {}", path.display())]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../samples")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Byte 300,000 of the dm-verity sample lies in a chunk of operations: only those are lost,
    /// and the line says so. Where that chunk lies and what it holds comes from reading the
    /// undamaged file record by record.
    #[test]
    fn a_damaged_record_costs_only_its_own_events_and_is_told() {
        let bytes = sample("6.1-verity-read.bftrace");
        let whole = TraceData::from_bytes(&bytes, "verity.bftrace").unwrap();
        assert_eq!((whole.skipped_message(), &whole.problem), (None, &None));
        let (index, offset, length, ops) = {
            let mut reader = TraceReader::new(&bytes[..], "whole").unwrap();
            let mut index = 0;
            loop {
                let offset = reader.offset();
                let record = reader
                    .next_record()
                    .unwrap()
                    .expect("byte 300,000 in a record");
                let end = reader.offset();
                if (offset..end).contains(&300_000) {
                    let Record::BufioOps(ops) = record else {
                        panic!("record {index} at {offset} holds no operations");
                    };
                    break (index, offset, end - offset, ops.len());
                }
                index += 1;
            }
        };
        assert!(ops > 1_000, "a chunk of {ops} operations");
        let mut damaged = bytes.clone();
        damaged[300_000] ^= 0x01;
        let trace = TraceData::from_bytes(&damaged, "verity.bftrace").unwrap();
        assert_eq!(trace.problem, None);
        assert_eq!(trace.waits, whole.waits);
        assert_eq!(trace.ops.len(), whole.ops.len() - ops);
        assert_eq!(trace.metadata, whole.metadata);
        assert_eq!(trace.records, whole.records - 1);
        assert_eq!(
            trace.skipped_message(),
            Some(format!(
                "verity.bftrace: skipped 1 damaged record at offset {} (record {index}, {} \
                 bytes: payload checksum mismatch); by the end record's counts it held {} \
                 dm-bufio operations; read the other {} records",
                thousands(offset),
                thousands(length),
                thousands(ops as u64),
                whole.records - 1
            ))
        );

        // Two more: each named, the total counted.
        damaged[bytes.len() / 2] ^= 0x01;
        damaged[1_000_000] ^= 0x01;
        let trace = TraceData::from_bytes(&damaged, "verity.bftrace").unwrap();
        let message = trace.skipped_message().unwrap();
        assert!(
            message.starts_with("verity.bftrace: skipped 3 damaged records, "),
            "{message}"
        );
        assert_eq!(message.matches("at offset").count(), 3, "{message}");
        assert!(
            message.ends_with(&format!("; read the other {} records", whole.records - 3)),
            "{message}"
        );
    }
}
