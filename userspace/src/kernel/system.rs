//! Facts about the running system that bufscope reports and depends on: kernel release, host,
//! CPUs, privileges, clocks, and where tracefs is (mounting it when it is not).

use std::{
    ffi::CStr,
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

/// Where tracefs is normally mounted; aya looks here (then under debugfs).
pub const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEFS_UNDER_DEBUGFS: &str = "/sys/kernel/debug/tracing";

/// `uname -r`.
pub fn kernel_release() -> String {
    uname_field(|u| &u.release)
}

/// `uname -n`.
pub fn host_name() -> String {
    uname_field(|u| &u.nodename)
}

/// `uname -m`.
pub fn machine() -> String {
    uname_field(|u| &u.machine)
}

fn uname_field(field: impl Fn(&libc::utsname) -> &[libc::c_char; 65]) -> String {
    // SAFETY: utsname is plain data; uname fills it and cannot fail with a valid pointer.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates every field.
    unsafe { CStr::from_ptr(field(&u).as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Online CPUs.
pub fn online_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// A thread's name (`comm`) as of now, from `/proc/<tgid>/task/<tid>/comm`; `None` once the
/// thread has exited (or when the tid now belongs to another process).
pub fn thread_comm(tgid: u32, tid: u32) -> Option<String> {
    let comm = fs::read_to_string(format!("/proc/{tgid}/task/{tid}/comm")).ok()?;
    Some(comm.strip_suffix('\n').unwrap_or(&comm).to_string())
}

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
/// hybrid system), from /proc/self/mounts.
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| std::path::PathBuf::from(dir))
    })
}

/// The thread's cgroup v2 path from the root ("0::/system.slice/x.service" in
/// /proc/PID/task/TID/cgroup); `None` on a cgroup v1 only system or once the thread is gone.
pub fn thread_cgroup(tgid: u32, tid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{tgid}/task/{tid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// Thread names learned the first time a tid shows up in an event, by reading the thread's
/// `comm` right then: one read per thread, and one set lookup per event. Events reach user space
/// in batches, up to tens of milliseconds after they happened, so a thread that exited before
/// its first event was read stays unnamed (as does tid 0, the idle task); a thread renamed after
/// it was first seen keeps its first name.
#[derive(Debug, Default)]
pub struct NewThreads {
    seen: foldhash::HashSet<u32>,
}

impl NewThreads {
    /// The thread's name, if `tid` was not seen before and the thread is still there.
    pub fn learn(&mut self, tid: u32, tgid: u32) -> Option<bufscope_trace::Thread> {
        if !self.seen.insert(tid) {
            return None;
        }
        let comm = thread_comm(tgid, tid)?;
        Some(bufscope_trace::Thread {
            tid,
            tgid,
            comm,
            cgroup: thread_cgroup(tgid, tid),
        })
    }

    /// Whether `tid` was seen (named or not).
    pub fn seen(&self, tid: u32) -> bool {
        self.seen.contains(&tid)
    }
}

/// CLOCK_MONOTONIC now, the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock time in ns since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Linux capabilities bufscope cares about, by number.
pub const CAPABILITIES: &[(u32, &str)] = &[
    (21, "CAP_SYS_ADMIN"),
    (24, "CAP_SYS_RESOURCE"),
    (34, "CAP_SYSLOG"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

/// The effective capability set of this process, from /proc/self/status.
pub fn effective_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Names of the capabilities in [`CAPABILITIES`] that `caps` holds, and of those it lacks.
pub fn split_capabilities(caps: u64) -> (Vec<&'static str>, Vec<&'static str>) {
    let (held, missing): (Vec<_>, Vec<_>) = CAPABILITIES
        .iter()
        .partition(|(bit, _)| caps & (1 << bit) != 0);
    let names = |v: Vec<&(u32, &'static str)>| v.into_iter().map(|(_, name)| *name).collect();
    (names(held), names(missing))
}

/// Where tracefs is mounted, if it is.
pub fn tracefs_mount() -> Option<PathBuf> {
    [TRACEFS, TRACEFS_UNDER_DEBUGFS]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
        .map(Path::to_path_buf)
}

/// How tracefs became available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracefs {
    AlreadyMounted(PathBuf),
    MountedNow(PathBuf),
}

impl Tracefs {
    pub fn path(&self) -> &Path {
        match self {
            Tracefs::AlreadyMounted(p) | Tracefs::MountedNow(p) => p,
        }
    }
}

/// tracefs is not mounted and could not be mounted. The message names the mount error and the
/// command that fixes it, so it is complete on its own.
#[derive(Debug, thiserror::Error)]
#[error(
    "tracefs is not mounted and mounting it at {TRACEFS} failed ({cause}); \
     mount it with `mount -t tracefs tracefs {TRACEFS}`"
)]
pub struct TracefsError {
    cause: std::io::Error,
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted (as perf does).
pub fn ensure_tracefs() -> Result<Tracefs, TracefsError> {
    if let Some(path) = tracefs_mount() {
        return Ok(Tracefs::AlreadyMounted(path));
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError {
            cause: std::io::Error::last_os_error(),
        });
    }
    Ok(Tracefs::MountedNow(PathBuf::from(TRACEFS)))
}

/// Raises RLIMIT_MEMLOCK for kernels older than 5.11, which charge BPF maps to it. Newer kernels
/// account BPF memory to cgroups, so failure (no CAP_SYS_RESOURCE) only matters on old kernels.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); kernels >= 5.11 do not need it",
            std::io::Error::last_os_error()
        );
    }
}
