//! `live --no-tui`: a table per interval from the in-kernel histograms and counters only (no
//! per-event streaming, so it is cheap enough to leave running on a busy machine), unless
//! `--metrics` asks for the per-event figures too. The caller prints each [`IntervalTable`].

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    process::ExitStatus,
    time::{Duration, Instant},
};

use bufscope_abi::{
    HIST_BUCKETS, LockFlags, OpStats, OpStatsKey, ProbeConfig, WaitHist, WaitHistKey,
};
use bufscope_analyses::naming::Names;
use bufscope_trace::OpKind;
use tokio::signal::unix::SignalKind;

use super::{
    ingest::{KernelNames, ingest},
    model::{BufioStatus, CompareSource, Header, LockSort, Model, Source},
    serve::serve_metrics,
    session::{SessionError, handler},
};
use crate::{
    kernel::system,
    probes::{
        AttachMode, AttachOptions, BufioProbes, DEFAULT_RINGBUF_BYTES, LockProbes, ProcessFilter,
        lost_events, skipped_runs,
    },
    stop::sleep_until,
    watched::{Watched, command_exit},
};

/// How `live --no-tui` runs.
#[derive(Debug)]
pub struct HeadlessSettings {
    pub attach: AttachMode,
    pub bufio_probes: BufioProbes,
    pub interval: Duration,
    pub duration: Option<Duration>,
    /// Locks listed per interval.
    pub top: usize,
    pub metrics: Option<SocketAddr>,
    /// Whose lock waits the probes keep.
    pub processes: ProcessFilter,
    /// Which lock types' waits the probes keep (`ProbeConfig::lock_types`).
    pub lock_types: u32,
}

/// One interval's figures, differences of the in-kernel totals.
#[derive(Debug)]
pub struct IntervalTable {
    pub waits_per_sec: f64,
    pub lost: u64,
    /// The probes' run time over the interval, as a share of one CPU.
    pub overhead: f64,
    /// The locks with the most total wait in the interval, per operation they were waited in.
    pub locks: Vec<LockRow>,
    /// dm-bufio operations per client and kind.
    pub ops: Vec<OpRow>,
}

#[derive(Debug)]
pub struct LockRow {
    pub waits_per_sec: f64,
    pub total_ns: u64,
    pub average_ns: u64,
    /// Upper bounds of the log2 buckets holding the median and the 99th percentile.
    pub p50_below_ns: u64,
    pub p99_below_ns: u64,
    /// The dm-bufio function the waits were inside, `-` for none.
    pub inside: &'static str,
    /// The lock type: mutex, rwsem:R, spinlock, ...
    pub type_name: &'static str,
    pub lock: String,
}

#[derive(Debug)]
pub struct OpRow {
    pub ops_per_sec: f64,
    pub function: &'static str,
    pub device: String,
    /// Hits over hits and misses, when the operation looks blocks up.
    pub hit_ratio: Option<f64>,
}

/// Totals at one instant, for differences between intervals.
#[derive(Default)]
struct Snapshot {
    waits: HashMap<WaitHistKey, WaitHist>,
    ops: HashMap<OpStatsKey, OpStats>,
    counters: BTreeMap<String, u64>,
    run_time_ns: u64,
    /// Program runs the kernel skipped (recursion misses): events lost.
    skipped: u64,
}

impl Snapshot {
    fn take(probes: &LockProbes) -> Result<Self, SessionError> {
        let programs = probes.program_stats();
        Ok(Self {
            waits: probes.wait_histograms().into_iter().collect(),
            ops: probes.op_stats().into_iter().collect(),
            counters: probes.counters()?,
            run_time_ns: programs.iter().map(|p| p.run_time_ns).sum(),
            skipped: skipped_runs(&programs),
        })
    }
}

/// The probes attached for `live --no-tui`: stacks never, events (and owners) streamed only for
/// `--metrics`.
pub fn attach(settings: &HeadlessSettings) -> Result<LockProbes, SessionError> {
    let streaming = settings.metrics.is_some();
    Ok(LockProbes::attach(AttachOptions {
        mode: settings.attach,
        ringbuf_bytes: if streaming {
            DEFAULT_RINGBUF_BYTES
        } else {
            1 << 16
        },
        config: ProbeConfig {
            stream_events: u32::from(streaming),
            stacks: ProbeConfig::NO_STACKS,
            // Only streamed events carry owners.
            owners: u32::from(streaming),
            lock_types: settings.lock_types,
            // The tables come from the histograms alone.
            histograms: 1,
            ..ProbeConfig::DEFAULT
        },
        bufio: true,
        bufio_probes: settings.bufio_probes,
        processes: settings.processes.clone(),
    })?)
}

/// Runs until the duration passes, SIGINT, SIGTERM or the `watched` command ends, handing each
/// interval's table to `on_interval`; the command's end hands over the interval cut short by
/// it too, and its status is returned.
pub async fn run_headless(
    mut probes: LockProbes,
    settings: &HeadlessSettings,
    mut watched: Option<Watched>,
    mut on_interval: impl FnMut(&IntervalTable) -> std::io::Result<()>,
) -> Result<Option<ExitStatus>, SessionError> {
    // With --metrics, events stream into a model for the per-lock figures; without, the
    // in-kernel histograms are all this needs.
    let published = settings.metrics.map(serve_metrics).transpose()?;
    let mut model = Model::new(
        Header::new(
            system::kernel_release(),
            Source::Live {
                attach: probes.mode().to_string(),
            },
            BufioStatus::Unavailable(String::new()),
        ),
        CompareSource::Tables,
        &[],
    );
    let mut stream = probes.event_stream().map_err(SessionError::OpenStream)?;
    let mut interrupt = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = handler(SignalKind::terminate(), "SIGTERM")?;
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let period = settings.interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut batch = Vec::new();
    let mut threads = system::NewThreads::default();
    // Names for the tables' locks, as the full view and files give them.
    let mut naming = KernelNames::new();
    let mut previous = Snapshot::take(&probes)?;
    let mut last = Instant::now();
    let ended = loop {
        // Signals and ticks first: a flood of events must not delay them.
        tokio::select! {
            biased;
            _ = tick.tick() => {
                let now = Snapshot::take(&probes)?;
                let elapsed = last.elapsed();
                last = Instant::now();
                naming.update(&mut model, &probes, now.waits.keys().map(|k| k.lock_addr));
                let table = interval_table(&previous, &now, elapsed, &model.names, settings.top);
                on_interval(&table).map_err(SessionError::Output)?;
                if let Some(metrics) = &published {
                    model.header.lost = lost_events(&now.counters) + now.skipped;
                    model.header.overhead = Some(table.overhead);
                    model.tick(elapsed.as_secs_f64(), LockSort::Total, "");
                    metrics.publish(&model);
                }
                previous = now;
                probes.refresh_processes()?;
                probes.flush_kernel_notes();
                if let Some(w) = &watched {
                    w.follow(&mut probes)?;
                }
            }
            _ = sleep_until(deadline) => break None,
            _ = interrupt.recv() => break None,
            _ = terminate.recv() => break None,
            status = command_exit(watched.as_mut()) => {
                let status = status?;
                // The command's last stretch: what it waited on since the last table.
                let now = Snapshot::take(&probes)?;
                naming.update(&mut model, &probes, now.waits.keys().map(|k| k.lock_addr));
                let table = interval_table(&previous, &now, last.elapsed(), &model.names, settings.top);
                on_interval(&table).map_err(SessionError::Output)?;
                break Some(status);
            }
            ready = stream.next_batch(&mut batch) => {
                ready.map_err(SessionError::ReadStream)?;
                // Clients (always streamed) name the locks; waits and operations only with
                // --metrics.
                ingest(&mut model, &probes, &mut threads, &batch);
                batch.clear();
            }
        }
    };
    probes.detach();
    Ok(ended)
}

/// The upper bound of the log2 bucket holding quantile `q` (0..1).
fn quantile_ns(buckets: &[u64; HIST_BUCKETS], q: f64) -> u64 {
    let total: u64 = buckets.iter().sum();
    let target = (total as f64 * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= target {
            return 1u64 << (i + 1);
        }
    }
    0
}

fn interval_table(
    before: &Snapshot,
    now: &Snapshot,
    elapsed: Duration,
    names: &Names,
    top: usize,
) -> IntervalTable {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let mut rows: Vec<(WaitHistKey, WaitHist)> = now
        .waits
        .iter()
        .map(|(key, h)| {
            let mut d = *h;
            if let Some(b) = before.waits.get(key) {
                d.count -= b.count.min(d.count);
                d.total_ns -= b.total_ns.min(d.total_ns);
                for (x, y) in d.buckets.iter_mut().zip(b.buckets.iter()) {
                    *x -= (*y).min(*x);
                }
            }
            (*key, d)
        })
        .filter(|(_, d)| d.count > 0)
        .collect();
    rows.sort_by_key(|(_, d)| std::cmp::Reverse(d.total_ns));
    let waits: u64 = rows.iter().map(|(_, d)| d.count).sum();
    let lost = (lost_events(&now.counters) + now.skipped)
        .saturating_sub(lost_events(&before.counters) + before.skipped);
    let overhead =
        (now.run_time_ns - before.run_time_ns.min(now.run_time_ns)) as f64 / (secs * 1e9);
    let locks = rows
        .iter()
        .take(top)
        .map(|(key, d)| LockRow {
            waits_per_sec: d.count as f64 / secs,
            total_ns: d.total_ns,
            average_ns: d.total_ns / d.count.max(1),
            p50_below_ns: quantile_ns(&d.buckets, 0.5),
            p99_below_ns: quantile_ns(&d.buckets, 0.99),
            inside: OpKind::from_u8(key.op as u8).map_or("-", |k| k.function()),
            type_name: LockFlags(key.flags).type_name(),
            lock: names.lock_name(key.lock_addr, key.flags),
        })
        .collect();
    let mut ops: Vec<(&OpStatsKey, u64, u64, u64)> = now
        .ops
        .iter()
        .map(|(key, s)| {
            let b = before.ops.get(key).copied().unwrap_or_default();
            (
                key,
                s.count - b.count.min(s.count),
                s.hits - b.hits.min(s.hits),
                s.misses - b.misses.min(s.misses),
            )
        })
        .filter(|(_, n, _, _)| *n > 0)
        .collect();
    ops.sort_by_key(|(key, ..)| (key.client, key.op));
    let ops = ops
        .into_iter()
        .map(|(key, n, hits, misses)| OpRow {
            ops_per_sec: n as f64 / secs,
            function: OpKind::from_u8(key.op as u8).map_or("?", |k| k.function()),
            device: names.client_device(key.client).unwrap_or("?").to_string(),
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        })
        .collect();
    IntervalTable {
        waits_per_sec: waits as f64 / secs,
        lost,
        overhead,
        locks,
        ops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut buckets = [0u64; HIST_BUCKETS];
        buckets[10] = 90; // [1024, 2048)
        buckets[20] = 10; // [1 Mi, 2 Mi)
        assert_eq!(quantile_ns(&buckets, 0.5), 2048);
        assert_eq!(quantile_ns(&buckets, 0.9), 2048);
        assert_eq!(quantile_ns(&buckets, 0.99), 2 << 20);
        assert_eq!(quantile_ns(&[0; HIST_BUCKETS], 0.5), 0);
    }
}
