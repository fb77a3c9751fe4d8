//! The live view at 1M events/s: a synthetic source (half lock waits on a thousand locks with
//! fifty stacks, half dm-bufio operations of sixteen threads on one client) fed to the model in
//! ring-buffer-sized batches, a data tick each second and ten frames a second drawn at 160×48.
//! Prints the main loop's CPU per second of events (target ≤ 30 % of a core), frame times
//! (target ≤ 50 ms), the ingest headroom (below 1.0 user space would fall behind and lose
//! events), and what the designs' threads cost to replay a second of those operations.

use std::time::{Duration, Instant};

use bufscope::live::{
    model::{BufioStatus, CompareSource, Header, LockSort, Model, Source},
    render,
    shadow::Shadow,
};
use bufscope_abi::LockFlags;
use bufscope_analyses::models::{Backing, ModelOptions};
use bufscope_trace::{BufioOp, ClientLocks, LockWait, Metadata, OpKind, OpResult, Symbol};
use ratatui::{Terminal, backend::TestBackend};
use reference_cache::{Design, replay::ReplayOptions};

const EVENTS_PER_SEC: usize = 1_000_000;
const SECONDS: usize = 5;
const BATCH: usize = 4096;
const CLIENT: u64 = 0xffff_8880_0bad_c000;

enum Ev {
    Wait(LockWait),
    Op(BufioOp),
}

fn one_second(second: u64) -> Vec<Ev> {
    let base = second * 1_000_000_000;
    let mut out = Vec::with_capacity(EVENTS_PER_SEC);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ second;
    for i in 0..EVENTS_PER_SEC as u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = base + i * 1_000;
        if i % 2 == 0 {
            let lock = if x.is_multiple_of(4) {
                CLIENT + 0x10
            } else {
                0xffff_8880_1000_0000 + (x % 1000) * 64
            };
            out.push(Ev::Wait(LockWait {
                start_ns: at,
                wait_ns: 500 + x % 200_000,
                lock_addr: lock,
                tid: (x % 16) as u32,
                tgid: 1,
                cpu: 0,
                flags: if lock == CLIENT + 0x10 {
                    LockFlags::MUTEX
                } else {
                    LockFlags::SPIN
                },
                ret: 0,
                stack_id: Some((x % 50) as u32),
                op: (lock == CLIENT + 0x10).then_some(OpKind::Read),
                op_client: if lock == CLIENT + 0x10 { CLIENT } else { 0 },
                owner: bufscope_trace::LockOwner::Unknown,
            }));
        } else {
            let tid = (i / 2 % 16) as u32;
            let block = x % 4096;
            out.push(Ev::Op(BufioOp {
                start_ns: at,
                duration_ns: 800,
                client: CLIENT,
                block,
                tid,
                tgid: 1,
                cpu: 0,
                kind: if i / 2 % 2 == 0 {
                    OpKind::Read
                } else {
                    OpKind::Release
                },
                result: if i / 2 % 2 == 0 {
                    OpResult::Hit
                } else {
                    OpResult::None
                },
                arg0: 0,
                arg1: 0,
                lock_wait_ns: 0,
                lock_hold_ns: 0,
                lock_attempt_ns: 0,
                lock_release_ns: 0,
            }));
        }
    }
    out
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let designs: Vec<Design> = Design::ALL.to_vec();
    let mut model = Model::new(
        Header::new(
            "bench".into(),
            Source::Live {
                attach: "synthetic".into(),
            },
            BufioStatus::Recorded { design: None },
        ),
        CompareSource::Tables,
        &designs,
    );
    model.add_metadata(&Metadata::Client {
        addr: CLIENT,
        device: "253:2".into(),
        block_size: 4096,
        locks: Some(ClientLocks {
            mutex: CLIENT + 0x10,
            trees: 0,
            first_tree: 0,
            tree_stride: 0,
            ..Default::default()
        }),
        seen_ns: 0,
        destroyed_ns: None,
    });
    for id in 0..50u32 {
        model.add_metadata(&Metadata::Stack {
            id,
            frames: vec![0x10, 0x100 + u64::from(id)],
        });
    }
    model.add_metadata(&Metadata::Symbols {
        symbols: (0..50u64)
            .map(|i| Symbol {
                addr: 0x100 + i,
                name: format!("caller_{i}"),
                module: None,
                lock_text: false,
            })
            .chain([Symbol {
                addr: 0x10,
                name: "mutex_lock".into(),
                module: None,
                lock_text: true,
            }])
            .collect(),
    });
    let ui = bufscope::live::ui::Ui::new(&designs, false);
    let mut terminal = Terminal::new(TestBackend::new(160, 48)).unwrap();
    let mut frames = Vec::new();
    let mut ingest = Duration::ZERO;
    let mut ticks = Duration::ZERO;
    let mut windows = Vec::new();
    let cpu_start = thread_cpu();
    let mut source_cpu = Duration::ZERO;
    for second in 0..SECONDS {
        // Making the events is the source's work, not the view's.
        let made = thread_cpu();
        let events = one_second(second as u64);
        source_cpu += thread_cpu() - made;
        for (i, chunk) in events.chunks(BATCH).enumerate() {
            let t = Instant::now();
            for e in chunk {
                match e {
                    Ev::Wait(w) => model.add_wait(w),
                    Ev::Op(o) => model.add_op(o),
                }
            }
            ingest += t.elapsed();
            // Ten frames per simulated second.
            if i % (EVENTS_PER_SEC / BATCH / 10) == 0 {
                let t = Instant::now();
                terminal.draw(|f| render::draw(f, &model, &ui)).unwrap();
                frames.push(t.elapsed());
            }
        }
        let t = Instant::now();
        if let Some(w) = model.tick(1.0, LockSort::Total, "") {
            windows.push(w);
        }
        ticks += t.elapsed();
    }
    let main_cpu = thread_cpu() - cpu_start - source_cpu;
    frames.sort();
    let p = |q: f64| frames[((frames.len() - 1) as f64 * q) as usize];
    let per_sec = main_cpu.as_secs_f64() / SECONDS as f64;
    println!(
        "live view, synthetic source at {} events/s for {SECONDS} s (160x48 frames, 10/s):",
        EVENTS_PER_SEC
    );
    println!(
        "  main loop CPU per second of events   {:>6.1} % of a core (target <= 30 %)",
        per_sec * 100.0
    );
    println!(
        "  ingest                                {:>6.1} M events/s ({:.1}x the source: {} falls behind)",
        (EVENTS_PER_SEC * SECONDS) as f64 / ingest.as_secs_f64() / 1e6,
        (EVENTS_PER_SEC * SECONDS) as f64 / ingest.as_secs_f64() / EVENTS_PER_SEC as f64,
        if ingest.as_secs_f64() < SECONDS as f64 {
            "never"
        } else {
            "it"
        }
    );
    println!(
        "  data tick (rates, rows, window)       {:>6.1} ms each",
        ticks.as_secs_f64() * 1e3 / SECONDS as f64
    );
    println!(
        "  frame time p50 / p99 / max            {:>6.2} / {:.2} / {:.2} ms (target <= 50 ms)",
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        frames.last().unwrap().as_secs_f64() * 1e3
    );
    // The designs' threads: a second's operations (500k) through each, as fast as they go.
    let options = ModelOptions {
        backing: Backing::Memory,
        capacity: None,
        cpus: Some(16),
        replay: ReplayOptions::default(),
    };
    for design in &designs {
        let shadow = Shadow::start(std::slice::from_ref(design), &options).unwrap();
        let mut w = windows[0].clone();
        w.speed = None;
        let t = Instant::now();
        assert!(shadow.submit(w));
        let mut got = Vec::new();
        while got.is_empty() {
            got = shadow.results();
            std::thread::sleep(Duration::from_millis(2));
        }
        println!(
            "  shadow {design:<8} one second's 500k ops  {:>6.0} ms wall, as fast as it goes",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}
