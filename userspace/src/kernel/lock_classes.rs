//! Which per-process kernel locks a lock is: a process's `mmap_lock` (its address space: mmap,
//! munmap, page faults) or `siglock` (its signal handling), named as perf lock contention names
//! them. contention_begin compares the lock with the waiter's own `task->mm->mmap_lock` and
//! `task->sighand->siglock`, at the offsets read here from vmlinux BTF, and notes the lock in
//! the `LOCK_CLASSES` map; the names go into trace files as symbols, and into the live view.
//! The same offsets let contention_begin read a mutex's or rwsem's owner. dm-thin pools'
//! metadata root_locks are named by the thin probe, from offsets in dm_thin_pool's BTF
//! ([`thin_offsets`]).

use std::path::Path;

use btf_rs::Btf;
use bufscope_abi::{ClientEvent, LockClass, TaskOffsets, ThinOffsets};
use bufscope_trace::Symbol;

use super::bufio::{BtfLayoutError, VMLINUX_BTF, field, find_struct};

/// The offsets the classification needs, from this kernel's BTF. mm_struct's lock was
/// `mmap_sem` before Linux 5.8.
pub fn task_offsets() -> Result<TaskOffsets, BtfLayoutError> {
    let btf = Btf::from_file(VMLINUX_BTF).map_err(|cause| BtfLayoutError::Read {
        path: VMLINUX_BTF,
        cause,
    })?;
    let task = find_struct(&btf, "task_struct")?;
    let mm = find_struct(&btf, "mm_struct")?;
    let sighand = find_struct(&btf, "sighand_struct")?;
    let offset = |s: &btf_rs::Struct, path| field(&btf, s, path).map(|(offset, _)| offset);
    // Runqueues are named only where tasks point at theirs (CONFIG_FAIR_GROUP_SCHED).
    let runqueue = || -> Result<[u32; 4], BtfLayoutError> {
        let cfs_rq = find_struct(&btf, "cfs_rq")?;
        let rq = find_struct(&btf, "rq")?;
        Ok([
            offset(&task, "se.cfs_rq")?,
            offset(&cfs_rq, "rq")?,
            offset(&rq, "__lock").or_else(|_| offset(&rq, "lock"))?,
            offset(&rq, "cpu")?,
        ])
    };
    let [task_cfs_rq, cfs_rq_rq, rq_lock, rq_cpu] = runqueue().unwrap_or([TaskOffsets::ABSENT; 4]);
    // Owners are read where the lock keeps one: `mutex.owner` (not under PREEMPT_RT, where a
    // mutex is an rt_mutex) and `rw_semaphore.owner`; the owner's pid and tgid as one read.
    let owners = || -> Result<[u32; 3], BtfLayoutError> {
        let mutex = find_struct(&btf, "mutex")?;
        let rwsem = find_struct(&btf, "rw_semaphore")?;
        let pid = offset(&task, "pid")?;
        let pids_adjacent = offset(&task, "tgid")? == pid + 4;
        Ok([
            if pids_adjacent {
                pid
            } else {
                TaskOffsets::ABSENT
            },
            offset(&mutex, "owner")?,
            offset(&rwsem, "owner")?,
        ])
    };
    let [task_pid, mutex_owner, rwsem_owner] = owners().unwrap_or([TaskOffsets::ABSENT; 3]);
    Ok(TaskOffsets {
        task_mm: offset(&task, "mm")?,
        mm_mmap_lock: offset(&mm, "mmap_lock").or_else(|_| offset(&mm, "mmap_sem"))?,
        task_sighand: offset(&task, "sighand")?,
        sighand_siglock: offset(&sighand, "siglock")?,
        task_cfs_rq,
        cfs_rq_rq,
        rq_lock,
        rq_cpu,
        task_pid,
        mutex_owner,
        rwsem_owner,
        // Slab names need this field, and the kfunc (kfunc.rs) that finds the cache.
        kmem_cache_name: find_struct(&btf, "kmem_cache")
            .and_then(|cache| offset(&cache, "name"))
            .unwrap_or(TaskOffsets::ABSENT),
        task_stack: offset(&task, "stack").unwrap_or(TaskOffsets::ABSENT),
        thread_size: thread_size(&super::system::kernel_release()),
        task_run_delay: offset(&task, "sched_info.run_delay").unwrap_or(TaskOffsets::ABSENT),
    })
}

/// x86-64's THREAD_SIZE: 16 KiB, doubled under KASAN (KASAN_STACK_ORDER), as the kernel's
/// config in /boot says; 16 KiB where it cannot be read (distribution kernels do not enable
/// KASAN).
fn thread_size(release: &str) -> u32 {
    let config = std::fs::read_to_string(format!("/boot/config-{release}")).unwrap_or_default();
    if config.lines().any(|l| l == "CONFIG_KASAN=y") {
        32 << 10
    } else {
        16 << 10
    }
}

/// dm-thin's pool-metadata module, whose split BTF has `struct dm_pool_metadata`.
pub const THIN_MODULE_BTF: &str = "/sys/kernel/btf/dm_thin_pool";

/// dm-thin functions that take a pool's metadata first and run rarely: a commit (each second
/// while the pool changes), status queries (`dmsetup status`, lvm's monitoring) and the free
/// space checks of provisioning. The thin probe names the pool's root_lock from any of them.
pub const THIN_METADATA_FUNCTIONS: [&str; 4] = [
    "dm_pool_commit_metadata",
    "dm_pool_get_metadata_transaction_id",
    "dm_pool_get_free_block_count",
    "dm_pool_get_free_metadata_block_count",
];

/// The offsets the thin probe needs: `dm_pool_metadata`'s from dm_thin_pool's split BTF (or
/// vmlinux's, when dm-thin is built in), `block_device.bd_dev` from vmlinux.
pub fn thin_offsets() -> Result<ThinOffsets, BtfLayoutError> {
    let base = Btf::from_file(VMLINUX_BTF).map_err(|cause| BtfLayoutError::Read {
        path: VMLINUX_BTF,
        cause,
    })?;
    let bdev = find_struct(&base, "block_device")?;
    let bdev_dev = field(&base, &bdev, "bd_dev")?.0;
    let module;
    let btf = if Path::new(THIN_MODULE_BTF).exists() {
        module =
            Btf::from_split_file(THIN_MODULE_BTF, &base).map_err(|cause| BtfLayoutError::Read {
                path: THIN_MODULE_BTF,
                cause,
            })?;
        &module
    } else {
        &base
    };
    let pmd = find_struct(btf, "dm_pool_metadata")?;
    Ok(ThinOffsets {
        pmd_root_lock: field(btf, &pmd, "root_lock")?.0,
        pmd_bdev: field(btf, &pmd, "bdev")?.0,
        bdev_dev,
        reserved: 0,
    })
}

/// A classified lock's name: "mmap_lock (4242 postgres)", with the process's name where known,
/// a runqueue's with its CPU, "rq 3", or a dm-thin pool's with its metadata device,
/// "dm-thin 253:0 metadata root_lock".
pub fn class_lock_name(class: LockClass, process_name: Option<&str>) -> String {
    match (class.class, process_name) {
        (LockClass::RQ_LOCK, _) => format!("rq {}", class.whose),
        (LockClass::THIN_ROOT_LOCK, _) => {
            let (major, minor) = ClientEvent::major_minor(class.whose);
            format!("dm-thin {major}:{minor} metadata root_lock")
        }
        (_, Some(name)) => format!("{} ({} {name})", class.kind_name(), class.whose),
        (_, None) => format!("{} ({})", class.kind_name(), class.whose),
    }
}

/// The classified locks as symbols of their addresses, the way trace files and the live view
/// name locks: "mmap_lock (4242 postgres)".
pub fn class_symbols(classes: &[(u64, LockClass)]) -> Vec<Symbol> {
    classes
        .iter()
        .map(|&(addr, class)| Symbol {
            addr,
            name: match class.class {
                LockClass::RQ_LOCK | LockClass::THIN_ROOT_LOCK => class_lock_name(class, None),
                _ => class_lock_name(class, process_name(class.whose).as_deref()),
            },
            module: None,
            lock_text: false,
        })
        .collect()
}

/// The process's name from procfs, if it still runs.
pub fn process_name(tgid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{tgid}/comm")).ok()?;
    Some(comm.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_the_kind_and_the_process() {
        let mmap = LockClass {
            class: LockClass::MMAP_LOCK,
            whose: 4242,
        };
        assert_eq!(
            class_lock_name(mmap, Some("postgres")),
            "mmap_lock (4242 postgres)"
        );
        let sig = LockClass {
            class: LockClass::SIGLOCK,
            whose: 7,
        };
        assert_eq!(class_lock_name(sig, None), "siglock (7)");
        let rq = LockClass {
            class: LockClass::RQ_LOCK,
            whose: 3,
        };
        assert_eq!(class_lock_name(rq, Some("ignored")), "rq 3");
        // A kernel dev_t: major in the top 12 bits, minor in the low 20.
        let thin = LockClass {
            class: LockClass::THIN_ROOT_LOCK,
            whose: (253 << 20) | 4,
        };
        assert_eq!(
            class_lock_name(thin, None),
            "dm-thin 253:4 metadata root_lock"
        );
    }

    #[test]
    fn this_kernel_s_task_offsets_are_found() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("no {VMLINUX_BTF}: nothing to read");
            return;
        }
        let o = task_offsets().unwrap();
        // Every field found, and mmap_lock is not the first member of mm_struct.
        assert!(o.task_mm < 16_384 && o.task_sighand < 16_384, "{o:?}");
        assert!(o.mm_mmap_lock > 0 && o.mm_mmap_lock < 4_096, "{o:?}");
        assert!(o.sighand_siglock < 4_096, "{o:?}");
        // This kind of machine has CONFIG_FAIR_GROUP_SCHED: runqueues are found.
        assert!(o.rq_lock < 4_096 && o.task_cfs_rq < 16_384, "{o:?}");
        // Owners: mutex.owner is its first member, rw_semaphore.owner follows its count.
        assert_eq!((o.mutex_owner, o.rwsem_owner), (0, 8), "{o:?}");
        assert!(o.task_pid > 0 && o.task_pid < 16_384, "{o:?}");
        // CONFIG_SCHED_INFO (distribution kernels have it): holds leave out runqueue time.
        assert!(o.task_run_delay > 0 && o.task_run_delay < 16_384, "{o:?}");
    }
}
