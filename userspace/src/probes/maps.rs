//! What the programs keep in maps, read from user space: run-time statistics per program,
//! the in-kernel counters and what was lost, kernel stacks, wait histograms, operation counts.

use std::{collections::BTreeMap, os::fd::AsFd};

use aya::Ebpf;
use bufscope_abi::{Counter, OpStats, OpStatsKey, WaitHist, WaitHistKey, names};
use bufscope_trace::ClientLocks;

use super::{ClientSighting, LockProbes, ProbeError, sys};

/// A program's run count and time while attached (BPF run-time statistics), and the runs the
/// kernel skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgramStats {
    /// The program's name; `program@function` for one loaded per function (fentry/fexit).
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Runs skipped because the program was already running on that CPU: each is an event
    /// lost with no other trace (fentry/fexit and tp_btf; kprobes from Linux 6.7).
    #[serde(default)]
    pub recursion_misses: u64,
}

impl ProgramStats {
    pub fn average_ns(&self) -> f64 {
        self.run_time_ns as f64 / self.run_count.max(1) as f64
    }
}

impl LockProbes {
    /// The lock addresses of a client, when the layout is known.
    pub fn client_locks(&self, client: &ClientSighting) -> Option<ClientLocks> {
        self.bufio
            .layout
            .as_ref()
            .map(|l| l.client_locks(client.addr, client.num_locks, client.no_sleep))
    }

    /// Run count and time of each program that ran (BPF run-time statistics); after
    /// [`detach`](Self::detach), as they were at detach.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let Some(ebpf) = &self.ebpf else {
            return self.final_stats.clone();
        };
        let loaded_by_aya = ebpf.programs().filter_map(|(name, program)| {
            let fd = program.fd().ok()?;
            let info = sys::prog_run_info(fd.as_fd()).ok()?;
            Some((name.to_string(), info))
        });
        let traced = self.tracing_links.iter().filter_map(|link| {
            let info = link.run_info().ok()?;
            Some((format!("{}@{}", link.program, link.function), info))
        });
        let mut stats: Vec<ProgramStats> = loaded_by_aya
            .chain(traced)
            .map(|(program, info)| ProgramStats {
                program,
                run_count: info.run_count,
                run_time_ns: info.run_time_ns,
                recursion_misses: info.recursion_misses,
            })
            .filter(|s| s.run_count > 0 || s.recursion_misses > 0)
            .collect();
        stats.sort_by(|a, b| a.program.cmp(&b.program));
        stats
    }

    /// The in-kernel counters, summed over CPUs, by name.
    pub fn counters(&self) -> Result<BTreeMap<String, u64>, ProbeError> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let values =
                    self.counters
                        .get(&(c as u32), 0)
                        .map_err(|source| ProbeError::Map {
                            name: names::COUNTERS_MAP,
                            source,
                        })?;
                Ok((c.name().to_string(), values.iter().sum()))
            })
            .collect()
    }

    /// Locks found so far to be a process's mmap_lock or siglock, by address.
    pub fn lock_classes(&self) -> Vec<(u64, bufscope_abi::LockClass)> {
        self.lock_classes.iter().filter_map(Result::ok).collect()
    }

    /// Locks found so far to live in a slab object, named after their cache as perf names them
    /// (`&dentry`): where the kernel has bpf_get_kmem_cache (Linux 6.13+).
    pub fn slab_lock_symbols(&self) -> Vec<bufscope_trace::Symbol> {
        self.slab_locks
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(addr, slab)| slab_symbol(addr, &slab))
            .collect()
    }

    /// What [`slab_lock_symbols`](Self::slab_lock_symbols) says of one lock, if anything.
    pub fn slab_lock_symbol(&self, addr: u64) -> Option<bufscope_trace::Symbol> {
        slab_symbol(addr, &self.slab_locks.get(&addr, 0).ok()?)
    }

    /// The memory zones' locks, by name ("zone lock (node 0 Normal)"), found at attach.
    pub fn zone_lock_symbols(&self) -> &[bufscope_trace::Symbol] {
        &self.zone_locks
    }

    /// What [`lock_classes`](Self::lock_classes) says of one lock, if anything.
    pub fn lock_class(&self, addr: u64) -> Option<bufscope_abi::LockClass> {
        self.lock_classes.get(&addr, 0).ok()
    }

    /// The kernel stack with this id, innermost frame first: a waiter's from the stack map, or
    /// a lock owner's (ids with [`OwnerStack::KEY_BIT`](bufscope_abi::OwnerStack::KEY_BIT)).
    pub fn stack(&self, id: u32) -> Option<Vec<u64>> {
        if id & bufscope_abi::OwnerStack::KEY_BIT != 0 {
            let stack = self.owner_stacks.get(&id, 0).ok()?;
            let len = (stack.len as usize).min(stack.frames.len());
            return Some(stack.frames[..len].to_vec());
        }
        let trace = self.stacks.as_ref()?.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }

    /// The live wait histograms, summed over CPUs.
    pub fn wait_histograms(&self) -> Vec<(WaitHistKey, WaitHist)> {
        let Some(map) = &self.wait_hist else {
            return Vec::new();
        };
        map.iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| {
                let mut sum = WaitHist::ZERO;
                for h in per_cpu.iter() {
                    sum.count += h.count;
                    sum.total_ns += h.total_ns;
                    sum.max_ns = sum.max_ns.max(h.max_ns);
                    for (s, b) in sum.buckets.iter_mut().zip(h.buckets.iter()) {
                        *s += b;
                    }
                }
                (key, sum)
            })
            .collect()
    }

    /// The live operation counts, summed over CPUs.
    pub fn op_stats(&self) -> Vec<(OpStatsKey, OpStats)> {
        let Some(map) = &self.op_stats else {
            return Vec::new();
        };
        map.iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| {
                let mut sum = OpStats::default();
                for s in per_cpu.iter() {
                    sum.count += s.count;
                    sum.hits += s.hits;
                    sum.misses += s.misses;
                    sum.errors += s.errors;
                    sum.total_ns += s.total_ns;
                    sum.lock_wait_ns += s.lock_wait_ns;
                }
                (key, sum)
            })
            .collect()
    }
}

pub(super) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// Program runs the kernel skipped (recursion misses), from [`LockProbes::program_stats`]:
/// each is an event lost that no counter of bufscope's own saw.
pub fn skipped_runs(programs: &[ProgramStats]) -> u64 {
    programs.iter().map(|p| p.recursion_misses).sum()
}

/// Events lost in the kernel so far, from [`LockProbes::counters`]: the sum of
/// [`Counter::LOSSES`].
pub fn lost_events(counters: &BTreeMap<String, u64>) -> u64 {
    Counter::LOSSES
        .iter()
        .map(|c| counters.get(c.name()).copied().unwrap_or(0))
        .sum()
}

/// Events lost to a reader of the event stream (the full-screen view): [`lost_events`] without
/// the waits the full in-kernel histogram map turned away (`hist_full`), which still reached
/// the stream, and which the view counts from it.
pub fn lost_streamed_events(counters: &BTreeMap<String, u64>) -> u64 {
    let turned_away = counters.get(Counter::HistFull.name()).copied();
    lost_events(counters).saturating_sub(turned_away.unwrap_or(0))
}

/// A slab cache's name for a lock in one of its objects, as perf writes it: `&dentry`.
fn slab_symbol(addr: u64, slab: &bufscope_abi::SlabName) -> Option<bufscope_trace::Symbol> {
    Some(bufscope_trace::Symbol {
        addr,
        name: format!("&{}", slab.name()?),
        module: None,
        lock_text: false,
    })
}
