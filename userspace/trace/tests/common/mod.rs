//! Shared builders for the trace crate's integration tests.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use bufscope_trace::{
    BufioOp, ClientLocks, LockOwner, LockWait, Metadata, OpKind, OpResult, Owner, TraceHeader,
    TraceWriter, WriterOptions,
};

pub fn header() -> TraceHeader {
    TraceHeader {
        writer: "bufscope-trace tests".into(),
        kernel_release: "6.12.0-test".into(),
        host: "testhost".into(),
        clock: "CLOCK_MONOTONIC".into(),
        start_unix_ns: 1_700_000_000_000_000_000,
        start_clock_ns: 5_000_000_000,
        cpus: 2,
        probes: vec!["lock:contention_begin (tp_btf)".into()],
    }
}

/// Deterministic, plausible events: a few threads and locks, small gaps, varied waits.
pub fn events(n: usize) -> Vec<LockWait> {
    (0..n as u64)
        .map(|i| LockWait {
            start_ns: 5_000_000_000 + i * 1_733,
            wait_ns: 100 + (i * 7_919) % 50_000,
            lock_addr: 0xffff_8880_1234_0000 + (i % 4) * 0x40,
            tid: 1000 + (i % 8) as u32,
            tgid: 1000,
            cpu: (i % 2) as u32,
            flags: if i % 5 == 0 { 0x21 } else { 0x20 },
            ret: if i == 3 { -4 } else { 0 },
            stack_id: (i % 3 != 0).then_some((i % 5) as u32),
            op: (i % 2 == 0).then_some(OpKind::Read),
            op_client: if i % 2 == 0 { 0xffff_8881_5000_0000 } else { 0 },
            owner: match i % 5 {
                0 => LockOwner::Unknown,
                1 => LockOwner::Free,
                2 => LockOwner::Readers,
                _ => LockOwner::Thread(Owner {
                    tid: 1000 + ((i + 1) % 8) as u32,
                    tgid: 1000,
                    op: (i % 4 == 0).then_some(OpKind::WriteDirty),
                    stack_id: (i % 8 == 0).then_some(0x8000_0000 | i as u32),
                }),
            },
        })
        .collect()
}

/// Deterministic dm-bufio operations: read/release pairs over a small region, some dirtying.
pub fn ops(n: usize) -> Vec<BufioOp> {
    (0..n as u64)
        .map(|i| {
            let (start_ns, duration_ns) = (5_000_000_000 + i * 911, 80 + (i * 31) % 700);
            let lock_hold_ns = (i % 5) * 40;
            // Inside the operation, when it took the lock at all.
            let within = |offset: u64| {
                if lock_hold_ns > 0 {
                    start_ns + offset
                } else {
                    0
                }
            };
            let kind = [
                OpKind::Read,
                OpKind::MarkDirty,
                OpKind::Release,
                OpKind::Prefetch,
            ][(i % 4) as usize];
            BufioOp {
                start_ns,
                duration_ns,
                client: 0xffff_8881_5000_0000,
                block: 4096 + (i / 4) % 64,
                tid: 2000 + (i % 3) as u32,
                tgid: 2000,
                cpu: (i % 2) as u32,
                kind,
                result: if kind == OpKind::Read {
                    OpResult::Hit
                } else {
                    OpResult::None
                },
                arg0: if kind == OpKind::Prefetch { 8 } else { 0 },
                arg1: 0,
                lock_wait_ns: (i % 7) * 300,
                lock_hold_ns,
                lock_attempt_ns: within(i % 3),
                lock_release_ns: within(duration_ns - i % 2),
            }
        })
        .collect()
}

pub fn loss_counts() -> Metadata {
    Metadata::LossCounts {
        at_clock_ns: 6_000_000_000,
        kernel: [
            ("ringbuf_full".to_string(), 0),
            ("unpaired_end".to_string(), 3),
        ]
        .into_iter()
        .collect(),
        user_dropped: 0,
    }
}

/// A finished trace: `events` in chunks of `chunk_events`, a third as many operations, one
/// metadata record in the middle and one at the end.
pub fn trace_bytes(events: &[LockWait], chunk_events: usize) -> Vec<u8> {
    let options = WriterOptions {
        chunk_events,
        ..WriterOptions::default()
    };
    let mut writer =
        TraceWriter::with_options(Vec::new(), &header(), options).expect("header written");
    let half = events.len() / 2;
    for e in &events[..half] {
        writer.push(*e).expect("push");
    }
    for op in ops(events.len() / 3) {
        writer.push_op(op).expect("push op");
    }
    writer
        .write_metadata(&Metadata::Client {
            addr: 0xffff_8880_4000_0000,
            device: "253:2".into(),
            block_size: 4096,
            locks: Some(ClientLocks {
                mutex: 0xffff_8880_4000_0010,
                trees: 64,
                first_tree: 0xffff_8880_4000_0180,
                tree_stride: 64,
                ..Default::default()
            }),
            seen_ns: 5_000_000_000,
            destroyed_ns: None,
        })
        .expect("metadata");
    for e in &events[half..] {
        writer.push(*e).expect("push");
    }
    writer.write_metadata(&loss_counts()).expect("metadata");
    let (bytes, _) = writer.finish(1_700_000_001_000_000_000).expect("finish");
    bytes
}
