//! Command-line arguments that several subcommands share: how the reference designs run
//! (`replay`, `compare`, `live`), which designs, how a damaged trace file is taken, and the values
//! clap parses for them (impossible numbers refused at parsing, naming the option).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use bufscope::{probes::ProcessFilter, wait_filter::WaitFilter};
use bufscope_abi::{LockFlags, ProbeConfig};
use bufscope_analyses::{
    calibration::{Calibration, TimingMode, calibrate},
    models::{Backing, ModelOptions},
    tracedata::TraceData,
};
use reference_cache::{
    Design,
    replay::{ReplayClock, ReplayOptions},
    timing::Timing,
};

/// How the designs run: shared by `replay`, `compare` and `live`.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Replay threads (default: one per recorded thread).
    #[arg(long, value_parser = at_least_one())]
    pub threads: Option<usize>,
    /// Read (and, with --allow-writes, write) buffers on this file or block device instead of
    /// memory.
    #[arg(long, value_name = "PATH")]
    pub device: Option<PathBuf>,
    /// Allow writes to --device (refused anyway on a mounted block device).
    #[arg(long, requires = "device")]
    pub allow_writes: bool,
    /// Open --device with O_DIRECT.
    #[arg(long, requires = "device")]
    pub direct: bool,
    /// Without --device: how long each memory-backend read or write takes, e.g. 100us (a stand-in
    /// for a device; default: none).
    #[arg(long, value_parser = parse_positive_duration, conflicts_with = "device")]
    pub io_latency: Option<Duration>,
    /// Cache capacity in buffers [default: the recording kernel's dm-bufio cache size over the
    /// block size where the trace says (format 1.6 on), else 76800: the hotspot test's 300 MiB
    /// of 4 KiB blocks]
    #[arg(long, value_parser = at_least_one())]
    pub capacity: Option<usize>,
    /// How long the designs' steps take: `kernel` (each kind of operation's critical section as
    /// long as the recording kernel's median hold for that kind and outcome, each contended
    /// acquisition longer by the kernel's shortest waits, and memory reads as long as its misses'
    /// median read; see `report --calibration`), `host` (as fast as this machine runs them), or
    /// `auto`:
    /// kernel for a recording that measured the kernel's lock holds, host otherwise (synthetic
    /// traces, older files).
    #[arg(long, value_enum, default_value_t = TimingArg::Auto)]
    pub timing: TimingArg,
    /// Whose clock the designs run on: `real` (a thread per recorded thread on this machine, its
    /// scheduler's timing in every figure), `simulated` (the designs' code decides which locks
    /// each operation takes, a simulation in virtual time when: the same figures on every run),
    /// or `auto`: simulated where the designs take a recording kernel's calibrated costs in
    /// memory (the fidelity bench: within 2x of the 6.1 kernels' waits, p50 and p99 on every
    /// sample, where the real clock meets none), real otherwise (synthetic traces, --device,
    /// --timing host). In the live view, each window whose own operations calibrate the designs
    /// runs simulated, the others on real threads.
    #[arg(long, value_enum, default_value_t = ClockArg::Auto)]
    pub clock: ClockArg,
}

/// `--clock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockArg {
    Auto,
    Real,
    Simulated,
}

/// `--timing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TimingArg {
    Auto,
    Host,
    Kernel,
}

impl From<TimingArg> for TimingMode {
    fn from(arg: TimingArg) -> Self {
        match arg {
            TimingArg::Auto => Self::Auto,
            TimingArg::Host => Self::Host,
            TimingArg::Kernel => Self::Kernel,
        }
    }
}

impl ModelArgs {
    /// The trace's calibration if `--timing` runs the designs with one (computed only then).
    pub fn calibration(&self, trace: &TraceData) -> Option<Calibration> {
        let mode = TimingMode::from(self.timing);
        if mode == TimingMode::Host {
            return None;
        }
        calibrate(trace).filter(|c| mode.uses(c))
    }

    /// Whether the live view's windows that calibrate the designs from their own operations run
    /// in virtual time: `--clock auto` in memory, with the kernel's costs.
    pub fn simulates_calibrated_windows(&self) -> bool {
        self.clock == ClockArg::Auto
            && self.device.is_none()
            && self.io_latency.is_none()
            && self.timing != TimingArg::Host
    }

    /// How the designs run. `calibration`: from [`ModelArgs::calibration`] (without one the
    /// designs run at host speed).
    pub fn options(
        &self,
        cpus: Option<usize>,
        speed: Option<f64>,
        log: bool,
        calibration: Option<&Calibration>,
    ) -> ModelOptions {
        // A miss's read takes what the kernel's took, unless a device or a latency was given.
        let io_latency = self
            .io_latency
            .or_else(|| calibration.and_then(Calibration::read_io));
        ModelOptions {
            backing: match (&self.device, io_latency) {
                (Some(path), _) => Backing::Device {
                    path: path.clone(),
                    direct: self.direct,
                    allow_writes: self.allow_writes,
                },
                (None, Some(latency)) => Backing::MemoryWithLatency(latency),
                (None, None) => Backing::Memory,
            },
            capacity: self.capacity,
            cpus,
            replay: ReplayOptions {
                threads: self.threads,
                speed,
                log,
                timing: calibration.map_or(Timing::HOST, Calibration::timing),
                clock: match (self.clock, calibration, &self.device) {
                    (ClockArg::Real, ..)
                    | (ClockArg::Auto, None, _)
                    | (ClockArg::Auto, _, Some(_)) => ReplayClock::Real,
                    // The device's latency is filled in from the backing (models::run_design).
                    (ClockArg::Simulated | ClockArg::Auto, ..) => {
                        ReplayClock::Simulated { io_ns: 0 }
                    }
                },
            },
        }
    }
}

/// What the probes take at each wait's begin besides its time (kernel stacks, lock owners):
/// shared by `record` and `live`.
#[derive(Debug, clap::Args)]
pub struct StackArgs {
    /// Take no kernel stacks (no callers then).
    #[arg(long, conflicts_with = "exact_stacks")]
    pub no_stacks: bool,
    /// Walk the kernel stack for every wait. By default a thread's waits on one lock inside one
    /// dm-bufio operation reuse the stack walked for the first of them for 10 ms (a walk costs
    /// microseconds), every 64th reuse checked by a new walk; `info` shows how many reuses were
    /// checked and how many came out different.
    #[arg(long)]
    pub exact_stacks: bool,
    /// Read no lock owners. By default each contended mutex's or writer-held rwsem's owner is
    /// read at the wait's begin (its thread, and the dm-bufio operation it is inside: `report
    /// --by owner`); rwsems held by readers and spinning locks have none.
    #[arg(long)]
    pub no_owners: bool,
    /// Take each owner's kernel stack too, where the owner is off its CPU (sleeping or
    /// preempted while holding the lock): `report --by owner-stack` then says what the holders
    /// were doing. Needs Linux 6.2+ (bpf_task_from_pid); costs a stack walk per wait on a
    /// sleeping owner.
    #[arg(long, conflicts_with = "no_owners")]
    pub owner_stacks: bool,
}

impl StackArgs {
    /// The probes' owner setting (`ProbeConfig::owners`).
    pub fn owners(&self) -> u32 {
        match (self.no_owners, self.owner_stacks) {
            (true, _) => ProbeConfig::NO_OWNERS,
            (false, true) => ProbeConfig::OWNER_STACKS,
            (false, false) => ProbeConfig::OWNERS,
        }
    }

    /// The probes' stack mode.
    pub fn mode(&self) -> u32 {
        match (self.no_stacks, self.exact_stacks) {
            (true, _) => ProbeConfig::NO_STACKS,
            (false, true) => ProbeConfig::STACKS_EVERY_WAIT,
            (false, false) => ProbeConfig::STACKS_REUSED,
        }
    }
}

/// Which lock types' waits the probes keep (in the kernel): shared by `record` and `live`.
#[derive(Debug, clap::Args)]
pub struct LockTypeArgs {
    /// Keep only waits on locks of this type (repeat for several): mutex, rwsem:R, rwsem:W,
    /// spinlock, rwlock:R, ... (perf lock contention's names). Other types' waits are left out
    /// in the kernel (counted as filtered).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_lock_type)]
    pub types: Vec<u32>,
}

impl LockTypeArgs {
    /// The probes' `ProbeConfig::lock_types` mask: a bit per type kept, 0 for all.
    pub fn mask(&self) -> u32 {
        self.types
            .iter()
            .fold(0, |mask, &index| mask | (1 << index))
    }
}

/// A `--type` of `record` and `live`: one of perf lock contention's lock type names, as its
/// index.
fn parse_lock_type(s: &str) -> Result<u32, String> {
    lock_type_index(s).map(|i| i as u32)
}

/// A `--type` of `report`: one of perf lock contention's lock type names.
pub fn parse_lock_type_name(s: &str) -> Result<String, String> {
    lock_type_index(s).map(|i| LockFlags::TYPE_NAMES[i].to_string())
}

fn lock_type_index(s: &str) -> Result<usize, String> {
    LockFlags::TYPE_NAMES
        .iter()
        .position(|&name| name == s)
        .ok_or_else(|| {
            format!(
                "unknown lock type `{s}`; known: {}",
                LockFlags::TYPE_NAMES.join(", ")
            )
        })
}

/// Lock waits `record` keeps beyond what the kernel filters: by thread, thread name, length,
/// and (shared with `live`) lock name and stack.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Keep only this thread's lock waits (repeat, or comma-separated).
    #[arg(long = "tid", value_name = "TID", value_delimiter = ',')]
    pub tids: Vec<u32>,
    /// Keep only lock waits of threads whose name contains TEXT, e.g. kworker or bufio_hot.
    #[arg(long, value_name = "TEXT")]
    pub comm: Option<String>,
    /// Keep only lock waits at least this long, e.g. 10us or 1ms.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub min_wait: Option<Duration>,
    #[command(flatten)]
    pub names: WaitNameArgs,
}

impl WaitArgs {
    pub fn filter(&self) -> WaitFilter {
        WaitFilter {
            tids: self.tids.clone(),
            comm: self.comm.clone(),
            min_wait_ns: self
                .min_wait
                .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64),
            ..self.names.filter()
        }
    }
}

/// Lock waits kept by what bufscope names as they arrive, the lock and the kernel stack:
/// shared by `record` and `live`. Judged in user space, so the probes still pair and stack
/// every wait.
#[derive(Debug, clap::Args)]
pub struct WaitNameArgs {
    /// Keep only waits on locks whose name, or type and address, contains TEXT (case matters),
    /// e.g. "client mutex", "dm-bufio 253:2", mmap_lock, rtnl_mutex, "rwsem:W" or 0xffff8881.
    /// The type and address ("rwsem:W 0xffff…") always match, however the lock is named. The
    /// name is the one known as the wait arrives, as `report` names locks: a dm-bufio lock once
    /// its client has been seen (created, or in its first operation since bufscope started); a
    /// static lock by its kernel symbol; a process's mmap_lock or siglock, or a lock in a slab
    /// object (`&dentry`, Linux 6.13+), from the wait's begin; a runqueue (`rq 3`) or a dm-thin
    /// pool's root_lock once the probes have classified it (a runqueue at a wait of one of its
    /// own tasks, a root_lock when the pool's metadata functions run; looked for again each
    /// second: until then it is `spinlock 0x…`, `rwsem:W 0x…` or its slab cache); any other
    /// lock as its type and address (`mutex 0xffff…`). A file's `report` may name more, from
    /// what was known at its end.
    #[arg(long, value_name = "TEXT")]
    pub lock: Option<String>,
    /// Keep only waits whose kernel stack has a frame containing TEXT, e.g. dm_thin_find_block
    /// or pipe_write (frames as `report --stack` matches them: `function+0xoffset [module]`).
    /// Each stack is read and symbolized at the first wait that has it; waits without a stack
    /// (--no-stacks, or none taken) are left out. By default a thread's waits on one lock in
    /// one dm-bufio operation reuse a stack (see --exact-stacks): they match as it does.
    #[arg(long, value_name = "TEXT")]
    pub stack: Option<String>,
}

impl WaitNameArgs {
    pub fn filter(&self) -> WaitFilter {
        WaitFilter {
            lock: self.lock.clone(),
            stack: self.stack.clone(),
            ..WaitFilter::default()
        }
    }
}

/// Whose lock waits the probes keep: shared by `record` and `live`.
#[derive(Debug, clap::Args)]
pub struct ProcessArgs {
    /// Keep only these processes' lock waits (repeat, or comma-separated); dm-bufio operations
    /// stay from every process, since the models need all of them.
    #[arg(short = 'p', long = "pid", value_name = "PID", value_delimiter = ',', value_parser = parse_pid)]
    pub pids: Vec<u32>,
    /// Keep only the lock waits of processes in this cgroup (v2) or its sub-cgroups, as they
    /// come and go (checked each second): a path under /sys/fs/cgroup, e.g.
    /// system.slice/postgresql.service (repeat for several; with --pid, either kind is kept).
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Vec<PathBuf>,
    /// Keep bufscope's own lock waits too: by default the probes leave out every process whose
    /// executable is named bufscope (this one's design threads and reader, a replay running
    /// beside it), but for `bufscope stress`, a workload watched like any other.
    #[arg(long)]
    pub include_self: bool,
}

impl ProcessArgs {
    pub fn filter(&self) -> ProcessFilter {
        ProcessFilter {
            only: self.pids.clone(),
            only_listed: !self.pids.is_empty() || !self.cgroup.is_empty(),
            cgroups: self.cgroup.clone(),
            include_self: self.include_self,
        }
    }
}

/// A `--pid`: a process running now.
fn parse_pid(s: &str) -> Result<u32, String> {
    let pid: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a process id"))?;
    if pid == 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!("no process {pid} is running"));
    }
    Ok(pid)
}

/// A `--cgroup`: a cgroup v2 directory, given from the hierarchy's root
/// (`/system.slice/x.service`, as /proc/PID/cgroup and `report --by cgroup` write it, or without
/// the leading slash) or in full (`/sys/fs/cgroup/...`).
fn parse_cgroup(s: &str) -> Result<PathBuf, String> {
    let root = bufscope::kernel::system::cgroup2_root().ok_or_else(|| {
        format!("--cgroup {s}: this machine has no cgroup v2 hierarchy mounted (no cgroup2 in /proc/self/mounts)")
    })?;
    let path = if Path::new(s).starts_with(&root) {
        PathBuf::from(s)
    } else {
        root.join(s.trim_start_matches('/'))
    };
    if !path.join("cgroup.procs").exists() {
        return Err(format!(
            "no cgroup {s}: {} has no cgroup.procs (cgroup v2 is mounted at {})",
            path.display(),
            root.display()
        ));
    }
    Ok(path)
}

/// A command whose lifetime a session lasts: shared by `record` and `live`.
#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// With a command: keep only the lock waits of its processes (the command from its first
    /// instruction, and the processes it starts from when they are seen, each second).
    #[arg(long, requires = "command", conflicts_with = "pids")]
    pub only_cmd: bool,
    /// Run this command once the probes are attached and stop when it ends (`-- CMD ARGS…`);
    /// bufscope then exits with its status (128 + the signal's number if a signal ended it).
    /// Stopped earlier (--duration, Ctrl-C, SIGTERM, q), bufscope leaves it running. Under
    /// `live`'s full-screen view its stdin, stdout and stderr are /dev/null (the screen is the
    /// terminal's: `-- sh -c 'CMD >cmd.log 2>&1'` keeps its output); otherwise they are
    /// bufscope's (with `live --no-tui`, its output mixes with the tables on stdout).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// How a command takes a trace file with damaged records: shared by every command that reads one.
#[derive(Debug, clap::Args)]
pub struct DamageArgs {
    /// Fail (exit non-zero) when the trace file has damaged records or ends early, instead of
    /// skipping the damaged records, saying so on stderr and going on with the rest.
    #[arg(long)]
    pub strict: bool,
}

impl DamageArgs {
    /// Says on stderr what reading skipped as damaged (`skipped`, a line naming the file) and
    /// goes on; with --strict, that, or reading ending early (`problem`), is the error instead.
    pub fn check(&self, skipped: Option<String>, problem: Option<&str>) -> anyhow::Result<()> {
        match (skipped, problem) {
            (Some(skipped), _) if self.strict => {
                bail!("{skipped}; --strict refuses a damaged file")
            }
            (None, Some(problem)) if self.strict => {
                bail!("{problem}; --strict refuses a file that ends early")
            }
            (Some(skipped), _) => eprintln!("bufscope: {skipped}"),
            (None, _) => {}
        }
        Ok(())
    }
}

/// A count of at least 1 (`--threads`, `--cpus`, `--capacity`, ...).
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// A duration longer than 0, e.g. 10s, 2m, 500ms.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("`{s}` is no time at all; give a duration above 0")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "`{s}` is not a duration like 10s, 2m or 500ms: {e}"
        )),
    }
}

/// One `--design` value: a design, or `all` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DesignArg {
    All,
    One(Design),
}

/// The designs named by `--design` (`all` for every one), in the order given; none named:
/// [`Design::DEFAULT`].
pub fn chosen_designs(designs: &[DesignArg]) -> Vec<Design> {
    if designs.is_empty() {
        return Design::DEFAULT.to_vec();
    }
    if designs.contains(&DesignArg::All) {
        return Design::ALL.to_vec();
    }
    designs
        .iter()
        .filter_map(|d| match d {
            DesignArg::One(d) => Some(*d),
            DesignArg::All => None,
        })
        .collect()
}

pub fn parse_design(s: &str) -> Result<DesignArg, String> {
    if s == "all" {
        return Ok(DesignArg::All);
    }
    s.parse().map(DesignArg::One).map_err(|_| {
        format!(
            "unknown design `{s}`; known: {}, all",
            Design::ALL.map(|d| d.name()).join(", ")
        )
    })
}

pub fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// `9464` or `:9464` → 127.0.0.1:9464; anything else as given (`0.0.0.0:9464` for every
/// interface).
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}` is not an address to listen on: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

/// A `--plot` file: its extension says the format.
pub fn parse_plot_path(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg" | "png") => Ok(path),
        _ => Err(format!(
            "`{s}`: the plot's format is told by its extension, .svg or .png"
        )),
    }
}

/// A ring buffer size: a power of two, at least one page.
pub fn parse_ringbuf_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a byte count: {e}"))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32;
    if n < page || !n.is_power_of_two() {
        return Err(format!(
            "{n} is not a power of two of at least one page ({page} bytes)"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn designs_are_parsed_by_name_and_unknown_ones_refused_by_name() {
        assert_eq!(parse_design("all"), Ok(DesignArg::All));
        assert_eq!(parse_design("sharded"), Ok(DesignArg::One(Design::Sharded)));
        let e = parse_design("btree").unwrap_err();
        assert!(e.contains("unknown design `btree`"), "{e}");
        assert!(
            e.contains("classic, sharded, lockfree, classic-nosleep, sharded-nosleep, all"),
            "{e}"
        );
        assert_eq!(
            chosen_designs(&[DesignArg::One(Design::LockFree), DesignArg::All]),
            Design::ALL
        );
        assert_eq!(
            chosen_designs(&[DesignArg::One(Design::LockFree)]),
            [Design::LockFree]
        );
        assert_eq!(chosen_designs(&[]), Design::DEFAULT, "none named");
    }

    #[derive(clap::Parser)]
    struct Model {
        #[command(flatten)]
        model: ModelArgs,
    }

    #[test]
    fn the_auto_clock_simulates_a_calibrated_kernel_recording_and_runs_the_rest_on_threads() {
        use clap::Parser;
        let clock = |args: &[&str], calibrated: bool| {
            let model = Model::try_parse_from([&["model"], args].concat())
                .unwrap()
                .model;
            let calibration = calibrated.then(|| {
                let mut ops = bufscope_analyses::calibration::calibrate_ops(1, "7:0", &[], &[]);
                ops.holds_measured = true;
                ops
            });
            model
                .options(None, None, false, calibration.as_ref())
                .replay
                .clock
        };
        let simulated = ReplayClock::Simulated { io_ns: 0 };
        assert_eq!(clock(&[], true), simulated);
        assert_eq!(
            clock(&[], false),
            ReplayClock::Real,
            "synthetic, or --timing host"
        );
        assert_eq!(clock(&["--device", "/dev/null"], true), ReplayClock::Real);
        assert_eq!(clock(&["--clock", "real"], true), ReplayClock::Real);
        assert_eq!(clock(&["--clock", "simulated"], false), simulated);

        // The live view decides window by window: simulated where a window calibrates the
        // designs, unless something here says real threads.
        let live = |args: &[&str]| {
            Model::try_parse_from([&["model"], args].concat())
                .unwrap()
                .model
                .simulates_calibrated_windows()
        };
        assert!(live(&[]));
        for real in [
            &["--device", "/dev/null"][..],
            &["--io-latency", "100us"],
            &["--timing", "host"],
            &["--clock", "real"],
            &["--clock", "simulated"],
        ] {
            assert!(!live(real), "{real:?}");
        }
    }
}
