//! Every format version, frozen: `data/format-X.Y.bftrace` was written once by the X.Y writer and
//! is never regenerated. Every later reader must read each exactly as below; that is the promise
//! that old files stay readable. (A missing file is written only with BUFSCOPE_WRITE_GOLDEN=1,
//! by the writer of the newest version.)

use std::{fs, path::PathBuf};

use bufscope_trace::{
    BufioOp, ClientLocks, LockOwner, LockWait, Metadata, OpKind, OpResult, Owner, Record, Symbol,
    TraceHeader, TraceReader, TraceWriter,
};

fn frozen_header() -> TraceHeader {
    TraceHeader {
        writer: "bufscope 0.1.0".into(),
        kernel_release: "6.18.44-fc-v669".into(),
        host: "golden".into(),
        clock: "CLOCK_MONOTONIC".into(),
        start_unix_ns: 1_795_460_000_000_000_000,
        start_clock_ns: 12_345_678_900,
        cpus: 2,
        probes: vec![
            "lock:contention_begin (tp_btf)".into(),
            "lock:contention_end (tp_btf)".into(),
        ],
    }
}

fn frozen_events() -> Vec<LockWait> {
    (0..300u64)
        .map(|i| LockWait {
            start_ns: 12_345_678_900 + i * 2_011,
            wait_ns: 250 + (i * 104_729) % 90_000,
            lock_addr: [0xffff_8881_0a3c_1a08, 0xffff_ffff_8340_2b60][(i % 2) as usize],
            tid: 4000 + (i % 9) as u32,
            tgid: 4000,
            cpu: (i % 2) as u32,
            flags: [0x20, 0x21, 0x02, 0x04][(i % 4) as usize],
            ret: 0,
            ..LockWait::default()
        })
        .collect()
}

fn frozen_metadata() -> Metadata {
    Metadata::LossCounts {
        at_clock_ns: 12_999_999_999,
        kernel: [
            ("ringbuf_full", 0u64),
            ("unpaired_end", 2),
            ("nested_begin", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        user_dropped: 0,
    }
}

#[test]
fn format_1_0_reads_back_exactly() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-1.0.bftrace");
    if !path.exists() && std::env::var_os("BUFSCOPE_WRITE_GOLDEN").is_some() {
        let file = fs::File::create(&path).unwrap();
        let options = bufscope_trace::WriterOptions {
            chunk_events: 128,
            zstd_level: 3,
        };
        let mut writer = TraceWriter::with_options(file, &frozen_header(), options).unwrap();
        for e in frozen_events() {
            writer.push(e).unwrap();
        }
        writer.write_metadata(&frozen_metadata()).unwrap();
        writer.finish(1_795_460_010_000_000_000).unwrap();
    }
    let mut reader = TraceReader::open(&path)
        .unwrap_or_else(|e| panic!("the frozen 1.0 file must be readable: {e}"));
    assert_eq!(reader.format_version(), (1, 0));
    assert_eq!(reader.header(), &frozen_header());
    let (mut events, mut metadata, mut end) = (Vec::new(), Vec::new(), None);
    while let Some(record) = reader.next_record().unwrap() {
        match record {
            Record::LockWaits(chunk) => events.extend(chunk),
            Record::BufioOps(_) => panic!("format 1.0 has no operation records"),
            Record::Metadata(m) => metadata.push(m),
            Record::End(e) => end = Some(e),
        }
    }
    assert_eq!(events, frozen_events());
    assert_eq!(metadata, vec![frozen_metadata()]);
    let end = end.expect("end record");
    assert_eq!(end.lock_waits, 300);
    assert_eq!(end.end_unix_ns, 1_795_460_010_000_000_000);
}

fn frozen_ops() -> Vec<BufioOp> {
    // Two hotspot-like threads reading and releasing, a dirtier, a prefetch, a partial dirty.
    let mut ops = Vec::new();
    for i in 0..200u64 {
        let thread = (i % 2) as u32;
        let block = 1024 * u64::from(thread) + i / 4;
        let kind = if i % 4 < 2 {
            OpKind::Read
        } else {
            OpKind::Release
        };
        ops.push(BufioOp {
            start_ns: 20_000_000_000 + i * 517,
            duration_ns: 90 + (i * 13) % 400,
            client: 0xffff_8881_7c00_0000,
            block,
            tid: 7000 + thread,
            tgid: 7000,
            cpu: thread,
            kind,
            result: if kind == OpKind::Read {
                OpResult::Hit
            } else {
                OpResult::None
            },
            arg0: 0,
            arg1: 0,
            ..BufioOp::default()
        });
    }
    ops.push(BufioOp {
        start_ns: 20_000_200_000,
        duration_ns: 1_500,
        client: 0xffff_8881_7c00_0000,
        block: 5000,
        tid: 7002,
        tgid: 7000,
        cpu: 1,
        kind: OpKind::Prefetch,
        result: OpResult::None,
        arg0: 16,
        arg1: 0,
        ..BufioOp::default()
    });
    ops.push(BufioOp {
        start_ns: 20_000_300_000,
        duration_ns: 700,
        client: 0xffff_8881_7c00_0000,
        block: 5003,
        tid: 7002,
        tgid: 7000,
        cpu: 0,
        kind: OpKind::MarkPartialDirty,
        result: OpResult::None,
        arg0: 128,
        arg1: 512,
        ..BufioOp::default()
    });
    ops
}

#[test]
fn format_1_1_reads_back_exactly() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-1.1.bftrace");
    if !path.exists() && std::env::var_os("BUFSCOPE_WRITE_GOLDEN").is_some() {
        let file = fs::File::create(&path).unwrap();
        let options = bufscope_trace::WriterOptions {
            chunk_events: 64,
            zstd_level: 3,
        };
        let mut writer = TraceWriter::with_options(file, &frozen_header(), options).unwrap();
        for e in frozen_events().into_iter().take(100) {
            writer.push(e).unwrap();
        }
        for op in frozen_ops() {
            writer.push_op(op).unwrap();
        }
        writer.write_metadata(&frozen_metadata()).unwrap();
        writer.finish(1_795_460_020_000_000_000).unwrap();
    }
    let mut reader = TraceReader::open(&path)
        .unwrap_or_else(|e| panic!("the frozen 1.1 file must be readable: {e}"));
    assert_eq!(reader.format_version(), (1, 1));
    let (mut events, mut ops, mut end) = (Vec::new(), Vec::new(), None);
    while let Some(record) = reader.next_record().unwrap() {
        match record {
            Record::LockWaits(chunk) => events.extend(chunk),
            Record::BufioOps(chunk) => ops.extend(chunk),
            Record::Metadata(m) => assert_eq!(m, frozen_metadata()),
            Record::End(e) => end = Some(e),
        }
    }
    assert_eq!(events, frozen_events()[..100]);
    assert_eq!(ops, frozen_ops());
    let end = end.expect("end record");
    assert_eq!((end.lock_waits, end.bufio_ops), (100, 202));
}

/// 1.2: lock waits with stacks and the operation they waited in, operations with client-mutex
/// times, a client with its locks, a stack and its symbols.
fn frozen_1_2_events() -> Vec<LockWait> {
    frozen_events()
        .into_iter()
        .take(120)
        .enumerate()
        .map(|(i, mut e)| {
            if i % 3 != 2 {
                e.stack_id = Some((i % 4) as u32);
                e.op = Some([OpKind::Read, OpKind::Release, OpKind::New][i % 3]);
                e.op_client = 0xffff_8881_7c00_0000;
            }
            e
        })
        .collect()
}

fn frozen_1_2_ops() -> Vec<BufioOp> {
    frozen_ops()
        .into_iter()
        .enumerate()
        .map(|(i, mut o)| {
            o.lock_wait_ns = (i as u64 % 5) * 1_250;
            o.lock_hold_ns = 300 + i as u64 % 11;
            o
        })
        .collect()
}

fn frozen_1_2_metadata() -> Vec<Metadata> {
    vec![
        Metadata::Client {
            addr: 0xffff_8881_7c00_0000,
            device: "253:2".into(),
            block_size: 4096,
            locks: Some(ClientLocks {
                mutex: 0xffff_8881_7c00_0010,
                trees: 64,
                first_tree: 0xffff_8881_7c00_0180,
                tree_stride: 64,
                ..Default::default()
            }),
            seen_ns: 20_000_000_000,
            destroyed_ns: None,
        },
        Metadata::Stack {
            id: 1,
            frames: vec![0xffff_ffff_8100_1000, 0xffff_ffff_c040_2040],
        },
        Metadata::Symbols {
            symbols: vec![
                Symbol {
                    addr: 0xffff_ffff_8100_1000,
                    name: "__mutex_lock.constprop.0+0x1a0".into(),
                    module: None,
                    lock_text: true,
                },
                Symbol {
                    addr: 0xffff_ffff_c040_2040,
                    name: "new_read+0x40".into(),
                    module: Some("dm_bufio".into()),
                    lock_text: false,
                },
            ],
        },
        frozen_metadata(),
    ]
}

/// What a frozen file holds, and how it was written (for the writer of its version only).
struct Frozen {
    version: (u16, u16),
    chunk_events: usize,
    events: Vec<LockWait>,
    ops: Vec<BufioOp>,
    metadata: Vec<Metadata>,
    finished_unix_ns: u64,
}

/// Writes `data/format-X.Y.bftrace` if it is missing and BUFSCOPE_WRITE_GOLDEN is set, then
/// reads it back and requires exactly `frozen`, its end record counting every item.
fn reads_back_exactly(frozen: Frozen) {
    let (major, minor) = frozen.version;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/data/format-{major}.{minor}.bftrace"));
    if !path.exists() && std::env::var_os("BUFSCOPE_WRITE_GOLDEN").is_some() {
        let file = fs::File::create(&path).unwrap();
        let options = bufscope_trace::WriterOptions {
            chunk_events: frozen.chunk_events,
            zstd_level: 3,
        };
        let mut writer = TraceWriter::with_options(file, &frozen_header(), options).unwrap();
        for e in &frozen.events {
            writer.push(*e).unwrap();
        }
        for op in &frozen.ops {
            writer.push_op(*op).unwrap();
        }
        for m in &frozen.metadata {
            writer.write_metadata(m).unwrap();
        }
        writer.finish(frozen.finished_unix_ns).unwrap();
    }
    let mut reader = TraceReader::open(&path)
        .unwrap_or_else(|e| panic!("the frozen {major}.{minor} file must be readable: {e}"));
    assert_eq!(reader.format_version(), frozen.version);
    let (mut events, mut ops, mut metadata, mut end) = (Vec::new(), Vec::new(), Vec::new(), None);
    while let Some(record) = reader.next_record().unwrap() {
        match record {
            Record::LockWaits(chunk) => events.extend(chunk),
            Record::BufioOps(chunk) => ops.extend(chunk),
            Record::Metadata(m) => metadata.push(m),
            Record::End(e) => end = Some(e),
        }
    }
    assert_eq!(events, frozen.events);
    assert_eq!(ops, frozen.ops);
    assert_eq!(metadata, frozen.metadata);
    let end = end.expect("end record");
    assert_eq!(
        (end.lock_waits, end.bufio_ops),
        (frozen.events.len() as u64, frozen.ops.len() as u64)
    );
}

#[test]
fn format_1_2_reads_back_exactly() {
    reads_back_exactly(Frozen {
        version: (1, 2),
        chunk_events: 50,
        events: frozen_1_2_events(),
        ops: frozen_1_2_ops(),
        metadata: frozen_1_2_metadata(),
        finished_unix_ns: 1_795_460_030_000_000_000,
    });
    // The counts the file was frozen with.
    assert_eq!(
        (frozen_1_2_events().len(), frozen_1_2_ops().len()),
        (120, 202)
    );
}

/// 1.3: lock waits with the lock's owner (thread, process, and the operation it was in).
fn frozen_1_3_events() -> Vec<LockWait> {
    frozen_1_2_events()
        .into_iter()
        .take(90)
        .enumerate()
        .map(|(i, mut e)| {
            e.owner = match i % 6 {
                3 => LockOwner::Unknown,
                4 => LockOwner::Free,
                5 => LockOwner::Readers,
                _ => LockOwner::Thread(Owner {
                    tid: 4100 + (i % 5) as u32,
                    tgid: [4100, 77][i % 2],
                    op: (i % 4 == 0).then_some(OpKind::WriteDirty),
                    stack_id: None,
                }),
            };
            e
        })
        .collect()
}

#[test]
fn format_1_3_reads_back_exactly() {
    reads_back_exactly(Frozen {
        version: (1, 3),
        chunk_events: 40,
        events: frozen_1_3_events(),
        ops: frozen_1_2_ops(),
        metadata: frozen_1_2_metadata(),
        finished_unix_ns: 1_795_460_040_000_000_000,
    });
    assert_eq!(frozen_1_3_events().len(), 90);
}

/// 1.4: lock waits with the owner's kernel stack (an id of the file's stacks, in the owner-stack
/// id space: top bit set).
fn frozen_1_4_events() -> Vec<LockWait> {
    frozen_1_3_events()
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            if let LockOwner::Thread(owner) = &mut e.owner {
                owner.stack_id = (i % 4 == 0).then_some(0x8000_0000 | (i % 3) as u32);
            }
            e
        })
        .collect()
}

#[test]
fn format_1_4_reads_back_exactly() {
    let mut metadata = frozen_1_2_metadata();
    metadata.push(Metadata::Stack {
        id: 0x8000_0001,
        frames: vec![0xffff_ffff_8110_0000, 0xffff_ffff_8120_0040],
    });
    reads_back_exactly(Frozen {
        version: (1, 4),
        chunk_events: 40,
        events: frozen_1_4_events(),
        ops: frozen_1_2_ops(),
        metadata,
        finished_unix_ns: 1_795_460_050_000_000_000,
    });
    let with_stacks = frozen_1_4_events()
        .iter()
        .filter(|e| e.owner.thread().is_some_and(|o| o.stack_id.is_some()))
        .count();
    assert_eq!((frozen_1_4_events().len(), with_stacks), (90, 15));
}

/// 1.5: operations with when each first tried for the client lock and last let it go (inside
/// the operation; none where it held no lock).
fn frozen_1_5_ops() -> Vec<BufioOp> {
    frozen_1_2_ops()
        .into_iter()
        .enumerate()
        .map(|(i, mut o)| {
            if i % 7 != 3 {
                o.lock_attempt_ns = o.start_ns + 20 + i as u64 % 9;
                o.lock_release_ns = o.end_ns() - i as u64 % 13;
            }
            o
        })
        .collect()
}

#[test]
fn format_1_5_reads_back_exactly() {
    let mut metadata = frozen_1_2_metadata();
    metadata.push(Metadata::Stack {
        id: 0x8000_0001,
        frames: vec![0xffff_ffff_8110_0000, 0xffff_ffff_8120_0040],
    });
    reads_back_exactly(Frozen {
        version: (1, 5),
        chunk_events: 40,
        events: frozen_1_4_events(),
        ops: frozen_1_5_ops(),
        metadata,
        finished_unix_ns: 1_795_460_060_000_000_000,
    });
    let timed = frozen_1_5_ops()
        .iter()
        .filter(|o| o.lock_attempt_ns != 0 && o.lock_release_ns != 0)
        .count();
    assert_eq!((frozen_1_5_ops().len(), timed), (202, 173));
}
