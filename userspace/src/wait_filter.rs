//! Which lock waits `record` and `live` keep beyond what the probes filter in the kernel: by
//! thread, thread name, length, lock name and kernel stack, judged in user space as each wait
//! arrives, with the names that needs learned then ([`WaitSelector`]).

use std::collections::{HashMap, HashSet};

use bufscope_analyses::naming::Names;
use bufscope_trace::{LockWait, Metadata};

use crate::{
    kernel::{lock_classes, symbols::KernelSymbols, system},
    probes::{Event, LockProbes},
};

/// Lock waits a session keeps beyond the kernel's filters. Empty fields keep everything;
/// operations and clients are always kept (the models need them all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitFilter {
    pub tids: Vec<u32>,
    /// Thread names containing this text (read once per thread, at its first wait).
    pub comm: Option<String>,
    pub min_wait_ns: u64,
    /// Lock names or addresses (`0x…`) containing this text.
    pub lock: Option<String>,
    /// Kernel stacks with a frame containing this text.
    pub stack: Option<String>,
}

impl WaitFilter {
    pub fn is_empty(&self) -> bool {
        let Self {
            tids,
            comm,
            min_wait_ns,
            lock,
            stack,
        } = self;
        tids.is_empty() && comm.is_none() && *min_wait_ns == 0 && lock.is_none() && stack.is_none()
    }
}

/// Addresses from here up are the kernel image's and modules': static locks, named by their
/// kallsyms data symbol.
const KERNEL_IMAGE: u64 = 0xffff_ffff_8000_0000;

/// A [`WaitFilter`] applied to one session's event stream. Names locks and stacks the way
/// trace files and `report` name them, from what is known as each wait arrives: a dm-bufio lock
/// once its client has been seen in the stream (created, or in its first operation since
/// bufscope started), a static lock by kallsyms at its first wait, a process's mmap_lock or
/// siglock and a runqueue as the probes classified it at that wait's begin, a dm-thin pool's
/// root_lock once the probes have seen the pool's metadata functions (read again each
/// [`WaitSelector::refresh`]); a stack is read and symbolized at the first wait that uses it.
/// Each verdict is kept per thread, lock and stack, and judged again when a name changes.
pub struct WaitSelector {
    filter: WaitFilter,
    /// Whether each thread seen passes `filter.comm`.
    comm_kept: HashMap<u32, bool>,
    /// Clients, lock symbols, stacks and their frames' symbols, as learned.
    names: Names,
    /// Whether each lock (address and flags) passes `filter.lock`; cleared when names change.
    lock_kept: HashMap<(u64, u32), bool>,
    /// Static locks whose kallsyms name was looked up.
    statics_looked_up: HashSet<u64>,
    /// Locks named from the probes' classification.
    classified: HashSet<u64>,
    /// Whether each stack passes `filter.stack`.
    stack_kept: HashMap<u32, bool>,
    /// Made at the first lock or stack that needs it (reading kallsyms takes a while).
    symbols: Option<KernelSymbols>,
    left_out: u64,
}

impl std::fmt::Debug for WaitSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitSelector")
            .field("filter", &self.filter)
            .field("left_out", &self.left_out)
            .finish_non_exhaustive()
    }
}

impl WaitSelector {
    pub fn new(filter: WaitFilter) -> Self {
        Self {
            filter,
            comm_kept: HashMap::new(),
            names: Names::default(),
            lock_kept: HashMap::new(),
            statics_looked_up: HashSet::new(),
            classified: HashSet::new(),
            stack_kept: HashMap::new(),
            symbols: None,
            left_out: 0,
        }
    }

    /// Whether it keeps every event.
    pub fn keeps_all(&self) -> bool {
        self.filter.is_empty()
    }

    /// Lock waits left out so far.
    pub fn left_out(&self) -> u64 {
        self.left_out
    }

    /// Whether to keep `event`: every operation and client (a client names its locks from
    /// here on), and the lock waits the filter wants; counts those it leaves out.
    pub fn keeps(&mut self, probes: &LockProbes, event: &Event) -> bool {
        match event {
            Event::LockWait(w) => {
                let kept = self.keeps_wait(probes, w);
                if !kept {
                    self.left_out += 1;
                }
                kept
            }
            Event::Client(c) => {
                if self.filter.lock.is_some() {
                    self.names.add(&Metadata::Client {
                        addr: c.addr,
                        device: c.device.clone(),
                        block_size: c.block_size,
                        locks: probes.client_locks(c),
                        seen_ns: c.at_ns,
                        destroyed_ns: None,
                    });
                    self.lock_kept.clear();
                }
                true
            }
            Event::Op(_) => true,
        }
    }

    /// Takes the probes' lock classes found since the last call (a dm-thin pool's root_lock is
    /// classified only when its metadata functions run): call it every second or so.
    pub fn refresh(&mut self, probes: &LockProbes) {
        if self.filter.lock.is_none() {
            return;
        }
        let new: Vec<_> = probes
            .lock_classes()
            .into_iter()
            .filter(|(addr, _)| !self.classified.contains(addr))
            .collect();
        if !new.is_empty() {
            self.classified.extend(new.iter().map(|(addr, _)| *addr));
            self.names.add(&Metadata::Symbols {
                symbols: lock_classes::class_symbols(&new),
            });
            self.lock_kept.clear();
        }
    }

    fn keeps_wait(&mut self, probes: &LockProbes, w: &LockWait) -> bool {
        let f = &self.filter;
        if w.wait_ns < f.min_wait_ns || (!f.tids.is_empty() && !f.tids.contains(&w.tid)) {
            return false;
        }
        if let Some(text) = &f.comm {
            let kept = *self.comm_kept.entry(w.tid).or_insert_with(|| {
                system::thread_comm(w.tgid, w.tid).is_some_and(|name| name.contains(text.as_str()))
            });
            if !kept {
                return false;
            }
        }
        if self.filter.lock.is_some() && !self.lock_matches(probes, w.lock_addr, w.flags) {
            return false;
        }
        self.filter.stack.is_none() || self.stack_matches(probes, w.stack_id)
    }

    fn symbols(&mut self) -> &KernelSymbols {
        self.symbols.get_or_insert_with(KernelSymbols::new)
    }

    fn lock_matches(&mut self, probes: &LockProbes, addr: u64, flags: u32) -> bool {
        if let Some(&kept) = self.lock_kept.get(&(addr, flags)) {
            return kept;
        }
        if self.names.bufio_lock(addr).is_none() {
            self.learn_lock_name(probes, addr);
        }
        let text = self.filter.lock.as_deref().unwrap_or_default();
        let kept = self.names.lock_matches(addr, flags, text);
        self.lock_kept.insert((addr, flags), kept);
        kept
    }

    /// Names a lock that is no dm-bufio client's: by kallsyms if static, else by the probes'
    /// classification (written at the wait's begin, so there by the time its event is read).
    fn learn_lock_name(&mut self, probes: &LockProbes, addr: u64) {
        if let Some(zone) = probes.zone_lock_symbols().iter().find(|s| s.addr == addr) {
            if self.classified.insert(addr) {
                self.names.add(&Metadata::Symbols {
                    symbols: vec![zone.clone()],
                });
            }
        } else if addr >= KERNEL_IMAGE {
            if self.statics_looked_up.insert(addr) {
                let symbols = self.symbols().static_lock_names(&[addr]);
                self.names.add(&Metadata::Symbols { symbols });
            }
        } else if !self.classified.contains(&addr) {
            // A class names it over its slab cache, as in the file (record.rs).
            let symbols = match probes.lock_class(addr) {
                Some(class) => {
                    self.classified.insert(addr);
                    lock_classes::class_symbols(&[(addr, class)])
                }
                None => probes.slab_lock_symbol(addr).into_iter().collect(),
            };
            self.names.add(&Metadata::Symbols { symbols });
        }
    }

    fn stack_matches(&mut self, probes: &LockProbes, id: Option<u32>) -> bool {
        let Some(id) = id else {
            return false;
        };
        if let Some(&kept) = self.stack_kept.get(&id) {
            return kept;
        }
        // Not kept when unreadable: a later wait on the same stack tries again.
        let Some(frames) = probes.stack(id) else {
            return false;
        };
        let (symbols, _) = self.symbols().symbolize(&frames);
        self.names.add(&Metadata::Symbols { symbols });
        self.names.add(&Metadata::Stack { id, frames });
        let text = self.filter.stack.as_deref().unwrap_or_default();
        let kept = self
            .names
            .stack(id)
            .is_some_and(|frames| frames.iter().any(|f| f.contains(text)));
        self.stack_kept.insert(id, kept);
        kept
    }
}
