//! A trace held in memory: every lock wait and dm-bufio operation with the names its metadata
//! gives them. `report`, `export` and `compare` work on this, whether it was read from a kernel
//! recording ([`TraceData::load`]) or made by running a recording through a reference design
//! ([`crate::models`]), so the kernel and the designs are measured by the same code.

use std::{io::Read, path::Path};

use bufscope_abi::LockFlags;
use bufscope_trace::{
    BufioOp, ClientLock, LockWait, Metadata, Record, TraceError, TraceHeader, TraceReader,
    TraceWriter,
};

use crate::naming::{self, Names};

/// The lock classes compared between the kernel and the designs: dm-bufio's own locks, and
/// everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitClass {
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
    /// Why reading stopped early, when it did (what came before is kept).
    pub problem: Option<String>,
}

impl TraceData {
    /// Reads a whole trace file. A file that is not a trace is an error; damage past the header
    /// ends the reading and is told in `problem`, keeping everything before it.
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
                    data.problem = Some(e.to_string());
                    break;
                }
            }
        }
        data
    }

    pub fn add_metadata(&mut self, m: Metadata) {
        self.names.add(&m);
        if let Metadata::Probes {
            bufio_design: Some(design),
            ..
        } = &m
        {
            self.kernel_design.get_or_insert_with(|| design.clone());
        }
        self.metadata.push(m);
    }

    /// Which class of lock a wait was for.
    pub fn wait_class(&self, w: &LockWait) -> WaitClass {
        match self.names.bufio_lock(w.lock_addr) {
            Some((_, ClientLock::Mutex)) => WaitClass::ClientMutex,
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
