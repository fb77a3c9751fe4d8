//! Format 1.0, frozen: `data/format-1.0.bftrace` was written once by the 1.0 writer and is never
//! regenerated. Every later reader must read it exactly as below; that is the promise that old
//! files stay readable. (Create it only if it is missing: BUFSCOPE_WRITE_GOLDEN=1.)

use std::{fs, path::PathBuf};

use bufscope_trace::{LockWait, Metadata, Record, TraceHeader, TraceReader, TraceWriter};

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
