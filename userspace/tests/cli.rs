//! The command line as a user meets it: help, bad options, and trace files that are missing,
//! foreign, damaged or cut short. None of this needs root.

mod common;

use std::path::{Path, PathBuf};

use bufscope_trace::{LockWait, Metadata, TraceHeader, TraceWriter};
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
    ] {
        let (ok, stdout, _) = run(cmd);
        assert!(ok, "{cmd:?}");
        assert!(stdout.contains("Usage: bufscope"), "{cmd:?}: {stdout}");
    }
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

    // Damage one byte in the middle of the events: named as damage, with the record.
    let damaged = dir.path().join("damaged.bftrace");
    write_trace(&damaged, 1000, true);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&damaged, bytes).unwrap();
    let (ok, _, stderr) = run(&["info", damaged.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(stderr.contains("(record 0)"), "{stderr}");
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
