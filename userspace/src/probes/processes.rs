//! Whose lock waits the probes keep: every process but bufscope's own (its design threads and
//! the probes' reader would otherwise fill the view with their own waits), or only the processes
//! asked for (`--pid`, the processes of a cgroup `--cgroup`, a command run under
//! `record -- CMD`).
//!
//! The filter lives in the eBPF `PROCESSES` map, by process id: a left-out process's
//! contention_begin returns before any pairing, stack walk or event (counted as `filtered`).
//! dm-bufio operations are kept from every process, since a model needs all of them to know
//! what the cache holds.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, MapData, MapError};
use bufscope_abi::{ProbeConfig, process};

/// What to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessFilter {
    /// Only these processes (tgids), and those added later
    /// ([`LockProbes::keep_process`](super::LockProbes::keep_process)), when `only_listed`.
    pub only: Vec<u32>,
    pub only_listed: bool,
    /// Only the processes in these cgroups (v2 directories under /sys/fs/cgroup, their
    /// sub-cgroups included), as they are at each refresh, when `only_listed`.
    pub cgroups: Vec<PathBuf>,
    /// Keep bufscope's own processes too (every process whose executable is named
    /// `bufscope`, this one included).
    pub include_self: bool,
}

impl ProcessFilter {
    /// The eBPF programs' `ProbeConfig::processes` for this filter.
    pub fn config_value(&self) -> u32 {
        if self.only_listed {
            ProbeConfig::LISTED_PROCESSES
        } else {
            ProbeConfig::ALL_PROCESSES
        }
    }
}

/// The `PROCESSES` map and what has been written to it.
pub(super) struct ProcessMap {
    map: HashMap<MapData, u32, u32>,
    filter: ProcessFilter,
    /// bufscope processes marked ignored, to unmark when they exit (their ids get reused).
    ignored: BTreeSet<u32>,
    /// Processes kept for being in one of `filter.cgroups`, to unmark when they leave.
    in_cgroups: BTreeSet<u32>,
}

impl ProcessMap {
    /// Writes `filter` to the map: before the programs attach, so that no wait of a left-out
    /// process is ever paired.
    pub(super) fn new(
        map: HashMap<MapData, u32, u32>,
        filter: ProcessFilter,
    ) -> Result<Self, MapError> {
        let mut this = Self {
            map,
            filter,
            ignored: BTreeSet::new(),
            in_cgroups: BTreeSet::new(),
        };
        for tgid in this.filter.only.clone() {
            this.map.insert(tgid, process::KEEP, 0)?;
        }
        this.refresh()?;
        Ok(this)
    }

    /// The map's descriptor, for a child to add itself between fork and exec
    /// ([`keep_self_in`]).
    pub(super) fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd())
    }

    /// A descriptor of the map of its own, for programs loaded outside aya.
    pub(super) fn owned_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.fd().try_clone_to_owned()
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use aya::maps::IterableMap;
        std::os::fd::AsFd::as_fd(self.map.map().fd())
    }

    /// Keeps `tgid` too (a process that joined a watched command).
    pub(super) fn keep(&mut self, tgid: u32) -> Result<(), MapError> {
        if !self.filter.only.contains(&tgid) {
            self.filter.only.push(tgid);
            self.map.insert(tgid, process::KEEP, 0)?;
        }
        Ok(())
    }

    /// Keeps the processes in the watched cgroups now and lets go of those that left; marks the
    /// bufscope processes running now as ignored and forgets those that exited (unless
    /// `include_self`). A process listed in `only` stays kept: naming it wins.
    pub(super) fn refresh(&mut self) -> Result<(), MapError> {
        if !self.filter.cgroups.is_empty() {
            let now: BTreeSet<u32> = self
                .filter
                .cgroups
                .iter()
                .flat_map(|c| cgroup_processes(c))
                .filter(|tgid| !self.filter.only.contains(tgid))
                .collect();
            for gone in self.in_cgroups.difference(&now) {
                let _ = self.map.remove(gone);
            }
            for &tgid in now.difference(&self.in_cgroups) {
                self.map.insert(tgid, process::KEEP, 0)?;
            }
            self.in_cgroups = now;
        }
        if self.filter.include_self {
            return Ok(());
        }
        let now: BTreeSet<u32> = bufscope_processes(Path::new("/proc"))
            .into_iter()
            .filter(|tgid| !self.filter.only.contains(tgid))
            .collect();
        for gone in self.ignored.difference(&now) {
            // Already gone from the map if the kernel never had it: nothing to undo.
            let _ = self.map.remove(gone);
        }
        for &tgid in now.difference(&self.ignored) {
            self.map.insert(tgid, process::IGNORE, 0)?;
        }
        self.ignored = now;
        Ok(())
    }
}

/// In a child between fork and exec (async-signal-safe): marks the calling process kept in
/// the map `map_fd`, so that its first lock wait after exec is already recorded. The result of
/// bpf(2): 0, or -1 with errno set.
pub fn keep_self_in(map_fd: std::os::fd::RawFd) -> i64 {
    // SAFETY: getpid has no preconditions and is async-signal-safe.
    let pid = unsafe { libc::getpid() } as u32;
    super::sys::map_update_u32(map_fd, pid, process::KEEP)
}

impl super::LockProbes {
    /// The process filter map's descriptor, for [`keep_self_in`] in a child about to exec.
    pub fn processes_map_fd(&self) -> std::os::fd::RawFd {
        self.processes.raw_fd()
    }

    /// Leaves out the bufscope processes started since the last call (a replay begun while
    /// this one records), unless they are kept.
    pub fn refresh_processes(&mut self) -> Result<(), super::ProbeError> {
        self.processes.refresh().map_err(map_error)
    }

    /// Keeps `tgid`'s lock waits too (with a `--pid` list: a process the watched command
    /// started).
    pub fn keep_process(&mut self, tgid: u32) -> Result<(), super::ProbeError> {
        self.processes.keep(tgid).map_err(map_error)
    }
}

fn map_error(source: MapError) -> super::ProbeError {
    super::ProbeError::Map {
        name: bufscope_abi::names::PROCESSES_MAP,
        source,
    }
}

/// The processes in the cgroup v2 directory `cgroup` and its sub-cgroups (their
/// `cgroup.procs`); none for a cgroup that is gone.
pub fn cgroup_processes(cgroup: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            found.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// The processes under `proc` (a procfs mount) whose executable is named `bufscope`: this one,
/// and any other run (a replay or a second live view) whose design threads would show up in
/// this one's tables. `bufscope stress` is not among them: it is the workload under watch (the
/// VM test bed drives dm-thin and dm-verity with it), and its threads' waits are the ones a user
/// asked to see. Ignoring them once lost every client-mutex wait of the 16 thin-hotspot readers
/// while their operations were still recorded, holding the lock through the waits.
pub fn bufscope_processes(proc: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut found: Vec<u32> = entries
        .flatten()
        .filter_map(|e| {
            let tgid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let exe = std::fs::read_link(e.path().join("exe")).ok()?;
            // A rebuilt binary reads "bufscope (deleted)".
            let name = exe.file_name()?.to_str()?;
            if name != "bufscope" && name != "bufscope (deleted)" {
                return None;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            (!is_stress(&cmdline)).then_some(tgid)
        })
        .collect();
    found.sort_unstable();
    found
}

/// Whether a bufscope command line (`/proc/PID/cmdline`: NUL-separated) runs `bufscope stress`:
/// its first argument that is not an option names the subcommand (bufscope's own options take
/// no values).
fn is_stress(cmdline: &[u8]) -> bool {
    cmdline
        .split(|&b| b == 0)
        .skip(1)
        .find(|arg| !arg.starts_with(b"-"))
        .is_some_and(|subcommand| subcommand == b"stress")
}

/// The processes under `proc` descended from `root` (children, their children, …), from each
/// one's parent in its `stat`.
pub fn descendants(proc: &Path, root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // After the parenthesised name: state, then the parent's id.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, p)| p == parent)
                .map(|&(pid, _)| pid),
        );
        i += 1;
    }
    found.remove(0);
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bufscope_processes_are_found_by_their_executable_s_name() {
        let proc = tempfile::tempdir().unwrap();
        let make = |pid: &str, exe: &str| {
            let dir = proc.path().join(pid);
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
        };
        make("10", "/usr/bin/bufscope");
        make("11", "/work/target/debug/bufscope (deleted)");
        make("12", "/usr/bin/bufscope-helper");
        make("13", "/bin/sh");
        make("self", "/usr/bin/bufscope");
        // The workload bufscope drives is watched, not ignored; a replay or a live view is not.
        make("14", "/bin/bufscope");
        make("15", "/bin/bufscope");
        make("16", "/bin/bufscope");
        let cmdline = |pid: &str, args: &[&str]| {
            let bytes: Vec<u8> = args
                .iter()
                .flat_map(|a| [a.as_bytes(), b"\0"].concat())
                .collect();
            std::fs::write(proc.path().join(pid).join("cmdline"), bytes).unwrap();
        };
        cmdline(
            "14",
            &[
                "/bin/bufscope",
                "stress",
                "/dev/mapper/thin",
                "--threads",
                "16",
            ],
        );
        cmdline("15", &["bufscope", "-vv", "stress", "/dev/dm-0"]);
        cmdline("16", &["bufscope", "replay", "stress.bftrace"]);
        assert_eq!(bufscope_processes(proc.path()), [10, 11, 16]);
    }

    #[test]
    fn descendants_follow_parents_down_every_generation() {
        let proc = tempfile::tempdir().unwrap();
        for (pid, ppid) in [(5, 1), (6, 5), (7, 6), (8, 1), (9, 5)] {
            let dir = proc.path().join(pid.to_string());
            std::fs::create_dir(&dir).unwrap();
            // A name with spaces and a parenthesis, as comm can be.
            std::fs::write(dir.join("stat"), format!("{pid} (a b) c) S {ppid} 1 1\n")).unwrap();
        }
        assert_eq!(descendants(proc.path(), 5), [6, 7, 9]);
        assert_eq!(descendants(proc.path(), 8), Vec::<u32>::new());
    }

    #[test]
    fn only_listed_turns_the_listed_mode_on() {
        assert_eq!(
            ProcessFilter::default().config_value(),
            ProbeConfig::ALL_PROCESSES
        );
        let listed = ProcessFilter {
            only: vec![42],
            only_listed: true,
            ..ProcessFilter::default()
        };
        assert_eq!(listed.config_value(), ProbeConfig::LISTED_PROCESSES);
    }

    #[test]
    fn a_cgroup_s_processes_include_its_sub_cgroups() {
        let root = tempfile::tempdir().unwrap();
        let sub = root.path().join("a.service/worker");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(root.path().join("cgroup.procs"), "7\n3\n").unwrap();
        std::fs::write(root.path().join("a.service/cgroup.procs"), "").unwrap();
        std::fs::write(sub.join("cgroup.procs"), "12\n3\n").unwrap();
        assert_eq!(cgroup_processes(root.path()), [3, 7, 12]);
        assert_eq!(cgroup_processes(&root.path().join("a.service")), [3, 12]);
        assert!(cgroup_processes(&root.path().join("gone")).is_empty());
    }
}
