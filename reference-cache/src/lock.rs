//! Instrumented locks: a mutex and a reader-writer lock that record, per lock class, every
//! acquisition, the contended ones (the uncontended try failed, as in the kernel's slow path where
//! its contention tracepoints fire), how long those waited, and how long every hold lasted.
//!
//! Measurements go to the [`ThreadRecorder`] each thread owns and passes to every operation.

use std::{
    fmt,
    ops::{Deref, DerefMut},
};

use crate::recorder::{ThreadRecorder, clock};

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
}

impl LockClass {
    pub const ALL: [LockClass; 4] = [
        LockClass::ClientMutex,
        LockClass::TreeRead,
        LockClass::TreeWrite,
        LockClass::Global,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LockClass::ClientMutex => "client mutex",
            LockClass::TreeRead => "tree lock (read)",
            LockClass::TreeWrite => "tree lock (write)",
            LockClass::Global => "global",
        }
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
    if let Some(guard) = try_lock() {
        recorder.acquired(class, None);
        let acquired = clock().raw();
        recorder.section_began(acquired);
        return (guard, acquired);
    }
    let started = clock().raw();
    let guard = lock();
    let acquired = clock().raw();
    let wait_ns = clock().delta_as_nanos(started, acquired);
    recorder.acquired(class, Some(wait_ns));
    recorder.log_wait(class, instance, started, wait_ns);
    recorder.section_began(acquired);
    (guard, acquired)
}

/// A mutex that records its waits and holds under one lock class.
pub struct InstrumentedMutex<T> {
    class: LockClass,
    /// Which lock of its class this is, for wait logs (0 unless set).
    instance: u32,
    inner: parking_lot::Mutex<T>,
}

impl<T> fmt::Debug for InstrumentedMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedMutex")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl<T> InstrumentedMutex<T> {
    pub fn new(class: LockClass, value: T) -> Self {
        Self {
            class,
            instance: 0,
            inner: parking_lot::Mutex::new(value),
        }
    }

    pub fn lock<'a>(&'a self, recorder: &'a ThreadRecorder) -> MutexGuard<'a, T> {
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
            acquired_at,
        }
    }
}

#[derive(Debug)]
pub struct MutexGuard<'a, T> {
    guard: parking_lot::MutexGuard<'a, T>,
    recorder: &'a ThreadRecorder,
    class: LockClass,
    acquired_at: u64,
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        let held = clock().delta_as_nanos(self.acquired_at, clock().raw());
        self.recorder.released(self.class, held);
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A reader-writer lock that records shared holds under one class and exclusive holds under
/// another (the tree lock's read and write sides).
pub struct InstrumentedRwLock<T> {
    read_class: LockClass,
    write_class: LockClass,
    /// Which lock of its class this is (a tree's index), for wait logs.
    instance: u32,
    inner: parking_lot::RwLock<T>,
}

impl<T> fmt::Debug for InstrumentedRwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedRwLock")
            .field("read_class", &self.read_class)
            .field("write_class", &self.write_class)
            .finish_non_exhaustive()
    }
}

impl<T> InstrumentedRwLock<T> {
    pub fn new(read_class: LockClass, write_class: LockClass, value: T) -> Self {
        Self {
            read_class,
            write_class,
            instance: 0,
            inner: parking_lot::RwLock::new(value),
        }
    }

    /// Numbers this lock among the locks of its classes (e.g. a tree's index), so that logged
    /// waits say which one was waited for.
    pub fn with_instance(mut self, instance: u32) -> Self {
        self.instance = instance;
        self
    }

    pub fn read<'a>(&'a self, recorder: &'a ThreadRecorder) -> ReadGuard<'a, T> {
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
            acquired_at,
        }
    }

    pub fn write<'a>(&'a self, recorder: &'a ThreadRecorder) -> WriteGuard<'a, T> {
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
            acquired_at,
        }
    }
}

#[derive(Debug)]
pub struct ReadGuard<'a, T> {
    guard: parking_lot::RwLockReadGuard<'a, T>,
    recorder: &'a ThreadRecorder,
    class: LockClass,
    acquired_at: u64,
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        let held = clock().delta_as_nanos(self.acquired_at, clock().raw());
        self.recorder.released(self.class, held);
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

#[derive(Debug)]
pub struct WriteGuard<'a, T> {
    guard: parking_lot::RwLockWriteGuard<'a, T>,
    recorder: &'a ThreadRecorder,
    class: LockClass,
    acquired_at: u64,
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        let held = clock().delta_as_nanos(self.acquired_at, clock().raw());
        self.recorder.released(self.class, held);
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Barrier},
        thread,
        time::Duration,
    };

    use super::*;

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

    #[test]
    fn a_blocked_acquisition_records_its_wait() {
        let lock = Arc::new(InstrumentedMutex::new(LockClass::ClientMutex, ()));
        let holding = Arc::new(Barrier::new(2));
        let holder = {
            let (lock, holding) = (Arc::clone(&lock), Arc::clone(&holding));
            thread::spawn(move || {
                let rec = ThreadRecorder::new();
                let guard = lock.lock(&rec);
                holding.wait();
                thread::sleep(Duration::from_millis(30));
                drop(guard);
                rec.class(LockClass::ClientMutex)
            })
        };
        holding.wait();
        let rec = ThreadRecorder::new();
        drop(lock.lock(&rec));
        let waiter = rec.class(LockClass::ClientMutex);
        let holder = holder.join().unwrap();
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
        let writer = {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                let rec = ThreadRecorder::new();
                *lock.write(&rec) += 1;
                rec.class(LockClass::TreeWrite)
            })
        };
        thread::sleep(Duration::from_millis(20));
        drop((first, second));
        let writer = writer.join().unwrap();
        assert_eq!(writer.contended, 1);
        assert!(writer.wait_ns.max() >= 10_000_000);
        assert_eq!(*lock.read(&rec), 1);
    }
}
