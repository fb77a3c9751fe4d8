//! Instrumented locks: a mutex and a reader-writer lock that record, per lock class, every
//! acquisition, the contended ones (the uncontended try failed, as in the kernel's slow path where
//! its contention tracepoints fire), how long those waited, and how long every hold lasted.
//! Each waits as a [`Locking`] says: sleeping, or spinning as a no-sleep client's locks do.
//!
//! Measurements go to the [`ThreadRecorder`] each thread owns and passes to every operation.

use std::{
    fmt,
    ops::{Deref, DerefMut},
};

use parking_lot::lock_api::{self, RawMutex, RawRwLock};

use crate::recorder::{PlanEvent, ThreadRecorder, clock};

/// How a design's locks wait: the raw locks under its [`InstrumentedMutex`] and
/// [`InstrumentedRwLock`], and the classes they are recorded under.
pub trait Locking: Send + Sync + 'static {
    /// The client lock's.
    type Mutex: RawMutex + Send + Sync;
    /// The tree locks'.
    type RwLock: RawRwLock + Send + Sync;
    /// Spinning locks: a no-sleep client's.
    const NO_SLEEP: bool;
    /// The client lock's class.
    const CLIENT: LockClass;
    /// The tree locks' classes, taken shared and exclusive.
    const TREE_READ: LockClass;
    const TREE_WRITE: LockClass;
}

/// A normal client's locks: the client mutex and rw_semaphore trees, whose waiters sleep.
#[derive(Debug)]
pub enum Sleeping {}

impl Locking for Sleeping {
    type Mutex = parking_lot::RawMutex;
    type RwLock = parking_lot::RawRwLock;
    const NO_SLEEP: bool = false;
    const CLIENT: LockClass = LockClass::ClientMutex;
    const TREE_READ: LockClass = LockClass::TreeRead;
    const TREE_WRITE: LockClass = LockClass::TreeWrite;
}

/// A no-sleep client's locks (DM_BUFIO_CLIENT_NO_SLEEP, as dm-verity's `try_verify_in_tasklet`
/// makes it): the client lock is a spinlock (`spin_lock_bh(&c->spinlock)`), fair like the
/// kernel's queued spinlock, and (6.4+) the trees are rwlocks (`read_lock_bh`), where readers
/// pass waiting writers as the kernel's do with bottom halves off. Waiters never sleep; each
/// turn of the spin loop yields the CPU, since a user-space holder can be preempted, which a
/// kernel spinlock's holder cannot (spinning out a time slice would time the scheduler instead).
#[derive(Debug)]
pub enum NoSleep {}

impl Locking for NoSleep {
    type Mutex = spin::mutex::TicketMutex<(), spin::relax::Yield>;
    type RwLock = spin::rwlock::RwLock<(), spin::relax::Yield>;
    const NO_SLEEP: bool = true;
    const CLIENT: LockClass = LockClass::ClientSpinlock;
    const TREE_READ: LockClass = LockClass::TreeRwlockRead;
    const TREE_WRITE: LockClass = LockClass::TreeRwlockWrite;
}

/// The lock classes dm-bufio has, named as bufscope reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockClass {
    /// The per-client mutex (`c->lock`).
    ClientMutex,
    /// A buffer tree's rw-lock taken shared (6.4+ `cache_get`, `cache_put`).
    TreeRead,
    /// A buffer tree's rw-lock taken exclusive (6.4+ insert, remove, mark, evict).
    TreeWrite,
    /// Module-wide state (the pre-6.4 global LRU spinlock, global cleanup).
    Global,
    /// A no-sleep client's lock (`c->spinlock`, `spin_lock_bh`), taken where others take the
    /// client mutex.
    ClientSpinlock,
    /// A no-sleep client's buffer tree rwlock taken shared (6.4+ `read_lock_bh`).
    TreeRwlockRead,
    /// A no-sleep client's buffer tree rwlock taken exclusive (6.4+ `write_lock_bh`).
    TreeRwlockWrite,
}

impl LockClass {
    pub const COUNT: usize = 7;

    pub const ALL: [LockClass; LockClass::COUNT] = [
        LockClass::ClientMutex,
        LockClass::TreeRead,
        LockClass::TreeWrite,
        LockClass::Global,
        LockClass::ClientSpinlock,
        LockClass::TreeRwlockRead,
        LockClass::TreeRwlockWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LockClass::ClientMutex => "client mutex",
            LockClass::TreeRead => "tree lock (read)",
            LockClass::TreeWrite => "tree lock (write)",
            LockClass::Global => "global",
            LockClass::ClientSpinlock => "client spinlock",
            LockClass::TreeRwlockRead => "tree rwlock (read)",
            LockClass::TreeRwlockWrite => "tree rwlock (write)",
        }
    }

    /// The client lock, whichever kind: the mutex or a no-sleep client's spinlock. (A design
    /// has one of the two.)
    pub fn is_client_lock(self) -> bool {
        matches!(self, LockClass::ClientMutex | LockClass::ClientSpinlock)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Times one acquisition: a failed try means contention, and the wait is measured from there.
fn acquire<G>(
    recorder: &ThreadRecorder,
    class: LockClass,
    instance: u32,
    try_lock: impl FnOnce() -> Option<G>,
    lock: impl FnOnce() -> G,
) -> (G, u64) {
    recorder.note(PlanEvent::Acquire { class, instance });
    if let Some(guard) = try_lock() {
        recorder.acquired(class, None);
        let acquired = clock().raw();
        recorder.section_began(acquired);
        return (guard, acquired);
    }
    let started = clock().raw();
    let guard = lock();
    recorder.spend_contended();
    let acquired = clock().raw();
    let wait_ns = clock().delta_as_nanos(started, acquired);
    recorder.acquired(class, Some(wait_ns));
    recorder.log_wait(class, instance, started, wait_ns);
    recorder.section_began(acquired);
    (guard, acquired)
}

/// A mutex that records its waits and holds under one lock class; `R` is how it waits
/// (a [`Locking::Mutex`]).
pub struct InstrumentedMutex<T, R = parking_lot::RawMutex> {
    class: LockClass,
    /// Which lock of its class this is, for wait logs (0 unless set).
    instance: u32,
    inner: lock_api::Mutex<R, T>,
}

impl<T, R> fmt::Debug for InstrumentedMutex<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedMutex")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl<T> InstrumentedMutex<T> {
    /// A sleeping mutex.
    pub fn new(class: LockClass, value: T) -> Self {
        Self::with_raw_lock(class, value)
    }
}

impl<T, R: RawMutex> InstrumentedMutex<T, R> {
    /// A mutex waiting as `R` does.
    pub fn with_raw_lock(class: LockClass, value: T) -> Self {
        Self {
            class,
            instance: 0,
            inner: lock_api::Mutex::new(value),
        }
    }

    pub fn lock<'a>(&'a self, recorder: &'a ThreadRecorder) -> MutexGuard<'a, T, R> {
        let (guard, acquired_at) = acquire(
            recorder,
            self.class,
            self.instance,
            || self.inner.try_lock(),
            || self.inner.lock(),
        );
        MutexGuard {
            guard,
            recorder,
            class: self.class,
            instance: self.instance,
            acquired_at,
        }
    }
}

pub struct MutexGuard<'a, T, R: RawMutex = parking_lot::RawMutex> {
    guard: lock_api::MutexGuard<'a, R, T>,
    recorder: &'a ThreadRecorder,
    class: LockClass,
    instance: u32,
    acquired_at: u64,
}

impl<T, R: RawMutex> fmt::Debug for MutexGuard<'_, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexGuard")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl<T, R: RawMutex> Drop for MutexGuard<'_, T, R> {
    fn drop(&mut self) {
        let held = clock().delta_as_nanos(self.acquired_at, clock().raw());
        self.recorder.released(self.class, self.instance, held);
    }
}

impl<T, R: RawMutex> Deref for MutexGuard<'_, T, R> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T, R: RawMutex> DerefMut for MutexGuard<'_, T, R> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A reader-writer lock that records shared holds under one class and exclusive holds under
/// another (the tree lock's read and write sides); `R` is how it waits (a [`Locking::RwLock`]).
pub struct InstrumentedRwLock<T, R = parking_lot::RawRwLock> {
    read_class: LockClass,
    write_class: LockClass,
    /// Which lock of its class this is (a tree's index), for wait logs.
    instance: u32,
    inner: lock_api::RwLock<R, T>,
}

impl<T, R> fmt::Debug for InstrumentedRwLock<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedRwLock")
            .field("read_class", &self.read_class)
            .field("write_class", &self.write_class)
            .finish_non_exhaustive()
    }
}

impl<T> InstrumentedRwLock<T> {
    /// A sleeping reader-writer lock.
    pub fn new(read_class: LockClass, write_class: LockClass, value: T) -> Self {
        Self::with_raw_lock(read_class, write_class, value)
    }
}

impl<T, R: RawRwLock> InstrumentedRwLock<T, R> {
    /// A reader-writer lock waiting as `R` does.
    pub fn with_raw_lock(read_class: LockClass, write_class: LockClass, value: T) -> Self {
        Self {
            read_class,
            write_class,
            instance: 0,
            inner: lock_api::RwLock::new(value),
        }
    }

    /// Numbers this lock among the locks of its classes (e.g. a tree's index), so that logged
    /// waits say which one was waited for.
    pub fn with_instance(mut self, instance: u32) -> Self {
        self.instance = instance;
        self
    }

    pub fn read<'a>(&'a self, recorder: &'a ThreadRecorder) -> ReadGuard<'a, T, R> {
        let (guard, acquired_at) = acquire(
            recorder,
            self.read_class,
            self.instance,
            || self.inner.try_read(),
            || self.inner.read(),
        );
        ReadGuard {
            guard,
            recorder,
            class: self.read_class,
            instance: self.instance,
            acquired_at,
        }
    }

    pub fn write<'a>(&'a self, recorder: &'a ThreadRecorder) -> WriteGuard<'a, T, R> {
        let (guard, acquired_at) = acquire(
            recorder,
            self.write_class,
            self.instance,
            || self.inner.try_write(),
            || self.inner.write(),
        );
        WriteGuard {
            guard,
            recorder,
            class: self.write_class,
            instance: self.instance,
            acquired_at,
        }
    }
}

pub struct ReadGuard<'a, T, R: RawRwLock = parking_lot::RawRwLock> {
    guard: lock_api::RwLockReadGuard<'a, R, T>,
    recorder: &'a ThreadRecorder,
    class: LockClass,
    instance: u32,
    acquired_at: u64,
}

impl<T, R: RawRwLock> fmt::Debug for ReadGuard<'_, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadGuard")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl<T, R: RawRwLock> Drop for ReadGuard<'_, T, R> {
    fn drop(&mut self) {
        let held = clock().delta_as_nanos(self.acquired_at, clock().raw());
        self.recorder.released(self.class, self.instance, held);
    }
}

impl<T, R: RawRwLock> Deref for ReadGuard<'_, T, R> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

pub struct WriteGuard<'a, T, R: RawRwLock = parking_lot::RawRwLock> {
    guard: lock_api::RwLockWriteGuard<'a, R, T>,
    recorder: &'a ThreadRecorder,
    class: LockClass,
    instance: u32,
    acquired_at: u64,
}

impl<T, R: RawRwLock> fmt::Debug for WriteGuard<'_, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteGuard")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl<T, R: RawRwLock> Drop for WriteGuard<'_, T, R> {
    fn drop(&mut self) {
        let held = clock().delta_as_nanos(self.acquired_at, clock().raw());
        self.recorder.released(self.class, self.instance, held);
    }
}

impl<T, R: RawRwLock> Deref for WriteGuard<'_, T, R> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T, R: RawRwLock> DerefMut for WriteGuard<'_, T, R> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc, Barrier,
            atomic::{AtomicI32, AtomicU64, Ordering},
        },
        thread,
        time::{Duration, Instant},
    };

    use super::*;

    /// How a thread that announced it was about to take a lock was seen stuck on it.
    #[derive(Debug, PartialEq, Eq)]
    enum Stuck {
        /// Asleep in the kernel: parked.
        Asleep,
        /// Still runnable, having spent a millisecond of CPU since it announced: spinning.
        Spinning,
    }

    /// A thread about to take a lock, announced so that the thread holding it can keep it until
    /// the other is stuck on it, however late the scheduler runs either: whether an acquisition
    /// is contended is then decided by the test, not by a sleep outlasting a busy machine.
    #[derive(Default)]
    struct Announced {
        /// The announcing thread's id; 0 until it announces.
        tid: AtomicI32,
        /// Its `pthread_t`, for its CPU clock; set before `tid`.
        thread: AtomicU64,
    }

    impl Announced {
        /// Called by the thread that will take the lock, immediately before it does: nothing
        /// between here and the attempt may sleep.
        fn about_to_lock(&self) {
            // SAFETY: pthread_self has no preconditions.
            let thread = unsafe { libc::pthread_self() };
            self.thread.store(thread as u64, Ordering::Relaxed);
            // SAFETY: gettid has no preconditions.
            self.tid.store(unsafe { libc::gettid() }, Ordering::Release);
        }

        /// Waits until the announced thread is asleep or has spun for 1 ms of CPU since it
        /// announced (its attempt, which takes nanoseconds, has failed by then).
        fn wait_until_stuck(&self) -> Stuck {
            const SPUN_NS: u64 = 1_000_000;
            let deadline = Instant::now() + Duration::from_secs(60);
            let tid = loop {
                match self.tid.load(Ordering::Acquire) {
                    0 => thread::yield_now(),
                    tid => break tid,
                }
                assert!(
                    Instant::now() < deadline,
                    "the waiter never announced itself"
                );
            };
            let started = self.cpu_ns();
            loop {
                let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                    .expect("read the waiter's /proc stat");
                // "pid (comm) S ...": the state follows the last ')'.
                let state = stat[stat.rfind(')').expect("a /proc stat line") + 2..]
                    .chars()
                    .next();
                if matches!(state, Some('S' | 'D')) {
                    return Stuck::Asleep;
                }
                if self.cpu_ns() - started >= SPUN_NS {
                    return Stuck::Spinning;
                }
                assert!(
                    Instant::now() < deadline,
                    "the waiter neither slept nor spun in 60 s"
                );
                thread::yield_now();
            }
        }

        /// The announced thread's time on a CPU so far, read from its CPU clock, which brings
        /// a running thread's time up to date. (Its /proc schedstat does not: there a running
        /// thread's time lags until the next tick, and a jump then can carry time it ran before
        /// it announced, enough to pass for a millisecond of spinning.)
        fn cpu_ns(&self) -> u64 {
            let thread = self.thread.load(Ordering::Relaxed) as libc::pthread_t;
            let mut clock: libc::clockid_t = 0;
            // SAFETY: `thread` is a live thread's (it is stuck on a lock the caller holds) and
            // `clock` is a valid clockid_t to write to.
            let rc = unsafe { libc::pthread_getcpuclockid(thread, &mut clock) };
            assert_eq!(rc, 0, "pthread_getcpuclockid of the waiter");
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `now` is a valid timespec to write to.
            let rc = unsafe { libc::clock_gettime(clock, &mut now) };
            assert_eq!(rc, 0, "clock_gettime of the waiter's CPU clock");
            now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
        }
    }

    #[test]
    fn uncontended_acquisitions_are_not_waits() {
        let lock = InstrumentedMutex::new(LockClass::ClientMutex, 0u32);
        let rec = ThreadRecorder::new();
        for _ in 0..100 {
            *lock.lock(&rec) += 1;
        }
        let stats = rec.class(LockClass::ClientMutex);
        assert_eq!(stats.acquisitions, 100);
        assert_eq!(stats.contended, 0);
        assert_eq!(stats.wait_ns.len(), 0);
        assert_eq!(stats.hold_ns.len(), 100);
    }

    /// The calling thread's time on a CPU so far.
    fn thread_cpu_ns() -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to write to.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    /// What the thread of [`held_elsewhere`] saw.
    struct Holder {
        /// Its client-mutex figures.
        stats: crate::recorder::ClassStats,
        /// How the waiter was seen stuck.
        stuck: Stuck,
        /// CPU time its own (uncontended) acquisition took.
        acquisition_cpu_ns: u64,
    }

    /// Another thread takes `lock` (spending `cost`'s timing) and, once this one has announced
    /// and is stuck on it, holds it `hold` longer. This thread must call `lock` right after
    /// `about_to_lock`.
    fn held_elsewhere(
        lock: &Arc<InstrumentedMutex<()>>,
        cost: crate::timing::StepCost,
        hold: Duration,
    ) -> (Arc<Announced>, thread::JoinHandle<Holder>) {
        let holding = Arc::new(Barrier::new(2));
        let waiter = Arc::new(Announced::default());
        let holder = {
            let (lock, holding, waiter) =
                (Arc::clone(lock), Arc::clone(&holding), Arc::clone(&waiter));
            thread::spawn(move || {
                let rec = ThreadRecorder::new();
                rec.set_step_cost(cost);
                let before = thread_cpu_ns();
                let guard = lock.lock(&rec);
                let acquisition_cpu_ns = thread_cpu_ns() - before;
                holding.wait();
                let stuck = waiter.wait_until_stuck();
                thread::sleep(hold);
                drop(guard);
                Holder {
                    stats: rec.class(LockClass::ClientMutex),
                    stuck,
                    acquisition_cpu_ns,
                }
            })
        };
        holding.wait();
        (waiter, holder)
    }

    #[test]
    fn a_blocked_acquisition_records_its_wait() {
        let lock = Arc::new(InstrumentedMutex::new(LockClass::ClientMutex, ()));
        let (announced, holder) =
            held_elsewhere(&lock, Default::default(), Duration::from_millis(30));
        let rec = ThreadRecorder::new();
        announced.about_to_lock();
        drop(lock.lock(&rec));
        let waiter = rec.class(LockClass::ClientMutex);
        let Holder {
            stats: holder,
            stuck,
            ..
        } = holder.join().unwrap();
        assert_eq!(stuck, Stuck::Asleep, "a mutex's waiter sleeps");
        assert_eq!((waiter.acquisitions, waiter.contended), (1, 1));
        assert!(
            waiter.wait_ns.max() >= 20_000_000,
            "waited {} ns",
            waiter.wait_ns.max()
        );
        assert!(
            holder.hold_ns.max() >= 25_000_000,
            "held {} ns",
            holder.hold_ns.max()
        );

        let mut report = crate::Report::default();
        report.add(&rec);
        assert_eq!(report.class(LockClass::ClientMutex).contended, 1);
    }

    #[test]
    fn a_contended_acquisition_takes_the_kernel_s_cost_of_one_and_an_uncontended_does_not() {
        use crate::timing::StepCost;
        const CONTENDED_NS: u64 = 20_000_000;
        let cost = StepCost {
            contended_ns: CONTENDED_NS,
            ..StepCost::default()
        };
        let lock = Arc::new(InstrumentedMutex::new(LockClass::ClientMutex, ()));
        let (announced, holder) = held_elsewhere(&lock, cost, Duration::from_millis(5));
        let rec = ThreadRecorder::new();
        rec.set_step_cost(cost);
        let started = Instant::now();
        announced.about_to_lock();
        let guard = lock.lock(&rec);
        // The cost is spent holding the lock, once it is taken, and counts in the wait (which
        // would otherwise end with the holder's 5 ms sleep).
        let waited = started.elapsed();
        drop(guard);
        let (waiter, holder) = (rec.class(LockClass::ClientMutex), holder.join().unwrap());
        assert_eq!((waiter.contended, holder.stats.contended), (1, 0));
        assert!(
            waited >= Duration::from_nanos(CONTENDED_NS),
            "took {waited:?}"
        );
        let wait = waiter.wait_ns.max();
        assert!(
            wait >= waiter.wait_ns.lowest_equivalent(CONTENDED_NS),
            "waited {wait} ns"
        );
        // The holder took the lock uncontended: no cost spent (spinning it would have taken a
        // share of its 20 ms on a CPU, however busy the machine).
        assert!(
            holder.acquisition_cpu_ns < 1_000_000,
            "its uncontended acquisition spent {} ns on a CPU",
            holder.acquisition_cpu_ns
        );
    }

    #[test]
    fn readers_share_and_a_writer_waits_for_them() {
        let lock = Arc::new(InstrumentedRwLock::new(
            LockClass::TreeRead,
            LockClass::TreeWrite,
            0u64,
        ));
        let rec = ThreadRecorder::new();
        let first = lock.read(&rec);
        let second = lock.read(&rec);
        assert_eq!(rec.class(LockClass::TreeRead).contended, 0, "readers share");
        let announced = Arc::new(Announced::default());
        let writer = {
            let (lock, announced) = (Arc::clone(&lock), Arc::clone(&announced));
            thread::spawn(move || {
                let rec = ThreadRecorder::new();
                announced.about_to_lock();
                *lock.write(&rec) += 1;
                rec.class(LockClass::TreeWrite)
            })
        };
        assert_eq!(announced.wait_until_stuck(), Stuck::Asleep);
        thread::sleep(Duration::from_millis(20));
        drop((first, second));
        let writer = writer.join().unwrap();
        assert_eq!(writer.contended, 1);
        assert!(writer.wait_ns.max() >= 20_000_000);
        assert_eq!(*lock.read(&rec), 1);
    }

    #[test]
    fn a_no_sleep_lock_spins_and_records_its_wait_under_its_own_class() {
        let lock = Arc::new(
            InstrumentedMutex::<u32, <NoSleep as Locking>::Mutex>::with_raw_lock(
                NoSleep::CLIENT,
                0,
            ),
        );
        let holding = Arc::new(Barrier::new(2));
        let announced = Arc::new(Announced::default());
        let holder = {
            let (lock, holding, announced) = (
                Arc::clone(&lock),
                Arc::clone(&holding),
                Arc::clone(&announced),
            );
            thread::spawn(move || {
                let rec = ThreadRecorder::new();
                let mut guard = lock.lock(&rec);
                holding.wait();
                let stuck = announced.wait_until_stuck();
                thread::sleep(Duration::from_millis(30));
                *guard += 1;
                stuck
            })
        };
        let rec = ThreadRecorder::new();
        holding.wait();
        announced.about_to_lock();
        assert_eq!(*lock.lock(&rec), 1, "acquired after the holder let go");
        assert_eq!(holder.join().unwrap(), Stuck::Spinning, "it never slept");
        let spin = rec.class(LockClass::ClientSpinlock);
        assert_eq!((spin.acquisitions, spin.contended), (1, 1));
        assert!(
            spin.wait_ns.max() >= 20_000_000,
            "waited {} ns",
            spin.wait_ns.max()
        );
        assert_eq!(rec.class(LockClass::ClientMutex).acquisitions, 0);
    }
}
