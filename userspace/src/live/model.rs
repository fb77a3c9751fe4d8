//! What the live view knows: the header's facts, per-client dm-bufio figures, per-lock waits
//! with their stacks, the kernel-vs-designs comparison and the series the charts draw.
//!
//! Collectors call `add_*` as events arrive and [`Model::tick`] once per interval (rates,
//! series, the lock table's rows, the next shadow-replay window); [`Model::design_result`]
//! folds in what the designs measured. Rendering reads the public fields and never writes.
//!
//! The comparison is fed either by the same events as the tables (a kernel with dm-bufio, or a
//! trace file played back) or by its own source (a bundled sample, when this kernel has no
//! dm-bufio): [`Comparison`] has its own names and windows for that reason.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use bufscope_abi::{LockFlags, OpStats, OpStatsKey, WaitHist, WaitHistKey};
use bufscope_trace::{BufioOp, ClientLock, LockOwner, LockWait, Metadata, OpKind, OpResult};

use reference_cache::Design;

use super::{
    hist::Log2Hist,
    playback::Played,
    shadow::{Cut, DesignResult},
};
use bufscope_analyses::{
    calibration::TimingMode,
    models::step_of,
    naming::{Names, thread_role},
};
use hdrhistogram::Histogram;

/// Points kept per chart series (ten minutes at the default one-second interval).
pub const SERIES_POINTS: usize = 600;
/// Callers shown per lock row.
pub const TOP_CALLERS: usize = 3;
/// Operation kinds, indexed by `OpKind as usize - 1`.
pub const OP_KINDS: usize = OpKind::ALL.len();

/// Where the events come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// This machine's kernel, through the probes attached this way ("tp_btf", "tracepoint").
    Live { attach: String },
    /// A trace file played back: position and span on the trace's clock.
    Replay {
        file: String,
        span_ns: u64,
        position_ns: u64,
        speed: f64,
        playing: bool,
    },
}

/// What the dm-bufio probes cover.
#[derive(Clone, Debug, PartialEq)]
pub enum BufioStatus {
    /// Attached to `attached` of `points` functions; the missing ones with why.
    Probed {
        attached: usize,
        points: usize,
        design: Option<String>,
        missing: Vec<(String, String)>,
    },
    /// No dm-bufio probes at all, and why (e.g. the module is not loaded).
    Unavailable(String),
    /// A trace file: what its recording saw.
    Recorded { design: Option<String> },
}

/// A recording made while showing (`live --record`, or `r`).
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    pub path: String,
    pub waits: u64,
    pub ops: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Kernel release of the machine (or of the trace's recording).
    pub kernel: String,
    pub source: Source,
    pub bufio: BufioStatus,
    /// Lock waits and dm-bufio operations per second, over the last interval.
    pub events_per_sec: f64,
    /// Events lost so far (ring buffer full, maps full, returns missed).
    pub lost: u64,
    /// The probes' own CPU time as a share of one CPU over the last interval.
    pub overhead: Option<f64>,
    pub recording: Option<Recording>,
    /// A one-line message for the viewer (e.g. why recording failed).
    pub status: Option<String>,
}

impl Header {
    /// A header before the first interval: no rates, losses, recording or message yet.
    pub fn new(kernel: String, source: Source, bufio: BufioStatus) -> Self {
        Self {
            kernel,
            source,
            bufio,
            events_per_sec: 0.0,
            lost: 0,
            overhead: None,
            recording: None,
            status: None,
        }
    }
}

/// Operations by kind, with the lookups among them that hit and missed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpTally {
    pub ops: [u64; OP_KINDS],
    pub hits: u64,
    pub misses: u64,
}

impl OpTally {
    pub fn total(&self) -> u64 {
        self.ops.iter().sum()
    }
}

/// One dm-bufio client's figures.
#[derive(Clone, Debug)]
pub struct ClientStats {
    pub addr: u64,
    pub device: String,
    pub block_size: u32,
    /// Operations that arrived in the event stream so far, by kind.
    pub ops: [u64; OP_KINDS],
    /// Operations per second over the last interval, by kind.
    pub rates: [f64; OP_KINDS],
    /// [`ClientStats::counted`]'s operations at the last tick: the next rates start here.
    counted_at_tick: [u64; OP_KINDS],
    pub hits: u64,
    pub misses: u64,
    /// Every outermost operation the kernel counted (`OP_STATS`, read each interval by the
    /// full-screen view), which the stream may have lost; `None` until read.
    pub kernel: Option<OpTally>,
    /// Blocks marked dirty and not written or forgotten since: an estimate from operations
    /// (write_dirty_buffers(_async) counts as writing them all).
    dirty: HashSet<u64>,
    /// Waits on this client's own locks (mutex or trees) inside its operations, as the stream
    /// brought them.
    pub waits: Log2Hist,
    /// The same from the in-kernel histograms (read each interval by the full-screen view);
    /// `None` until read.
    pub kernel_waits: Option<Log2Hist>,
}

impl ClientStats {
    fn new(addr: u64, device: String, block_size: u32) -> Self {
        Self {
            addr,
            device,
            block_size,
            ops: [0; OP_KINDS],
            rates: [0.0; OP_KINDS],
            counted_at_tick: [0; OP_KINDS],
            hits: 0,
            misses: 0,
            kernel: None,
            dirty: HashSet::new(),
            waits: Log2Hist::default(),
            kernel_waits: None,
        }
    }

    pub fn rate(&self, kind: OpKind) -> f64 {
        self.rates[kind as usize - 1]
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.rates.iter().sum()
    }

    /// The operations as the tables count them: the kernel's counters' where they have seen at
    /// least as many as the stream brought, else the stream's. The dirty estimate and the lock
    /// waits come from the stream only.
    pub fn counted(&self) -> OpTally {
        let streamed = OpTally {
            ops: self.ops,
            hits: self.hits,
            misses: self.misses,
        };
        match self.kernel {
            Some(kernel) if kernel.total() >= streamed.total() => kernel,
            _ => streamed,
        }
    }

    /// The lock waits as the tables count them: the in-kernel histograms' where they have seen
    /// at least as many as the stream brought, else the stream's.
    pub fn counted_waits(&self) -> &Log2Hist {
        Log2Hist::fuller(self.kernel_waits.as_ref(), &self.waits)
    }

    pub fn total_ops(&self) -> u64 {
        self.counted().total()
    }

    /// Hits over hits and misses so far; `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let counted = self.counted();
        let n = counted.hits + counted.misses;
        (n > 0).then(|| counted.hits as f64 / n as f64)
    }

    pub fn dirty_estimate(&self) -> usize {
        self.dirty.len()
    }

    fn add_op(&mut self, op: &BufioOp) {
        let i = op.kind as usize - 1;
        self.ops[i] += 1;
        match op.result {
            OpResult::Hit => self.hits += 1,
            OpResult::Miss => self.misses += 1,
            _ => {}
        }
        match op.kind {
            OpKind::MarkDirty | OpKind::MarkPartialDirty => {
                self.dirty.insert(op.block);
            }
            OpKind::WriteDirty | OpKind::WriteDirtyAsync => self.dirty.clear(),
            OpKind::Forget => {
                self.dirty.remove(&op.block);
            }
            OpKind::ForgetBuffers => {
                let end = op.block.saturating_add(u64::from(op.arg0));
                self.dirty.retain(|b| !(op.block..end).contains(b));
            }
            _ => {}
        }
    }
}

/// A lock as the tables key it: address and contention flags (a rwsem taken for read and for
/// write are two rows, as in perf lock contention).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey {
    pub addr: u64,
    pub flags: u32,
}

/// Waits under one stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackCount {
    pub waits: u64,
    pub total_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct LockStats {
    /// The waits that arrived in the event stream.
    pub hist: Log2Hist,
    /// Every wait the kernel paired, from the in-kernel histograms (`live`'s full-screen view
    /// reads them each interval): the stream loses events when its reader falls behind (a
    /// storm of a million waits a second), these do not. `None` where no histogram has this
    /// lock, or none was read.
    pub kernel: Option<Log2Hist>,
    pub waits_per_sec: f64,
    /// [`LockStats::counted`]'s count at the last tick: the next interval's rate starts here.
    counted_at_tick: u64,
    /// By stack id; waits without a stack are not here.
    pub stacks: HashMap<u32, StackCount>,
    /// By the lock's owner at each wait's begin (the first [`MAX_OWNERS`] kinds and threads);
    /// waits on locks that keep no owner are not here.
    pub owners: HashMap<LockOwner, StackCount>,
    /// By the waiting thread (the first [`MAX_WAITERS`]), grouped by their cgroups when the
    /// rows are derived: a thread's name and cgroup may arrive after its waits.
    pub waiters: HashMap<u32, StackCount>,
}

impl LockStats {
    /// The lock's waits as the tables count them: the in-kernel histogram's where it has seen
    /// at least as many as the stream brought (a histogram map that filled up misses a lock's
    /// later keys, counted as `hist_full`), else the stream's. Stacks, owners and waiters come
    /// from the stream only: under losses they are a sample of these waits.
    pub fn counted(&self) -> &Log2Hist {
        Log2Hist::fuller(self.kernel.as_ref(), &self.hist)
    }
}

/// Owners kept per lock: enough for any real holder set, bounded against thread churn.
const MAX_OWNERS: usize = 256;

/// Waiting threads kept per lock, bounded against thread churn; later threads' waits count in
/// no cgroup's row.
const MAX_WAITERS: usize = 1024;

/// The cgroup row of waiters whose cgroup is not known (unnamed threads, cgroup v1).
pub const UNKNOWN_CGROUP: &str = "(cgroup not known)";

/// A row of the lock table, named and ready to draw.
#[derive(Clone, Debug, PartialEq)]
pub struct LockRow {
    pub key: LockKey,
    pub name: String,
    pub type_name: &'static str,
    pub waits: u64,
    /// Of [`LockRow::waits`], those that reached the view in the event stream: the callers,
    /// holders and cgroups are theirs.
    pub streamed: u64,
    pub waits_per_sec: f64,
    pub total_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// The most frequent callers, with their waits.
    pub callers: Vec<(String, u64)>,
    /// The owners waited on most, named with the operation they were in, with those waits.
    pub holders: Vec<(String, u64)>,
    /// The cgroups (v2) whose threads waited most, with those waits.
    pub cgroups: Vec<(String, u64)>,
}

/// What the lock table is sorted by (`s` cycles through them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockSort {
    #[default]
    Total,
    Waits,
    Rate,
    Max,
    P99,
}

impl LockSort {
    pub fn next(self) -> Self {
        match self {
            Self::Total => Self::Waits,
            Self::Waits => Self::Rate,
            Self::Rate => Self::Max,
            Self::Max => Self::P99,
            Self::P99 => Self::Total,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Total => "total wait",
            Self::Waits => "waits",
            Self::Rate => "waits/s",
            Self::Max => "max",
            Self::P99 => "p99",
        }
    }
}

/// Where the comparison's kernel column and op stream come from.
#[derive(Clone, Debug, PartialEq)]
pub enum CompareSource {
    /// The same events as the tables.
    Tables,
    /// A bundled sample recording, looped (this kernel has no dm-bufio).
    Sample(String),
}

/// One design's column of the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct DesignColumn {
    pub design: Design,
    pub hist: Log2Hist,
    pub steps: u64,
    /// Replay steps that did not match the recording (e.g. releases of blocks a window boundary
    /// split from their get).
    pub mismatched: u64,
    pub error: Option<String>,
}

impl DesignColumn {
    fn new(design: Design) -> Self {
        Self {
            design,
            hist: Log2Hist::default(),
            steps: 0,
            mismatched: 0,
            error: None,
        }
    }
}

/// A window sent to the designs whose results are not all back.
#[derive(Clone, Debug)]
struct Pending {
    at_secs: f64,
    kernel: Log2Hist,
    ops: u64,
    results: Vec<Option<DesignResult>>,
}

/// Kernel vs designs on the same operations: one client's dm-bufio operations cut into windows
/// (one per interval), each replayed through every design while the kernel's waits on that
/// client's locks in the same window are held back until the designs' arrive, so both columns
/// always cover the same windows.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub source: CompareSource,
    /// The client compared (chosen, or the busiest so far) and its device and block size.
    pub client: Option<u64>,
    pub chosen: Option<u64>,
    pub device: String,
    pub block_size: u32,
    pub windows: u64,
    /// Windows not replayed because the designs were still busy with earlier ones.
    pub skipped: u64,
    pub ops: u64,
    pub kernel: Log2Hist,
    pub designs: Vec<DesignColumn>,
    /// Whether each window runs the designs at the costs its own operations measured (the live
    /// view: `--timing`); `Host` leaves the shadow's options in charge (a replay, which set them
    /// from the whole file's calibration).
    pub window_timing: TimingMode,
    /// Whether a window the designs take its own costs from replays in virtual time (the live
    /// view's `--clock auto`); otherwise, and for the rest, the shadow's options decide.
    pub simulate_calibrated: bool,
    names: Names,
    block_sizes: HashMap<u64, u32>,
    client_ops: HashMap<u64, u64>,
    window_start: Option<u64>,
    window_ops: HashMap<u64, Vec<BufioOp>>,
    window_waits: HashMap<u64, Log2Hist>,
    /// The window's waits on each client's mutex inside its operations: their spans time the
    /// mutex's handoffs, their owners how long each holder held it.
    window_mutex_waits: HashMap<u64, Vec<LockWait>>,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
}

impl Comparison {
    pub fn new(source: CompareSource, designs: &[Design]) -> Self {
        Self {
            source,
            client: None,
            chosen: None,
            device: "?".into(),
            block_size: 0,
            windows: 0,
            skipped: 0,
            ops: 0,
            kernel: Log2Hist::default(),
            designs: designs.iter().map(|d| DesignColumn::new(*d)).collect(),
            window_timing: TimingMode::Host,
            simulate_calibrated: false,
            names: Names::default(),
            block_sizes: HashMap::new(),
            client_ops: HashMap::new(),
            window_start: None,
            window_ops: HashMap::new(),
            window_waits: HashMap::new(),
            window_mutex_waits: HashMap::new(),
            next_id: 0,
            pending: BTreeMap::new(),
        }
    }

    /// Starts over with these designs (the window being gathered is kept).
    pub fn set_designs(&mut self, designs: &[Design]) {
        self.designs = designs.iter().map(|d| DesignColumn::new(*d)).collect();
        self.reset();
    }

    /// Drops every result so far and the windows in flight. Window ids keep counting, so a
    /// late result for a window cut before is told apart from new ones.
    fn reset(&mut self) {
        for column in &mut self.designs {
            *column = DesignColumn::new(column.design);
        }
        self.client = None;
        self.windows = 0;
        self.skipped = 0;
        self.ops = 0;
        self.kernel = Log2Hist::default();
        self.pending.clear();
    }

    /// Forgets the window being gathered (after a seek fed a stretch of events at once).
    pub fn discard_window(&mut self) {
        self.window_start = None;
        self.window_ops.clear();
        self.window_waits.clear();
        self.window_mutex_waits.clear();
    }

    /// Compares `client` from the next window on (columns start over).
    pub fn choose(&mut self, client: u64) {
        if self.client != Some(client) {
            self.reset();
        }
        self.chosen = Some(client);
    }

    pub fn add_metadata(&mut self, m: &Metadata) {
        self.names.add(m);
        if let Metadata::Client {
            addr, block_size, ..
        } = m
        {
            self.block_sizes.insert(*addr, *block_size);
        }
    }

    pub fn add_op(&mut self, op: &BufioOp) {
        if step_of(op).is_none() || !op.has_client() {
            return;
        }
        self.window_start.get_or_insert(op.start_ns);
        *self.client_ops.entry(op.client).or_default() += 1;
        self.window_ops.entry(op.client).or_default().push(*op);
    }

    /// An event of a trace played back (the bundled sample).
    /// Takes a played event. At a loop of the playback, the window gathered so far is dropped:
    /// its operations from the trace's end and from its start would replay as one burst (all
    /// due at once, the later ones timed before the window's start), where the designs' waits
    /// came to 3x the kernel's with 3-s windows on the bundled sample.
    pub fn add_played(&mut self, e: Played) {
        match e {
            Played::Wait(w) => self.add_wait(w),
            Played::Op(o) => self.add_op(o),
            Played::Rewound => self.discard_window(),
        }
    }

    /// Counts a kernel wait if it is on a dm-bufio client's lock inside that client's
    /// operation, and keeps it if that lock is the client's mutex.
    pub fn add_wait(&mut self, w: &LockWait) {
        if w.op.is_none() {
            return;
        }
        let Some((_, lock)) = self.names.bufio_lock(w.lock_addr) else {
            return;
        };
        self.window_waits
            .entry(w.op_client)
            .or_default()
            .add(w.wait_ns);
        if lock == ClientLock::Mutex {
            self.window_mutex_waits
                .entry(w.op_client)
                .or_default()
                .push(*w);
        }
    }

    /// Ends the window: the compared client's operations (turned into replay streams by the
    /// shadow, [`Cut::prepare`]), or `None` when it had none (or there are no designs).
    fn cut(&mut self, at_secs: f64) -> Option<Cut> {
        let start = self.window_start.take();
        let mut ops = std::mem::take(&mut self.window_ops);
        let mut waits = std::mem::take(&mut self.window_waits);
        let mut mutex_waits = std::mem::take(&mut self.window_mutex_waits);
        let client = self.chosen.or_else(|| {
            self.client_ops
                .iter()
                .max_by_key(|&(c, n)| (*n, *c))
                .map(|(c, _)| *c)
        })?;
        if self.client != Some(client) {
            self.client = Some(client);
            self.device = self.names.client_device(client).unwrap_or("?").to_string();
            self.block_size = self.block_sizes.get(&client).copied().unwrap_or(4096);
        }
        let ops = ops.remove(&client)?;
        if self.designs.is_empty() || ops.is_empty() {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            Pending {
                at_secs,
                kernel: waits.remove(&client).unwrap_or_default(),
                ops: ops.len() as u64,
                results: vec![None; self.designs.len()],
            },
        );
        Some(Cut {
            id,
            client,
            device: self.device.clone(),
            block_size: self.block_size,
            start_ns: start.unwrap_or(0),
            ops,
            mutex_waits: mutex_waits.remove(&client).unwrap_or_default(),
            speed: None,
            timing: self.window_timing,
            simulate_calibrated: self.simulate_calibrated,
        })
    }

    /// A window the designs could not take: its kernel waits are dropped too.
    pub fn skip(&mut self, window: u64) {
        if self.pending.remove(&window).is_some() {
            self.skipped += 1;
        }
    }

    /// Folds a design's result in; returns the window's p99s (kernel, then per design, µs)
    /// once every design has reported on it.
    fn fold(&mut self, result: DesignResult) -> Option<(f64, f64, Vec<f64>)> {
        let id = result.window;
        let pending = self.pending.get_mut(&id)?;
        let design = result.design;
        *pending.results.get_mut(design)? = Some(result);
        if pending.results.iter().any(Option::is_none) {
            return None;
        }
        let done = self.pending.remove(&id)?;
        self.windows += 1;
        self.ops += done.ops;
        self.kernel.merge(&done.kernel);
        let mut p99s = Vec::with_capacity(self.designs.len());
        for (column, r) in self
            .designs
            .iter_mut()
            .zip(done.results.into_iter().flatten())
        {
            column.hist.merge(&r.waits);
            column.steps += r.steps;
            column.mismatched += r.mismatched;
            if let Some(e) = r.error {
                column.error.get_or_insert(e);
            }
            p99s.push(r.waits.quantile(0.99) as f64 / 1e3);
        }
        Some((done.at_secs, done.kernel.quantile(0.99) as f64 / 1e3, p99s))
    }

    /// Windows cut and not yet back from every design.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// The charts' series: (seconds since the start, value).
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub ops_per_sec: Vec<(f64, f64)>,
    pub waits_per_sec: Vec<(f64, f64)>,
    /// p99 of the compared client's lock waits per window, µs.
    pub kernel_p99_us: Vec<(f64, f64)>,
    pub designs_p99_us: Vec<(Design, Vec<(f64, f64)>)>,
}

/// Adds a point in time order (windows may come back from the designs out of order), keeping
/// the newest [`SERIES_POINTS`].
fn push_point(series: &mut Vec<(f64, f64)>, point: (f64, f64)) {
    let at = series.partition_point(|p| p.0 <= point.0);
    series.insert(at, point);
    if series.len() > SERIES_POINTS {
        series.remove(0);
    }
}

/// One thread's buffer acquisitions (get, read and new operations): how long each took, and how
/// much of that the thread spent waiting for a client mutex inside them.
#[derive(Clone, Debug)]
pub struct ThreadAcquisitions {
    durations: Histogram<u64>,
    lock_wait_ns: u64,
}

impl ThreadAcquisitions {
    fn new() -> Self {
        Self {
            // 1 ns to an hour (longer is counted as an hour) with two significant digits: a p50
            // within 1 %, in tens of kilobytes per thread.
            durations: Histogram::new_with_bounds(1, 3_600_000_000_000, 2)
                .expect("valid bounds and precision"),
            lock_wait_ns: 0,
        }
    }

    fn add(&mut self, op: &BufioOp) {
        self.durations.saturating_record(op.duration_ns.max(1));
        self.lock_wait_ns = self.lock_wait_ns.saturating_add(op.lock_wait_ns);
    }
}

/// How long the threads of one role (a thread's name without its instance number, e.g.
/// `bufio_hot` for `bufio_hot/3`) took to acquire a buffer: the seed experiment's answer ("the
/// hotspot threads acquire their buffers N times faster") as it happens.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleRow {
    pub role: String,
    pub threads: usize,
    pub acquisitions: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// The share of that time spent waiting for a client mutex (0 where the probes do not
    /// measure it: kernels whose dm-bufio has no client mutex).
    pub mutex_wait_share: f64,
}

/// Everything the screens show.
#[derive(Clone, Debug)]
pub struct Model {
    pub header: Header,
    pub names: Names,
    pub clients: BTreeMap<u64, ClientStats>,
    pub locks: HashMap<LockKey, LockStats>,
    /// The lock table as last derived (sorted, filtered, named).
    pub lock_rows: Vec<LockRow>,
    /// Lock waits and operations so far.
    pub waits: u64,
    pub ops: u64,
    /// Buffer acquisitions by thread id; grouped into [`Model::role_rows`] by the threads' names,
    /// which may arrive after their operations (a recording names threads as it flushes).
    acquisitions: HashMap<u32, ThreadAcquisitions>,
    /// Acquisition time by thread role as last derived, slowest mean first.
    pub role_rows: Vec<RoleRow>,
    pub comparison: Comparison,
    pub series: Series,
    /// Seconds covered so far (on the source's clock).
    pub elapsed_secs: f64,
    interval_events: u64,
}

impl Model {
    pub fn new(header: Header, compare: CompareSource, designs: &[Design]) -> Self {
        Self {
            header,
            names: Names::default(),
            clients: BTreeMap::new(),
            locks: HashMap::new(),
            lock_rows: Vec::new(),
            waits: 0,
            ops: 0,
            acquisitions: HashMap::new(),
            role_rows: Vec::new(),
            comparison: Comparison::new(compare, designs),
            series: Series {
                designs_p99_us: designs.iter().map(|d| (*d, Vec::new())).collect(),
                ..Default::default()
            },
            elapsed_secs: 0.0,
            interval_events: 0,
        }
    }

    fn compares_tables(&self) -> bool {
        self.comparison.source == CompareSource::Tables
    }

    pub fn add_metadata(&mut self, m: &Metadata) {
        self.names.add(m);
        if let Metadata::Client {
            addr,
            device,
            block_size,
            ..
        } = m
        {
            let client = self
                .clients
                .entry(*addr)
                .or_insert_with(|| ClientStats::new(*addr, device.clone(), *block_size));
            client.device.clone_from(device);
            client.block_size = *block_size;
        }
        if self.compares_tables() {
            self.comparison.add_metadata(m);
        }
    }

    pub fn add_wait(&mut self, w: &LockWait) {
        self.waits += 1;
        self.interval_events += 1;
        let stats = self
            .locks
            .entry(LockKey {
                addr: w.lock_addr,
                flags: w.flags,
            })
            .or_default();
        stats.hist.add(w.wait_ns);
        if let Some(id) = w.stack_id {
            let s = stats.stacks.entry(id).or_default();
            s.waits += 1;
            s.total_ns += w.wait_ns;
        }
        if w.owner != LockOwner::Unknown
            && (stats.owners.len() < MAX_OWNERS || stats.owners.contains_key(&w.owner))
        {
            let s = stats.owners.entry(w.owner).or_default();
            s.waits += 1;
            s.total_ns += w.wait_ns;
        }
        if stats.waiters.len() < MAX_WAITERS || stats.waiters.contains_key(&w.tid) {
            let s = stats.waiters.entry(w.tid).or_default();
            s.waits += 1;
            s.total_ns += w.wait_ns;
        }
        if w.op.is_some()
            && self.names.bufio_lock(w.lock_addr).is_some()
            && let Some(client) = self.clients.get_mut(&w.op_client)
        {
            client.waits.add(w.wait_ns);
        }
        if self.compares_tables() {
            self.comparison.add_wait(w);
        }
    }

    pub fn add_op(&mut self, op: &BufioOp) {
        self.ops += 1;
        self.interval_events += 1;
        if op.has_client() {
            self.clients
                .entry(op.client)
                .or_insert_with(|| ClientStats::new(op.client, "?".into(), 0))
                .add_op(op);
        }
        if matches!(op.kind, OpKind::Get | OpKind::Read | OpKind::New) {
            self.acquisitions
                .entry(op.tid)
                .or_insert_with(ThreadAcquisitions::new)
                .add(op);
        }
        if self.compares_tables() {
            self.comparison.add_op(op);
        }
    }

    /// An event of a trace played back (`replay --tui`).
    pub fn add_played(&mut self, e: Played) {
        match e {
            Played::Wait(w) => self.add_wait(w),
            Played::Op(o) => self.add_op(o),
            Played::Rewound => self.comparison.discard_window(),
        }
    }

    /// Ends an interval of `secs` seconds on the source's clock: rates, series, the lock rows,
    /// and the comparison's next window for the designs (if any).
    pub fn tick(&mut self, secs: f64, sort: LockSort, filter: &str) -> Option<Cut> {
        let secs = secs.max(1e-6);
        self.elapsed_secs += secs;
        let t = self.elapsed_secs;
        self.header.events_per_sec = self.interval_events as f64 / secs;
        let mut ops = 0;
        for client in self.clients.values_mut() {
            let counted = client.counted().ops;
            for ((rate, at_tick), now) in client
                .rates
                .iter_mut()
                .zip(client.counted_at_tick.iter_mut())
                .zip(counted)
            {
                let n = now.saturating_sub(*at_tick);
                *rate = n as f64 / secs;
                ops += n;
                *at_tick = now;
            }
        }
        let mut waits = 0;
        for lock in self.locks.values_mut() {
            let counted = lock.counted().count;
            let n = counted.saturating_sub(lock.counted_at_tick);
            lock.waits_per_sec = n as f64 / secs;
            lock.counted_at_tick = counted;
            waits += n;
        }
        push_point(&mut self.series.ops_per_sec, (t, ops as f64 / secs));
        push_point(&mut self.series.waits_per_sec, (t, waits as f64 / secs));
        self.interval_events = 0;
        self.refresh_rows(sort, filter);
        self.comparison.cut(t)
    }

    /// The in-kernel wait histograms as read now (cumulative since the probes attached, per lock,
    /// operation and lock type), for the tables' counts: a lock only they have seen gets a row
    /// of its own, without stacks.
    pub fn set_kernel_waits(&mut self, histograms: &[(WaitHistKey, WaitHist)]) {
        let mut by_lock: HashMap<LockKey, Log2Hist> = HashMap::new();
        let mut by_client: HashMap<u64, Log2Hist> = HashMap::new();
        for (key, hist) in histograms {
            let hist = Log2Hist::from(hist);
            // A client's waits are those on its own locks inside an operation, as the stream's.
            if key.op != 0
                && let Some(client) = self.names.bufio_lock_client(key.lock_addr)
            {
                by_client.entry(client).or_default().merge(&hist);
            }
            by_lock
                .entry(LockKey {
                    addr: key.lock_addr,
                    flags: key.flags,
                })
                .or_default()
                .merge(&hist);
        }
        for (client, hist) in by_client {
            if let Some(stats) = self.clients.get_mut(&client) {
                stats.kernel_waits = Some(hist);
            }
        }
        for (key, hist) in by_lock {
            self.locks.entry(key).or_default().kernel = Some(hist);
        }
    }

    /// The kernel's operation counters as read now (cumulative since the probes attached, per
    /// client and kind), for the clients' counts, rates and hit ratios.
    pub fn set_kernel_ops(&mut self, counts: &[(OpStatsKey, OpStats)]) {
        let mut by_client: HashMap<u64, OpTally> = HashMap::new();
        for (key, stats) in counts {
            let Some(kind) = OpKind::from_u8(key.op as u8) else {
                continue;
            };
            if key.client == 0 {
                continue;
            }
            let tally = by_client.entry(key.client).or_default();
            tally.ops[kind as usize - 1] += stats.count;
            tally.hits += stats.hits;
            tally.misses += stats.misses;
        }
        for (client, tally) in by_client {
            self.clients
                .entry(client)
                .or_insert_with(|| ClientStats::new(client, "?".into(), 0))
                .kernel = Some(tally);
        }
    }

    /// Takes a stretch of events fed at once (a seek) without turning it into rates or a
    /// comparison window: interval counts are dropped, totals kept.
    pub fn skip_interval(&mut self, sort: LockSort, filter: &str) {
        for client in self.clients.values_mut() {
            client.counted_at_tick = client.counted().ops;
        }
        for lock in self.locks.values_mut() {
            lock.counted_at_tick = lock.counted().count;
        }
        self.interval_events = 0;
        self.comparison.discard_window();
        self.refresh_rows(sort, filter);
    }

    /// Folds a design's result on a window into the comparison and, once every design has
    /// reported on it, the p99 series.
    pub fn design_result(&mut self, result: DesignResult) {
        let Some((t, kernel_p99, designs_p99)) = self.comparison.fold(result) else {
            return;
        };
        push_point(&mut self.series.kernel_p99_us, (t, kernel_p99));
        for ((_, series), p99) in self.series.designs_p99_us.iter_mut().zip(designs_p99) {
            push_point(series, (t, p99));
        }
    }

    /// Starts the comparison and its series over with these designs.
    pub fn set_designs(&mut self, designs: &[Design]) {
        self.comparison.set_designs(designs);
        self.series.kernel_p99_us.clear();
        self.series.designs_p99_us = designs.iter().map(|d| (*d, Vec::new())).collect();
    }

    /// Compares `client` from the next window on.
    pub fn choose_client(&mut self, client: u64) {
        self.comparison.choose(client);
        self.series.kernel_p99_us.clear();
        for (_, s) in &mut self.series.designs_p99_us {
            s.clear();
        }
    }

    /// Derives the lock table: named, filtered by a case-insensitive substring of the name, of
    /// the type and address ("mutex 0xffff…", as `--lock` matches them), or of a caller, sorted.
    pub fn refresh_rows(&mut self, sort: LockSort, filter: &str) {
        let filter = filter.to_lowercase();
        let mut rows: Vec<LockRow> = self
            .locks
            .iter()
            .map(|(key, s)| (*key, self.row(*key, s)))
            .filter(|(key, row)| {
                filter.is_empty()
                    || row.name.to_lowercase().contains(&filter)
                    || format!("{} {:#x}", row.type_name, key.addr)
                        .to_lowercase()
                        .contains(&filter)
                    || row
                        .callers
                        .iter()
                        .any(|(c, _)| c.to_lowercase().contains(&filter))
            })
            .map(|(_, row)| row)
            .collect();
        rows.sort_by(|a, b| {
            let key = |r: &LockRow| match sort {
                LockSort::Total => (r.total_ns as f64, r.waits as f64),
                LockSort::Waits => (r.waits as f64, r.total_ns as f64),
                LockSort::Rate => (r.waits_per_sec, r.total_ns as f64),
                LockSort::Max => (r.max_ns as f64, r.total_ns as f64),
                LockSort::P99 => (r.p99_ns as f64, r.total_ns as f64),
            };
            key(b)
                .partial_cmp(&key(a))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.key.cmp(&b.key))
        });
        self.lock_rows = rows;
        self.role_rows = self.derive_role_rows();
    }

    /// Acquisition time by thread role, slowest mean first (ties: more acquisitions first).
    fn derive_role_rows(&self) -> Vec<RoleRow> {
        let mut roles: BTreeMap<&str, (usize, ThreadAcquisitions)> = BTreeMap::new();
        for (tid, thread) in &self.acquisitions {
            let (threads, sum) = roles
                .entry(thread_role(self.names.thread_name(*tid)))
                .or_insert_with(|| (0, ThreadAcquisitions::new()));
            *threads += 1;
            sum.durations
                .add(&thread.durations)
                .expect("histograms of the same precision add");
            sum.lock_wait_ns = sum.lock_wait_ns.saturating_add(thread.lock_wait_ns);
        }
        let mut rows: Vec<RoleRow> = roles
            .into_iter()
            .map(|(role, (threads, sum))| {
                let h = &sum.durations;
                let total = h.mean() * h.len() as f64;
                RoleRow {
                    role: role.to_string(),
                    threads,
                    acquisitions: h.len(),
                    mean_ns: h.mean().round() as u64,
                    p50_ns: h.value_at_quantile(0.5),
                    p99_ns: h.value_at_quantile(0.99),
                    mutex_wait_share: if total > 0.0 {
                        (sum.lock_wait_ns as f64 / total).min(1.0)
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            b.mean_ns
                .cmp(&a.mean_ns)
                .then(b.acquisitions.cmp(&a.acquisitions))
                .then(a.role.cmp(&b.role))
        });
        rows
    }

    fn row(&self, key: LockKey, s: &LockStats) -> LockRow {
        let mut callers: HashMap<String, u64> = HashMap::new();
        for (id, count) in &s.stacks {
            if let Some(caller) = self.names.caller(*id) {
                *callers.entry(caller).or_default() += count.waits;
            }
        }
        let mut callers: Vec<(String, u64)> = callers.into_iter().collect();
        callers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        callers.truncate(TOP_CALLERS);
        // A holder seen with several stacks (`--owner-stacks`) is one row per thing it did.
        let mut holders: HashMap<String, u64> = HashMap::new();
        for (owner, count) in &s.owners {
            let mut name = self.names.owner_name(owner);
            if let Some(doing) = owner
                .thread()
                .and_then(|o| o.stack_id)
                .and_then(|id| self.names.doing(id))
            {
                name.push_str(": ");
                name.push_str(&doing);
            }
            *holders.entry(name).or_default() += count.waits;
        }
        let mut holders: Vec<(String, u64)> = holders.into_iter().collect();
        holders.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        holders.truncate(TOP_CALLERS);
        let mut cgroups: HashMap<&str, u64> = HashMap::new();
        for (tid, count) in &s.waiters {
            let cgroup = self.names.thread_cgroup(*tid).unwrap_or(UNKNOWN_CGROUP);
            *cgroups.entry(cgroup).or_default() += count.waits;
        }
        let mut cgroups: Vec<(String, u64)> = cgroups
            .into_iter()
            .map(|(cgroup, waits)| (cgroup.to_string(), waits))
            .collect();
        cgroups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        cgroups.truncate(TOP_CALLERS);
        let counted = s.counted();
        LockRow {
            key,
            name: self.names.lock_name(key.addr, key.flags),
            type_name: LockFlags(key.flags).type_name(),
            waits: counted.count,
            streamed: s.hist.count,
            waits_per_sec: s.waits_per_sec,
            total_ns: counted.total_ns,
            mean_ns: counted.mean_ns(),
            p50_ns: counted.quantile(0.5),
            p99_ns: counted.quantile(0.99),
            max_ns: counted.max_ns,
            callers,
            holders,
            cgroups,
        }
    }

    /// The lock's stacks as names (from the lock function on), most waits first.
    pub fn stacks_of(&self, key: LockKey) -> Vec<(StackCount, Vec<String>)> {
        let Some(stats) = self.locks.get(&key) else {
            return Vec::new();
        };
        let mut stacks: Vec<(StackCount, Vec<String>)> = stats
            .stacks
            .iter()
            .map(|(id, count)| {
                (
                    *count,
                    self.names
                        .lock_stack(*id)
                        .unwrap_or_else(|| vec![format!("stack {id} (not read yet)")]),
                )
            })
            .collect();
        stacks.sort_by(|a, b| {
            b.0.total_ns
                .cmp(&a.0.total_ns)
                .then(b.0.waits.cmp(&a.0.waits))
        });
        stacks
    }

    /// Stack ids the names do not know yet, waiters' and owners' (the live runner reads and
    /// symbolizes them).
    pub fn unnamed_stacks(&self) -> HashSet<u32> {
        self.locks
            .values()
            .flat_map(|s| {
                let owners = s.owners.keys().filter_map(|o| o.thread()?.stack_id);
                s.stacks.keys().copied().chain(owners)
            })
            .filter(|id| self.names.stack(*id).is_none())
            .collect()
    }

    /// Clients by operations per second, busiest first (the clients panel's order).
    pub fn client_rows(&self) -> Vec<&ClientStats> {
        let mut rows: Vec<&ClientStats> = self.clients.values().collect();
        rows.sort_by(|a, b| {
            b.ops_per_sec()
                .partial_cmp(&a.ops_per_sec())
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.total_ops().cmp(&a.total_ops()))
                .then(a.addr.cmp(&b.addr))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use bufscope_trace::Thread;
    use reference_cache::replay::ReplayClock;

    use super::*;

    /// The window the next tick cuts, prepared as the shadow would.
    fn window_of(m: &mut Model) -> crate::live::shadow::Window {
        m.tick(1.0, LockSort::Total, "")
            .expect("a window to compare")
            .prepare()
    }

    fn acquisition(tid: u32, kind: OpKind, duration_ns: u64, lock_wait_ns: u64) -> BufioOp {
        BufioOp {
            tid,
            tgid: 1,
            kind,
            duration_ns,
            lock_wait_ns,
            result: OpResult::Hit,
            ..BufioOp::default()
        }
    }

    /// A live model of a 6.1 kernel without dm-bufio probes, comparing `designs`.
    fn live_model(designs: &[Design]) -> Model {
        Model::new(
            Header::new(
                "6.1".into(),
                Source::Live {
                    attach: "tp_btf".into(),
                },
                BufioStatus::Unavailable(String::new()),
            ),
            CompareSource::Tables,
            designs,
        )
    }

    #[test]
    fn acquisition_time_is_grouped_by_role_once_threads_are_named() {
        let mut m = live_model(&[]);
        // Sixteen hot threads at 10–25 µs, the dirtier at 1 ms of which half is mutex wait,
        // releases (not acquisitions) ignored, one thread never named.
        for tid in 0..16u32 {
            for i in 0..100u64 {
                m.add_op(&acquisition(tid, OpKind::Read, 10_000 + i * 150, 1_000));
                m.add_op(&acquisition(tid, OpKind::Release, 5_000_000, 0));
            }
        }
        for _ in 0..10 {
            m.add_op(&acquisition(16, OpKind::New, 1_000_000, 500_000));
        }
        m.add_op(&acquisition(99, OpKind::Get, 7_000, 0));
        // The names come after the operations, as a recording's do.
        m.add_metadata(&Metadata::Threads {
            threads: (0..16)
                .map(|tid| Thread {
                    tid,
                    tgid: 1,
                    comm: format!("bufio_hot/{tid}"),
                    cgroup: None,
                })
                .chain([Thread {
                    tid: 16,
                    tgid: 1,
                    comm: "bufio_dirty".into(),
                    cgroup: None,
                }])
                .collect(),
        });
        m.refresh_rows(LockSort::Total, "");
        let rows: Vec<(&str, usize, u64)> = m
            .role_rows
            .iter()
            .map(|r| (r.role.as_str(), r.threads, r.acquisitions))
            .collect();
        assert_eq!(
            rows,
            [
                ("bufio_dirty", 1, 10),
                ("bufio_hot", 16, 1_600),
                ("?", 1, 1)
            ],
            "slowest mean first"
        );
        let hot = &m.role_rows[1];
        // Durations 10,000..24,850 ns in steps of 150: mean 17,425, median 17,350.
        assert!(hot.mean_ns.abs_diff(17_425) <= 175, "{hot:?}");
        assert!(hot.p50_ns.abs_diff(17_350) <= 175, "{hot:?}");
        assert!(hot.p99_ns.abs_diff(24_700) <= 250, "{hot:?}");
        assert!(
            (hot.mutex_wait_share - 1_000.0 / 17_425.0).abs() < 0.002,
            "{hot:?}"
        );
        let dirty = &m.role_rows[0];
        assert!((dirty.mutex_wait_share - 0.5).abs() < 0.01, "{dirty:?}");
    }

    fn compared(timing: TimingMode) -> Model {
        let mut m = live_model(&[Design::Classic]);
        m.comparison.window_timing = timing;
        m
    }

    /// Client [`CLIENT`] (device 7:0) and its mutex at [`MUTEX`].
    const CLIENT: u64 = 7;
    const MUTEX: u64 = CLIENT + 0x40;

    /// Thread 2's wait on [`MUTEX`] inside a get, owner unknown.
    fn mutex_wait(start_ns: u64, wait_ns: u64) -> LockWait {
        LockWait {
            start_ns,
            wait_ns,
            lock_addr: MUTEX,
            tid: 2,
            tgid: 1,
            op: Some(OpKind::Get),
            op_client: CLIENT,
            ..LockWait::default()
        }
    }

    /// [`compared`] with automatic timing, its client [`CLIENT`] announced with its mutex.
    fn compared_on_client_7() -> Model {
        let mut m = compared(TimingMode::Auto);
        announce_client_7(&mut m);
        m
    }

    /// Client [`CLIENT`] (device 7:0, 4 KiB blocks) with its mutex at [`MUTEX`].
    fn announce_client_7(m: &mut Model) {
        m.add_metadata(&Metadata::Client {
            addr: CLIENT,
            device: "7:0".into(),
            block_size: 4096,
            locks: Some(bufscope_trace::ClientLocks {
                mutex: MUTEX,
                ..Default::default()
            }),
            seen_ns: 0,
            destroyed_ns: None,
        });
    }

    /// Read hits of 5 µs that held the client mutex 2 µs and waited 1 µs for it: the window's
    /// calibration holds 2 µs and spends the other 2 µs outside the lock.
    fn read_hits(m: &mut Model, hold_ns: u64) {
        for i in 0..10u64 {
            m.add_op(&BufioOp {
                start_ns: 1_000 + i * 10_000,
                duration_ns: 5_000,
                lock_wait_ns: 1_000,
                lock_hold_ns: hold_ns,
                client: 7,
                block: i,
                tid: 1,
                tgid: 1,
                kind: OpKind::Read,
                result: OpResult::Hit,
                ..BufioOp::default()
            });
        }
    }

    #[test]
    fn windows_run_at_the_costs_their_operations_measured_as_timing_says() {
        let mut m = compared(TimingMode::Auto);
        read_hits(&mut m, 2_000);
        let timing = window_of(&mut m).timing.unwrap();
        let read = timing.cost(reference_cache::replay::Step::Read);
        assert_eq!((read.hit_hold_ns, read.outside_ns), (2_000, 2_000));

        // Without measured holds, auto leaves the designs at host speed and kernel does not.
        let mut m = compared(TimingMode::Auto);
        read_hits(&mut m, 0);
        assert_eq!(window_of(&mut m).timing, None);
        let mut m = compared(TimingMode::Kernel);
        read_hits(&mut m, 0);
        let timing = window_of(&mut m).timing.unwrap();
        // No hold measured: the whole net time (5 - 1 µs) is taken as the critical section.
        assert_eq!(
            timing.cost(reference_cache::replay::Step::Read).hit_hold_ns,
            4_000
        );

        // Host: the shadow's own options decide.
        let mut m = compared(TimingMode::Host);
        read_hits(&mut m, 2_000);
        assert_eq!(window_of(&mut m).timing, None);
    }

    #[test]
    fn a_background_run_that_locked_no_client_shows_as_no_client_and_replays_nowhere() {
        let mut m = compared(TimingMode::Auto);
        let cleanup = |start_ns| BufioOp {
            start_ns,
            duration_ns: 500_000,
            kind: OpKind::AgeCleanup,
            ..BufioOp::default()
        };
        m.add_op(&cleanup(0));
        read_hits(&mut m, 2_000);
        m.add_op(&cleanup(200_000));
        assert_eq!(m.ops, 12);
        assert_eq!(m.clients.keys().copied().collect::<Vec<_>>(), [7]);
        let window = window_of(&mut m);
        assert_eq!(
            window.streams.iter().map(|s| s.steps.len()).sum::<usize>(),
            10,
            "the reads only"
        );
    }

    #[test]
    fn a_loop_of_the_played_sample_drops_the_window_it_cuts_through() {
        let mut m = compared(TimingMode::Auto);
        read_hits(&mut m, 2_000);
        m.add_played(Played::Rewound);
        assert!(
            m.tick(1.0, LockSort::Total, "").is_none(),
            "nothing left to replay"
        );
        read_hits(&mut m, 2_000);
        let window = window_of(&mut m);
        assert_eq!(
            window.streams.iter().map(|s| s.steps.len()).sum::<usize>(),
            10
        );
    }

    #[test]
    fn a_window_times_its_client_mutex_s_handoffs_from_its_own_waits_and_stamps() {
        let mut m = compared_on_client_7();
        // 150 read hits 10 µs apart, each holding the mutex 2 µs up to its release at +3 µs;
        // each of another thread's waits spans one release and ends 1 µs after it.
        for i in 0..150u64 {
            let start_ns = 1_000 + i * 10_000;
            m.add_op(&BufioOp {
                start_ns,
                duration_ns: 5_000,
                lock_hold_ns: 2_000,
                lock_attempt_ns: start_ns + 1_000,
                lock_release_ns: start_ns + 3_000,
                client: CLIENT,
                block: i,
                tid: 1,
                tgid: 1,
                kind: OpKind::Read,
                result: OpResult::Hit,
                ..BufioOp::default()
            });
            m.add_wait(&mutex_wait(start_ns + 2_000, 2_000));
        }
        let window = window_of(&mut m);
        let handoff = *window
            .timing
            .unwrap()
            .handoff()
            .expect("150 handoffs timed");
        assert_eq!(handoff.quantile_ns(0.5), 1_000);
        // All alike, so all as fast as the fastest: spinners'.
        assert_eq!(handoff.spins_per_1000, 1_000);
    }

    #[test]
    fn a_window_s_holds_reach_back_to_where_its_waiters_saw_them_held() {
        use bufscope_trace::{LockOwner, Owner};
        let mut m = compared_on_client_7();
        // Thread 1 tried at 2 µs and let go at 10 µs, 1 µs of hold by the probes (the rest on
        // a runqueue); thread 2 found it holding the mutex at 3 µs.
        m.add_op(&BufioOp {
            start_ns: 1_000,
            duration_ns: 10_000,
            lock_hold_ns: 1_000,
            lock_attempt_ns: 2_000,
            lock_release_ns: 10_000,
            client: CLIENT,
            tid: 1,
            tgid: 1,
            kind: OpKind::Read,
            result: OpResult::Hit,
            ..BufioOp::default()
        });
        m.add_wait(&LockWait {
            owner: LockOwner::Thread(Owner {
                tid: 1,
                tgid: 1,
                op: Some(OpKind::Read),
                stack_id: None,
            }),
            ..mutex_wait(3_000, 8_000)
        });
        let window = window_of(&mut m);
        let held = window.streams.iter().find(|s| s.tid == 1).unwrap().steps[0]
            .kernel
            .expect("a stamped hold");
        assert_eq!(
            (held.hold_ns, held.before_ns),
            (7_000, 2_000),
            "held from 3 µs, where the waiter saw it, to 10 µs; tried then"
        );
    }

    #[test]
    fn a_window_calibrated_from_its_own_operations_runs_in_virtual_time_where_asked() {
        let window = |timing, simulate, hold_ns| {
            let mut m = compared(timing);
            m.comparison.simulate_calibrated = simulate;
            read_hits(&mut m, hold_ns);
            window_of(&mut m)
        };
        // No misses in the window: reads take no time in the simulation.
        let simulated = Some(ReplayClock::Simulated { io_ns: 0 });
        assert_eq!(window(TimingMode::Auto, true, 2_000).clock, simulated);
        assert_eq!(window(TimingMode::Auto, false, 2_000).clock, None);
        // Not calibrated (no holds, auto timing): the shadow's options, on real threads.
        let uncalibrated = window(TimingMode::Auto, true, 0);
        assert_eq!((uncalibrated.timing, uncalibrated.clock), (None, None));
        assert_eq!(window(TimingMode::Host, true, 2_000).clock, None);
    }

    /// With `--owner-stacks`, a holder is listed once per thing it was doing, named from its
    /// stack once the runner has read it; until then the stack is among those still to read.
    #[test]
    fn holders_say_what_they_were_doing_once_their_stacks_are_read() {
        use bufscope_trace::{LockOwner, LockWait, Owner, Symbol};
        let mut m = live_model(&[]);
        let holder = |stack_id| {
            LockOwner::Thread(Owner {
                tid: 7,
                tgid: 7,
                op: None,
                stack_id,
            })
        };
        let wait = |owner| LockWait {
            lock_addr: 0xffff_8880_0000_1000,
            flags: bufscope_abi::LockFlags::WRITE,
            wait_ns: 1_000,
            tid: 9,
            owner,
            ..LockWait::default()
        };
        for _ in 0..3 {
            m.add_wait(&wait(holder(Some(0x8000_0001))));
        }
        m.add_wait(&wait(holder(None)));
        assert_eq!(m.unnamed_stacks(), HashSet::from_iter([0x8000_0001]));
        m.add_metadata(&Metadata::Stack {
            id: 0x8000_0001,
            frames: vec![0x10, 0x20],
        });
        let sym = |addr, name: &str| Symbol {
            addr,
            name: name.into(),
            module: None,
            lock_text: false,
        };
        m.add_metadata(&Metadata::Symbols {
            symbols: vec![sym(0x10, "handle_userfault"), sym(0x20, "vfs_write")],
        });
        assert!(m.unnamed_stacks().is_empty());
        m.tick(1.0, LockSort::Total, "");
        let row = &m.lock_rows[0];
        assert_eq!(
            row.holders,
            vec![
                ("7: handle_userfault ← vfs_write".to_string(), 3),
                ("7".to_string(), 1)
            ]
        );
    }

    /// An in-kernel histogram of `count` waits of `ns` each.
    fn kernel_hist(lock_addr: u64, op: u32, count: u64, ns: u64) -> (WaitHistKey, WaitHist) {
        let mut hist = WaitHist::ZERO;
        hist.count = count;
        hist.total_ns = count * ns;
        hist.max_ns = ns;
        hist.buckets[WaitHist::bucket(ns)] = count;
        (
            WaitHistKey {
                lock_addr,
                op,
                flags: 0,
            },
            hist,
        )
    }

    #[test]
    fn lock_rows_count_the_kernels_waits_not_only_those_streamed() {
        const QUIET: u64 = 0x99;
        const FULL_MAP: u64 = 0x55;
        let mut m = live_model(&[]);
        // The stream brought 10 of the mutex's waits, lost the rest; the kernel paired 1,000,
        // 400 of them inside gets, and 5 on a lock none of whose waits arrived.
        for i in 0..10 {
            m.add_wait(&mutex_wait(i * 10_000, 1_000));
        }
        // A histogram map that filled up saw only 3 of the 20 waits the stream brought.
        for i in 0..20 {
            m.add_wait(&LockWait {
                lock_addr: FULL_MAP,
                ..mutex_wait(i * 10_000, 300)
            });
        }
        m.set_kernel_waits(&[
            kernel_hist(MUTEX, 0, 600, 1_000),
            kernel_hist(MUTEX, OpKind::Get as u32, 400, 50_000),
            kernel_hist(QUIET, 0, 5, 2_000),
            kernel_hist(FULL_MAP, 0, 3, 300),
        ]);
        m.tick(2.0, LockSort::Total, "");
        let row = |m: &Model, addr: u64| {
            m.lock_rows
                .iter()
                .find(|r| r.key.addr == addr)
                .cloned()
                .unwrap_or_else(|| panic!("no row for {addr:#x}: {:?}", m.lock_rows))
        };
        let mutex = row(&m, MUTEX);
        assert_eq!((mutex.waits, mutex.streamed), (1_000, 10));
        assert_eq!(mutex.total_ns, 600 * 1_000 + 400 * 50_000);
        assert_eq!(mutex.max_ns, 50_000);
        assert_eq!(mutex.p50_ns, 1_024);
        assert_eq!(mutex.waits_per_sec, 500.0);
        let quiet = row(&m, QUIET);
        assert_eq!((quiet.waits, quiet.streamed), (5, 0));
        assert!(quiet.callers.is_empty());
        let full = row(&m, FULL_MAP);
        assert_eq!(
            (full.waits, full.streamed),
            (20, 20),
            "the stream's, the fuller"
        );
        assert_eq!(
            m.series.waits_per_sec.last().unwrap().1,
            (1_000 + 5 + 20) as f64 / 2.0
        );

        // The next interval's rate is the kernel's count since the last tick.
        m.add_wait(&mutex_wait(200_000, 1_000));
        m.set_kernel_waits(&[
            kernel_hist(MUTEX, 0, 900, 1_000),
            kernel_hist(MUTEX, OpKind::Get as u32, 400, 50_000),
        ]);
        m.tick(1.0, LockSort::Total, "");
        let mutex = row(&m, MUTEX);
        assert_eq!((mutex.waits, mutex.streamed), (1_300, 11));
        assert_eq!(mutex.waits_per_sec, 300.0);
        // The metrics count the kernel's waits too.
        let text = crate::live::metrics::render(&m, crate::live::metrics::Format::Classic);
        assert!(
            text.lines()
                .any(|l| l.starts_with("bufscope_lock_wait_seconds_count{") && l.ends_with(" 1300")),
            "{text}"
        );
    }

    #[test]
    fn clients_count_the_kernels_operations_not_only_those_streamed() {
        let mut m = live_model(&[]);
        let get = BufioOp {
            client: CLIENT,
            ..acquisition(2, OpKind::Get, 1_000, 0)
        };
        for _ in 0..3 {
            m.add_op(&get);
        }
        let counts = |gets: u64, reads: u64| {
            [
                (
                    OpStatsKey {
                        client: CLIENT,
                        op: OpKind::Get as u32,
                        _pad: 0,
                    },
                    OpStats {
                        count: gets,
                        hits: gets - 10,
                        misses: 10,
                        ..OpStats::default()
                    },
                ),
                (
                    OpStatsKey {
                        client: CLIENT,
                        op: OpKind::Read as u32,
                        _pad: 0,
                    },
                    OpStats {
                        count: reads,
                        misses: reads,
                        ..OpStats::default()
                    },
                ),
            ]
        };
        m.set_kernel_ops(&counts(100, 50));
        m.tick(1.0, LockSort::Total, "");
        let client = &m.clients[&CLIENT];
        assert_eq!(client.total_ops(), 150);
        assert_eq!(
            client.ops[OpKind::Get as usize - 1],
            3,
            "the stream's own count"
        );
        assert_eq!(client.rate(OpKind::Get), 100.0);
        assert_eq!(client.ops_per_sec(), 150.0);
        assert_eq!(client.hit_ratio(), Some(90.0 / 150.0));
        m.set_kernel_ops(&counts(130, 50));
        m.tick(2.0, LockSort::Total, "");
        assert_eq!(m.clients[&CLIENT].rate(OpKind::Get), 15.0);
        assert_eq!(m.series.ops_per_sec.last().unwrap().1, 15.0);
        let text = crate::live::metrics::render(&m, crate::live::metrics::Format::Classic);
        assert!(
            text.contains("bufscope_bufio_lookups_total{device=\"?\",result=\"miss\"} 60"),
            "{text}"
        );
    }

    #[test]
    fn a_clients_lock_waits_are_the_kernels_inside_its_operations() {
        let mut m = live_model(&[]);
        announce_client_7(&mut m);
        m.add_wait(&mutex_wait(0, 50_000));
        assert_eq!(m.clients[&CLIENT].counted_waits().count, 1);
        // 400 waits inside gets, 600 outside any operation (not the client's), 7 on a lock
        // that is no client's.
        m.set_kernel_waits(&[
            kernel_hist(MUTEX, OpKind::Get as u32, 400, 50_000),
            kernel_hist(MUTEX, 0, 600, 1_000),
            kernel_hist(0x99, OpKind::Get as u32, 7, 1_000),
        ]);
        let waits = m.clients[&CLIENT].counted_waits();
        assert_eq!((waits.count, waits.max_ns), (400, 50_000));
        assert_eq!(m.clients[&CLIENT].waits.count, 1, "the stream's own");
    }
}
