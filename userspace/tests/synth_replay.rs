//! `bufscope synth` and `bufscope replay` as a user runs them: a small hotspot trace made, read
//! back, and replayed through every design; bad input refused with clear messages.

mod common;

use common::bufscope;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bufscope().args(args).output().expect("bufscope runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_synthetic_hotspot_trace_replays_through_every_design() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("hotspot.bftrace");
    let trace = trace.to_str().unwrap();
    let (ok, _, stderr) = run(&[
        "synth",
        "hotspot",
        "-o",
        trace,
        "--hotspot-threads",
        "4",
        "--region-blocks",
        "64",
        "--passes",
        "8",
        "--dirtier-blocks",
        "1000",
    ]);
    assert!(ok, "{stderr}");
    // 4 threads x 64 blocks x 8 passes x (read + release), and the dirtier's 3 ops per block.
    let expected = 4 * 64 * 8 * 2 + 1000 * 3;
    let (ok, stdout, stderr) = run(&["info", "--json", trace]);
    assert!(ok, "{stderr}");
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(info["bufio_ops"], expected);
    assert_eq!(info["by_op"]["dm_bufio_read"]["count"], 4 * 64 * 8 + 1000);
    assert_eq!(info["threads"], 5);

    let (ok, stdout, stderr) = run(&["replay", "--json", "--capacity", "500", trace]);
    assert!(ok, "{stderr}");
    let replay: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(replay["operations"], expected);
    let designs = replay["designs"].as_array().unwrap();
    assert_eq!(designs.len(), 3);
    for d in designs {
        let name = d["design"].as_str().unwrap();
        let reads = 4 * 64 * 8 + 1000;
        assert_eq!(
            d["hits"].as_u64().unwrap() + d["misses"].as_u64().unwrap(),
            reads,
            "{name}"
        );
        assert!(
            d["evictions"].as_u64().unwrap() > 0,
            "{name}: 1,256 blocks through 500 buffers"
        );
        assert_eq!(
            d["mismatches"]["not_held"], 0,
            "{name}: every release found its read"
        );
        assert_eq!(d["mismatches"]["held_at_end"], 0, "{name}");
        assert_eq!(
            d["latency"]["read"]["count"], reads,
            "{name}: one latency sample per read"
        );
        assert_eq!(d["latency"]["mark_dirty"]["count"], 1000, "{name}");
        let mutex = d["locks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["class"] == "client mutex")
            .unwrap()["acquisitions"]
            .as_u64()
            .unwrap();
        if name == "classic" {
            assert!(
                mutex >= expected,
                "{name}: every operation takes the mutex ({mutex})"
            );
        } else {
            assert!(
                mutex < expected / 2,
                "{name}: hits and releases skip the mutex ({mutex})"
            );
        }
    }

    let (ok, stdout, _) = run(&["replay", "--design", "sharded", "--threads", "2", trace]);
    assert!(ok);
    assert!(
        stdout.contains("sharded") && !stdout.contains("classic "),
        "{stdout}"
    );
    assert!(stdout.contains("tree lock (read)"), "{stdout}");
}

/// A role's row among a design's acquisitions in `replay --json`.
fn role_row<'a>(design: &'a serde_json::Value, role: &str) -> &'a serde_json::Value {
    design["acquisitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == role)
        .unwrap_or_else(|| panic!("no {role} row in {design}"))
}

fn mean_ns(row: &serde_json::Value) -> f64 {
    row["total_ns"].as_f64().unwrap() / row["count"].as_f64().unwrap()
}

#[test]
fn replay_shows_each_roles_acquisitions_and_the_ratios_between_designs() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("hotspot.bftrace");
    let trace = trace.to_str().unwrap();
    let (ok, _, stderr) = run(&[
        "synth",
        "hotspot",
        "-o",
        trace,
        "--hotspot-threads",
        "3",
        "--region-blocks",
        "64",
        "--passes",
        "8",
        "--dirtier-blocks",
        "500",
    ]);
    assert!(ok, "{stderr}");
    let run_out = dir.path().join("run.bftrace");
    let (ok, stdout, stderr) = run(&[
        "replay",
        "--json",
        "--trace-out",
        run_out.to_str().unwrap(),
        trace,
    ]);
    assert!(ok, "{stderr}");
    let replay: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let designs = replay["designs"].as_array().unwrap();
    for d in designs {
        let name = d["design"].as_str().unwrap();
        let hot = role_row(d, "bufio_hot");
        assert_eq!(
            (hot["threads"].as_u64(), hot["count"].as_u64()),
            (Some(3), Some(3 * 64 * 8)),
            "{name}: one acquisition per read of the hotspot threads"
        );
        let dirty = role_row(d, "bufio_dirty");
        assert_eq!(
            (dirty["threads"].as_u64(), dirty["count"].as_u64()),
            (Some(1), Some(500)),
            "{name}"
        );
        // The role rows are the threads' own figures added up: the design's run, read back
        // per thread by `report --ops`.
        let path = dir.path().join(format!("run.{name}.bftrace"));
        let (ok, stdout, stderr) = run(&[
            "report",
            "--ops",
            "--by",
            "tid",
            "--top",
            "0",
            "--json",
            path.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        let per_thread: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let (mut count, mut total_ns, mut threads) = (0, 0, 0);
        for row in per_thread["rows"].as_array().unwrap() {
            if row["role"] == "bufio_hot" {
                count += row["count"].as_u64().unwrap();
                total_ns += row["total_ns"].as_u64().unwrap();
                threads += 1;
            }
        }
        assert_eq!(
            (threads, count, total_ns),
            (
                3,
                hot["count"].as_u64().unwrap(),
                hot["total_ns"].as_u64().unwrap()
            ),
            "{name}: per-thread rows {per_thread}"
        );
        assert_eq!(
            hot["avg_ns"].as_u64().unwrap(),
            total_ns / count,
            "{name}: the mean is the total over the count"
        );
    }
    // Each design over the next: classic/sharded and sharded/lockfree, from the means above.
    let ratios = replay["acquisition_ratios"].as_array().unwrap();
    for (numerator, denominator) in [("classic", "sharded"), ("sharded", "lockfree")] {
        let design = |name: &str| designs.iter().find(|d| d["design"] == name).unwrap();
        for role in ["bufio_hot", "bufio_dirty"] {
            let ratio =
                ratios
                    .iter()
                    .find(|r| {
                        r["role"] == role
                            && r["numerator"] == numerator
                            && r["denominator"] == denominator
                    })
                    .unwrap_or_else(|| panic!("no {role} {numerator}/{denominator} in {ratios:?}"))
                    ["ratio"]
                    .as_f64()
                    .unwrap();
            let expected = mean_ns(role_row(design(numerator), role))
                / mean_ns(role_row(design(denominator), role));
            assert!(
                (ratio - expected).abs() <= 1e-9 * expected,
                "{role} {numerator}/{denominator}: {ratio} vs {expected}"
            );
        }
    }
    assert_eq!(ratios.len(), 4, "two roles, two pairs: {ratios:?}");

    // The table: every role under every design, then one ratio per role and pair of designs,
    // each the printed means' ratio (up to their rounding: three digits, or whole ns).
    let (ok, stdout, stderr) = run(&["replay", trace]);
    assert!(ok, "{stderr}");
    let ns = |cell: &str| -> f64 {
        let (value, unit) = cell.split_once(' ').unwrap();
        let scale = match unit {
            "ns" => 1.0,
            "us" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            other => panic!("unit {other} in {cell}"),
        };
        value.parse::<f64>().unwrap() * scale
    };
    let lines: Vec<&str> = stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("acquisitions"))
        .unwrap_or_else(|| panic!("no acquisitions table in {stdout}"));
    // role, design, threads, count, then mean, p50, p99 as "<value> <unit>".
    let mut means: Vec<(String, String, f64)> = Vec::new();
    let mut role = String::new();
    for line in &lines[header + 1..] {
        if line.is_empty() {
            break;
        }
        let cells: Vec<&str> = line.split_whitespace().collect();
        let design_at = if line.starts_with(' ') {
            0
        } else {
            role = cells[0].to_string();
            1
        };
        let mean = format!("{} {}", cells[design_at + 3], cells[design_at + 4]);
        means.push((role.clone(), cells[design_at].to_string(), ns(&mean)));
    }
    assert_eq!(means.len(), 6, "two roles by three designs: {stdout}");
    let ratio_header = lines
        .iter()
        .position(|l| l.starts_with("mean ratio"))
        .unwrap_or_else(|| panic!("no ratios in {stdout}"));
    assert!(
        lines[ratio_header].contains("classic/sharded")
            && lines[ratio_header].contains("sharded/lockfree"),
        "{stdout}"
    );
    let mean_of = |role: &str, design: &str| {
        means
            .iter()
            .find(|(r, d, _)| r == role && d == design)
            .map(|m| m.2)
            .unwrap()
    };
    for line in &lines[ratio_header + 1..ratio_header + 3] {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let printed: Vec<f64> = cells[1..]
            .iter()
            .map(|c| c.trim_end_matches('x').parse().unwrap())
            .collect();
        let expected = [
            mean_of(cells[0], "classic") / mean_of(cells[0], "sharded"),
            mean_of(cells[0], "sharded") / mean_of(cells[0], "lockfree"),
        ];
        for (p, e) in printed.iter().zip(expected) {
            assert!(
                (p - e).abs() <= 0.02 * e + 0.005,
                "{}: printed {p}, from the printed means {e}: {stdout}",
                cells[0]
            );
        }
    }
}

#[test]
fn replay_and_synth_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("trace/tests/data/format-1.0.bftrace");
    let (ok, _, stderr) = run(&["replay", golden.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("holds no dm-bufio operations"), "{stderr}");

    let (ok, _, stderr) = run(&["replay", "--design", "lru2", golden.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown design `lru2`; known: classic, sharded, lockfree"),
        "{stderr}"
    );

    let (ok, _, stderr) = run(&["replay", "--speed=0", golden.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("--speed") && stderr.contains("not a positive number"),
        "{stderr}"
    );

    let not_a_trace = dir.path().join("notes.txt");
    std::fs::write(&not_a_trace, "hello").unwrap();
    let (ok, _, stderr) = run(&["replay", not_a_trace.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("notes.txt: at offset 0"), "{stderr}");

    let existing = dir.path().join("keep.bftrace");
    std::fs::write(&existing, "precious").unwrap();
    let (ok, _, stderr) = run(&["synth", "hotspot", "-o", existing.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("exists; pass --force"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "precious");

    let small = dir.path().join("small.bftrace");
    let small = small.to_str().unwrap();
    let (ok, _, stderr) = run(&[
        "synth",
        "hotspot2",
        "-o",
        small,
        "--hotspot-threads",
        "1",
        "--region-blocks",
        "8",
        "--passes",
        "1",
    ]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(&["replay", "--device", "/nonexistent/dev", small]);
    assert!(!ok);
    assert!(
        stderr.contains("--device /nonexistent/dev") && stderr.contains("No such file"),
        "{stderr}"
    );

    // A device opened read-only: hotspot2 dirties every block it warms, the writeback watermark
    // (dirty > 3 x clean) writes them back, and the refused writes are reported with their reason.
    let device = dir.path().join("device.img");
    std::fs::write(&device, vec![0u8; 4096 * 16]).unwrap();
    let device = device.to_str().unwrap();
    let (ok, stdout, stderr) = run(&["replay", "--device", device, small]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("classic") && stdout.contains("lockfree"),
        "{stdout}"
    );
    assert!(
        stdout.contains("first I/O error: writing block"),
        "{stdout}"
    );
    assert!(
        stdout.contains("opened read-only; allow writes explicitly"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = run(&["replay", "--device", device, "--allow-writes", small]);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("I/O error"), "{stdout}");

    // A simulated device latency: every write of that writeback takes 20 ms.
    let (ok, stdout, stderr) = run(&[
        "replay",
        "--json",
        "--design",
        "sharded",
        "--io-latency",
        "20ms",
        small,
    ]);
    assert!(ok, "{stderr}");
    let slow: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let design = &slow["designs"][0];
    let writes = design["writes"].as_u64().unwrap();
    assert!(writes >= 1, "{slow}");
    // The replay's clock starts once its threads run, a little after the first write may have
    // begun: 5 % slack (CI measured 99.88 ms for 5 writes of 20 ms).
    let at_least = 0.95 * 0.02 * writes as f64;
    assert!(design["elapsed_s"].as_f64().unwrap() >= at_least, "{slow}");
    let (ok, _, stderr) = run(&["replay", "--io-latency", "1ms", "--device", device, small]);
    assert!(!ok);
    assert!(
        stderr.contains("--io-latency") && stderr.contains("--device"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["replay", "--direct", small]);
    assert!(!ok);
    assert!(stderr.contains("--device"), "{stderr}");
}

#[test]
fn every_workload_makes_a_trace_that_replays_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // (workload and its arguments, expected operations)
    let cases: [(&[&str], u64); 5] = [
        (
            &[
                "uniform",
                "--threads",
                "3",
                "--reads",
                "400",
                "--blocks",
                "500",
                "--write-percent",
                "0",
            ],
            3 * 400 * 2,
        ),
        (
            &[
                "zipf",
                "--threads",
                "2",
                "--reads",
                "300",
                "--blocks",
                "1000",
                "--write-percent",
                "0",
            ],
            2 * 300 * 2,
        ),
        (
            &["scan", "--threads", "2", "--blocks", "300", "--passes", "2"],
            2 * 2 * 300 * 2,
        ),
        // Each lookup: read and release every level's node.
        (
            &[
                "btree",
                "--threads",
                "4",
                "--lookups",
                "100",
                "--fanout",
                "8",
                "--depth",
                "3",
            ],
            4 * 100 * 3 * 2,
        ),
        (
            &[
                "hotspot2",
                "--hotspot-threads",
                "2",
                "--region-blocks",
                "16",
                "--passes",
                "3",
            ],
            2 * 16 * 3 + 2 * 16 * 3 * 2,
        ),
    ];
    for (args, expected) in cases {
        let trace = dir.path().join(format!("{}.bftrace", args[0]));
        let trace = trace.to_str().unwrap();
        let mut synth = vec!["synth"];
        synth.extend_from_slice(args);
        synth.extend_from_slice(&["-o", trace]);
        let (ok, _, stderr) = run(&synth);
        assert!(ok, "{args:?}: {stderr}");
        let (ok, stdout, _) = run(&["info", "--json", trace]);
        assert!(ok);
        let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(info["bufio_ops"], expected, "{args:?}");
        let (ok, stdout, stderr) = run(&["replay", "--json", "--capacity", "200", trace]);
        assert!(ok, "{args:?}: {stderr}");
        let replay: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for d in replay["designs"].as_array().unwrap() {
            let m = &d["mismatches"];
            assert_eq!(
                (
                    m["not_held"].as_u64(),
                    m["held_at_end"].as_u64(),
                    m["io_errors"].as_u64()
                ),
                (Some(0), Some(0), Some(0)),
                "{args:?} {}: {m}",
                d["design"]
            );
        }
    }
}

#[test]
fn stress_drives_a_file_and_writes_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("device.img");
    std::fs::write(&device, vec![0u8; 4096 * 256]).unwrap();
    let device = device.to_str().unwrap();
    // Buffered: the temporary directory may be on a filesystem without O_DIRECT; the test bed
    // drives real block devices with O_DIRECT.
    let (ok, stdout, stderr) = run(&[
        "stress",
        device,
        "--threads",
        "4",
        "--pattern",
        "hot",
        "--region-blocks",
        "64",
        "--duration",
        "300ms",
        "--buffered",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["reads"]["ops"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["writes"]["ops"], 0);
    assert!(
        report["reads"]["p99_us"].as_f64().unwrap() >= report["reads"]["p50_us"].as_f64().unwrap()
    );

    let (ok, _, stderr) = run(&[
        "stress",
        device,
        "--writers",
        "1",
        "--duration",
        "100ms",
        "--buffered",
    ]);
    assert!(!ok);
    assert!(stderr.contains("pass --allow-writes"), "{stderr}");
    assert!(
        std::fs::read(device).unwrap().iter().all(|&b| b == 0),
        "nothing written"
    );

    let (ok, stdout, stderr) = run(&[
        "stress",
        device,
        "--threads",
        "1",
        "--writers",
        "1",
        "--allow-writes",
        "--duration",
        "200ms",
        "--buffered",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["writes"]["ops"].as_u64().unwrap() > 0, "{report}");
    assert!(
        std::fs::read(device).unwrap().iter().any(|&b| b != 0),
        "the writer wrote"
    );

    let (ok, _, stderr) = run(&[
        "stress",
        device,
        "--threads",
        "8",
        "--pattern",
        "hot",
        "--region-blocks",
        "64",
        "--buffered",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("exceed the device's 256 blocks"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["stress", "/nonexistent/disk", "--duration", "10ms"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/disk"), "{stderr}");
}
