//! Booting one kernel with one scenario under qemu with TCG (KVM does not work on these machines):
//! the console watched for the guest's markers, the results unpacked, TCG's int3 hazard retried.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use super::{checks::NO_SLEEP_SCENARIO, kernels::vmlinuz};
use crate::cmd::{heading, run_checked};

/// How long one boot may take before it is killed as hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// What a guest that ran its scenario to the end left behind.
pub struct GuestResults {
    /// The kernel release the guest reported (`uname -r`).
    pub release: String,
    /// Where the results disk's archive was unpacked.
    pub dir: PathBuf,
    /// The results disk image itself (removed after the checks unless `--keep`).
    pub disk: PathBuf,
}

/// The guest died of an int3 Oops: under multi-threaded TCG a vCPU can run code another vCPU
/// is live-patching (static keys, kprobes and tracepoints arm through int3) from a stale
/// translation, a known hazard of TCG with cross-modifying code, not a kernel or bufscope fault.
#[derive(Debug)]
struct TcgInt3;

impl std::fmt::Display for TcgInt3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the guest died of an int3 Oops (TCG running half-patched kernel code)"
        )
    }
}

impl std::error::Error for TcgInt3 {}

/// Boots, and boots again (at most twice more) only when the guest died of [`TcgInt3`].
pub fn boot_retrying_tcg_int3(
    work: &Path,
    kernel: &str,
    extracted: &Path,
    initramfs: &Path,
    scenario: &str,
) -> anyhow::Result<GuestResults> {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        match boot(work, kernel, extracted, initramfs, scenario) {
            Err(e) if e.is::<TcgInt3>() && attempt < ATTEMPTS => heading(
                "vm-test",
                &format!("{kernel} {scenario}: {e}; booting again ({attempt}/{ATTEMPTS})"),
            ),
            result => return result,
        }
    }
    unreachable!("the last attempt returns")
}

/// vCPUs a scenario's guest gets: 2, but 4 for the no-sleep client's spinlock. An x86 queued
/// spinlock's waiter fires lock:contention_begin only once it queues behind another that is
/// already spinning (the pending one spins untraced): with 2 CPUs, one holding and one waiting,
/// no spinlock wait is ever seen (verity-nosleep at 2 vCPUs, 6.1: 14,215 client-lock
/// acquisitions, no wait recorded).
fn vcpus(scenario: &str) -> u32 {
    if scenario == NO_SLEEP_SCENARIO { 4 } else { 2 }
}

/// Boots one kernel with one scenario and unpacks what came back.
fn boot(
    work: &Path,
    kernel: &str,
    extracted: &Path,
    initramfs: &Path,
    scenario: &str,
) -> anyhow::Result<GuestResults> {
    let vmlinuz = vmlinuz(extracted)?;
    let run_dir = work.join(format!("run-{kernel}-{scenario}"));
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;
    let disk = run_dir.join("results.img");
    fs::File::create(&disk)?.set_len(64 << 20)?;

    let vcpus = vcpus(scenario);
    heading(
        "vm-test",
        &format!("booting {kernel} for {scenario} (TCG, {vcpus} vCPUs)"),
    );
    let mut qemu = Command::new("qemu-system-x86_64")
        // Multi-threaded TCG, so the vCPUs really run in parallel and locks really contend
        // (single-threaded TCG hides most of 6.1's mutex contention). Its cost: see TcgInt3.
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            &vcpus.to_string(),
            "-m",
            "2048",
        ])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // tsc=reliable: TCG's TSC fails 6.1's calibration against the PIT, and 6.1 then times
        // everything with the emulated HPET, whose every read takes QEMU's big lock. Real machines
        // read the TSC; with the HPET each probe timestamp cost the 6.1 guest so much that `live`
        // kept 50 % of the workload's reads instead of 71 % (probe-cost, 2026-11-28).
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 loglevel=5 tsc=reliable bufscope.scenario={scenario}"
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    let (lines_tx, lines_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = fs::File::create(run_dir.join("console.log"))?;
    let started = Instant::now();
    let mut done_rc = None;
    let mut failures = Vec::new();
    let mut tcg_int3 = false;
    let mut release = String::new();
    loop {
        let left = BOOT_TIMEOUT.saturating_sub(started.elapsed());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                println!("[vm {kernel}] {line}");
                // Markers may follow the firmware's terminal escape codes on the same line.
                let after = |marker: &str| line.split_once(marker).map(|(_, rest)| rest);
                if let Some(rc) = after("BUFSCOPE-DONE rc=") {
                    done_rc = rc.trim().parse::<i32>().ok();
                }
                if let Some(start) = after("BUFSCOPE-START ") {
                    release = start
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("kernel="))
                        .unwrap_or_default()
                        .to_string();
                }
                tcg_int3 |= line.contains("Oops: int3");
                if line.contains("BUFSCOPE-FAIL") || line.contains("Kernel panic") {
                    failures.push(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = qemu.kill();
                bail!(
                    "{kernel} {scenario}: no end after {} s (hung?); console in {}",
                    BOOT_TIMEOUT.as_secs(),
                    run_dir.join("console.log").display()
                );
            }
        }
    }
    qemu.wait()?;
    heading(
        "vm-test",
        &format!(
            "{kernel} {scenario}: guest ran {:.0} s",
            started.elapsed().as_secs_f64()
        ),
    );
    if tcg_int3 {
        return Err(TcgInt3.into());
    }
    ensure!(
        failures.is_empty(),
        "{kernel} {scenario}: {}",
        failures.join("; ")
    );
    ensure!(
        done_rc == Some(0),
        "{kernel} {scenario}: the scenario failed (rc {done_rc:?}); console in {}",
        run_dir.join("console.log").display()
    );

    let results = run_dir.join("results");
    fs::create_dir_all(&results)?;
    run_checked(
        "vm-test",
        Command::new("tar")
            .arg("-xf")
            .arg(&disk)
            .arg("-C")
            .arg(&results),
    )?;
    Ok(GuestResults {
        release,
        dir: results,
        disk,
    })
}
