//! report, export and compare on the bundled kernel samples (6.1 and 6.12 under the VM test
//! bed) and on reference designs' runs of them: the real binary, real files. No root needed.

mod common;

use std::{
    path::PathBuf,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use common::{bufscope, skip};

/// Tests that replay at the recorded pace measure lock waits that need both CPUs: they run
/// alone (a concurrent test took 15,428 expected waits down to 900), the others side by side.
static CPUS: RwLock<()> = RwLock::new(());

fn alone() -> RwLockWriteGuard<'static, ()> {
    CPUS.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn others_may_run() -> RwLockReadGuard<'static, ()> {
    CPUS.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sample(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples")
        .join(name)
        .display()
        .to_string()
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bufscope().args(args).output().expect("bufscope runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = run(args);
    assert!(ok, "bufscope {args:?} failed: {stderr}");
    stdout
}

fn fails(args: &[&str], says: &str) {
    let (ok, _, stderr) = run(args);
    assert!(!ok, "bufscope {args:?} should fail");
    assert!(stderr.contains(says), "bufscope {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn report_on_6_1_puts_the_client_mutex_among_the_top_locks_with_its_numbers() {
    let _others = others_may_run();
    let file = sample("6.1-thin-hotspot.bftrace");
    let text = ok(&["report", &file]);
    let row = text
        .lines()
        .find(|l| l.ends_with("dm-bufio 7:0 client mutex"))
        .unwrap_or_else(|| panic!("no client mutex row:\n{text}"));
    assert!(row.contains("mutex"), "{row}");

    let json: serde_json::Value = serde_json::from_str(&ok(&["report", &file, "--json"])).unwrap();
    let rows = json["rows"].as_array().unwrap();
    let mutex = rows
        .iter()
        .find(|r| r["name"] == "dm-bufio 7:0 client mutex")
        .unwrap();
    let contended = mutex["contended"].as_u64().unwrap();
    // 7,024 in the sample of 2026-11-29 (its .txt: "waits named: client mutex 7024").
    assert!(
        contended > 5_000,
        "6.1's hotspot waits on its client mutex: {contended}"
    );
    let (p50, p99, max) = (
        mutex["p50_ns"].as_u64().unwrap(),
        mutex["p99_ns"].as_u64().unwrap(),
        mutex["max_wait_ns"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{mutex}");
    let hist: u64 = mutex["hist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(hist, contended, "every wait is in the histogram");
    // Rows add up to the file's waits.
    let total: u64 = rows.iter().map(|r| r["contended"].as_u64().unwrap()).sum();
    assert_eq!(total, json["kept"].as_u64().unwrap());

    // The same wait by operation: mutex waits were made inside get, read and release.
    let by_op: serde_json::Value = serde_json::from_str(&ok(&[
        "report",
        &file,
        "--by",
        "op",
        "--lock",
        "client mutex",
        "--json",
    ]))
    .unwrap();
    let ops: Vec<&str> = by_op["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for op in ["dm_bufio_get", "dm_bufio_read", "dm_bufio_release"] {
        assert!(ops.contains(&op), "{ops:?}");
    }
    assert_eq!(by_op["kept"].as_u64().unwrap(), contended);
}

#[test]
fn report_filters_sorts_and_writes_csv() {
    let _others = others_may_run();
    let file = sample("6.12-small-cache.bftrace");
    let csv = ok(&[
        "report",
        &file,
        "--by",
        "caller",
        "--sort",
        "contended",
        "--csv",
    ]);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("name,type,contended,total_wait_ns")
    );
    let counts: Vec<u64> = lines
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert!(counts.len() >= 2, "{csv}");
    assert!(
        counts.windows(2).all(|w| w[0] >= w[1]),
        "sorted: {counts:?}"
    );

    let stacks = ok(&["report", &file, "--by", "caller", "--stacks", "--top", "1"]);
    assert!(stacks.contains("dm_thin_find_block"), "{stacks}");
    assert!(
        !stacks.contains("bpf_trace_run"),
        "machinery frames are left out: {stacks}"
    );

    let mutex_only = ok(&["report", &file, "--type", "mutex", "--by", "type", "--csv"]);
    assert_eq!(mutex_only.lines().count(), 2, "{mutex_only}");
    fails(
        &["report", &file, "--type", "futex"],
        "unknown lock type `futex`",
    );
    fails(
        &["report", &file, "--op", "lookup"],
        "unknown operation `lookup`",
    );
    fails(
        &["report", &file, "--sort", "colour"],
        "invalid value 'colour'",
    );
    fails(&["report", &file, "--tid", "1"], "match the filters");
    let manifest = format!("{}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    fails(&["report", &manifest], "not a bufscope trace file");
}

#[test]
fn replayed_designs_become_traces_that_report_reads_like_the_kernels() {
    let _others = others_may_run();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.bftrace");
    let out = out.to_str().unwrap();
    let file = sample("6.1-thin-hotspot.bftrace");
    let (ok_run, _, stderr) = run(&["replay", &file, "--trace-out", out]);
    assert!(ok_run, "{stderr}");
    let recorded: serde_json::Value =
        serde_json::from_str(&ok(&["info", &file, "--json"])).unwrap();
    assert!(recorded["bufio_ops"].as_u64().unwrap() > 100_000);
    for design in ["classic", "sharded", "lockfree"] {
        let path = dir.path().join(format!("run.{design}.bftrace"));
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        let info = ok(&["info", path.to_str().unwrap(), "--json"]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(
            info["bufio_ops"], recorded["bufio_ops"],
            "{design}: every op replayed"
        );
    }
    // Classic takes one mutex for everything, so its waits are all on it.
    let classic = dir.path().join("run.classic.bftrace");
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["report", classic.to_str().unwrap(), "--json"])).unwrap();
    let names: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dm-bufio 7:0 client mutex"]);
    // A second run into the same files is refused without --force.
    fails(&["replay", &file, "--trace-out", out], "pass --force");
}

#[test]
fn compare_puts_kernel_and_designs_side_by_side_and_names_the_closest() {
    // Which design is closest rests on classic's replay waiting where sharded's does not: that
    // needs both CPUs (beside the other tests, both designs' waits fell to near zero in 2 of 6
    // runs and classic came out closest).
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("waits.svg");
    // 6.12 (sharded dm-bufio): its hotspot never waited on a dm-bufio lock, and the sharded
    // design fed the same arrivals waits far less than classic's one mutex does.
    let file = sample("6.12-thin-hotspot.bftrace");
    let json = ok(&[
        "compare",
        &file,
        "--speed",
        "8",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let c: serde_json::Value = serde_json::from_str(&json).unwrap();
    let kernel_get = &c["kernel"]["ops"]["dm_bufio_get"];
    assert!(
        kernel_get["count"].as_u64().unwrap() > 50_000,
        "{kernel_get}"
    );
    assert_eq!(
        kernel_get["waited"], 0,
        "6.12's gets never waited on dm-bufio"
    );
    let designs: Vec<&str> = c["designs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert_eq!(designs, ["classic", "sharded", "lockfree"]);
    for d in c["designs"].as_array().unwrap() {
        assert_eq!(
            d["ops"]["dm_bufio_get"]["count"], kernel_get["count"],
            "every get replayed"
        );
        // Paced, so each replay says how far behind the recorded pace it ran.
        let late = |q: &str| d["late"][q].as_u64().unwrap_or_else(|| panic!("{q}: {d}"));
        assert!(
            0 < late("p50_ns") && late("p50_ns") <= late("p90_ns"),
            "{}",
            d["late"]
        );
        assert!(late("p90_ns") <= late("p99_ns"), "{}", d["late"]);
        // Every wait of the design is checked against the kernel's operations.
        let waits: u64 = d["waits"]
            .as_object()
            .unwrap()
            .values()
            .map(|w| w["waits"].as_u64().unwrap())
            .sum();
        let check = &d["replay_check"];
        assert_eq!(check["waits"].as_u64(), Some(waits), "{check}");
        assert!(
            check["apart_in_kernel"].as_u64().unwrap() <= waits,
            "{check}"
        );
    }
    assert!(
        c["kernel"].get("late").is_none(),
        "the kernel kept its own pace"
    );
    assert!(c["kernel"].get("replay_check").is_none());
    let distance = |design: &str| {
        c["distances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["design"] == design)
            .unwrap()["overall"]
            .as_f64()
            .unwrap()
    };
    assert!(
        distance("sharded") < distance("classic"),
        "sharded {} vs classic {}",
        distance("sharded"),
        distance("classic")
    );
    assert_ne!(c["closest"], "classic");
    assert!(
        c["distance_definition"]
            .as_str()
            .unwrap()
            .contains("earth mover")
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    for text in ["kernel", "classic", "sharded", "lockfree", "CDF"] {
        assert!(svg.contains(text), "the plot names {text}");
    }

    // 6.1 (one client mutex): the kernel's mutex waits sit in get, read and release, and the
    // classic design (one mutex) waits on it far more than the sharded one.
    let file = sample("6.1-thin-hotspot.bftrace");
    let csv = ok(&[
        "compare", &file, "--design", "classic", "--design", "sharded", "--speed", "8", "--csv",
    ]);
    let waits = |op: &str, source: &str| -> u64 {
        csv.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f[0] == op && f[1] == "client mutex" && f[2] == source)
            .map_or(0, |f| f[8].parse().unwrap())
    };
    // 690, 2,666 and 3,668 in the sample of 2026-11-29.
    for op in ["dm_bufio_get", "dm_bufio_read", "dm_bufio_release"] {
        assert!(waits(op, "kernel") > 100, "{op}:\n{csv}");
    }
    let all = |source| {
        ["dm_bufio_get", "dm_bufio_read", "dm_bufio_release"]
            .iter()
            .map(|op| waits(op, source))
            .sum::<u64>()
    };
    assert!(
        all("classic") > 10 * all("sharded").max(1),
        "classic {} vs sharded {}",
        all("classic"),
        all("sharded")
    );
    assert!(!csv.contains("lockfree"), "only the designs asked for");
}

#[test]
fn kernel_timing_brings_classic_s_mutex_waits_to_the_kernel_s_on_6_1() {
    let _alone = alone();
    // The 6.1 hotspot experiment: 16 readers and a dirtier on one client mutex. At host speed
    // classic's critical sections are as short as this build's code makes them (a release
    // build waited 2,142 times for the kernel's 15,428); with the kernel's costs, simulated, its
    // readers' waits come within 2x of the kernel's (the sample of 2026-11-30: 22,350 against
    // 40,476). Their total time does not: three quarters of the kernel's is 26 waits of 10 ms
    // and more, behind holders preempted with the mutex (17 threads on 2 CPUs), which the model,
    // a CPU for every thread, does not make (`cargo bench -p bufscope-analyses --bench
    // fidelity` prints it).
    let file = sample("6.1-bufio-hotspot.bftrace");
    let compare = |timing: &str| -> serde_json::Value {
        serde_json::from_str(&ok(&[
            "compare", &file, "--design", "classic", "--timing", timing, "--json",
        ]))
        .unwrap()
    };
    let read_waits = |source: &serde_json::Value| {
        source["ops"]["dm_bufio_read"]["waits"]["client mutex"]["waits"]
            .as_u64()
            .unwrap_or(0)
    };
    let host = compare("host");
    let calibrated = compare("kernel");
    let kernel = read_waits(&calibrated["kernel"]);
    assert_eq!(kernel, read_waits(&host["kernel"]), "the same kernel");
    let (at_host, at_kernel) = (
        read_waits(&host["designs"][0]),
        read_waits(&calibrated["designs"][0]),
    );
    eprintln!(
        "read waits on the client mutex: kernel {kernel}, classic at host speed {at_host}, with \
         the kernel's costs {at_kernel}"
    );
    assert!(kernel > 1_000, "{calibrated}");
    assert!(
        at_kernel * 2 >= kernel && at_kernel <= kernel * 2,
        "calibrated classic {at_kernel} waits vs kernel {kernel} (host timing: {at_host})"
    );
    // Both sources measure the hotspot threads' acquisitions, all of them.
    let hot = |source: &serde_json::Value| {
        source["acquisitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == "bufio_hot")
            .cloned()
            .unwrap_or_else(|| panic!("no bufio_hot row: {source}"))
    };
    let (k, d) = (hot(&calibrated["kernel"]), hot(&calibrated["designs"][0]));
    assert_eq!(
        (k["threads"].as_u64(), k["count"].as_u64()),
        (Some(16), Some(262_144))
    );
    assert_eq!(d["count"], k["count"]);
}

#[test]
fn a_simulated_compare_gives_the_same_waits_every_run_where_the_kernel_s_operations_met() {
    // No scheduler in the figures: two runs agree to the wait, side by side with other tests,
    // and the design's waits fall between operations that overlapped in the kernel (a replay on
    // real threads made 86 % of classic's waits here between operations the kernel kept apart).
    let _others = others_may_run();
    let file = sample("6.1-thin-hotspot.bftrace");
    let args = [
        "compare",
        &file,
        "--clock",
        "simulated",
        "--design",
        "classic",
        "--json",
    ];
    let (first, second) = (ok(&args), ok(&args));
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&first).unwrap(),
        serde_json::from_str(&second).unwrap(),
    );
    let classic = &a["designs"][0];
    assert_eq!(classic["source"], "classic");
    assert_eq!(classic["waits"], b["designs"][0]["waits"], "the same waits");
    assert_eq!(classic["ops"], b["designs"][0]["ops"]);
    let waits = classic["waits"]["client mutex"]["waits"].as_u64().unwrap();
    let kernel = a["kernel"]["waits"]["client mutex"]["waits"]
        .as_u64()
        .unwrap();
    assert!(
        kernel / 4 <= waits && waits <= kernel * 4,
        "classic {waits} client-mutex waits, the kernel {kernel}"
    );
    let check = &classic["replay_check"];
    assert_eq!(check["waits"].as_u64(), Some(waits), "{check}");
    let apart = check["apart_in_kernel"].as_u64().unwrap();
    assert!(apart * 10 < waits, "{apart} of {waits} apart in the kernel");
    // Each operation began when it was due or when its thread's previous one ended.
    let late = &classic["late"];
    assert!(late["p50_ns"].as_u64().unwrap() <= 1_000, "{late}");
}

/// Every design simulated on a bundled sample: the design `compare` names closest to the
/// kernel, and `design`'s figures against the kernel's: dm-bufio lock waits made inside
/// operations, and the client mutex's p50 and p99 wait (0 without one).
fn simulated_against_kernel(sample_name: &str, design: &str) -> (String, [(u64, u64); 3]) {
    let c: serde_json::Value = serde_json::from_str(&ok(&[
        "compare",
        &sample(sample_name),
        "--clock",
        "simulated",
        "--json",
    ]))
    .unwrap();
    let figures = |source: &serde_json::Value| {
        let waits = source["waits"].as_object().unwrap();
        let bufio: u64 = waits
            .iter()
            .filter(|(class, _)| *class != "other locks")
            .map(|(_, w)| w["waits"].as_u64().unwrap())
            .sum();
        let inside = bufio - source["unattributed_waits"].as_u64().unwrap();
        let mutex = |q: &str| {
            waits
                .get("client mutex")
                .map_or(0, |m| m[q].as_u64().unwrap())
        };
        [inside, mutex("p50_ns"), mutex("p99_ns")]
    };
    let ran = c["designs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"] == design)
        .unwrap_or_else(|| panic!("{sample_name}: no {design} in {}", c["designs"]));
    let (kernel, model) = (figures(&c["kernel"]), figures(ran));
    let closest = c["closest"].as_str().unwrap().to_owned();
    (closest, std::array::from_fn(|i| (model[i], kernel[i])))
}

fn within_2x((model, kernel): (u64, u64)) -> bool {
    model > 0 && kernel > 0 && model <= 2 * kernel && kernel <= 2 * model
}

#[test]
fn simulated_designs_predict_the_kernel_s_waits_within_2x_where_the_fidelity_bench_meets_it() {
    // The calibrated-model issue's bounds, on the rows the simulated clock meets (`cargo bench
    // -p bufscope-analyses --bench fidelity`): no scheduler in the figures, so they hold in a
    // debug build beside other tests as in the bench, and so does the design `compare` names
    // closest (the issue asks it of debug and release builds, idle or busy: on real threads a
    // debug build was seen to rank 6.1 wrongly). Every 6.1 sample's waits, p50 and p99,
    // since the client mutex runs as the kernel's with its handoffs drawn from the stamps (on
    // thin-hotspot and small-cache the p50 and p99 were 0.4-0.5x the kernel's before).
    //
    // 6.1 bufio-hotspot's waits too since a measured operation's I/O is in its own time: the
    // median read charged on top of each measured miss, and each writeback's writes waited for
    // in turn, had put the dirtier seconds behind its pace and crowded every thread's
    // operations together (2.50x the kernel's waits on the sample of 2026-11-30; 0.51x now).
    let _others = others_may_run();
    for sample_name in [
        "6.1-bufio-hotspot.bftrace",
        "6.1-thin-hotspot.bftrace",
        "6.1-small-cache.bftrace",
        "6.1-verity-read.bftrace",
    ] {
        let (closest, [waits, p50, p99]) = simulated_against_kernel(sample_name, "classic");
        eprintln!(
            "{sample_name}, classic against the kernel: waits {waits:?}, p50 {p50:?}, p99 {p99:?}; \
             closest {closest}"
        );
        assert_eq!(closest, "classic", "{sample_name}: one client mutex");
        assert!(waits.1 > 1_000, "{sample_name}: {waits:?}");
        for (what, figure) in [("waits", waits), ("p50", p50), ("p99", p99)] {
            assert!(
                within_2x(figure),
                "{sample_name}, classic: {what} {figure:?}"
            );
        }
    }
    // And 6.12's where the kernel has 100 waits or more. On small-cache two thirds of them are
    // dm-bufio's global cleanup waiting for the client mutex behind misses (0.02x before the
    // cleanup's runs were recorded and replayed, with the kernel's cache size). On verity-read
    // all are two kworkers prefetching the same blocks, meeting block by block (0.00x before
    // prefetches were planned block by block).
    // Every 6.12 sample names sharded closest; thin-hotspot's kernel made no dm-bufio wait.
    for sample_name in [
        "6.12-bufio-hotspot.bftrace",
        "6.12-small-cache.bftrace",
        "6.12-verity-read.bftrace",
        "6.12-thin-hotspot.bftrace",
    ] {
        let (closest, [waits, ..]) = simulated_against_kernel(sample_name, "sharded");
        eprintln!("{sample_name}, sharded against the kernel: waits {waits:?}; closest {closest}");
        assert_eq!(closest, "sharded", "{sample_name}: sharded trees");
        if sample_name.contains("thin-hotspot") {
            assert_eq!(waits.1, 0, "{sample_name}: the kernel's waits");
            continue;
        }
        assert!(waits.1 >= 100, "{sample_name}: {waits:?}");
        assert!(within_2x(waits), "{sample_name}, sharded: waits {waits:?}");
    }
}

/// 6.12 small-cache (dm-bufio's cache held at 64 KiB) records dm-bufio's global cleanup as
/// operations: every wait of its kworker on the client mutex is charged to one, and the designs
/// replay the runs with the kernel's cache size and eviction.
#[test]
fn the_global_cleanup_is_recorded_and_replayed_with_the_kernel_s_cache() {
    let _others = others_may_run();
    let file = sample("6.12-small-cache.bftrace");
    let i = info(&file);
    assert_eq!(i["cache_size_bytes"], 64 << 10, "{}", i["cache_size_bytes"]);
    let rows = |by: &str| -> Vec<(String, u64)> {
        let r: serde_json::Value = serde_json::from_str(&ok(&[
            "report",
            &file,
            "--by",
            by,
            "--lock",
            "client mutex",
            "--json",
        ]))
        .unwrap();
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row["name"].as_str().unwrap_or("").to_string(),
                    row["contended"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let from_cleanup: u64 = rows("caller")
        .iter()
        .filter(|(caller, _)| caller.starts_with("do_global_cleanup+"))
        .map(|(_, n)| n)
        .sum();
    let in_cleanup: u64 = rows("op")
        .iter()
        .filter(|(op, _)| op == "do_global_cleanup")
        .map(|(_, n)| n)
        .sum();
    assert!(from_cleanup >= 100, "{from_cleanup}");
    assert_eq!(
        in_cleanup, from_cleanup,
        "each wait the cleanup's code made is charged to a cleanup run"
    );
    let (ran, _, stderr) = run(&["compare", &file, "--design", "sharded", "--json"]);
    assert!(ran, "{stderr}");
    assert!(
        stderr.contains(
            "the designs' caches: 16 buffers (the recording kernel's cache size); misses \
             allocate past it"
        ),
        "{stderr}"
    );
}

/// The bundled 6.1 recordings keep a mutex's rule by their own stamps: an operation that tried
/// for the client mutex while another thread held it waited. Before the recorder kept the waits
/// of `bufscope stress` (the workload of the thin and small-cache samples), 37 % of those on
/// thin-hotspot had; the test bed checks every recording it makes the same way.
#[test]
fn the_bundled_recordings_attempts_inside_another_s_hold_waited() {
    let _others = others_may_run();
    for name in [
        "6.1-thin-hotspot.bftrace",
        "6.1-small-cache.bftrace",
        "6.1-bufio-hotspot.bftrace",
        "6.1-verity-read.bftrace",
    ] {
        let c: serde_json::Value =
            serde_json::from_str(&ok(&["report", &sample(name), "--calibration", "--json"]))
                .unwrap();
        let timeline = &c["timeline"];
        let (inside, waited) = (
            timeline["began_inside"].as_u64().unwrap(),
            timeline["waited"].as_u64().unwrap(),
        );
        assert_eq!(timeline["stamped"], true, "{name}: {timeline}");
        assert!(inside >= 1_000, "{name}: {timeline}");
        assert!(
            waited as f64 >= 0.85 * inside as f64,
            "{name}: {waited} of {inside} attempts inside another's hold waited"
        );
    }
}

#[test]
fn compare_refuses_what_it_cannot_compare() {
    let _others = others_may_run();
    // Format 1.0: lock waits, no dm-bufio operations.
    let golden = format!(
        "{}/trace/tests/data/format-1.0.bftrace",
        env!("CARGO_MANIFEST_DIR")
    );
    let (ok_run, stdout, stderr) = run(&["compare", &golden]);
    assert!(!ok_run);
    assert!(stderr.contains("holds no dm-bufio operations"), "{stderr}");
    assert!(
        stdout.contains("contended"),
        "its locks are still shown: {stdout}"
    );
    let file = sample("6.1-verity-read.bftrace");
    fails(
        &["compare", &file, "--design", "btree"],
        "unknown design `btree`",
    );
    fails(&["compare", &file, "--plot", "waits.pdf"], ".svg or .png");
    fails(&["compare", &file, "--speed", "0"], "not a positive number");
}

#[test]
fn calibration_accounts_for_every_operation_and_puts_the_device_read_outside_the_lock() {
    let _others = others_may_run();
    for name in ["6.1-bufio-hotspot.bftrace", "6.12-bufio-hotspot.bftrace"] {
        let file = sample(name);
        let c: serde_json::Value =
            serde_json::from_str(&ok(&["report", &file, "--calibration", "--json"])).unwrap();
        let steps = c["steps"].as_array().unwrap();
        let count = |op: &str| -> u64 {
            steps
                .iter()
                .filter(|s| s["op"] == op)
                .map(|s| s["count"].as_u64().unwrap())
                .sum()
        };
        // The same operations as report --ops counts, kind by kind.
        let ops: serde_json::Value = serde_json::from_str(&ok(&[
            "report", &file, "--ops", "--by", "op", "--op", "read", "--op", "release", "--json",
        ]))
        .unwrap();
        for row in ops["rows"].as_array().unwrap() {
            let op = row["key"].as_str().unwrap().trim_start_matches("dm_bufio_");
            assert_eq!(
                count(op),
                row["count"].as_u64().unwrap(),
                "{name}: {op} operations"
            );
        }
        let row = |op: &str, result: &str| {
            steps
                .iter()
                .find(|s| s["op"] == op && s["result"] == result)
                .unwrap_or_else(|| panic!("{name}: no {op} {result} row: {c}"))
        };
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
        let (hit, miss) = (row("read", "hit"), row("read", "miss"));
        // A miss reads its block from the device outside the lock: far longer than a hit, most
        // of it outside the mutex.
        assert!(
            n(miss, "net_p50_ns") > 10 * n(hit, "net_p50_ns"),
            "{name}: {miss} vs {hit}"
        );
        assert!(
            n(miss, "miss_io_p50_ns") > 5 * n(miss, "hold_p50_ns"),
            "{name}: {miss}"
        );
        assert_eq!(c["holds_measured"], true, "{name}");
    }
    fails(
        &[
            "report",
            &format!(
                "{}/trace/tests/data/format-1.0.bftrace",
                env!("CARGO_MANIFEST_DIR")
            ),
            "--calibration",
        ],
        "no dm-bufio operations",
    );
}

/// The samples' client-mutex holds obey one holder at a time: a sample recorded while the
/// probes timed a 6.1 thread's runqueue wait inside mutex_lock as hold (0.54 % of 6.1
/// thin-hotspot's holds impossible, by up to 8 ms) would calibrate the models with holds up to
/// thousands of times too long.
#[test]
fn bundled_samples_hold_each_client_mutex_one_thread_at_a_time() {
    let _others = others_may_run();
    for kernel in ["6.1", "6.12"] {
        for scenario in [
            "bufio-hotspot",
            "thin-hotspot",
            "small-cache",
            "verity-read",
        ] {
            let name = format!("{kernel}-{scenario}.bftrace");
            let c: serde_json::Value =
                serde_json::from_str(&ok(&["report", &sample(&name), "--calibration", "--json"]))
                    .unwrap();
            let check = &c["hold_check"];
            let n = |k: &str| check[k].as_u64().unwrap();
            // 6.1 takes the client mutex in every operation; 6.12 in its misses and dirtyings.
            assert!(n("measured") > 0, "{name}: no holds measured: {check}");
            assert!(
                n("impossible") as f64 <= 0.000_5 * n("measured") as f64,
                "{name}: {check}"
            );
        }
    }
}

/// The Python with Perfetto's protos and pyarrow that `cargo xtask setup` installs; `None`
/// (after [`skip`]) when it is missing.
fn py_reader(test: &str) -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py-readers/bin/python");
    if python.exists() {
        return Some(python);
    }
    skip(
        test,
        &format!(
            "{} is missing; `cargo xtask setup` installs the Python readers (perfetto, pyarrow) \
             that check exports independently",
            python.display()
        ),
    );
    None
}

fn read_with(python: &PathBuf, script: &str, file: &std::path::Path) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/readers")
        .join(script);
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(file)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn info(file: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&["info", file, "--json"])).unwrap()
}

#[test]
fn perfetto_export_decodes_with_perfetto_s_own_protos() {
    let _others = others_may_run();
    let Some(python) = py_reader("perfetto_export_decodes_with_perfetto_s_own_protos") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for name in ["6.1-thin-hotspot.bftrace", "6.12-small-cache.bftrace"] {
        let file = sample(name);
        let out = dir.path().join(format!("{name}.perfetto-trace"));
        ok(&[
            "export",
            &file,
            "--format",
            "perfetto",
            "-o",
            out.to_str().unwrap(),
        ]);
        let s = read_with(&python, "perfetto_summary.py", &out);
        let i = info(&file);
        assert_eq!(
            s["slices"]["dm-bufio"], i["bufio_ops"],
            "{name}: a slice per op"
        );
        assert_eq!(
            s["slices"]["lock"], i["lock_waits"],
            "{name}: a slice per wait"
        );
        assert_eq!(
            s["unbalanced_tracks"], 0,
            "{name}: every slice ends, nested"
        );
        assert_eq!(s["out_of_order"], 0, "{name}: packets in time order");
        assert_eq!(
            s["threads"],
            i["threads"].as_u64().unwrap().max(1),
            "{name}"
        );
        let counters: Vec<&str> = s["counter_tracks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for c in ["ops/s", "blocks cached (est.)", "dirty buffers (est.)"] {
            assert!(
                counters.iter().any(|t| t.ends_with(c)),
                "{name}: {counters:?}"
            );
        }
        assert!(s["counter_samples"].as_u64().unwrap() > 10, "{name}: {s}");
    }
}

#[test]
fn parquet_export_reads_back_with_pyarrow_and_agrees_with_report() {
    let _others = others_may_run();
    let Some(python) = py_reader("parquet_export_reads_back_with_pyarrow_and_agrees_with_report")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = sample("6.1-thin-hotspot.bftrace");
    let out = dir.path().join("t.parquet");
    ok(&[
        "export",
        &file,
        "--format",
        "parquet",
        "-o",
        out.to_str().unwrap(),
    ]);
    let s = read_with(&python, "parquet_summary.py", &out);
    let i = info(&file);
    assert_eq!(s["kinds"]["bufio_op"], i["bufio_ops"]);
    assert_eq!(s["kinds"]["lock_wait"], i["lock_waits"]);
    assert_eq!(
        s["null_blocks_in_waits"], i["lock_waits"],
        "waits have no block"
    );
    assert_eq!(s["devices"], serde_json::json!(["7:0"]));
    // The schema `export --schema` documents, in order, with unsigned types.
    let schema = ok(&["export", "--schema"]);
    let documented: Vec<&str> = schema
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let columns: Vec<&str> = s["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(columns, documented);
    assert_eq!(s["types"][4], "uint64", "start_ns");
    // Client-mutex waits agree with report's row for that lock.
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["report", &file, "--lock", "client mutex", "--json"])).unwrap();
    let row = &report["rows"][0];
    assert_eq!(s["mutex_waits"], row["contended"]);
    assert_eq!(s["mutex_wait_total_ns"], row["total_wait_ns"]);
}

/// The README's DuckDB query over a fleet's Parquet exports, as written there (its line breaks
/// made spaces).
fn readme_duckdb_query() -> String {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let paragraph = &readme[readme
        .find("in DuckDB,")
        .expect("README's fleet paragraph: \"... in DuckDB, `SELECT ...`\"")..];
    let query = paragraph.split('`').nth(1).unwrap();
    query.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn readme_duckdb_query_over_two_hosts_exports_counts_every_wait_by_host_and_lock() {
    let _others = others_may_run();
    let test = "readme_duckdb_query_over_two_hosts_exports_counts_every_wait_by_host_and_lock";
    let Some(python) = py_reader(test) else {
        return;
    };
    let has_duckdb = std::process::Command::new(&python)
        .args(["-c", "import duckdb"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_duckdb {
        skip(
            test,
            "duckdb is missing from target/py-readers; `cargo xtask setup` installs the pinned \
             readers again when userspace/tests/readers/requirements.txt changes",
        );
        return;
    }
    // Two machines of a fleet: the samples were recorded in VMs without a host name, so each
    // export is given one.
    let fleet = [
        ("6.1-small-cache.bftrace", "testbox-1"),
        ("6.12-small-cache.bftrace", "testbox-2"),
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("traces")).unwrap();
    let exports: Vec<_> = fleet
        .iter()
        .map(|(name, host)| {
            bufscope()
                .args([
                    "export",
                    &sample(name),
                    "--format",
                    "parquet",
                    "--host",
                    host,
                    "-o",
                ])
                .arg(dir.path().join(format!("traces/{host}.parquet")))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("bufscope starts")
        })
        .collect();
    for ((name, _), export) in fleet.iter().zip(exports) {
        let out = export.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The query as the README gives it, run where its FROM 'traces/*.parquet' finds both.
    let query = readme_duckdb_query();
    assert!(query.contains("FROM 'traces/*.parquet'"), "{query}");
    let out = std::process::Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/readers/fleet_query.py"))
        .arg(&query)
        .current_dir(dir.path())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = result["rows"].as_array().unwrap();
    let got: std::collections::BTreeMap<(String, String, String), (u64, u64)> = rows
        .iter()
        .map(|r| {
            let text = |i: usize| r[i].as_str().unwrap().to_string();
            (
                (text(0), text(1), text(2)),
                (r[3].as_u64().unwrap(), r[4].as_u64().unwrap()),
            )
        })
        .collect();
    assert_eq!(got.len(), rows.len(), "one row per host, kernel and lock");

    // The same figures from each trace by bufscope's own report: waits and total wait per lock.
    let mut expected = std::collections::BTreeMap::new();
    for (name, host) in fleet {
        let file = sample(name);
        let kernel = info(&file)["header"]["kernel_release"]
            .as_str()
            .unwrap()
            .to_string();
        let report: serde_json::Value =
            serde_json::from_str(&ok(&["report", &file, "--json"])).unwrap();
        for row in report["rows"].as_array().unwrap() {
            let lock = (
                host.to_string(),
                kernel.clone(),
                row["name"].as_str().unwrap().to_string(),
            );
            let e: &mut (u64, u64) = expected.entry(lock).or_default();
            e.0 += row["contended"].as_u64().unwrap();
            e.1 += row["total_wait_ns"].as_u64().unwrap();
        }
    }
    assert_eq!(got, expected);
    let totals: Vec<u64> = rows.iter().map(|r| r[4].as_u64().unwrap()).collect();
    assert!(
        totals.is_sorted_by(|a, b| a >= b),
        "ORDER BY 5 DESC: {totals:?}"
    );
    eprintln!(
        "{test}: {} rows, {} waits",
        rows.len(),
        got.values().map(|v| v.0).sum::<u64>()
    );

    fails(
        &[
            "export",
            &sample(fleet[0].0),
            "--format",
            "folded",
            "--host",
            "testbox-1",
            "-o",
            "-",
        ],
        "--host sets the host column",
    );
}

#[test]
fn csv_json_chrome_and_folded_exports_hold_every_event() {
    let _others = others_may_run();
    let dir = tempfile::tempdir().unwrap();
    let file = sample("6.12-small-cache.bftrace");
    let i = info(&file);
    let (ops, waits) = (
        i["bufio_ops"].as_u64().unwrap(),
        i["lock_waits"].as_u64().unwrap(),
    );
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();

    ok(&["export", &file, "--format", "csv", "-o", &path("t.csv")]);
    let mut csv = csv::Reader::from_path(path("t.csv")).unwrap();
    let headers = csv.headers().unwrap().clone();
    let kind = headers.iter().position(|h| h == "kind").unwrap();
    let mut count = std::collections::HashMap::<String, u64>::new();
    for r in csv.records() {
        *count.entry(r.unwrap()[kind].to_string()).or_default() += 1;
    }
    assert_eq!((count["bufio_op"], count["lock_wait"]), (ops, waits));

    ok(&["export", &file, "--format", "json", "-o", &path("t.jsonl")]);
    let text = std::fs::read_to_string(path("t.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len() as u64, ops + waits);
    assert!(
        rows.iter().any(
            |r| r["lock_class"] == "tree lock (read)" || r["lock_class"] == "tree lock (write)"
        ),
        "6.12 small-cache waited on tree locks"
    );

    ok(&["export", &file, "--format", "chrome", "-o", &path("t.json")]);
    let chrome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("t.json")).unwrap()).unwrap();
    let events = chrome["traceEvents"].as_array().unwrap();
    let ph = |p: &str| events.iter().filter(|e| e["ph"] == p).count() as u64;
    assert_eq!(ph("X"), ops);
    assert_eq!((ph("b"), ph("e")), (waits, waits));
    assert!(ph("C") > 0 && ph("M") > 0);

    // Folded: weights add up to the total wait; every line ends on a lock name.
    let folded = ok(&["export", &file, "--format", "folded", "-o", "-"]);
    let total: u64 = folded
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    let all: serde_json::Value =
        serde_json::from_str(&ok(&["report", &file, "--top", "0", "--json"])).unwrap();
    let reported: u64 = all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total_wait_ns"].as_u64().unwrap())
        .sum();
    assert_eq!(total, reported);
    assert!(
        folded.contains("dm_thin_find_block;"),
        "offsets stripped: {folded}"
    );

    // Refusals: an existing file, parquet to stdout, a non-trace.
    fails(
        &["export", &file, "--format", "csv", "-o", &path("t.csv")],
        "--force",
    );
    fails(
        &["export", &file, "--format", "parquet", "-o", "-"],
        "parquet needs a file",
    );
    fails(
        &["export", &file, "--format", "svg", "-o", &path("x")],
        "invalid value 'svg'",
    );
    let manifest = format!("{}/Cargo.toml", env!("CARGO_MANIFEST_DIR"));
    fails(
        &["export", &manifest, "--format", "csv", "-o", &path("y.csv")],
        "not a bufscope trace",
    );
    assert!(!dir.path().join("y.csv").exists() && !dir.path().join("y.csv.partial").exists());
}
