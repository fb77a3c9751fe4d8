//! Trace writer and reader throughput on 10M synthetic lock events, and bytes per event, printed
//! next to their targets (write ≥ 5M events/s, read ≥ 10M events/s, ≤ 8 bytes per event).
//!
//! The events imitate a busy recording: 16 threads, a few hot locks among a thousand, waits
//! spread log-uniformly from 100 ns to 1 ms, about a million contentions per second.

use std::{
    fs::File,
    io::{BufReader, BufWriter},
    time::Instant,
};

use bufscope_trace::{LockWait, OpKind, Record, TraceHeader, TraceReader, TraceWriter};
use rand::{Rng, SeedableRng, rngs::SmallRng};

const EVENTS: usize = 10_000_000;

fn synthetic_events(n: usize) -> Vec<LockWait> {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut end = 1_000_000_000u64;
    (0..n)
        .map(|_| {
            end += (-(1.0f64 - rng.random::<f64>()).ln() * 1_000.0) as u64;
            let wait_ns = 10f64.powf(rng.random_range(2.0..6.0)) as u64;
            let lock = if rng.random_bool(0.8) {
                rng.random_range(0..4u64)
            } else {
                rng.random_range(4..1000u64)
            };
            let tid = 2000 + rng.random_range(0..16u32);
            let inside_op = rng.random_bool(0.6);
            LockWait {
                start_ns: end - wait_ns,
                wait_ns,
                lock_addr: 0xffff_8881_0000_0000 + lock * 0x1c0,
                tid,
                tgid: 2000,
                cpu: rng.random_range(0..2),
                flags: if rng.random_bool(0.9) { 0x20 } else { 0x02 },
                ret: 0,
                // A recording's stacks repeat: a few hundred distinct call paths.
                stack_id: Some(rng.random_range(0..300)),
                op: inside_op.then_some(OpKind::Read),
                op_client: if inside_op { 0xffff_8881_4000_0000 } else { 0 },
                owner: bufscope_trace::LockOwner::Unknown,
            }
        })
        .collect()
}

fn verdict(ok: bool) -> &'static str {
    if ok { "meets target" } else { "MISSES target" }
}

fn main() -> std::io::Result<()> {
    let events = synthetic_events(EVENTS);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.bftrace");

    let started = Instant::now();
    let mut writer = TraceWriter::new(
        BufWriter::new(File::create(&path)?),
        &TraceHeader::default(),
    )?;
    for e in &events {
        writer.push(*e)?;
    }
    writer.finish(0)?;
    let write_secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path)?.len();

    let started = Instant::now();
    let mut reader = TraceReader::new(BufReader::new(File::open(&path)?), "bench")
        .map_err(std::io::Error::other)?;
    let mut read = 0usize;
    let mut checksum = 0u64;
    while let Some(record) = reader.next_record().map_err(std::io::Error::other)? {
        if let Record::LockWaits(chunk) = record {
            read += chunk.len();
            checksum = chunk
                .iter()
                .fold(checksum, |c, e| c.wrapping_add(e.wait_ns));
        }
    }
    let read_secs = started.elapsed().as_secs_f64();
    assert_eq!(read, EVENTS, "events read back");
    let expected: u64 = events.iter().fold(0, |c, e| c.wrapping_add(e.wait_ns));
    assert_eq!(checksum, expected, "events read back unchanged");

    let write_rate = EVENTS as f64 / write_secs;
    let read_rate = EVENTS as f64 / read_secs;
    let per_event = bytes as f64 / EVENTS as f64;
    println!(
        "trace format, {EVENTS} synthetic lock events (one run; shared machine, expect noise)"
    );
    println!(
        "  write  {:>6.2} M events/s  target >= 5    ({:.2}x target)  {}",
        write_rate / 1e6,
        write_rate / 5e6,
        verdict(write_rate >= 5e6)
    );
    println!(
        "  read   {:>6.2} M events/s  target >= 10   ({:.2}x target)  {}",
        read_rate / 1e6,
        read_rate / 10e6,
        verdict(read_rate >= 10e6)
    );
    println!(
        "  size   {:>6.2} bytes/event target <= 8    ({:.2}x target)  {}  [{} bytes; in-memory event is {} bytes]",
        per_event,
        per_event / 8.0,
        verdict(per_event <= 8.0),
        bytes,
        std::mem::size_of::<LockWait>()
    );
    Ok(())
}
