//! Where buffers come from and go to: memory (optionally with a fixed or sampled latency per
//! I/O, to stand in for a device), or a real file or block device read and written with
//! pread/pwrite at `block × block_size`.
//!
//! A device is opened read-only unless writes are explicitly allowed, and writes to a mounted
//! block device are refused outright.

use std::{
    alloc::{self, Layout},
    collections::HashMap,
    fmt,
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use parking_lot::Mutex;

/// Block reads and writes, as dm-io does them for dm-bufio.
pub trait BlockIo: Send + Sync + fmt::Debug {
    fn read_block(&self, block: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_block(&self, block: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes completed writes durable (dm_bufio_write_dirty_buffers ends with a flush).
    fn flush(&self) -> io::Result<()>;
}

/// How long a memory-backend I/O takes.
#[derive(Clone, Debug, Default)]
pub enum Latency {
    #[default]
    None,
    Fixed(Duration),
    /// Cycles through recorded latencies (e.g. measured on a device).
    Sampled(Vec<Duration>),
}

/// One shard of the memory store: block number to bytes.
type MemoryShard = Mutex<HashMap<u64, Box<[u8]>>>;

/// Blocks in memory. Stored in shards so the store adds no lock contention of its own; blocks
/// never written read back as zeros.
#[derive(Debug)]
pub struct MemoryIo {
    block_size: usize,
    shards: Box<[MemoryShard]>,
    latency: Latency,
    next_sample: std::sync::atomic::AtomicUsize,
}

const MEMORY_SHARDS: usize = 256;

impl MemoryIo {
    pub fn new(block_size: usize, latency: Latency) -> Self {
        Self {
            block_size,
            shards: (0..MEMORY_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            latency,
            next_sample: Default::default(),
        }
    }

    fn shard(&self, block: u64) -> &MemoryShard {
        &self.shards[(block as usize) % MEMORY_SHARDS]
    }

    fn wait(&self) {
        let delay = match &self.latency {
            Latency::None => return,
            Latency::Fixed(d) => *d,
            Latency::Sampled(samples) if samples.is_empty() => return,
            Latency::Sampled(samples) => {
                let i = self
                    .next_sample
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                samples[i % samples.len()]
            }
        };
        std::thread::sleep(delay);
    }

    /// A copy of a block as last written (zeros if never written).
    pub fn snapshot(&self, block: u64) -> Vec<u8> {
        self.shard(block)
            .lock()
            .get(&block)
            .map_or_else(|| vec![0; self.block_size], |b| b.to_vec())
    }
}

impl BlockIo for MemoryIo {
    fn read_block(&self, block: u64, buf: &mut [u8]) -> io::Result<()> {
        self.wait();
        match self.shard(block).lock().get(&block) {
            Some(data) => buf.copy_from_slice(data),
            None => buf.fill(0),
        }
        Ok(())
    }

    fn write_block(&self, block: u64, buf: &[u8]) -> io::Result<()> {
        self.wait();
        self.shard(block).lock().insert(block, buf.into());
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is mounted (device {major}:{minor}); bufscope refuses to write to a mounted \
         block device"
    )]
    Mounted {
        path: PathBuf,
        major: u32,
        minor: u32,
    },
    #[error("{path}: block size {block_size} is not a multiple of 512, as O_DIRECT needs")]
    Unaligned { path: PathBuf, block_size: usize },
    #[error("{path}: reading /proc/self/mountinfo to check that it is not mounted")]
    MountCheck { path: PathBuf, source: io::Error },
}

/// Why a [`FileIo`] read or write failed: the payload of the [`io::Error`] it returns, which
/// keeps the cause's kind, and the cause as its source. Callers who need the block downcast
/// with [`io::Error::get_ref`].
#[derive(Debug, thiserror::Error)]
pub enum FileIoError {
    #[error("{path}: reading block {block} at offset {offset}")]
    Read {
        path: PathBuf,
        block: u64,
        offset: u64,
        source: io::Error,
    },
    #[error("{path}: writing block {block} at offset {offset}")]
    Write {
        path: PathBuf,
        block: u64,
        offset: u64,
        source: io::Error,
    },
    #[error("{path}: opened read-only; allow writes explicitly to write block {block}")]
    ReadOnly { path: PathBuf, block: u64 },
}

impl From<FileIoError> for io::Error {
    fn from(e: FileIoError) -> Self {
        let kind = match &e {
            FileIoError::Read { source, .. } | FileIoError::Write { source, .. } => source.kind(),
            FileIoError::ReadOnly { .. } => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, e)
    }
}

/// A real file or block device.
#[derive(Debug)]
pub struct FileIo {
    file: File,
    path: PathBuf,
    block_size: usize,
    direct: bool,
    writable: bool,
}

/// Options for [`FileIo::open`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FileIoOptions {
    /// Open with O_DIRECT (bypass the page cache), as dm-io's I/O does.
    pub direct: bool,
    /// Allow writes. Without it the file is opened read-only and writes fail.
    pub allow_writes: bool,
}

impl FileIo {
    pub fn open(path: &Path, block_size: usize, options: FileIoOptions) -> Result<Self, OpenError> {
        let io_err = |source| OpenError::Io {
            path: path.to_path_buf(),
            source,
        };
        if options.direct && !block_size.is_multiple_of(512) {
            return Err(OpenError::Unaligned {
                path: path.to_path_buf(),
                block_size,
            });
        }
        let metadata = std::fs::metadata(path).map_err(io_err)?;
        if options.allow_writes && metadata.file_type().is_block_device() {
            let (major, minor) = (libc::major(metadata.rdev()), libc::minor(metadata.rdev()));
            let mounted = is_mounted(major, minor).map_err(|source| OpenError::MountCheck {
                path: path.to_path_buf(),
                source,
            })?;
            if mounted {
                return Err(OpenError::Mounted {
                    path: path.to_path_buf(),
                    major,
                    minor,
                });
            }
        }
        let mut open = OpenOptions::new();
        open.read(true).write(options.allow_writes);
        if options.direct {
            open.custom_flags(libc::O_DIRECT);
        }
        let file = open.open(path).map_err(io_err)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            block_size,
            direct: options.direct,
            writable: options.allow_writes,
        })
    }

    fn offset(&self, block: u64) -> u64 {
        block * self.block_size as u64
    }
}

/// True when /proc/self/mountinfo lists a filesystem on device `major:minor`.
fn is_mounted(major: u32, minor: u32) -> io::Result<bool> {
    let wanted = format!("{major}:{minor}");
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some(wanted.as_str())))
}

/// A heap buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        Self { ptr, layout }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for layout.size() bytes and uniquely owned.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { alloc::dealloc(self.ptr, self.layout) };
    }
}

impl BlockIo for FileIo {
    fn read_block(&self, block: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = self.offset(block);
        let result = if self.direct {
            let mut bounce = AlignedBuf::new(buf.len());
            let r = self.file.read_exact_at(bounce.as_mut_slice(), offset);
            buf.copy_from_slice(&bounce.as_mut_slice()[..buf.len()]);
            r
        } else {
            self.file.read_exact_at(buf, offset)
        };
        result.map_err(|source| {
            FileIoError::Read {
                path: self.path.clone(),
                block,
                offset,
                source,
            }
            .into()
        })
    }

    fn write_block(&self, block: u64, buf: &[u8]) -> io::Result<()> {
        let offset = self.offset(block);
        if !self.writable {
            return Err(FileIoError::ReadOnly {
                path: self.path.clone(),
                block,
            }
            .into());
        }
        let result = if self.direct {
            let mut bounce = AlignedBuf::new(buf.len());
            bounce.as_mut_slice()[..buf.len()].copy_from_slice(buf);
            self.file.write_all_at(bounce.as_mut_slice(), offset)
        } else {
            self.file.write_all_at(buf, offset)
        };
        result.map_err(|source| {
            FileIoError::Write {
                path: self.path.clone(),
                block,
                offset,
                source,
            }
            .into()
        })
    }

    fn flush(&self) -> io::Result<()> {
        if self.writable {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_back_writes_and_zeros_elsewhere() {
        let io = MemoryIo::new(16, Latency::None);
        io.write_block(3, &[7; 16]).unwrap();
        let mut buf = [1u8; 16];
        io.read_block(3, &mut buf).unwrap();
        assert_eq!(buf, [7; 16]);
        io.read_block(4, &mut buf).unwrap();
        assert_eq!(buf, [0; 16]);
    }

    #[test]
    fn file_io_uses_block_offsets_and_is_read_only_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.img");
        let mut image = vec![0u8; 4096 * 4];
        image[4096 * 2..4096 * 3].fill(0xab);
        std::fs::write(&path, &image).unwrap();

        let ro = FileIo::open(&path, 4096, FileIoOptions::default()).unwrap();
        let mut buf = vec![0u8; 4096];
        ro.read_block(2, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0xab));
        let err = ro.write_block(1, &buf).unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(std::fs::read(&path).unwrap(), image, "nothing written");

        let rw = FileIo::open(
            &path,
            4096,
            FileIoOptions {
                direct: true,
                allow_writes: true,
            },
        );
        // tmpfs refuses O_DIRECT; fall back to buffered I/O there.
        let rw = rw
            .or_else(|_| {
                FileIo::open(
                    &path,
                    4096,
                    FileIoOptions {
                        direct: false,
                        allow_writes: true,
                    },
                )
            })
            .unwrap();
        rw.write_block(1, &[0x5a; 4096]).unwrap();
        rw.flush().unwrap();
        let after = std::fs::read(&path).unwrap();
        assert!(after[4096..8192].iter().all(|&b| b == 0x5a));
        let err = rw.read_block(9, &mut buf).unwrap_err();
        assert!(err.to_string().contains("block 9 at offset 36864"), "{err}");
        assert_eq!(
            err.kind(),
            io::ErrorKind::UnexpectedEof,
            "the cause's kind: {err}"
        );
        let typed = err.get_ref().and_then(|e| e.downcast_ref::<FileIoError>());
        assert!(
            matches!(typed, Some(FileIoError::Read { block: 9, .. })),
            "{typed:?}"
        );
        let cause = std::error::Error::source(&err).expect("the cause is kept as the source");
        assert_eq!(
            cause.downcast_ref::<io::Error>().map(io::Error::kind),
            Some(io::ErrorKind::UnexpectedEof)
        );
    }

    #[test]
    fn odd_block_sizes_are_refused_for_o_direct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.img");
        std::fs::write(&path, [0u8; 1000]).unwrap();
        let err = FileIo::open(
            &path,
            1000,
            FileIoOptions {
                direct: true,
                allow_writes: false,
            },
        )
        .unwrap_err();
        assert!(matches!(err, OpenError::Unaligned { .. }), "{err}");
    }

    #[test]
    fn a_mounted_device_is_recognised() {
        // The device of the filesystem holding this test's temp dir is mounted by definition.
        let dir = tempfile::tempdir().unwrap();
        let dev = std::fs::metadata(dir.path()).unwrap().dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        assert!(is_mounted(major, minor).unwrap(), "{major}:{minor}");
        assert!(!is_mounted(4095, 1_048_575).unwrap());
    }
}
