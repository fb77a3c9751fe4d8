//! Names for locks, stacks and threads, from what a trace file carries: dm-bufio clients with
//! their lock addresses, kernel symbols (for stack frames and static locks), the stacks
//! themselves, and the threads' names with the roles read from them.
//!
//! A dm-bufio lock is named by its client's device: "dm-bufio 253:2 client mutex",
//! "dm-bufio 253:2 tree 17 (rwsem read)". Other locks are named as `perf lock contention -l`
//! names them where the file allows: the kernel symbol of a static lock, else type and address.

use std::collections::HashMap;

use bufscope_abi::LockFlags;
use bufscope_trace::{ClientLock, ClientLocks, LockOwner, Metadata, Symbol};

#[derive(Clone, Debug)]
struct Client {
    device: String,
    locks: Option<ClientLocks>,
}

/// Everything needed to name locks, stacks and threads, gathered from a file's metadata.
#[derive(Clone, Debug, Default)]
pub struct Names {
    clients: HashMap<u64, Client>,
    symbols: HashMap<u64, Symbol>,
    stacks: HashMap<u32, Vec<u64>>,
    threads: HashMap<u32, String>,
    /// Threads' cgroups, where the trace has them.
    cgroups: HashMap<u32, String>,
}

/// The role of a thread without a name.
pub const UNNAMED_ROLE: &str = "?";

/// What kind of thread a name says it is: the name without its instance number. A name with a
/// `/` is cut at the first one (`bufio_hot/3` → `bufio_hot`, `kworker/1:2H` → `kworker`,
/// `jbd2/sda1-8` → `jbd2`); any other loses trailing digits that follow a `-`, `_`, `.` or `:`,
/// with that separator (`stress-7` → `stress`, `scsi_eh_0` → `scsi_eh`). Digits right after a
/// letter are kept: they are as often part of the name as an instance (`python3`,
/// `qemu-system-x86`, `kswapd0`). A name that would be left empty stays whole; no name at all is
/// [`UNNAMED_ROLE`].
pub fn thread_role(name: Option<&str>) -> &str {
    let Some(name) = name else {
        return UNNAMED_ROLE;
    };
    let role = match name.split_once('/') {
        Some((before, _)) => before,
        None => {
            let digits_cut = name.trim_end_matches(|c: char| c.is_ascii_digit());
            match digits_cut.strip_suffix(['-', '_', '.', ':']) {
                Some(role) if digits_cut.len() < name.len() => role,
                _ => name,
            }
        }
    };
    if role.is_empty() { name } else { role }
}

impl Names {
    /// Takes what a metadata record says about clients, stacks, symbols and threads.
    pub fn add(&mut self, m: &Metadata) {
        match m {
            Metadata::Client {
                addr,
                device,
                locks,
                ..
            } => {
                let entry = self.clients.entry(*addr).or_insert_with(|| Client {
                    device: device.clone(),
                    locks: None,
                });
                // The same address may belong to a later client (the old one destroyed).
                entry.device.clone_from(device);
                if locks.is_some() {
                    entry.locks = locks.clone();
                }
            }
            Metadata::Stack { id, frames } => {
                self.stacks.insert(*id, frames.clone());
            }
            Metadata::Symbols { symbols } => {
                for s in symbols {
                    self.symbols.insert(s.addr, s.clone());
                }
            }
            Metadata::Threads { threads } => {
                for t in threads {
                    self.threads.insert(t.tid, t.comm.clone());
                    if let Some(cgroup) = &t.cgroup {
                        self.cgroups.insert(t.tid, cgroup.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// The thread's name, e.g. "bufio_hot/3"; `None` when the file does not name it.
    pub fn thread_name(&self, tid: u32) -> Option<&str> {
        self.threads.get(&tid).map(String::as_str)
    }

    /// The thread's cgroup (v2, from the root), e.g. "/system.slice/postgresql.service";
    /// `None` when the file does not say.
    pub fn thread_cgroup(&self, tid: u32) -> Option<&str> {
        self.cgroups.get(&tid).map(String::as_str)
    }

    /// A lock's owner as reports name it: a thread by its id and name, and the dm-bufio
    /// operation it was inside, e.g. "812 kworker/u4:2 in dm_bufio_write_dirty_buffers".
    pub fn owner_name(&self, owner: &LockOwner) -> String {
        let owner = match owner {
            LockOwner::Thread(owner) => owner,
            LockOwner::Free => return "(free as the wait began)".to_string(),
            LockOwner::Readers => return "(held by readers)".to_string(),
            LockOwner::Unknown => return "(owner not known)".to_string(),
        };
        let mut name = match self.thread_name(owner.tid) {
            Some(comm) => format!("{} {comm}", owner.tid),
            None => owner.tid.to_string(),
        };
        if let Some(op) = owner.op {
            name.push_str(" in ");
            name.push_str(op.function());
        }
        name
    }

    /// The device of a client, e.g. "253:2".
    pub fn client_device(&self, client: u64) -> Option<&str> {
        self.clients.get(&client).map(|c| c.device.as_str())
    }

    /// The client (its address) whose lock `addr` is, if it is a dm-bufio client lock.
    pub fn bufio_lock_client(&self, addr: u64) -> Option<u64> {
        self.clients
            .iter()
            .find_map(|(client, c)| c.locks.as_ref()?.classify(addr).map(|_| *client))
    }

    /// Which dm-bufio client lock `addr` is, if it is one.
    pub fn bufio_lock(&self, addr: u64) -> Option<(&str, ClientLock)> {
        self.clients.values().find_map(|c| {
            let which = c.locks.as_ref()?.classify(addr)?;
            Some((c.device.as_str(), which))
        })
    }

    /// Whether `text` picks this lock (`--lock`): its name contains it, or its type and address
    /// do ("rwsem:W 0xffff…", as an unnamed lock is named), so that a filter by type and
    /// address keeps a lock however it comes to be named (a slab cache, a class found later).
    pub fn lock_matches(&self, addr: u64, flags: u32, text: &str) -> bool {
        self.lock_name(addr, flags).contains(text)
            || format!("{} {addr:#x}", LockFlags(flags).type_name()).contains(text)
    }

    /// The lock's name for reports.
    pub fn lock_name(&self, addr: u64, flags: u32) -> String {
        let type_name = LockFlags(flags).type_name();
        if let Some((device, which)) = self.bufio_lock(addr) {
            return match which {
                ClientLock::Mutex => format!("dm-bufio {device} client mutex"),
                ClientLock::Spinlock => format!("dm-bufio {device} client spinlock (no-sleep)"),
                ClientLock::Tree(i) => {
                    let mode = if flags & LockFlags::WRITE != 0 {
                        "write"
                    } else if flags & LockFlags::READ != 0 {
                        "read"
                    } else {
                        "?"
                    };
                    // Only a no-sleep client's trees are rwlocks (spinning); the others' are
                    // rw_semaphores.
                    let (kind, no_sleep) = if flags & LockFlags::SPIN != 0 {
                        ("rwlock", ", no-sleep")
                    } else {
                        ("rwsem", "")
                    };
                    format!("dm-bufio {device} tree {i} ({kind} {mode}{no_sleep})")
                }
            };
        }
        match self.symbols.get(&addr) {
            Some(symbol) => symbol.name.clone(),
            None => format!("{type_name} {addr:#x}"),
        }
    }

    /// The stack's frames as names, innermost first; `None` for an unknown id.
    pub fn stack(&self, id: u32) -> Option<Vec<String>> {
        let frames = self.stacks.get(&id)?;
        Some(frames.iter().map(|&a| self.frame_name(a)).collect())
    }

    fn frame_name(&self, addr: u64) -> String {
        match self.symbols.get(&addr) {
            Some(s) => match &s.module {
                Some(m) => format!("{} [{m}]", s.name),
                None => s.name.clone(),
            },
            None => format!("{addr:#x}"),
        }
    }

    /// The caller of the lock, as perf's default mode names it: the first frame outside the
    /// lock and scheduler text after the frames inside it (the frames before those are the
    /// tracepoint and BPF machinery).
    pub fn caller(&self, id: u32) -> Option<String> {
        let frames = self.lock_frames(id)?;
        let in_lock = |a: &u64| self.symbols.get(a).is_some_and(|s| s.lock_text);
        let caller = frames.iter().find(|a| !in_lock(a))?;
        Some(self.frame_name(*caller))
    }

    /// What a lock owner was doing, from its stack: the first three frames past the scheduler
    /// and lock code it sleeps in, innermost first ("folio_wait_bit_common ← ... ← ..."). `None`
    /// for an unknown id.
    pub fn doing(&self, id: u32) -> Option<String> {
        let frames = self.stacks.get(&id)?;
        let in_lock = |a: &&u64| self.symbols.get(*a).is_some_and(|s| s.lock_text);
        let doing: Vec<String> = frames
            .iter()
            .skip_while(in_lock)
            .take(3)
            .map(|&a| self.frame_name(a))
            .collect();
        let interrupt_entry = |f: &String| {
            [
                "irqentry_",
                "asm_sysvec_",
                "sysvec_",
                "asm_common_interrupt",
                "common_interrupt",
            ]
            .iter()
            .any(|p| f.starts_with(p))
        };
        // A BPF JIT image has no unwind data: the kernel's unwinder stops at the helper a
        // program called. A holder preempted there (7.3, bpf_ringbuf_submit → irq_work_queue →
        // preempt_schedule) was running a BPF program, quite possibly bufscope's own.
        let bpf_helper = frames
            .last()
            .and_then(|a| self.symbols.get(a))
            .filter(|s| s.module.is_none() && is_bpf_machinery(&s.name))
            .map(|s| s.name.clone());
        Some(if doing.is_empty() {
            "(scheduler and lock code only)".to_string()
        } else if let Some(helper) = bpf_helper {
            format!("(inside a BPF program, in {helper}: its stack ends there)")
        } else if doing.iter().all(interrupt_entry) {
            // A holder preempted as an interrupt returned (PREEMPT_LAZY, PREEMPT_FULL): the
            // kernel's unwinder stops at the interrupt's frame for a task it does not run.
            "(preempted on an interrupt's return: its stack ends there)".to_string()
        } else {
            doing.join(" ← ")
        })
    }

    /// The stack as perf shows it: from the lock function on, without the tracepoint and BPF
    /// frames above it. `None` for an unknown id.
    pub fn lock_stack(&self, id: u32) -> Option<Vec<String>> {
        let frames = self.lock_frames(id)?;
        Some(frames.iter().map(|&a| self.frame_name(a)).collect())
    }

    fn lock_frames(&self, id: u32) -> Option<&[u64]> {
        let frames = self.stacks.get(&id)?;
        let in_lock = |a: &u64| self.symbols.get(a).is_some_and(|s| s.lock_text);
        let start = match frames.iter().position(in_lock) {
            Some(i) => i,
            // No lock text known (symbols missing): skip the tracing machinery by name.
            None => frames
                .iter()
                .position(|a| {
                    self.symbols
                        .get(a)
                        .is_some_and(|s| !is_bpf_machinery(&s.name))
                })
                .unwrap_or(frames.len()),
        };
        Some(&frames[start..])
    }
}

/// Whether a kernel function is part of the tracing and BPF machinery that runs a program
/// (helpers, trampolines, the tracepoint's iterator), by name.
fn is_bpf_machinery(name: &str) -> bool {
    ["bpf_", "__bpf_", "__traceiter_", "trace_contention"]
        .iter()
        .any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel symbol (no module) as a trace's metadata names it.
    fn sym(addr: u64, name: &str, lock_text: bool) -> Symbol {
        Symbol {
            addr,
            name: name.into(),
            module: None,
            lock_text,
        }
    }

    fn names() -> Names {
        let mut names = Names::default();
        names.add(&Metadata::Client {
            addr: 0x1000,
            device: "253:2".into(),
            block_size: 4096,
            locks: Some(ClientLocks {
                mutex: 0x1010,
                trees: 4,
                first_tree: 0x1180,
                tree_stride: 64,
                ..Default::default()
            }),
            seen_ns: 0,
            destroyed_ns: None,
        });
        names.add(&Metadata::Symbols {
            symbols: vec![
                sym(0xa0, "bpf_trace_run2+0x50", false),
                sym(0xa1, "__mutex_lock.constprop.0+0x2a0", true),
                sym(0xa2, "mutex_lock+0x30", true),
                sym(0xa3, "pipe_write+0x4c", false),
                sym(0xa4, "vfs_write+0x1f0", false),
                sym(0xffff_ffff_8300_0000, "rtnl_mutex", false),
            ],
        });
        names.add(&Metadata::Stack {
            id: 7,
            frames: vec![0xa0, 0xa1, 0xa2, 0xa3, 0xa4],
        });
        names
    }

    #[test]
    fn bufio_locks_are_named_by_device_and_tree() {
        let n = names();
        assert_eq!(n.lock_name(0x1010, 0x20), "dm-bufio 253:2 client mutex");
        assert_eq!(
            n.lock_name(0x1180 + 3 * 64, LockFlags::READ),
            "dm-bufio 253:2 tree 3 (rwsem read)"
        );
        assert_eq!(
            n.lock_name(0x1180, LockFlags::WRITE),
            "dm-bufio 253:2 tree 0 (rwsem write)"
        );
        assert_eq!(
            n.lock_name(0x1180 + 4 * 64, LockFlags::READ),
            "rwsem:R 0x1280"
        );
        assert_eq!(n.lock_name(0xffff_ffff_8300_0000, 0x20), "rtnl_mutex");
        assert_eq!(n.client_device(0x1000), Some("253:2"));
    }

    #[test]
    fn a_no_sleep_clients_locks_are_named_as_such() {
        let mut n = Names::default();
        n.add(&Metadata::Client {
            addr: 0x2000,
            device: "7:1".into(),
            block_size: 4096,
            locks: Some(ClientLocks {
                mutex: 0x2010,
                spinlock: 0x2030,
                no_sleep: true,
                trees: 4,
                first_tree: 0x2180,
                tree_stride: 64,
            }),
            seen_ns: 0,
            destroyed_ns: None,
        });
        assert_eq!(
            n.lock_name(0x2030, LockFlags::SPIN),
            "dm-bufio 7:1 client spinlock (no-sleep)"
        );
        assert_eq!(
            n.lock_name(0x2180 + 3 * 64, LockFlags::SPIN | LockFlags::WRITE),
            "dm-bufio 7:1 tree 3 (rwlock write, no-sleep)"
        );
        assert_eq!(
            n.lock_name(0x2180, LockFlags::SPIN | LockFlags::READ),
            "dm-bufio 7:1 tree 0 (rwlock read, no-sleep)"
        );
        assert_eq!(n.bufio_lock(0x2030), Some(("7:1", ClientLock::Spinlock)));
        // A client recorded without its spinlock (older files): the address stays unnamed.
        let old = names();
        assert_eq!(old.lock_name(0x1030, LockFlags::SPIN), "spinlock 0x1030");
    }

    #[test]
    fn the_caller_is_the_first_frame_past_the_lock_text() {
        let n = names();
        assert_eq!(n.caller(7).as_deref(), Some("pipe_write+0x4c"));
        assert_eq!(n.stack(7).unwrap().len(), 5);
        assert_eq!(
            n.lock_stack(7).unwrap(),
            [
                "__mutex_lock.constprop.0+0x2a0",
                "mutex_lock+0x30",
                "pipe_write+0x4c",
                "vfs_write+0x1f0"
            ]
        );
        assert_eq!(n.caller(8), None, "unknown stack");
    }

    #[test]
    fn an_owner_is_doing_what_its_stack_shows_past_the_scheduler() {
        let mut n = names();
        n.add(&Metadata::Symbols {
            symbols: vec![
                sym(0xb0, "__schedule+0x2f0", true),
                sym(0xb1, "io_schedule+0x42", false),
                sym(0xb2, "folio_wait_bit_common+0x130", false),
                sym(0xb3, "dm_bufio_read+0x30", false),
                sym(0xb4, "dm_thin_find_block+0x70", false),
                sym(0xc0, "irqentry_exit+0x3e", false),
                sym(0xc1, "asm_sysvec_apic_timer_interrupt+0x1a", false),
                sym(0xd0, "preempt_schedule_thunk+0x16", false),
                sym(0xd1, "irq_work_queue+0x4f", false),
                sym(0xd2, "bpf_ringbuf_submit+0x5c", false),
            ],
        });
        let stack = |n: &mut Names, id, frames: &[u64]| {
            n.add(&Metadata::Stack {
                id,
                frames: frames.to_vec(),
            })
        };
        stack(&mut n, 1, &[0xb0, 0xb1, 0xb2, 0xb3, 0xb4]);
        stack(&mut n, 2, &[0xb0, 0xc0, 0xc1]);
        // 7.3 thin-hotspot, a CI run of 2026-11-28: the root_lock's holder was preempted as
        // bufscope's probe woke the reader, and the unwinder stopped at the program.
        stack(&mut n, 3, &[0xb0, 0xd0, 0xd1, 0xd2]);
        stack(&mut n, 4, &[0xb0]);
        assert_eq!(
            n.doing(1).as_deref(),
            Some("io_schedule+0x42 ← folio_wait_bit_common+0x130 ← dm_bufio_read+0x30")
        );
        assert_eq!(
            n.doing(2).as_deref(),
            Some("(preempted on an interrupt's return: its stack ends there)")
        );
        assert_eq!(
            n.doing(3).as_deref(),
            Some("(inside a BPF program, in bpf_ringbuf_submit+0x5c: its stack ends there)")
        );
        assert_eq!(
            n.doing(4).as_deref(),
            Some("(scheduler and lock code only)")
        );
        assert_eq!(n.doing(5), None, "unknown stack");
    }

    #[test]
    fn a_threads_role_is_its_name_without_the_instance() {
        for (name, role) in [
            ("bufio_hot/3", "bufio_hot"),
            ("bufio_hot/15", "bufio_hot"),
            ("bufio_dirty", "bufio_dirty"),
            ("kworker/1:2H", "kworker"),
            ("kworker/u16:0-dm-thin", "kworker"),
            ("jbd2/sda1-8", "jbd2"),
            ("stress-7", "stress"),
            ("scsi_eh_0", "scsi_eh"),
            ("worker.12", "worker"),
            ("kswapd0", "kswapd0"),
            ("qemu-system-x86", "qemu-system-x86"),
            ("python3", "python3"),
            ("pipe-writer", "pipe-writer"),
            ("release-", "release-"),
            ("1234", "1234"),
            ("-7", "-7"),
            ("/3", "/3"),
        ] {
            assert_eq!(thread_role(Some(name)), role, "{name}");
        }
        assert_eq!(thread_role(None), "?");
    }

    #[test]
    fn threads_are_named_by_the_latest_record_that_names_them() {
        let thread = |tid, comm: &str| bufscope_trace::Thread {
            tid,
            tgid: 1,
            comm: comm.into(),
            cgroup: None,
        };
        let mut n = names();
        n.add(&Metadata::Threads {
            threads: vec![thread(10, "bufio_hot/0"), thread(11, "old")],
        });
        n.add(&Metadata::Threads {
            threads: vec![thread(11, "bufio_dirty")],
        });
        assert_eq!(n.thread_name(10), Some("bufio_hot/0"));
        assert_eq!(n.thread_name(11), Some("bufio_dirty"));
        assert_eq!(n.thread_name(12), None);
    }
}
