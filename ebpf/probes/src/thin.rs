//! dm-thin pools' metadata locks: a kprobe on dm-thin functions that take a pool's metadata
//! (`struct dm_pool_metadata *`) as their first argument and run rarely (a commit, a status
//! query) notes that pool's `root_lock` in [`LOCK_CLASSES`](crate::maps::LOCK_CLASSES) under its
//! metadata device, so waits in `dm_thin_find_block` and friends are named, not left as an
//! rwsem address. The hot functions (`dm_thin_find_block`) are left alone.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use bufscope_abi::LockClass;

use crate::{THIN_OFFSETS, contention::note_class, current};

#[kprobe]
pub fn thin_metadata(ctx: ProbeContext) -> u32 {
    let Some(pmd) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let offsets = THIN_OFFSETS.load();
    let Some(bdev) = current::read_field::<u64>(pmd, offsets.pmd_bdev) else {
        return 0;
    };
    let Some(dev) = current::read_field::<u32>(bdev, offsets.bdev_dev) else {
        return 0;
    };
    if offsets.pmd_root_lock != u32::MAX && pmd != 0 {
        note_class(
            pmd + u64::from(offsets.pmd_root_lock),
            LockClass::THIN_ROOT_LOCK,
            dev,
        );
    }
    0
}
