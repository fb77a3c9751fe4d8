//! Lock contention: the event one paired wait produces, the kernel's contention flags, and the
//! tracepoint field offsets handed to the classic tracepoint programs.

use crate::assert_layout;

/// One contended lock acquisition, from its first `lock:contention_begin` to its
/// `lock:contention_end` on the same thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockWaitEvent {
    /// Always `EventKind::LockWait as u32`.
    pub kind: u32,
    /// The `flags` of the first contention_begin ([`LockFlags`] bits).
    pub flags: u32,
    /// Kernel thread id (user-space tid) of the waiter.
    pub tid: u32,
    /// Thread group id (user-space pid) of the waiter.
    pub tgid: u32,
    /// CPU that ran contention_end.
    pub cpu: u32,
    /// `ret` of contention_end: 0 when acquired, a negative errno (e.g. -EINTR) when given up.
    pub ret: i32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) of the first contention_begin.
    pub start_ns: u64,
    /// Nanoseconds from the first contention_begin to contention_end.
    pub wait_ns: u64,
    /// Kernel address of the lock.
    pub lock_addr: u64,
    /// The dm-bufio client whose operation the waiter was inside, 0 for none.
    pub op_client: u64,
    /// Kernel stack id in the `STACKS` map at contention_begin, negative when none was taken
    /// (stacks off, or the map full: counted as `stack_lost`).
    pub stack_id: i32,
    /// The dm-bufio operation ([`crate::op`]) the waiter was inside, 0 for none.
    pub op: u32,
    /// What the lock's owner word said at contention_begin ([`owner`] values); the three
    /// fields after it are set for [`owner::THREAD`] only.
    pub owner_state: u32,
    /// The owning thread's id...
    pub owner_tid: u32,
    /// ...its thread group id...
    pub owner_tgid: u32,
    /// ...and the dm-bufio operation ([`crate::op`]) it was inside, 0 for none.
    pub owner_op: u32,
    /// The owner's kernel stack at contention_begin: its key in the `OWNER_STACKS` map
    /// ([`OwnerStack::hash`]), 0 for none (owner stacks off, or none taken: see
    /// `Counter::OwnerStackNone`).
    pub owner_stack: u32,
    /// Zero: keeps the size a multiple of 8 without a hidden hole.
    pub _pad: u32,
}

/// Values of [`LockWaitEvent::owner_state`]: what a mutex's or rwsem's owner word said when a
/// wait began.
pub mod owner {
    /// Not read: another lock type (spinning locks keep no owner), owners not asked for, or
    /// the read failed.
    pub const UNKNOWN: u32 = 0;
    /// No owner: the holder let go between the waiter's failed attempt and the read.
    pub const FREE: u32 = 1;
    /// An rwsem held by readers (its word then names only the last reader in).
    pub const READERS: u32 = 2;
    /// A thread holds it: `owner_tid`, `owner_tgid`, `owner_op`.
    pub const THREAD: u32 = 3;
}
assert_layout!(
    LockWaitEvent,
    size = 88,
    align = 8,
    fields = [
        u32, u32, u32, u32, u32, i32, u64, u64, u64, u64, i32, u32, u32, u32, u32, u32, u32, u32
    ]
);

/// A lock owner's kernel stack (innermost frame first), taken with bpf_get_task_stack at a
/// waiter's contention_begin, kept in the `OWNER_STACKS` map under [`OwnerStack::hash`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerStack {
    /// Return addresses; only the first `len` are meaningful.
    pub frames: [u64; OwnerStack::DEPTH],
    pub len: u32,
    pub _pad: u32,
}
assert_layout!(
    OwnerStack,
    size = 208,
    align = 8,
    fields = [[u64; OwnerStack::DEPTH], u32, u32]
);

impl OwnerStack {
    /// Frames kept. A sleeping owner's stack starts with 4–8 scheduler and wait frames
    /// (`__schedule`, `schedule`, `io_schedule`, `folio_wait_bit_common`, ...) before what it
    /// was doing, so this keeps more than perf's 8 frames of a waiter.
    pub const DEPTH: usize = 25;
    /// Set in every [`OwnerStack::hash`].
    pub const KEY_BIT: u32 = 1 << 31;

    /// The map key of `frames[..len]`: FNV-1a over the frames, folded to 31 bits, with the top
    /// bit set. So it is never 0 (which says "no stack" in [`LockWaitEvent::owner_stack`]), and
    /// it never equals an id of the `STACKS` map (all below its size), so owner stacks and
    /// waiters' stacks share one id space in trace files.
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut i = 0;
        while i < Self::DEPTH {
            if i as u32 >= self.len {
                break;
            }
            h = (h ^ self.frames[i]).wrapping_mul(PRIME);
            i += 1;
        }
        ((h ^ (h >> 32)) as u32) | Self::KEY_BIT
    }
}

/// Byte offsets of the fields the classic tracepoint programs read, taken at start-up from
/// `events/lock/contention_{begin,end}/format` in tracefs rather than hard-coded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub begin_lock_addr: u32,
    pub begin_flags: u32,
    pub end_lock_addr: u32,
    pub end_ret: u32,
}
assert_layout!(
    TracepointOffsets,
    size = 16,
    align = 4,
    fields = [u32, u32, u32, u32]
);

impl TracepointOffsets {
    /// The layout of Linux 5.19 to 6.18 (8-byte common header, then the lock address, then
    /// flags or ret); used only as the eBPF global's initial value.
    pub const USUAL: Self = Self {
        begin_lock_addr: 8,
        begin_flags: 16,
        end_lock_addr: 8,
        end_ret: 16,
    };
}

/// Offsets into the kernel's `task_struct`, `mm_struct`, `sighand_struct`, runqueue and lock
/// structs, from vmlinux BTF, by which contention_begin tells that a waiter waits on its own
/// process's mmap_lock or siglock, or its CPU's runqueue, and reads a mutex's or rwsem's owner
/// (Rust eBPF has no CO-RE). [`TaskOffsets::ABSENT`] where this kernel lacks a field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.mm` (a `struct mm_struct *`).
    pub task_mm: u32,
    /// `mm_struct.mmap_lock` (a `struct rw_semaphore`).
    pub mm_mmap_lock: u32,
    /// `task_struct.sighand` (a `struct sighand_struct *`).
    pub task_sighand: u32,
    /// `sighand_struct.siglock` (a `spinlock_t`).
    pub sighand_siglock: u32,
    /// `task_struct.se.cfs_rq` (a `struct cfs_rq *`; with CONFIG_FAIR_GROUP_SCHED).
    pub task_cfs_rq: u32,
    /// `cfs_rq.rq` (a `struct rq *`: the CPU's runqueue).
    pub cfs_rq_rq: u32,
    /// `rq.__lock` (`lock` before Linux 5.14), the runqueue's raw spinlock.
    pub rq_lock: u32,
    /// `rq.cpu` (int).
    pub rq_cpu: u32,
    /// `task_struct.pid`, followed by `tgid` (both read as one u64): a lock owner's ids.
    pub task_pid: u32,
    /// `mutex.owner` (an `atomic_long_t`: the owning task, flags in its low 3 bits).
    pub mutex_owner: u32,
    /// `rw_semaphore.owner` (an `atomic_long_t`: the writer, or a reader when its bit 0 is set;
    /// flags in the low 2 bits).
    pub rwsem_owner: u32,
    /// `kmem_cache.name` (a `const char *`): the slab cache a lock lives in, for its name.
    pub kmem_cache_name: u32,
    /// `task_struct.stack` (a `void *`): the lowest address of the task's kernel stack...
    pub task_stack: u32,
    /// ...which is this many bytes long (THREAD_SIZE): anything running elsewhere runs on an
    /// interrupt's stack (a softirq on top of the task).
    pub thread_size: u32,
    /// `task_struct.sched_info.run_delay` (u64, ns; CONFIG_SCHED_INFO): how long the task has
    /// waited on a runqueue, runnable but not running. A client-mutex hold leaves out what it
    /// grew by: under voluntary preemption `mutex_lock` may give up the CPU (`might_sleep`)
    /// before it takes the lock.
    pub task_run_delay: u32,
}
assert_layout!(
    TaskOffsets,
    size = 60,
    align = 4,
    fields = [
        u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32, u32
    ]
);

impl TaskOffsets {
    pub const ABSENT: u32 = u32::MAX;
    /// The eBPF global's initial value: no lock is classified until user space sets offsets.
    pub const UNSET: Self = Self {
        task_mm: Self::ABSENT,
        mm_mmap_lock: Self::ABSENT,
        task_sighand: Self::ABSENT,
        sighand_siglock: Self::ABSENT,
        task_cfs_rq: Self::ABSENT,
        cfs_rq_rq: Self::ABSENT,
        rq_lock: Self::ABSENT,
        rq_cpu: Self::ABSENT,
        task_pid: Self::ABSENT,
        mutex_owner: Self::ABSENT,
        rwsem_owner: Self::ABSENT,
        kmem_cache_name: Self::ABSENT,
        task_stack: Self::ABSENT,
        thread_size: 0,
        task_run_delay: Self::ABSENT,
    };

    /// The low bits of `mutex.owner` that are flags, not the task pointer (MUTEX_FLAGS).
    pub const MUTEX_OWNER_FLAGS: u64 = 0x07;
    /// The low bits of `rw_semaphore.owner` that are flags (RWSEM_OWNER_FLAGS_MASK)...
    pub const RWSEM_OWNER_FLAGS: u64 = 0x03;
    /// ...of which this one says readers hold it (the pointer is then only the last reader).
    pub const RWSEM_READER_OWNED: u64 = 0x01;
}

/// What a lock turned out to be, by its address in the `LOCK_CLASSES` map: found when one of
/// its waiters waited on its own process's lock of that kind, or on its own CPU's runqueue, or
/// when dm-thin handed a pool's metadata to one of the functions the thin probe watches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockClass {
    /// [`LockClass::MMAP_LOCK`], [`LockClass::SIGLOCK`] or [`LockClass::RQ_LOCK`].
    pub class: u32,
    /// Whose lock: the process (the waiter's tgid) for mmap_lock and siglock, the CPU for a
    /// runqueue's, the metadata device (its kernel `dev_t`) for a dm-thin pool's.
    pub whose: u32,
}
assert_layout!(LockClass, size = 8, align = 4, fields = [u32, u32]);

impl LockClass {
    /// `mm->mmap_lock`: the process's address-space lock (mmap, munmap, page faults).
    pub const MMAP_LOCK: u32 = 1;
    /// `sighand->siglock`: the process's signal-handling lock.
    pub const SIGLOCK: u32 = 2;
    /// A CPU's runqueue lock (`rq->__lock`): wake-ups and scheduling on that CPU.
    pub const RQ_LOCK: u32 = 3;
    /// A dm-thin pool's metadata `root_lock` (an rwsem: mapping lookups read, inserts and
    /// commits write); `whose` is the metadata device's `dev_t`.
    pub const THIN_ROOT_LOCK: u32 = 4;

    /// The lock's kind as perf lock contention names it.
    pub const fn kind_name(self) -> &'static str {
        match self.class {
            Self::MMAP_LOCK => "mmap_lock",
            Self::SIGLOCK => "siglock",
            Self::RQ_LOCK => "rq",
            Self::THIN_ROOT_LOCK => "dm-thin metadata root_lock",
            _ => "?",
        }
    }
}

/// The slab cache a lock lives in, by the lock's address in the `SLAB_LOCKS` map: its name as
/// the kernel gives it (`dentry`, `kmalloc-192`), NUL-terminated; empty for a lock found to be in
/// no slab object (a static lock, a per-CPU one), so that the kernel is asked once per lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabName {
    pub name: [u8; SlabName::LEN],
}
assert_layout!(SlabName, size = 32, align = 1, fields = [[u8; 32]]);

impl SlabName {
    /// Longer cache names are cut.
    pub const LEN: usize = 32;

    /// The name, when the lock is in a slab object.
    pub fn name(&self) -> Option<&str> {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(Self::LEN);
        core::str::from_utf8(&self.name[..len])
            .ok()
            .filter(|n| !n.is_empty())
    }
}

/// Offsets into dm-thin's `struct dm_pool_metadata` (from the dm_thin_pool module's BTF) and
/// `struct block_device` (vmlinux), by which the thin probe names a pool's metadata root_lock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThinOffsets {
    /// `dm_pool_metadata.root_lock` (a `struct rw_semaphore`).
    pub pmd_root_lock: u32,
    /// `dm_pool_metadata.bdev` (the metadata device's `struct block_device *`).
    pub pmd_bdev: u32,
    /// `block_device.bd_dev` (a `dev_t`).
    pub bdev_dev: u32,
    pub reserved: u32,
}
assert_layout!(
    ThinOffsets,
    size = 16,
    align = 4,
    fields = [u32, u32, u32, u32]
);

impl ThinOffsets {
    /// The eBPF global's initial value: the thin probe is attached only with real offsets.
    pub const UNSET: Self = Self {
        pmd_root_lock: TaskOffsets::ABSENT,
        pmd_bdev: TaskOffsets::ABSENT,
        bdev_dev: TaskOffsets::ABSENT,
        reserved: 0,
    };
}

/// Offsets that lead from a task to the memory nodes (`struct pglist_data`) whose zones' locks
/// bufscope names, from vmlinux BTF: the task's memory cgroup, its per-node info for each node,
/// and that info's `lruvec.pgdat` (CONFIG_MEMCG). The `find_nodes` program follows them once,
/// from bufscope's own task, and leaves each node's address in the `NODES` map; user space
/// adds `node_zones[i].lock` to name the locks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneOffsets {
    /// `task_struct.cgroups` (a `struct css_set *`).
    pub task_cgroups: u32,
    /// `css_set.subsys[memory_cgrp_id]` (a `struct cgroup_subsys_state *`).
    pub css_set_memory: u32,
    /// `mem_cgroup.css`: subtracted from the state's address to get the memory cgroup's.
    pub memcg_css: u32,
    /// `mem_cgroup.nodeinfo` (an array of `struct mem_cgroup_per_node *`, one per node id).
    pub memcg_nodeinfo: u32,
    /// `mem_cgroup_per_node.lruvec.pgdat` (the node's `struct pglist_data *`).
    pub per_node_pgdat: u32,
    /// Nodes to look up: the kernel's possible node ids, at most [`ZoneOffsets::MAX_NODES`].
    pub nodes: u32,
}
assert_layout!(
    ZoneOffsets,
    size = 24,
    align = 4,
    fields = [u32, u32, u32, u32, u32, u32]
);

impl ZoneOffsets {
    /// Entries of the `NODES` map: nodes beyond are not named.
    pub const MAX_NODES: u32 = 64;

    /// The eBPF global's initial value: `find_nodes` finds nothing until user space sets it.
    pub const UNSET: Self = Self {
        task_cgroups: TaskOffsets::ABSENT,
        css_set_memory: TaskOffsets::ABSENT,
        memcg_css: TaskOffsets::ABSENT,
        memcg_nodeinfo: TaskOffsets::ABSENT,
        per_node_pgdat: TaskOffsets::ABSENT,
        nodes: 0,
    };
}

/// The `flags` argument of `lock:contention_begin` (include/trace/events/lock.h, LCB_F_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockFlags(pub u32);

impl LockFlags {
    pub const SPIN: u32 = 1 << 0;
    pub const READ: u32 = 1 << 1;
    pub const WRITE: u32 = 1 << 2;
    pub const RT: u32 = 1 << 3;
    pub const PERCPU: u32 = 1 << 4;
    pub const MUTEX: u32 = 1 << 5;

    /// Spinning locks (spinlock, rwlock) wait with preemption off, on one CPU; everything else
    /// may sleep and migrate. The eBPF side pairs the two kinds in different places.
    pub const fn is_pure_spin(self) -> bool {
        self.0 & (Self::SPIN | Self::MUTEX) == Self::SPIN
    }

    /// Every lock type name [`LockFlags::type_name`] gives, in [`LockFlags::type_index`] order.
    pub const TYPE_NAMES: [&'static str; 13] = [
        "mutex",
        "rwsem:R",
        "rwsem:W",
        "semaphore",
        "spinlock",
        "rwlock:R",
        "rwlock:W",
        "rtmutex",
        "rwlock-rt:R",
        "rwlock-rt:W",
        "pcpu-sem",
        "pcpu-sem:R",
        "pcpu-sem:W",
    ];

    /// The position of [`LockFlags::type_name`] in [`LockFlags::TYPE_NAMES`]: the bit of this
    /// type in `ProbeConfig::lock_types`. Computed without strings, for the eBPF programs.
    pub const fn type_index(self) -> u32 {
        let f = self.0;
        let rw = f & (Self::READ | Self::WRITE);
        // 0 for neither (or both), 1 for read, 2 for write.
        let side = if rw == Self::READ {
            1
        } else if rw == Self::WRITE {
            2
        } else {
            0
        };
        if f & Self::MUTEX != 0 {
            return 0;
        }
        if f & Self::RT != 0 {
            return if side == 0 { 7 } else { 7 + side };
        }
        if f & Self::PERCPU != 0 {
            return 10 + side;
        }
        if f & Self::SPIN != 0 {
            return if side == 0 { 4 } else { 4 + side };
        }
        if side == 0 { 3 } else { side }
    }

    /// The lock type in `perf lock contention`'s vocabulary, so people's habits carry over.
    pub const fn type_name(self) -> &'static str {
        let f = self.0;
        if f & Self::MUTEX != 0 {
            return "mutex";
        }
        if f & Self::RT != 0 {
            return match f & (Self::READ | Self::WRITE) {
                Self::READ => "rwlock-rt:R",
                Self::WRITE => "rwlock-rt:W",
                _ => "rtmutex",
            };
        }
        if f & Self::PERCPU != 0 {
            return match f & (Self::READ | Self::WRITE) {
                Self::READ => "pcpu-sem:R",
                Self::WRITE => "pcpu-sem:W",
                _ => "pcpu-sem",
            };
        }
        if f & Self::SPIN != 0 {
            return match f & (Self::READ | Self::WRITE) {
                Self::READ => "rwlock:R",
                Self::WRITE => "rwlock:W",
                _ => "spinlock",
            };
        }
        match f & (Self::READ | Self::WRITE) {
            Self::READ => "rwsem:R",
            Self::WRITE => "rwsem:W",
            _ => "semaphore",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are #[repr(C)], Copy, and have no padding (checked by assert_layout!), so any
    // bit pattern of their size is a valid value.
    unsafe impl aya::Pod for super::LockWaitEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TracepointOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LockClass {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SlabName {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThinOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ZoneOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OwnerStack {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_match_perf_lock_contention() {
        let cases = [
            (LockFlags::SPIN, "spinlock"),
            (LockFlags::SPIN | LockFlags::READ, "rwlock:R"),
            (LockFlags::SPIN | LockFlags::WRITE, "rwlock:W"),
            (LockFlags::READ, "rwsem:R"),
            (LockFlags::WRITE, "rwsem:W"),
            (LockFlags::MUTEX, "mutex"),
            (LockFlags::MUTEX | LockFlags::SPIN, "mutex"),
            (LockFlags::RT, "rtmutex"),
            (LockFlags::PERCPU | LockFlags::WRITE, "pcpu-sem:W"),
            (0, "semaphore"),
        ];
        for (flags, name) in cases {
            assert_eq!(LockFlags(flags).type_name(), name, "flags {flags:#x}");
        }
    }

    #[test]
    fn every_flag_combination_s_index_names_its_type() {
        for flags in 0..64 {
            let f = LockFlags(flags);
            assert_eq!(
                LockFlags::TYPE_NAMES[f.type_index() as usize],
                f.type_name(),
                "flags {flags:#x}"
            );
        }
    }

    #[test]
    fn only_spin_without_mutex_is_pure_spin() {
        assert!(LockFlags(LockFlags::SPIN).is_pure_spin());
        assert!(LockFlags(LockFlags::SPIN | LockFlags::WRITE).is_pure_spin());
        assert!(!LockFlags(LockFlags::SPIN | LockFlags::MUTEX).is_pure_spin());
        assert!(!LockFlags(LockFlags::MUTEX).is_pure_spin());
        assert!(!LockFlags(LockFlags::READ).is_pure_spin());
    }

    #[test]
    fn owner_stack_hash_covers_only_the_frames_in_use_and_is_never_zero() {
        let mut a = OwnerStack {
            frames: [0; OwnerStack::DEPTH],
            len: 3,
            _pad: 0,
        };
        a.frames[..3].copy_from_slice(&[0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020, 7]);
        let mut b = a;
        b.frames[5] = 0xdead; // beyond len: not part of the stack
        assert_eq!(a.hash(), b.hash());
        b.frames[2] = 8;
        assert_ne!(a.hash(), b.hash());
        let empty = OwnerStack {
            frames: [0; OwnerStack::DEPTH],
            len: 0,
            _pad: 0,
        };
        assert_ne!(empty.hash(), 0);
        assert!(a.hash() & OwnerStack::KEY_BIT != 0 && empty.hash() & OwnerStack::KEY_BIT != 0);
    }
}
