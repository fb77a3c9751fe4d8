//! kretprobes with room for many sleeping callers.
//!
//! A kretprobe needs one instance per call in flight; created through perf_event_open (as aya
//! does) it gets the kernel's default, max(10, 2 × CPUs). Sixteen threads asleep on dm-bufio's
//! client mutex inside dm_bufio_read exhaust that on a small machine, and each missed return is
//! an operation lost. So the return probes are created through tracefs' kprobe_events with an
//! explicit `maxactive`, then the (already loaded) eBPF program is attached to that event with
//! perf_event_open + PERF_EVENT_IOC_SET_BPF. Dropping the probe removes the event again.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    num::ParseIntError,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use perf_event_open_sys as sys;

/// Instances per return probe: enough for every thread of a busy dm-thin pool to sleep inside
/// a bufio call at once (the kernel's limit is 4096).
pub const MAXACTIVE: u32 = 1024;

/// The tracefs group of bufscope's probe events; the pid keeps concurrent runs apart.
fn group() -> String {
    format!("bufscope_{}", std::process::id())
}

/// Why a return probe could not be made through tracefs (the caller falls back to aya's).
#[derive(Debug, thiserror::Error)]
pub enum KretprobeError {
    #[error("creating a return probe on {function} in {}", kprobe_events.display())]
    Create {
        function: String,
        kprobe_events: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {}", path.display())]
    ReadId {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {}", path.display())]
    ParseId {
        path: PathBuf,
        #[source]
        source: ParseIntError,
    },
    #[error("perf_event_open for {spec}")]
    Open {
        spec: String,
        #[source]
        source: io::Error,
    },
    #[error("attaching the return program to {spec}")]
    SetBpf {
        spec: String,
        #[source]
        source: io::Error,
    },
    #[error("enabling {spec}")]
    Enable {
        spec: String,
        #[source]
        source: io::Error,
    },
}

/// A return probe event created in tracefs with a BPF program attached.
#[derive(Debug)]
pub struct TracefsKretprobe {
    kprobe_events: PathBuf,
    spec: String,
    perf: Option<OwnedFd>,
}

impl TracefsKretprobe {
    /// Creates `r<MAXACTIVE>:bufscope_<pid>/<event> <function>` and attaches `program`.
    pub fn attach(
        tracefs: &Path,
        function: &str,
        program: BorrowedFd<'_>,
    ) -> Result<Self, KretprobeError> {
        let event = format!("r_{}", function.trim_start_matches('_'));
        let group = group();
        let kprobe_events = tracefs.join("kprobe_events");
        write_line(
            &kprobe_events,
            &format!("r{MAXACTIVE}:{group}/{event} {function}"),
        )
        .map_err(|source| KretprobeError::Create {
            function: function.to_string(),
            kprobe_events: kprobe_events.clone(),
            source,
        })?;
        let spec = format!("{group}/{event}");
        // From here on, Drop removes the event.
        let remove_on_error = EventGuard {
            kprobe_events: &kprobe_events,
            spec: &spec,
        };
        let id_path = tracefs.join("events").join(&group).join(&event).join("id");
        let id_text = fs::read_to_string(&id_path).map_err(|source| KretprobeError::ReadId {
            path: id_path.clone(),
            source,
        })?;
        let id: u64 = id_text
            .trim()
            .parse()
            .map_err(|source| KretprobeError::ParseId {
                path: id_path,
                source,
            })?;
        let perf = open_tracepoint_event(id).map_err(|source| KretprobeError::Open {
            spec: spec.clone(),
            source,
        })?;
        // SAFETY: both fds are open; the ioctls take plain integers.
        let set = unsafe { sys::ioctls::SET_BPF(perf.as_raw_fd(), program.as_raw_fd() as u32) };
        if set < 0 {
            let source = io::Error::last_os_error();
            return Err(KretprobeError::SetBpf {
                spec: spec.clone(),
                source,
            });
        }
        // SAFETY: as above.
        if unsafe { sys::ioctls::ENABLE(perf.as_raw_fd(), 0) } < 0 {
            let source = io::Error::last_os_error();
            return Err(KretprobeError::Enable {
                spec: spec.clone(),
                source,
            });
        }
        std::mem::forget(remove_on_error);
        Ok(Self {
            kprobe_events,
            spec,
            perf: Some(perf),
        })
    }
}

impl Drop for TracefsKretprobe {
    fn drop(&mut self) {
        // The perf event must be closed before the probe event can be removed.
        drop(self.perf.take());
        remove_event(&self.kprobe_events, &self.spec);
    }
}

struct EventGuard<'a> {
    kprobe_events: &'a Path,
    spec: &'a str,
}

impl Drop for EventGuard<'_> {
    fn drop(&mut self) {
        remove_event(self.kprobe_events, self.spec);
    }
}

fn remove_event(kprobe_events: &Path, spec: &str) {
    if let Err(e) = write_line(kprobe_events, &format!("-:{spec}")) {
        log::warn!("removing the probe event {spec}: {e}");
    }
}

fn write_line(path: &Path, line: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().append(true).open(path)?;
    file.write_all(format!("{line}\n").as_bytes())
}

/// Removes probe events left by bufscope runs that died without cleaning up (their pid gone).
pub fn remove_stale_events(tracefs: &Path) {
    let kprobe_events = tracefs.join("kprobe_events");
    let Ok(text) = fs::read_to_string(&kprobe_events) else {
        return;
    };
    for line in text.lines() {
        // e.g. "r1024:bufscope_1234/r_dm_bufio_read dm_bufio_read"
        let Some(spec) = line
            .split_whitespace()
            .next()
            .and_then(|s| s.split_once(':'))
        else {
            continue;
        };
        let spec = spec.1;
        let Some(pid) = spec
            .strip_prefix("bufscope_")
            .and_then(|rest| rest.split('/').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            log::info!("removing the stale probe event {spec}");
            remove_event(&kprobe_events, spec);
        }
    }
}

fn open_tracepoint_event(id: u64) -> io::Result<OwnedFd> {
    let mut attr = sys::bindings::perf_event_attr {
        type_: sys::bindings::PERF_TYPE_TRACEPOINT,
        size: size_of::<sys::bindings::perf_event_attr>() as u32,
        config: id,
        ..Default::default()
    };
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    // SAFETY: attr is a valid, fully initialised perf_event_attr; pid -1 with cpu 0 is how a
    // system-wide tracepoint event is opened for BPF (the program then runs on every CPU).
    let fd = unsafe {
        sys::perf_event_open(
            &mut attr,
            -1,
            0,
            -1,
            sys::bindings::PERF_FLAG_FD_CLOEXEC as _,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::probes::error_chain;

    #[test]
    fn without_kprobe_events_creating_fails_with_the_io_error_as_source() {
        let tracefs = tempfile::tempdir().unwrap();
        let program = tempfile::tempfile().unwrap();
        let err =
            TracefsKretprobe::attach(tracefs.path(), "dm_bufio_read", program.as_fd()).unwrap_err();
        let kprobe_events = tracefs.path().join("kprobe_events");
        assert!(
            matches!(&err, KretprobeError::Create { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert_eq!(
            error_chain(&err),
            format!(
                "creating a return probe on dm_bufio_read in {}: No such file or directory \
                 (os error 2)",
                kprobe_events.display()
            )
        );
    }
}
