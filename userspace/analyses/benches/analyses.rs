//! The analyses at scale: how long `compare` takes on a 1M-operation trace against every design
//! (replay with full logging, statistics, distance), and how many events per second each export
//! format writes. The trace is made here: 16 threads doing btree-like lookups (read, release)
//! on a hot set of metadata blocks while one thread dirties and writes back, with client-mutex
//! waits on a share of the operations, as a 6.1 recording has them.

use std::time::Instant;

use bufscope_abi::LockFlags;
use bufscope_analyses::{
    compare::{SourceStats, compare},
    export::{ExportError, chrome, folded, perfetto, table},
    models::{Backing, ModelOptions, ReplayInput, as_trace, run_design},
    tracedata::TraceData,
};
use bufscope_trace::{BufioOp, ClientLocks, LockWait, Metadata, OpKind, OpResult};
use reference_cache::{Design, replay::ReplayOptions};

const OPS: usize = 1_000_000;
const THREADS: u32 = 16;
const CLIENT: u64 = 0xffff_8880_0bad_c000;
const MUTEX: u64 = CLIENT + 0x10;

fn hotspot_trace() -> TraceData {
    let mut t = TraceData {
        source: "synthetic hotspot".into(),
        ..Default::default()
    };
    t.header.cpus = 16;
    t.add_metadata(Metadata::Client {
        addr: CLIENT,
        device: "253:2".into(),
        block_size: 4096,
        locks: Some(ClientLocks {
            mutex: MUTEX,
            trees: 0,
            first_tree: 0,
            tree_stride: 0,
            ..Default::default()
        }),
        seen_ns: 0,
        destroyed_ns: None,
    });
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Each thread: read a block, release it; 1 µs apart, interleaved across threads.
    let per_thread = OPS / (THREADS as usize + 1);
    for i in 0..per_thread {
        for tid in 0..=THREADS {
            let at = (i as u64) * 2_000 + u64::from(tid) * 50;
            let writer = tid == THREADS;
            let block = if writer { next() % 4096 } else { next() % 512 };
            let (kind, result) = match (writer, i % 2) {
                (false, 0) => (OpKind::Read, OpResult::Hit),
                (false, _) => (OpKind::Release, OpResult::None),
                (true, _) if i % 1000 == 999 => (OpKind::WriteDirty, OpResult::None),
                (true, 0) => (OpKind::Read, OpResult::Miss),
                (true, _) => (OpKind::MarkDirty, OpResult::None),
            };
            let waited = next() % 20 == 0;
            let wait = if waited { 1_000 + next() % 30_000 } else { 0 };
            t.ops.push(BufioOp {
                start_ns: at,
                duration_ns: 800 + wait,
                client: CLIENT,
                block,
                tid: 1000 + tid,
                tgid: 1000,
                kind,
                result,
                lock_wait_ns: wait,
                lock_hold_ns: 300,
                ..Default::default()
            });
            if waited {
                t.waits.push(LockWait {
                    start_ns: at + 100,
                    wait_ns: wait,
                    lock_addr: MUTEX,
                    tid: 1000 + tid,
                    tgid: 1000,
                    flags: LockFlags::MUTEX,
                    op: Some(kind),
                    op_client: CLIENT,
                    ..Default::default()
                });
            }
        }
    }
    t
}

fn main() {
    let t = hotspot_trace();
    let events = (t.ops.len() + t.waits.len()) as u64;
    println!(
        "analyses: synthetic hotspot trace, {} operations by {} threads, {} lock waits",
        t.ops.len(),
        THREADS + 1,
        t.waits.len()
    );

    // compare: everything `bufscope compare --asap` does after reading the file.
    let began = Instant::now();
    let input = ReplayInput::from_trace(&t).expect("the trace has operations");
    let options = ModelOptions {
        backing: Backing::Memory,
        capacity: None,
        cpus: Some(16),
        replay: ReplayOptions {
            threads: None,
            speed: None,
            log: true,
            ..Default::default()
        },
    };
    let kernel = SourceStats::of("kernel", &t);
    let mut designs = Vec::new();
    let mut per_design = Vec::new();
    for design in Design::ALL {
        let started = Instant::now();
        let result = run_design(design, &input, &options).expect("runs");
        let model = as_trace(&result, &input, &t).expect("logged");
        designs.push(SourceStats::of(design.name(), &model));
        per_design.push((design, started.elapsed().as_secs_f64()));
    }
    let c = compare("bench", kernel, designs);
    let total = began.elapsed().as_secs_f64();
    println!();
    println!(
        "compare, 1M operations against {} designs: {:.2} s in all ({:.0} operations/s through \
         replay + statistics); closest {}",
        Design::ALL.len(),
        total,
        (OPS * Design::ALL.len()) as f64 / total,
        c.closest.as_deref().unwrap_or("-")
    );
    for (design, secs) in per_design {
        println!("  {design:<9} {secs:>6.2} s");
    }

    // Export throughput, to a sink so that the disk is not measured.
    println!();
    println!("{:<9} {:>14} {:>10}", "export", "events/s", "vs csv");
    let mut rates = Vec::new();
    for (name, f) in [
        (
            "csv",
            &(|t: &TraceData| table::write_csv(t, std::io::sink()))
                as &dyn Fn(&TraceData) -> Result<u64, ExportError>,
        ),
        ("json", &|t| table::write_json(t, std::io::sink())),
        ("parquet", &|t| table::write_parquet(t, std::io::sink())),
        ("perfetto", &|t| perfetto::write(t, std::io::sink())),
        ("chrome", &|t| chrome::write(t, std::io::sink())),
        ("folded", &|t| {
            folded::write(t, folded::Weight::Wait, std::io::sink())
        }),
    ] {
        let started = Instant::now();
        let n = f(&t).expect("export");
        let rate = n as f64 / started.elapsed().as_secs_f64();
        rates.push((name, rate, n));
    }
    let csv = rates[0].1;
    for (name, rate, n) in rates {
        println!("{name:<9} {rate:>14.0} {:>9.2}x   ({n} events)", rate / csv);
    }
    println!();
    println!("({events} events in the trace; folded counts lock waits only)");
}
