//! `bufscope live`: the full-screen view of kernel lock waits, dm-bufio clients and the
//! reference designs fed the same operations ([`bufscope::live::session`]); with `--no-tui`, a
//! table per interval on stdout ([`bufscope::live::headless`]); with `-- CMD`, for exactly the
//! command's lifetime ([`bufscope::watched`]).

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{ExitCode, ExitStatus},
    time::Duration,
};

use anyhow::{Context, bail};
use bufscope::{
    kernel::system,
    live::{
        headless::{self, HeadlessSettings, IntervalTable},
        session::{LiveSettings, run_live},
    },
    probes::{
        AttachMode, AttachOptions, BufioProbes, DEFAULT_RINGBUF_BYTES, LockProbes, ProcessFilter,
    },
    watched::{CommandStdio, Watched, shell_status},
};
use bufscope_abi::ProbeConfig;
use bufscope_analyses::units::{duration_ns, thousands};

use crate::args::{
    CommandArgs, DesignArg, LockTypeArgs, ModelArgs, ProcessArgs, StackArgs, WaitNameArgs,
    at_least_one, chosen_designs, parse_design, parse_metrics_addr, parse_positive_duration,
    parse_ringbuf_size,
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Refresh rates, the designs' windows and `--no-tui` tables every this many milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub interval: u64,
    /// Print interval tables on stdout instead of the full-screen view (for logs and pipes).
    /// They come from in-kernel histograms, per lock and operation: --lock and --stack, which
    /// judge each wait, are the full-screen view's.
    #[arg(long, conflicts_with_all = ["lock", "stack"])]
    pub no_tui: bool,
    /// Stop after this long, e.g. 10s (default: until q, Ctrl-C or SIGTERM).
    #[arg(short, long, value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,
    /// Locks listed per `--no-tui` interval.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    pub top: usize,
    /// How to attach to the lock tracepoints.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
    /// How to probe dm-bufio's functions: fentry/fexit through the module's BTF where the
    /// kernel allows it, else kprobes (auto); or one kind only.
    #[arg(long, value_enum, default_value_t = BufioProbes::Auto)]
    pub bufio_probes: BufioProbes,
    /// The full-screen view's event ring buffer in bytes: a power of two, at least one page. The
    /// tables count every wait from in-kernel histograms whatever it loses; stacks, owners and
    /// recordings are what it brings.
    #[arg(long, default_value_t = DEFAULT_RINGBUF_BYTES, value_parser = parse_ringbuf_size,
          conflicts_with = "no_tui")]
    pub ringbuf_size: u32,
    /// Record to this trace file while showing (`r` stops and starts recording).
    #[arg(long, value_name = "FILE", conflicts_with = "no_tui")]
    pub record: Option<PathBuf>,
    /// Overwrite the --record file if it exists.
    #[arg(long, requires = "record")]
    pub force: bool,
    /// Reference designs fed the same dm-bufio operations (repeat, or `all`; default: classic,
    /// sharded and lockfree; `d` changes them).
    #[arg(long = "design", value_name = "DESIGN", value_parser = parse_design)]
    pub designs: Vec<DesignArg>,
    /// Serve the live figures in the OpenMetrics text format on ADDR/metrics: a port (bound to
    /// loopback), or HOST:PORT (0.0.0.0:PORT for every interface).
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics: Option<SocketAddr>,
    #[command(flatten)]
    pub stacks: StackArgs,
    #[command(flatten)]
    pub processes: ProcessArgs,
    #[command(flatten)]
    pub types: LockTypeArgs,
    /// The view shows (and --record records) only the waits these keep.
    #[command(flatten)]
    pub names: WaitNameArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub command: CommandArgs,
}

impl Options {
    /// Whose lock waits the probes keep: `--pid`, `--cgroup`, and with `--only-cmd` the
    /// command's processes (added once it runs).
    fn processes(&self) -> ProcessFilter {
        let filter = self.processes.filter();
        ProcessFilter {
            only_listed: filter.only_listed || self.command.only_cmd,
            ..filter
        }
    }

    /// Starts the command, if one was given, once the probes are attached.
    fn spawn(
        &self,
        probes: &mut LockProbes,
        stdio: CommandStdio,
    ) -> anyhow::Result<Option<Watched>> {
        if self.command.command.is_empty() {
            return Ok(None);
        }
        let w = Watched::spawn(&self.command.command, probes, self.command.only_cmd, stdio)?;
        eprintln!(
            "bufscope live: started {} (pid {}){}",
            w.shown(),
            w.pid(),
            if self.command.only_cmd {
                "; showing only its processes' lock waits"
            } else {
                ""
            }
        );
        Ok(Some(w))
    }
}

/// bufscope's exit code: the command's status if its end ended the session.
fn exit_code(options: &Options, ended: Option<ExitStatus>) -> ExitCode {
    match ended {
        Some(status) => {
            eprintln!("bufscope live: the command ended ({status})");
            ExitCode::from(shell_status(status))
        }
        None if !options.command.command.is_empty() => {
            eprintln!("bufscope live: the command is still running; it was left to run");
            ExitCode::SUCCESS
        }
        None => ExitCode::SUCCESS,
    }
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
        return runtime.block_on(no_tui(options));
    }
    // Loading and verifying the programs takes seconds on a slow or busy machine: say what is
    // happening until the screen opens (the line stays above the shell prompt afterwards).
    eprintln!("bufscope live: loading the eBPF programs…");
    let mut probes = LockProbes::attach(AttachOptions {
        mode: options.attach,
        ringbuf_bytes: options.ringbuf_size,
        config: ProbeConfig {
            stream_events: 1,
            stacks: options.stacks.mode(),
            owners: options.stacks.owners(),
            lock_types: options.types.mask(),
            // The tables' counts: the stream loses events under a flood, these do not.
            histograms: 1,
            ..ProbeConfig::DEFAULT
        },
        bufio: true,
        bufio_probes: options.bufio_probes,
        processes: options.processes(),
    })?;
    eprintln!(
        "bufscope live: attached ({}); opening the screen…",
        probes.mode()
    );
    let settings = LiveSettings {
        interval: Duration::from_millis(options.interval),
        duration: options.duration,
        designs: chosen_designs(&options.designs),
        record: options.record.clone(),
        metrics: options.metrics,
        shadow: options.model.options(None, Some(1.0), true, None),
        timing: options.model.timing.into(),
        simulate_calibrated: options.model.simulates_calibrated_windows(),
        waits: options.names.filter(),
    };
    // The runtime first: the command's child process is watched through it.
    let ended = runtime.block_on(async {
        let watched = options.spawn(&mut probes, CommandStdio::Null)?;
        anyhow::Ok(run_live(probes, settings, watched).await?)
    })?;
    Ok(exit_code(options, ended))
}

async fn no_tui(options: &Options) -> anyhow::Result<ExitCode> {
    let settings = HeadlessSettings {
        attach: options.attach,
        bufio_probes: options.bufio_probes,
        interval: Duration::from_millis(options.interval),
        duration: options.duration,
        top: options.top,
        metrics: options.metrics,
        processes: options.processes(),
        lock_types: options.types.mask(),
    };
    let mut probes = headless::attach(&settings)?;
    let bufio = probes.bufio();
    eprintln!(
        "bufscope live: {} on Linux {}; dm-bufio: {}; in-kernel histograms only, every {} ms",
        probes.mode(),
        system::kernel_release(),
        match &bufio.unavailable {
            Some(why) => why.to_string(),
            None => format!(
                "{} of {} probe points attached",
                bufio.attached().count(),
                bufio.points.len()
            ),
        },
        options.interval
    );
    let watched = options.spawn(&mut probes, CommandStdio::Inherit)?;
    let mut out = std::io::stdout().lock();
    let ended = headless::run_headless(probes, &settings, watched, |table| {
        print_interval(&mut out, table)
    })
    .await?;
    Ok(exit_code(options, ended))
}

fn print_interval(out: &mut impl Write, table: &IntervalTable) -> std::io::Result<()> {
    writeln!(
        out,
        "--- {} lock waits/s, {} lost, probes {:.2}% of one CPU",
        thousands(table.waits_per_sec as u64),
        thousands(table.lost),
        table.overhead * 100.0
    )?;
    if !table.locks.is_empty() {
        writeln!(
            out,
            "{:>10} {:>12} {:>10} {:>10} {:>10}  {:<18} {:<11} lock",
            "waits/s", "total wait", "avg", "p50 <", "p99 <", "inside", "type"
        )?;
    }
    for row in &table.locks {
        writeln!(
            out,
            "{:>10} {:>12} {:>10} {:>10} {:>10}  {:<18} {:<11} {}",
            thousands(row.waits_per_sec as u64),
            duration_ns(row.total_ns),
            duration_ns(row.average_ns),
            duration_ns(row.p50_below_ns),
            duration_ns(row.p99_below_ns),
            row.inside.trim_start_matches("dm_bufio_"),
            row.type_name,
            row.lock
        )?;
    }
    for op in &table.ops {
        writeln!(
            out,
            "{:>10} ops/s  {} on {}{}",
            thousands(op.ops_per_sec as u64),
            op.function,
            op.device,
            match op.hit_ratio {
                Some(r) => format!(" ({:.1}% hits)", 100.0 * r),
                None => String::new(),
            }
        )?;
    }
    out.flush()
}
