//! report, export and compare on the bundled kernel samples (6.1 and 6.12 under the VM test
//! bed) and on reference designs' runs of them: the real binary, real files. No root needed.

mod common;

use std::path::PathBuf;

use common::bufscope;

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
    assert!(
        contended > 10_000,
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
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.bftrace");
    let out = out.to_str().unwrap();
    let file = sample("6.1-thin-hotspot.bftrace");
    let (ok_run, _, stderr) = run(&["replay", &file, "--trace-out", out]);
    assert!(ok_run, "{stderr}");
    for design in ["classic", "sharded", "lockfree"] {
        let path = dir.path().join(format!("run.{design}.bftrace"));
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
        let info = ok(&["info", path.to_str().unwrap(), "--json"]);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["bufio_ops"], 249_739, "{design}: every op replayed");
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
    }
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
    for op in ["dm_bufio_get", "dm_bufio_read", "dm_bufio_release"] {
        assert!(waits(op, "kernel") > 1_000, "{op}:\n{csv}");
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
fn compare_refuses_what_it_cannot_compare() {
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
