//! The command line as a user meets it: help, bad options and impossible numbers, trace files
//! that are missing, foreign, damaged (each damaged record skipped, or refused with --strict) or
//! cut short, errors that name their cause once, and `report --ops` on a bundled sample and on
//! files with and without thread names. None of this needs root.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use bufscope_analyses::tracedata::TraceData;
use bufscope_trace::{
    BufioOp, LockWait, Metadata, OpKind, Record, Thread, TraceHeader, TraceReader, TraceWriter,
};
use common::bufscope;

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trace/tests/data/format-1.0.bftrace")
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = bufscope().args(args).output().expect("bufscope runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_trace(path: &Path, events: u64, finish: bool) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = TraceWriter::new(file, &TraceHeader::default()).unwrap();
    for i in 0..events {
        writer
            .push(LockWait {
                start_ns: 1_000 + i * 100,
                wait_ns: 50 + i,
                lock_addr: 0xffff_8880_0000_0040,
                tid: 10 + (i % 3) as u32,
                tgid: 10,
                cpu: 0,
                flags: if i % 2 == 0 { 0x20 } else { 0x04 },
                ret: 0,
                ..LockWait::default()
            })
            .unwrap();
    }
    writer.flush().unwrap();
    if finish {
        writer
            .write_metadata(&Metadata::LossCounts {
                at_clock_ns: 0,
                kernel: Default::default(),
                user_dropped: 0,
            })
            .unwrap();
        writer.finish(0).unwrap();
    } else {
        // Simulate a crash: the process dies with the file as it is on disk.
        std::mem::forget(writer);
    }
}

#[test]
fn every_subcommand_has_help() {
    for cmd in [
        &["--help"][..],
        &["record", "--help"],
        &["info", "--help"],
        &["doctor", "--help"],
        &["report", "--help"],
        &["completions", "--help"],
    ] {
        let (ok, stdout, _) = run(cmd);
        assert!(ok, "{cmd:?}");
        assert!(stdout.contains("Usage: bufscope"), "{cmd:?}: {stdout}");
    }
}

#[test]
fn completions_and_man_pages_cover_the_whole_command_line() {
    let (ok, bash, stderr) = run(&["completions", "bash"]);
    assert!(ok, "{stderr}");
    for word in [
        "complete -F _bufscope",
        "record",
        "live",
        "--duration",
        "perfetto",
    ] {
        assert!(bash.contains(word), "bash completions lack {word:?}");
    }
    let (ok, _, stderr) = run(&["completions", "tcsh"]);
    assert!(!ok);
    assert!(
        stderr.contains("'tcsh'") && stderr.contains("bash") && stderr.contains("zsh"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let (ok, listing, stderr) = run(&["man", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let pages: BTreeSet<String> = listing
        .lines()
        .map(|l| {
            Path::new(l)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for page in [
        "bufscope.1",
        "bufscope-live.1",
        "bufscope-record.1",
        "bufscope-doctor.1",
    ] {
        assert!(pages.contains(page), "{page} missing: {pages:?}");
    }
    // `man` is for packaging (hidden), `help` is what every page is.
    assert!(
        !pages.contains("bufscope-man.1") && !pages.contains("bufscope-help.1"),
        "{pages:?}"
    );
    let (ok, _, stderr) = run(&["man", out.to_str().unwrap(), "--date", "yesterday"]);
    assert!(!ok && stderr.contains("YYYY-MM-DD"), "{stderr}");
    let live = std::fs::read_to_string(out.join("bufscope-live.1")).unwrap();
    assert!(live.contains("no\\-tui"), "{live}");
    let (_, help, _) = run(&["--help"]);
    assert!(
        help.contains("completions") && !help.contains("  man "),
        "{help}"
    );
}

#[test]
fn info_summarises_the_frozen_format_1_0_file() {
    let (ok, stdout, stderr) = run(&["info", golden().to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("format          1.0"), "{stdout}");
    assert!(stdout.contains("300 lock waits"), "{stdout}");
    assert!(
        stdout.contains("rwsem:R") && stdout.contains("mutex"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unpaired        2 ends without a begin"),
        "{stdout}"
    );

    let (ok, stdout, _) = run(&["info", "--json", golden().to_str().unwrap()]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["lock_waits"], 300);
    assert_eq!(json["by_type"]["mutex"]["contended"], 150);
    assert_eq!(json["problem"], serde_json::Value::Null);
}

#[test]
fn info_names_the_file_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.bftrace");
    let (ok, _, stderr) = run(&["info", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("nope.bftrace") && stderr.contains("No such file"),
        "{stderr}"
    );

    let garbage = dir.path().join("garbage.bftrace");
    std::fs::write(&garbage, b"#!/bin/sh\necho not a trace\n").unwrap();
    let (ok, _, stderr) = run(&["info", garbage.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("garbage.bftrace: at offset 0: not a bufscope trace"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn info_shows_what_a_cut_recording_holds_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("crashed.bftrace");
    write_trace(&cut, 1000, false);
    let (ok, stdout, stderr) = run(&["info", cut.to_str().unwrap()]);
    assert!(!ok, "a cut file exits non-zero");
    assert!(stdout.contains("1,000 lock waits"), "{stdout}");
    assert!(stderr.contains("crashed.bftrace: at offset"), "{stderr}");
    assert!(stderr.contains("did not finish"), "{stderr}");

    // Damage one byte in the middle of the events: named as damage, with the record, and
    // skipped; the rest is read.
    let damaged = dir.path().join("damaged.bftrace");
    write_trace(&damaged, 1000, true);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&damaged, bytes).unwrap();
    let (ok, stdout, stderr) = run(&["info", damaged.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("records         2 (0 lock waits, 0 dm-bufio operations, 1 metadata)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("damaged.bftrace: skipped 1 damaged record at offset ")
            && stderr.contains("(record 0, ")
            && stderr.contains("payload checksum mismatch); by the end record's counts it held 1,000 lock waits; read the other 2 records"),
        "{stderr}"
    );
}

/// The record of the bundled dm-verity recording that byte 300,000 lies in, by reading the
/// undamaged file record by record: its index, offset, length and dm-bufio operations (it must
/// be a chunk of them).
fn record_at_300_000() -> (u64, u64, u64, u64) {
    let bytes = std::fs::read(sample("6.1-verity-read.bftrace")).unwrap();
    let mut reader = TraceReader::new(&bytes[..], "whole").unwrap();
    for index in 0.. {
        let offset = reader.offset();
        let record = reader
            .next_record()
            .unwrap()
            .expect("byte 300,000 in a record");
        if (offset..reader.offset()).contains(&300_000) {
            let Record::BufioOps(ops) = record else {
                panic!("record {index} at {offset} holds no operations");
            };
            return (index, offset, reader.offset() - offset, ops.len() as u64);
        }
    }
    unreachable!()
}

/// The bundled dm-verity recording with byte 300,000 changed, as the issue found it: that byte
/// lies in a chunk of dm-bufio operations ([`record_at_300_000`]).
fn damaged_sample(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(sample("6.1-verity-read.bftrace")).unwrap();
    bytes[300_000] ^= 0x01;
    let path = dir.join("verity-damaged.bftrace");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_damaged_record_costs_only_itself_in_every_command_unless_strict() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = damaged_sample(dir.path());
    let file = damaged.to_str().unwrap();
    let whole = sample("6.1-verity-read.bftrace");
    let undamaged = report_json(&["info", "--json", whole.to_str().unwrap()]);
    let (record, offset, length, ops) = record_at_300_000();
    assert!(ops > 1_000, "a chunk of {ops} operations");
    let thousands = bufscope_analyses::units::thousands;
    let said = format!(
        "bufscope: {file}: skipped 1 damaged record at offset {} (record {record}, {} bytes: \
         payload checksum mismatch); by the end record's counts it held {} dm-bufio \
         operations; read the other {} records\n",
        thousands(offset),
        thousands(length),
        thousands(ops),
        undamaged["records"].as_u64().unwrap() - 1
    );

    let (ok, stdout, stderr) = run(&["info", "--json", file]);
    assert!(ok, "{stderr}");
    assert_eq!(stderr, said);
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(info["lock_waits"], undamaged["lock_waits"]);
    assert_eq!(
        info["bufio_ops"].as_u64().unwrap(),
        undamaged["bufio_ops"].as_u64().unwrap() - ops
    );
    assert_eq!(
        info["records"].as_u64().unwrap(),
        undamaged["records"].as_u64().unwrap() - 1
    );
    assert_eq!(info["problem"], serde_json::Value::Null);
    let skipped = &info["skipped"];
    assert_eq!(
        (skipped["records"].as_u64(), skipped["bytes"].as_u64()),
        (Some(1), Some(length))
    );
    assert_eq!(skipped["listed"][0]["offset"], offset);
    assert_eq!(skipped["listed"][0]["record"], record);
    assert_eq!(skipped["listed"][0]["kind"], "bufio_ops_v5");
    assert_eq!(skipped["listed"][0]["items"], ops);
    assert_eq!(skipped["listed"][0]["damage"]["why"], "payload_checksum");
    assert_eq!(skipped["lost"]["bufio_ops"], ops);

    let (ok, stdout, stderr) = run(&["report", file, "--ops", "--by", "op", "--json"]);
    assert!(ok, "{stderr}");
    assert_eq!(stderr, said);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["operations"], info["bufio_ops"]);

    let (ok, _, stderr) = run(&["report", file]);
    assert!(ok, "{stderr}");
    assert_eq!(stderr, said);

    let out = dir.path().join("out.csv");
    let (ok, _, stderr) = run(&[
        "export",
        file,
        "--format",
        "csv",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.starts_with(&said), "{stderr}");
    let rows = std::fs::read_to_string(&out).unwrap().lines().count() as u64 - 1;
    assert_eq!(
        rows,
        info["lock_waits"].as_u64().unwrap() + info["bufio_ops"].as_u64().unwrap()
    );

    // --strict: the same line, as the error, and nothing else done.
    let strict_out = dir.path().join("strict.csv");
    for args in [
        &["info", file][..],
        &["info", "--json", file],
        &["report", file],
        &["report", file, "--calibration"],
        &[
            "export",
            file,
            "--format",
            "csv",
            "-o",
            strict_out.to_str().unwrap(),
        ],
        &[
            "compare",
            file,
            "--plot",
            dir.path().join("p.svg").to_str().unwrap(),
        ],
        &["replay", file],
    ] {
        let (ok, stdout, stderr) = run(&[args, &["--strict"]].concat());
        assert!(!ok, "{args:?} --strict succeeded");
        assert_eq!(stdout, "", "{args:?}");
        assert_eq!(
            stderr,
            format!(
                "bufscope: error: {}; --strict refuses a damaged file\n",
                said.trim_end().trim_start_matches("bufscope: ")
            ),
            "{args:?}"
        );
    }
    assert!(!strict_out.exists());
    assert!(!dir.path().join("p.svg").exists());
}

#[test]
fn strict_also_refuses_a_file_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.bftrace");
    write_trace(&cut, 100, false);
    let (ok, _, stderr) = run(&["report", cut.to_str().unwrap()]);
    assert!(
        ok,
        "without --strict, what came before is reported: {stderr}"
    );
    let (ok, stdout, stderr) = run(&["report", cut.to_str().unwrap(), "--strict"]);
    assert!(!ok);
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("did not finish")
            && stderr.ends_with("; --strict refuses a file that ends early\n"),
        "{stderr}"
    );
}

#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.bftrace");
    let missing = missing.to_str().unwrap();
    for args in [
        &["info", missing][..],
        &["report", missing],
        &["export", missing, "--format", "csv", "-o", "-"],
        &["replay", missing],
    ] {
        let (ok, _, stderr) = run(args);
        assert!(!ok, "{args:?}");
        assert_eq!(
            stderr,
            format!(
                "bufscope: error: {missing}: at offset 0: read failed: No such file or directory \
                 (os error 2)\n"
            ),
            "{args:?}"
        );
    }
    // A cause deeper in the chain, from the reference cache: also once.
    let device = dir.path().join("no-device");
    let (ok, _, stderr) = run(&[
        "replay",
        sample("6.1-verity-read.bftrace").to_str().unwrap(),
        "--design",
        "classic",
        "--device",
        device.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!(
            "bufscope: error: opening --device {0}: {0}: No such file or directory (os error 2)\n",
            device.display()
        )),
        "{stderr}"
    );
}

#[test]
fn impossible_numbers_are_refused_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let trace = sample("6.1-verity-read.bftrace");
    let trace = trace.to_str().unwrap();
    let out = dir.path().join("out.bftrace");
    let out = out.to_str().unwrap();
    let device = dir.path().join("device");
    std::fs::write(&device, [0u8; 8192]).unwrap();
    let device = device.to_str().unwrap();
    for (args, option) in [
        (
            &["replay", trace, "--threads", "0"][..],
            "--threads <THREADS>",
        ),
        (
            &["replay", trace, "--capacity", "0"],
            "--capacity <CAPACITY>",
        ),
        (&["replay", trace, "--cpus", "0"], "--cpus <CPUS>"),
        (&["replay", trace, "--speed", "0"], "--speed <SPEED>"),
        (&["replay", trace, "--speed=-2"], "--speed <SPEED>"),
        (
            &["replay", trace, "--io-latency", "0s"],
            "--io-latency <IO_LATENCY>",
        ),
        (&["compare", trace, "--threads", "0"], "--threads <THREADS>"),
        (&["compare", trace, "--cpus", "0"], "--cpus <CPUS>"),
        (
            &["record", "-o", out, "--duration", "0s"],
            "--duration <DURATION>",
        ),
        (&["live", "--top", "0"], "--top <TOP>"),
        (&["live", "--interval", "0"], "--interval <INTERVAL>"),
        (&["live", "--duration", "0ms"], "--duration <DURATION>"),
        (
            &["stress", device, "--duration", "0s"],
            "--duration <DURATION>",
        ),
        (
            &["stress", device, "--block-size", "1000"],
            "--block-size <BLOCK_SIZE>",
        ),
        (
            &["stress", device, "--region-blocks", "0"],
            "--region-blocks <REGION_BLOCKS>",
        ),
        (
            &["synth", "hotspot", "-o", out, "--hotspot-threads", "0"],
            "--hotspot-threads",
        ),
        (
            &["synth", "hotspot", "-o", out, "--passes", "0"],
            "--passes <PASSES>",
        ),
        (
            &["synth", "uniform", "-o", out, "--threads", "0"],
            "--threads <THREADS>",
        ),
        (
            &["synth", "zipf", "-o", out, "--exponent", "0"],
            "--exponent <EXPONENT>",
        ),
        (
            &["synth", "btree", "-o", out, "--depth", "1"],
            "--depth <DEPTH>",
        ),
        (
            &["synth", "scan", "-o", out, "--block-size", "0"],
            "--block-size <BLOCK_SIZE>",
        ),
    ] {
        let (ok, stdout, stderr) = run(args);
        assert!(!ok, "{args:?} was accepted");
        assert_eq!(stdout, "", "{args:?}");
        assert!(
            stderr.starts_with("error: invalid value ")
                && stderr.contains(&format!("for '{option}")),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        !Path::new(out).exists(),
        "nothing is written when a number is impossible"
    );
    // 0 where it means something is still taken: every row of a report.
    let (ok, _, stderr) = run(&["report", trace, "--top", "0"]);
    assert!(ok, "{stderr}");
}

#[test]
fn record_refuses_to_overwrite_and_checks_its_options() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("keep.bftrace");
    std::fs::write(&existing, b"precious").unwrap();
    let (ok, _, stderr) = run(&["record", "-o", existing.to_str().unwrap(), "-d", "1s"]);
    assert!(!ok);
    assert!(
        stderr.contains("keep.bftrace exists; pass --force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");

    let out = dir.path().join("new.bftrace");
    let (ok, _, stderr) = run(&[
        "record",
        "-o",
        out.to_str().unwrap(),
        "--ringbuf-size",
        "1000",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--ringbuf-size") && stderr.contains("power of two"),
        "{stderr}"
    );

    let (ok, _, stderr) = run(&["record", "-o", out.to_str().unwrap(), "--duration", "soon"]);
    assert!(!ok);
    assert!(stderr.contains("--duration"), "{stderr}");
    assert!(
        !out.exists(),
        "nothing is written when the options are wrong"
    );
}

#[test]
fn the_bundled_real_kernel_samples_read_back_and_show_the_64_rework() {
    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples");
    let mutex_waits = |name: &str| -> u64 {
        let path = samples.join(format!("{name}.bftrace"));
        let (ok, stdout, stderr) = run(&["info", "--json", path.to_str().unwrap()]);
        assert!(ok, "{name}: {stderr}");
        let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!(info["problem"].is_null(), "{name}: {}", info["problem"]);
        assert!(
            info["header"]["kernel_release"]
                .as_str()
                .unwrap()
                .starts_with(name.split('-').next().unwrap())
        );
        // Recorded with the dm-bufio probes: operations, a client named by its device, and on
        // 6.1 the client mutex named among the contended locks.
        assert!(
            info["bufio_ops"].as_u64().unwrap_or(0) > 0,
            "{name}: no operations"
        );
        let clients = info["client_list"].as_array().expect("client list");
        assert!(
            clients
                .iter()
                .any(|c| c["device"].as_str().unwrap_or("").contains(':')),
            "{name}: {clients:?}"
        );
        if name.starts_with("6.1-") {
            assert!(
                clients
                    .iter()
                    .any(|c| c["waits_on_mutex"].as_u64().unwrap_or(0) > 0),
                "{name}: no waits named as the client mutex: {clients:?}"
            );
            let top = info["top_locks"][0]["name"].as_str().unwrap_or("");
            assert!(
                top.starts_with("dm-bufio ")
                    || info["top_locks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|l| l["name"].as_str().unwrap_or("").ends_with("client mutex")),
                "{name}: {}",
                info["top_locks"]
            );
        }
        info["by_type"]["mutex"]["contended"].as_u64().unwrap_or(0)
    };
    for scenario in ["thin-hotspot", "small-cache", "verity-read"] {
        let old = mutex_waits(&format!("6.1-{scenario}"));
        let new = mutex_waits(&format!("6.12-{scenario}"));
        // 6.1 takes dm-bufio's client mutex on every get and release; 6.12 only on misses.
        assert!(
            old > 10 * new.max(1),
            "{scenario}: 6.1 {old} vs 6.12 {new} mutex waits"
        );
    }
}

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples")
        .join(name)
}

fn report_json(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = run(args);
    assert!(ok, "bufscope {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// `key` → `count` of each row.
fn counts_by_key(report: &serde_json::Value) -> BTreeMap<String, u64> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn report_ops_counts_each_acquisition_like_the_trace_and_info() {
    let path = sample("6.12-thin-hotspot.bftrace");
    let file = path.to_str().unwrap();
    let trace = TraceData::load(&path).unwrap();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for op in &trace.ops {
        if matches!(op.kind, OpKind::Get | OpKind::Read | OpKind::New) {
            *expected.entry(op.kind.function().to_string()).or_default() += 1;
        }
    }
    assert_eq!(
        expected.len(),
        3,
        "the sample has gets, reads and news: {expected:?}"
    );

    let report = report_json(&["report", file, "--ops", "--by", "op", "--json"]);
    assert_eq!(counts_by_key(&report), expected);
    assert_eq!(report["by"], "op");
    assert_eq!(report["operations"], trace.ops.len() as u64);
    assert_eq!(report["kept"], expected.values().sum::<u64>());
    assert_eq!(
        report["kinds"],
        serde_json::json!(["dm_bufio_get", "dm_bufio_read", "dm_bufio_new"])
    );
    let row = &report["rows"][0];
    let fields: BTreeSet<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "key", "name", "role", "threads", "count", "total_ns", "avg_ns", "p50_ns", "p99_ns",
            "max_ns"
        ]),
        "{row}"
    );
    let (p50, p99, max) = (
        row["p50_ns"].as_u64().unwrap(),
        row["p99_ns"].as_u64().unwrap(),
        row["max_ns"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{row}");

    // What `info` counts per operation, row for row.
    let info = report_json(&["info", "--json", file]);
    for (function, count) in &expected {
        assert_eq!(info["by_op"][function]["count"], *count, "{function}");
    }

    // Other kinds on request; the same rows as text and CSV.
    let releases = report_json(&[
        "report", file, "--ops", "--by", "op", "--op", "release", "--json",
    ]);
    let released = trace
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::Release)
        .count() as u64;
    assert_eq!(
        counts_by_key(&releases),
        BTreeMap::from([("dm_bufio_release".to_string(), released)])
    );
    let (ok, csv, stderr) = run(&["report", file, "--ops", "--by", "op", "--csv"]);
    assert!(ok, "{stderr}");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("key,name,role,threads,count,total_ns,avg_ns,p50_ns,p99_ns,max_ns")
    );
    assert_eq!(lines.count(), 3, "{csv}");
    let (ok, text, stderr) = run(&["report", file, "--ops", "--by", "op"]);
    assert!(ok, "{stderr}");
    let get_row = text
        .lines()
        .find(|l| l.ends_with(" dm_bufio_get"))
        .unwrap_or_else(|| panic!("no get row:\n{text}"));
    let get_count = expected["dm_bufio_get"].to_string();
    assert!(
        get_row
            .replace(',', "")
            .trim_start()
            .starts_with(&get_count),
        "{get_row}"
    );
}

#[test]
fn report_ops_by_role_on_a_file_without_thread_names_is_one_unnamed_row() {
    // A sample as recorders before thread names wrote it: its thread records left out.
    let mut trace = TraceData::load(&sample("6.12-thin-hotspot.bftrace")).unwrap();
    trace
        .metadata
        .retain(|m| !matches!(m, Metadata::Threads { .. }));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unnamed.bftrace");
    trace.write(&path, false).unwrap();
    let trace = TraceData::load(&path).unwrap();
    assert!(!trace.ops.is_empty());
    assert!(trace.ops.iter().all(|o| trace.thread_name(o.tid).is_none()));
    let report = report_json(&[
        "report",
        path.to_str().unwrap(),
        "--ops",
        "--by",
        "role",
        "--json",
    ]);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["key"], "?");
    assert_eq!(rows[0]["role"], "?");
    assert_eq!(rows[0]["count"], report["kept"]);
    let acquirers: BTreeSet<u32> = trace
        .ops
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Get | OpKind::Read | OpKind::New))
        .map(|o| o.tid)
        .collect();
    assert_eq!(rows[0]["threads"], acquirers.len() as u64);
    // Lock waits group by role too.
    let waits = report_json(&["report", path.to_str().unwrap(), "--by", "role", "--json"]);
    assert_eq!(waits["rows"].as_array().unwrap().len(), 1, "{waits}");
    assert_eq!(waits["rows"][0]["name"], "?");
}

/// Four hot threads, one dirtier and a thread the file does not name, each op `duration_ns`
/// set so that the per-thread figures are known.
fn write_named_trace(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = TraceWriter::new(file, &TraceHeader::default()).unwrap();
    let thread = |tid, comm: &str| Thread {
        tid,
        tgid: 2,
        comm: comm.into(),
        cgroup: None,
    };
    let mut threads: Vec<Thread> = (0..4)
        .map(|i| thread(100 + i, &format!("bufio_hot/{i}")))
        .collect();
    threads.push(thread(200, "bufio_dirty"));
    writer
        .write_metadata(&Metadata::Threads { threads })
        .unwrap();
    let op = |tid, kind, duration_ns| BufioOp {
        start_ns: 1_000,
        duration_ns,
        client: 0xc0,
        tid,
        tgid: 2,
        kind,
        ..BufioOp::default()
    };
    for tid in 100..104 {
        for i in 1..=100 {
            writer.push_op(op(tid, OpKind::Read, i * 10)).unwrap();
            writer.push_op(op(tid, OpKind::Release, 5)).unwrap();
        }
    }
    writer.push_op(op(200, OpKind::Get, 3_000)).unwrap();
    writer.push_op(op(200, OpKind::MarkDirty, 50)).unwrap();
    writer.push_op(op(300, OpKind::New, 7_000)).unwrap();
    writer.finish(0).unwrap();
}

#[test]
fn report_ops_names_threads_and_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("named.bftrace");
    write_named_trace(&path);
    let file = path.to_str().unwrap();

    let by_tid = report_json(&["report", file, "--ops", "--sort", "name", "--json"]);
    assert_eq!(by_tid["by"], "tid", "--ops rows are threads by default");
    let rows = by_tid["rows"].as_array().unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["100", "101", "102", "103", "200", "300"]);
    let hot = &rows[1];
    assert_eq!(hot["name"], "bufio_hot/1");
    assert_eq!(hot["role"], "bufio_hot");
    // Reads of 10, 20, ... 1000 ns.
    assert_eq!(
        (
            hot["count"].as_u64(),
            hot["total_ns"].as_u64(),
            hot["avg_ns"].as_u64(),
            hot["p50_ns"].as_u64(),
            hot["p99_ns"].as_u64(),
            hot["max_ns"].as_u64()
        ),
        (
            Some(100),
            Some(50_500),
            Some(505),
            Some(500),
            Some(990),
            Some(1000)
        ),
        "{hot}"
    );
    assert_eq!(
        (rows[4]["name"].as_str(), rows[4]["count"].as_u64()),
        (Some("bufio_dirty"), Some(1))
    );
    assert_eq!(rows[5]["name"], serde_json::Value::Null);
    assert_eq!(rows[5]["role"], "?");

    let by_role = report_json(&["report", file, "--ops", "--by", "role", "--json"]);
    let roles: Vec<(&str, u64, u64)> = by_role["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap(),
                r["threads"].as_u64().unwrap(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [("bufio_hot", 4, 400), ("?", 1, 1), ("bufio_dirty", 1, 1)]
    );

    let (ok, text, stderr) = run(&["report", file, "--ops"]);
    assert!(ok, "{stderr}");
    assert!(
        text.lines()
            .any(|l| l.contains(" 103  bufio_hot/3") && l.ends_with("bufio_hot")),
        "{text}"
    );
    assert!(
        text.starts_with(&format!(
            "{file}: 402 of 803 dm-bufio operations (get, read, new), by thread"
        )),
        "{text}"
    );
}

#[test]
fn report_ops_refuses_what_it_cannot_show_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let waits_only = dir.path().join("waits-only.bftrace");
    write_trace(&waits_only, 10, true);
    let (ok, _, stderr) = run(&["report", waits_only.to_str().unwrap(), "--ops"]);
    assert!(!ok, "no operations is an error");
    assert!(
        stderr.contains("waits-only.bftrace holds no dm-bufio operations"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let named = dir.path().join("named.bftrace");
    write_named_trace(&named);
    let file = named.to_str().unwrap();
    for (args, says) in [
        (&["--by", "lock"][..], "--by lock groups lock waits"),
        (&["--op", "none"], "--op none"),
        (&["--lock", "mutex"], "cannot be used with"),
        (&["--stacks"], "cannot be used with"),
        (&["--sort", "type"], "operations have none"),
        (&["--tid", "999"], "none of the 803 dm-bufio operations in"),
    ] {
        let (ok, _, stderr) = run(&[&["report", file, "--ops"][..], args].concat());
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `bufscope export F -o - | head -1`: the reader goes away after one line of megabytes, and
/// bufscope stops quietly (killed by SIGPIPE, as other tools are), without a panic's message.
#[test]
fn a_reader_that_goes_away_stops_the_output_quietly() {
    use std::{
        io::{BufRead, BufReader},
        os::unix::process::ExitStatusExt,
        process::Stdio,
    };
    for format in ["csv", "json"] {
        let mut child = bufscope()
            .arg("export")
            .arg(sample("6.1-thin-hotspot.bftrace"))
            .args(["--format", format, "-o", "-"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bufscope runs");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!first.is_empty(), "{format}: no first line");
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
        // Far more than a pipe holds was left to write: SIGPIPE ended it.
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{format}: {:?} {stderr}",
            out.status
        );
    }
}
