//! `bufscope live`: the full-screen view of kernel lock waits, dm-bufio clients and the
//! reference designs fed the same operations (run by [`super::tui`]); with `--no-tui`, a table
//! per interval on stdout from the in-kernel histograms and counters only (no per-event
//! streaming, so it is cheap enough to leave running on a busy machine), unless `--metrics`
//! asks for the per-event figures too.

use std::{
    collections::{BTreeMap, HashMap},
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bufscope::{
    live::{
        metrics,
        model::{BufioStatus, CompareSource, Header, LockSort, Model, Source},
    },
    naming::Names,
    probe::{AttachMode, AttachOptions, LockProbes},
    system,
};
use bufscope_abi::{HIST_BUCKETS, OpStats, OpStatsKey, ProbeConfig, WaitHist, WaitHistKey};
use bufscope_trace::OpKind;
use tokio::signal::unix::{SignalKind, signal};

use super::{
    duration_ns,
    replay::{ModelArgs, chosen_designs, parse_design},
    sleep_until, thousands,
    tui::{self, LiveSettings, parse_metrics_addr},
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Refresh rates, the designs' windows and `--no-tui` tables every this many milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub interval: u64,
    /// Print interval tables on stdout instead of the full-screen view (for logs and pipes).
    #[arg(long)]
    pub no_tui: bool,
    /// Stop after this long, e.g. 10s (default: until q, Ctrl-C or SIGTERM).
    #[arg(short, long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Locks listed per `--no-tui` interval.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// How to attach to the lock tracepoints.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
    /// Record to this trace file while showing (`r` stops and starts recording).
    #[arg(long, value_name = "FILE", conflicts_with = "no_tui")]
    pub record: Option<PathBuf>,
    /// Overwrite the --record file if it exists.
    #[arg(long, requires = "record")]
    pub force: bool,
    /// Reference designs fed the same dm-bufio operations (repeat, or `all`; `d` changes them).
    #[arg(long = "design", value_name = "DESIGN", default_value = "all", value_parser = parse_design)]
    pub designs: Vec<String>,
    /// Serve the live figures in the OpenMetrics text format on ADDR/metrics: a port (bound to
    /// loopback), or HOST:PORT (0.0.0.0:PORT for every interface).
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
    /// Take no kernel stacks (no callers or stacks then; they cost a stack walk per wait).
    #[arg(long)]
    pub no_stacks: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(options: &Options) -> anyhow::Result<ExitCode> {
    if !system::is_root() {
        bail!("live loads eBPF programs and needs root: run it with sudo -E");
    }
    if !options.no_tui && !std::io::stdout().is_terminal() {
        bail!(
            "stdout is not a terminal: the full-screen view needs one (use --no-tui for \
             interval tables on stdout)"
        );
    }
    if let Some(path) = &options.record
        && path.exists()
        && !options.force
    {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if options.no_tui {
        return runtime.block_on(live(options));
    }
    let probes = LockProbes::attach(AttachOptions {
        mode: options.attach,
        ringbuf_bytes: bufscope::probe::DEFAULT_RINGBUF_BYTES,
        config: ProbeConfig {
            stream_events: 1,
            stacks: u32::from(!options.no_stacks),
        },
        bufio: true,
    })?;
    let settings = LiveSettings {
        interval: Duration::from_millis(options.interval),
        duration: options.duration,
        designs: chosen_designs(&options.designs)
            .into_iter()
            .map(String::from)
            .collect(),
        record: options.record.clone(),
        metrics: options.metrics,
        shadow: options.model.options(None, Some(1.0), true),
    };
    runtime.block_on(tui::live(probes, settings))?;
    Ok(ExitCode::SUCCESS)
}

/// Totals at one instant, for differences between intervals.
#[derive(Default)]
struct Snapshot {
    waits: HashMap<WaitHistKey, WaitHist>,
    ops: HashMap<OpStatsKey, OpStats>,
    counters: BTreeMap<String, u64>,
    run_time_ns: u64,
}

impl Snapshot {
    fn take(probes: &LockProbes) -> anyhow::Result<Self> {
        Ok(Self {
            waits: probes.wait_histograms().into_iter().collect(),
            ops: probes.op_stats().into_iter().collect(),
            counters: probes.counters()?,
            run_time_ns: probes.program_stats().iter().map(|p| p.run_time_ns).sum(),
        })
    }
}

async fn live(options: &Options) -> anyhow::Result<ExitCode> {
    // With --metrics, events stream into a model for the per-lock figures; without, the
    // in-kernel histograms are all this needs.
    let streaming = options.metrics.is_some();
    let mut probes = LockProbes::attach(AttachOptions {
        mode: options.attach,
        ringbuf_bytes: if streaming {
            bufscope::probe::DEFAULT_RINGBUF_BYTES
        } else {
            1 << 16
        },
        config: ProbeConfig {
            stream_events: u32::from(streaming),
            stacks: 0,
        },
        bufio: true,
    })?;
    let metrics_text = options.metrics.map(tui::serve_metrics).transpose()?;
    let mut model = Model::new(
        Header {
            kernel: system::kernel_release(),
            source: Source::Live {
                attach: probes.mode().to_string(),
            },
            bufio: BufioStatus::Unavailable(String::new()),
            events_per_sec: 0.0,
            lost: 0,
            overhead: None,
            recording: None,
            status: None,
        },
        CompareSource::Tables,
        &[],
    );
    let mut stream = probes
        .event_stream()
        .context("opening the event ring buffer")?;
    let bufio = probes.bufio();
    eprintln!(
        "bufscope live: {} on Linux {}; dm-bufio: {}; in-kernel histograms only, every {} ms",
        probes.mode(),
        system::kernel_release(),
        match &bufio.unavailable {
            Some(why) => why.clone(),
            None => format!(
                "{} of {} probe points attached",
                bufio.attached().count(),
                bufio.points.len()
            ),
        },
        options.interval
    );
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let period = Duration::from_millis(options.interval);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut batch = Vec::new();
    let mut previous = Snapshot::take(&probes)?;
    let mut last = Instant::now();
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            ready = stream.next_batch(&mut batch) => {
                ready.context("reading the event ring buffer")?;
                // Clients (always streamed) name the locks; waits and operations only with
                // --metrics.
                tui::ingest(&mut model, &probes, &batch);
                batch.clear();
            }
            _ = tick.tick() => {
                let now = Snapshot::take(&probes)?;
                let elapsed = last.elapsed();
                last = Instant::now();
                print_interval(&mut out, &previous, &now, elapsed, &model.names, options.top)
                    .context("writing to stdout")?;
                if let Some(text) = &metrics_text {
                    model.header.lost = lost_events(&now.counters);
                    model.tick(elapsed.as_secs_f64(), LockSort::Total, "");
                    if let Ok(mut t) = text.lock() {
                        *t = metrics::render(&model);
                    }
                }
                previous = now;
            }
            _ = sleep_until(deadline) => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    probes.detach();
    Ok(ExitCode::SUCCESS)
}

/// Events lost in the kernel so far, from its counters.
pub fn lost_events(counters: &BTreeMap<String, u64>) -> u64 {
    LOSS_COUNTERS
        .iter()
        .map(|c| counters.get(*c).copied().unwrap_or(0))
        .sum()
}

/// The in-kernel counters of events lost.
const LOSS_COUNTERS: [&str; 4] = [
    "ringbuf_full",
    "hist_full",
    "pending_full",
    "op_return_missed",
];

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

fn print_interval(
    out: &mut impl Write,
    before: &Snapshot,
    now: &Snapshot,
    elapsed: Duration,
    names: &Names,
    top: usize,
) -> std::io::Result<()> {
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
    let lost = lost_events(&now.counters) - lost_events(&before.counters);
    let overhead =
        (now.run_time_ns - before.run_time_ns.min(now.run_time_ns)) as f64 / (secs * 1e9);
    writeln!(
        out,
        "--- {} lock waits/s, {} lost, probes {:.2}% of one CPU",
        thousands((waits as f64 / secs) as u64),
        thousands(lost),
        overhead * 100.0
    )?;
    if !rows.is_empty() {
        writeln!(
            out,
            "{:>10} {:>12} {:>10} {:>10} {:>10}  {:<18} lock",
            "waits/s", "total wait", "avg", "p50 <", "p99 <", "inside"
        )?;
    }
    for (key, d) in rows.iter().take(top) {
        let op = OpKind::from_u8(key.op as u8).map_or("-", |k| k.function());
        writeln!(
            out,
            "{:>10} {:>12} {:>10} {:>10} {:>10}  {:<18} {}",
            thousands((d.count as f64 / secs) as u64),
            duration_ns(d.total_ns),
            duration_ns(d.total_ns / d.count.max(1)),
            duration_ns(quantile_ns(&d.buckets, 0.5)),
            duration_ns(quantile_ns(&d.buckets, 0.99)),
            op.trim_start_matches("dm_bufio_"),
            names.lock_name(key.lock_addr, key.flags)
        )?;
    }
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
    for (key, n, hits, misses) in ops {
        let device = names.client_device(key.client).unwrap_or("?");
        let op = OpKind::from_u8(key.op as u8).map_or("?", |k| k.function());
        writeln!(
            out,
            "{:>10} ops/s  {op} on {device}{}",
            thousands((n as f64 / secs) as u64),
            if hits + misses > 0 {
                format!(
                    " ({:.1}% hits)",
                    100.0 * hits as f64 / (hits + misses) as f64
                )
            } else {
                String::new()
            }
        )?;
    }
    out.flush()
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
