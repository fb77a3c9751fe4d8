//! Where the memory nodes are, so that their zones' locks (`zone->lock`, the page allocator's
//! lock behind the per-CPU page lists) can be named. A node's `struct pglist_data` is reachable
//! from any task: its memory cgroup keeps per-node information that points at the node. This
//! program follows that path from the task that runs it and stores each node's address in
//! `NODES`. It is never attached: user space runs it once, from its own task, with
//! BPF_PROG_TEST_RUN.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use bufscope_abi::{TaskOffsets, ZoneOffsets};

use crate::{ZONE_OFFSETS, current, maps::NODES};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn find_nodes(_ctx: RawTracePointContext) -> i32 {
    let offsets = ZONE_OFFSETS.load();
    let Some(css_set) = current::read_field::<u64>(current::task(), offsets.task_cgroups) else {
        return 1;
    };
    let Some(css) = current::read_field::<u64>(css_set, offsets.css_set_memory) else {
        return 1;
    };
    if css == 0 || offsets.memcg_css == TaskOffsets::ABSENT {
        return 1;
    }
    let memcg = css - u64::from(offsets.memcg_css);
    let mut found = 0;
    for node in 0..ZoneOffsets::MAX_NODES {
        if node >= offsets.nodes {
            break;
        }
        let slot = offsets.memcg_nodeinfo.saturating_add(node * 8);
        let Some(per_node) = current::read_field::<u64>(memcg, slot) else {
            continue;
        };
        if let Some(pgdat) = current::read_field::<u64>(per_node, offsets.per_node_pgdat)
            && pgdat != 0
            && let Some(entry) = NODES.get_ptr_mut(node)
        {
            // SAFETY: an array slot; this program is the only writer and runs once.
            unsafe { *entry = pgdat };
            found += 1;
        }
    }
    if found == 0 { 1 } else { 0 }
}
