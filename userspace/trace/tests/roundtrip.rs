//! Whatever is written reads back the same: events of any values, any chunk size, interleaved
//! with metadata.

mod common;

use bufscope_trace::{
    BufioOp, LockOwner, LockWait, Metadata, OpKind, OpResult, Owner, Record, Thread, TraceReader,
    TraceWriter, WriterOptions,
};
use proptest::prelude::*;

fn any_event() -> impl Strategy<Value = LockWait> {
    (
        any::<u64>(),
        any::<u64>(),
        prop_oneof![
            any::<u64>(),
            (0u64..4).prop_map(|i| 0xffff_8880_0000_0000 + i * 64)
        ],
        any::<u32>(),
        any::<u32>(),
        0u32..512,
        any::<u32>(),
        any::<i32>(),
        (
            proptest::option::of(any::<u32>()),
            proptest::option::of(0usize..OpKind::ALL.len()),
            prop_oneof![Just(0u64), any::<u64>(), Just(0xffff_8881_0000_0000u64)],
            prop_oneof![
                Just(LockOwner::Unknown),
                Just(LockOwner::Free),
                Just(LockOwner::Readers),
                (
                    any::<u32>(),
                    any::<u32>(),
                    proptest::option::of(0usize..OpKind::ALL.len()),
                    proptest::option::of(any::<u32>()),
                )
                    .prop_map(|(tid, tgid, op, stack_id)| LockOwner::Thread(
                        Owner {
                            tid,
                            tgid,
                            op: op.map(|i| OpKind::ALL[i]),
                            stack_id,
                        }
                    )),
            ],
        ),
    )
        .prop_map(
            |(
                start_ns,
                wait_ns,
                lock_addr,
                tid,
                tgid,
                cpu,
                flags,
                ret,
                (stack_id, op, client, owner),
            )| {
                LockWait {
                    start_ns,
                    wait_ns,
                    lock_addr,
                    tid,
                    tgid,
                    cpu,
                    flags,
                    ret,
                    stack_id,
                    op: op.map(|i| OpKind::ALL[i]),
                    op_client: if op.is_some() { client } else { 0 },
                    owner,
                }
            },
        )
}

fn any_op() -> impl Strategy<Value = BufioOp> {
    (
        (
            any::<u64>(),
            any::<u64>(),
            prop_oneof![any::<u64>(), Just(0xffff_8881_0000_0000u64)],
        ),
        (any::<u64>(), any::<u32>(), any::<u32>(), 0u32..512),
        (
            0usize..OpKind::ALL.len(),
            0u8..4,
            any::<u32>(),
            any::<u32>(),
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<Option<u64>>(),
            any::<Option<u64>>(),
        ),
    )
        .prop_map(
            |(
                (start_ns, duration_ns, client),
                (block, tid, tgid, cpu),
                (kind, result, arg0, arg1),
                (lock_wait_ns, lock_hold_ns, attempt, release),
            )| BufioOp {
                start_ns,
                duration_ns,
                client,
                block,
                tid,
                tgid,
                cpu,
                kind: OpKind::ALL[kind],
                result: OpResult::from_u8(result).unwrap(),
                arg0,
                arg1,
                lock_wait_ns,
                lock_hold_ns,
                lock_attempt_ns: inside(start_ns, duration_ns, attempt),
                lock_release_ns: inside(start_ns, duration_ns, release),
            },
        )
}

/// A time inside an operation (the format keeps only those), from a random draw; 0 for none.
fn inside(start_ns: u64, duration_ns: u64, draw: Option<u64>) -> u64 {
    let Some(draw) = draw else { return 0 };
    let span = duration_ns.min(u64::MAX - start_ns);
    start_ns + span.checked_add(1).map_or(draw, |len| draw % len)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn events_and_metadata_round_trip(
        events in proptest::collection::vec(any_event(), 0..400),
        ops in proptest::collection::vec(any_op(), 0..300),
        chunk_events in 1usize..64,
        metadata_every in 1usize..200,
        zstd_level in 1i32..4,
    ) {
        let options = WriterOptions { chunk_events, zstd_level };
        let mut writer = TraceWriter::with_options(Vec::new(), &common::header(), options).unwrap();
        let mut expected_metadata = Vec::new();
        for (i, e) in events.iter().enumerate() {
            writer.push(*e).unwrap();
            if i % metadata_every == 0 {
                let m = Metadata::Stack { id: i as u32, frames: vec![e.lock_addr, e.start_ns] };
                writer.write_metadata(&m).unwrap();
                expected_metadata.push(m);
            }
        }
        for op in &ops {
            writer.push_op(*op).unwrap();
        }
        let (bytes, end) = writer.finish(42).unwrap();
        prop_assert_eq!(end.lock_waits, events.len() as u64);
        prop_assert_eq!(end.bufio_ops, ops.len() as u64);

        let mut reader = TraceReader::new(&bytes[..], "roundtrip").unwrap();
        prop_assert_eq!(reader.header(), &common::header());
        let (mut got_events, mut got_ops, mut got_metadata, mut got_end) =
            (Vec::new(), Vec::new(), Vec::new(), None);
        while let Some(record) = reader.next_record().unwrap() {
            match record {
                Record::LockWaits(chunk) => {
                    prop_assert!(chunk.len() <= chunk_events);
                    got_events.extend(chunk);
                }
                Record::BufioOps(chunk) => {
                    prop_assert!(chunk.len() <= chunk_events);
                    got_ops.extend(chunk);
                }
                Record::Metadata(m) => got_metadata.push(m),
                Record::End(e) => got_end = Some(e),
            }
        }
        prop_assert_eq!(got_events, events);
        prop_assert_eq!(got_ops, ops);
        prop_assert_eq!(got_metadata, expected_metadata);
        prop_assert_eq!(got_end, Some(end));
    }
}

#[test]
fn dropping_a_writer_keeps_its_events() {
    let mut file = Vec::new();
    {
        let mut writer = TraceWriter::new(&mut file, &common::header()).unwrap();
        for e in common::events(10) {
            writer.push(e).unwrap();
        }
    }
    let mut reader = TraceReader::new(&file[..], "dropped").unwrap();
    let Some(Record::LockWaits(events)) = reader.next_record().unwrap() else {
        panic!("the dropped writer's events are missing");
    };
    assert_eq!(events, common::events(10));
    let err = reader.next_record().expect_err("no end record");
    assert!(err.is_truncation(), "{err}");
    assert!(err.to_string().contains("did not finish"), "{err}");
}

#[test]
fn unknown_metadata_from_a_newer_writer_is_kept_as_unknown() {
    let m: Metadata = serde_json::from_str(r#"{"type":"from_the_future","x":1}"#).unwrap();
    assert_eq!(m, Metadata::Unknown);
}

#[test]
fn thread_names_read_back_between_the_events() {
    let threads = Metadata::Threads {
        threads: vec![
            Thread {
                tid: 4001,
                tgid: 4000,
                comm: "bufio_hot/0".into(),
                cgroup: None,
            },
            Thread {
                tid: 4002,
                tgid: 4000,
                comm: "bufio_dirty".into(),
                cgroup: None,
            },
        ],
    };
    let mut writer = TraceWriter::new(Vec::new(), &common::header()).unwrap();
    for e in common::events(10) {
        writer.push(e).unwrap();
    }
    writer.write_metadata(&threads).unwrap();
    writer.push_op(BufioOp::default()).unwrap();
    let (bytes, end) = writer.finish(1).unwrap();
    assert_eq!(end.metadata_records, 1);
    let records: Vec<Record> = TraceReader::new(&bytes[..], "threads")
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(
        records.contains(&Record::Metadata(threads)),
        "the thread names are missing from {records:?}"
    );
    assert!(matches!(records.last(), Some(Record::End(_))));
}
