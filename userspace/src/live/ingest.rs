//! The kernel's event stream into the live view's [`Model`]: lock waits, dm-bufio operations
//! and clients as they arrive, and, each interval, names for what they refer to.

use std::collections::HashSet;

use bufscope_trace::Metadata;

use super::model::Model;
use crate::{
    kernel::{lock_classes, symbols::KernelSymbols, system::NewThreads},
    probes::{ClientHow, Event, LockProbes},
};

/// The kernel's events into the model (clients named with their lock addresses, threads that
/// run dm-bufio operations, wait on or hold contended locks with their names and cgroups, read
/// the first time each shows up).
pub fn ingest(model: &mut Model, probes: &LockProbes, threads: &mut NewThreads, batch: &[Event]) {
    for event in batch {
        match event {
            Event::LockWait(w) => {
                // Waiters and owners are named (with their cgroups) as they first show up: a
                // thread may be gone by the end.
                let owner = w.owner.thread().map(|o| (o.tid, o.tgid));
                for (tid, tgid) in std::iter::once((w.tid, w.tgid)).chain(owner) {
                    if let Some(thread) = threads.learn(tid, tgid) {
                        model.add_metadata(&Metadata::Threads {
                            threads: vec![thread],
                        });
                    }
                }
                model.add_wait(w);
            }
            Event::Op(o) => {
                if let Some(thread) = threads.learn(o.tid, o.tgid) {
                    model.add_metadata(&Metadata::Threads {
                        threads: vec![thread],
                    });
                }
                model.add_op(o);
            }
            // A destroyed client's name stays until a new client takes its address.
            Event::Client(c) if c.how != ClientHow::Destroyed => {
                model.add_metadata(&Metadata::Client {
                    addr: c.addr,
                    device: c.device.clone(),
                    block_size: c.block_size,
                    locks: probes.client_locks(c),
                    seen_ns: c.at_ns,
                    destroyed_ns: None,
                });
            }
            Event::Client(_) => {}
        }
    }
}

/// Names for the stacks and static locks the live kernel's events refer to, looked up once each
/// as they first appear (the event stream carries stack ids and lock addresses only).
#[derive(Debug)]
pub struct KernelNames {
    symbols: KernelSymbols,
    symbolized: HashSet<u64>,
    statics: HashSet<u64>,
    /// Locks already named as a process's mmap_lock or siglock (or a runqueue, a dm-thin pool's).
    classified: HashSet<u64>,
    /// Locks already named after their slab cache.
    slab_named: HashSet<u64>,
    /// Whether the zone locks have been named (all at once, on the first update).
    zones_named: bool,
}

impl KernelNames {
    pub fn new() -> Self {
        Self {
            symbols: KernelSymbols::new(),
            symbolized: HashSet::new(),
            statics: HashSet::new(),
            classified: HashSet::new(),
            slab_named: HashSet::new(),
            zones_named: false,
        }
    }

    /// Reads the stacks the model has not seen yet and names their frames, the model's static
    /// locks and every lock the probes classified (process locks, runqueues, dm-thin pools,
    /// slab objects, zones). The locks of `also` are named too where static: the in-kernel
    /// histograms' locks, for a view without a stream of waits (`live --no-tui`).
    pub fn update(
        &mut self,
        model: &mut Model,
        probes: &LockProbes,
        also: impl IntoIterator<Item = u64>,
    ) {
        let mut new_addrs = Vec::new();
        for id in model.unnamed_stacks() {
            if let Some(frames) = probes.stack(id) {
                new_addrs.extend(frames.iter().filter(|a| self.symbolized.insert(**a)));
                model.add_metadata(&Metadata::Stack { id, frames });
            }
        }
        if !new_addrs.is_empty() {
            let (symbols, _) = self.symbols.symbolize(&new_addrs);
            model.add_metadata(&Metadata::Symbols { symbols });
        }
        let statics: Vec<u64> = model
            .locks
            .keys()
            .map(|k| k.addr)
            .chain(also)
            .filter(|a| *a >= 0xffff_ffff_8000_0000 && self.statics.insert(*a))
            .collect();
        if !statics.is_empty() {
            model.add_metadata(&Metadata::Symbols {
                symbols: self.symbols.static_lock_names(&statics),
            });
        }
        let classified: Vec<_> = probes
            .lock_classes()
            .into_iter()
            .filter(|(addr, _)| self.classified.insert(*addr))
            .collect();
        if !classified.is_empty() {
            model.add_metadata(&Metadata::Symbols {
                symbols: lock_classes::class_symbols(&classified),
            });
        }
        // A slab cache names only what nothing more specific names; a class found later for the
        // same lock (a dm-thin root_lock) is added after, and so replaces it.
        let slab: Vec<_> = probes
            .slab_lock_symbols()
            .into_iter()
            .filter(|s| !self.classified.contains(&s.addr) && self.slab_named.insert(s.addr))
            .collect();
        if !slab.is_empty() {
            model.add_metadata(&Metadata::Symbols { symbols: slab });
        }
        if !self.zones_named {
            self.zones_named = true;
            model.add_metadata(&Metadata::Symbols {
                symbols: probes.zone_lock_symbols().to_vec(),
            });
        }
    }
}

impl Default for KernelNames {
    fn default() -> Self {
        Self::new()
    }
}
