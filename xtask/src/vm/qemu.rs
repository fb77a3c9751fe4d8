//! Booting one kernel with one scenario under qemu with TCG (KVM does not work on these machines):
//! the console watched for the guest's markers, the results unpacked, TCG's text-patching hazards retried.

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

/// The guest died of a known hazard of multi-threaded TCG, not a kernel or bufscope fault. Most
/// come of cross-modifying code: static keys, kprobes, tracepoints and BPF trampolines are armed
/// by live-patching kernel text through int3 (text_poke_bp), and a vCPU may run the patched code
/// from a stale translation. The rest of a vCPU that TCG does not run while another CPU waits
/// for every CPU (stop_machine).
#[derive(Debug)]
enum TcgHazard {
    /// A vCPU hit the temporary int3 after the patcher had already retired it: an int3 Oops.
    Int3Oops,
    /// The patcher waited for ever for the other vCPUs to acknowledge its IPI: the watchdog saw
    /// a soft lockup with the stuck CPU patching kernel text ([`PATCHING`] in its stack). Seen
    /// in CI on 6.1: verity-nosleep, 500 s in smp_call_function_many_cond under
    /// text_poke_bp_batch while arming a kprobe on dm_bufio; bufio-hotspot, 27 s in the same
    /// function under arch_ftrace_update_trampoline's TLB flush while arming the test bed's
    /// kprobe counters, the other vCPU looping in exc_int3 at a patched site of __schedule.
    StuckPatchingText,
    /// A CPU waited for ever in stop_machine for the others to stop with it ([`STOPPING`] in
    /// its stack): one vCPU never ran. Seen in a CI-like run on 6.1: verity-nosleep (4 vCPUs
    /// on a 2-core host), 26 s in multi_cpu_stop at 1 s into the boot, after the MTRR
    /// warnings (MTRR updates stop the machine), before the scenario began.
    StuckStoppingMachine,
}

impl std::fmt::Display for TcgHazard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcgHazard::Int3Oops => write!(
                f,
                "the guest died of an int3 Oops (TCG running half-patched kernel code)"
            ),
            TcgHazard::StuckPatchingText => write!(
                f,
                "the guest's kernel text patching never finished (soft lockup while patching \
                 kernel text: TCG did not let a vCPU acknowledge the patcher's IPI)"
            ),
            TcgHazard::StuckStoppingMachine => write!(
                f,
                "the guest's stop_machine never finished (soft lockup in multi_cpu_stop: TCG \
                 did not run a vCPU to stop with the others)"
            ),
        }
    }
}

impl std::error::Error for TcgHazard {}

/// Boots, and boots again (at most twice more) only when the guest died of a [`TcgHazard`].
/// Each failed attempt's console is kept beside the run as `console.attemptN.log`.
pub fn boot_retrying_tcg_hazards(
    work: &Path,
    kernel: &str,
    extracted: &Path,
    initramfs: &Path,
    scenario: &str,
) -> anyhow::Result<GuestResults> {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        match boot(work, kernel, extracted, initramfs, scenario) {
            Err(e) if e.is::<TcgHazard>() && attempt < ATTEMPTS => {
                let console = work.join(format!("run-{kernel}-{scenario}/console.log"));
                let kept = work.join(format!("console-{kernel}-{scenario}.attempt{attempt}.log"));
                let _ = fs::rename(&console, &kept);
                heading(
                    "vm-test",
                    &format!(
                        "{kernel} {scenario}: {e}; booting again ({attempt}/{ATTEMPTS}); \
                         its console is in {}",
                        kept.display()
                    ),
                )
            }
            result => return result,
        }
    }
    unreachable!("the last attempt returns")
}

/// What the console says about a guest that stopped without finishing: reads the lines in
/// order and remembers a soft lockup and whether the stuck CPU was patching kernel text.
#[derive(Debug, Default)]
struct LockupWatch {
    int3_oops: bool,
    /// Inside a soft lockup report (from its "watchdog: BUG: soft lockup" line to the end of
    /// the first call trace after it).
    in_report: bool,
    soft_lockup: Option<String>,
    patching: bool,
    stopping: bool,
}

/// Frames of the kernel patching its own text, in the stuck CPU's stack: text_poke_bp_batch and
/// text_poke_finish (6.1, 6.12) or smp_text_poke_batch_finish (7.x); arming a kprobe; making an
/// ftrace or BPF trampoline.
const PATCHING: [&str; 5] = [
    "text_poke",
    "arm_kprobe",
    "ftrace_update_trampoline",
    "register_ftrace_function",
    "bpf_trampoline_update",
];

/// Frames of a CPU that stops the machine and waits for every other CPU to stop with it.
const STOPPING: [&str; 2] = ["multi_cpu_stop", "stop_machine_cpuslocked"];

impl LockupWatch {
    fn line(&mut self, line: &str) {
        self.int3_oops |= line.contains("Oops: int3");
        if line.contains("BUG: soft lockup") {
            if self.soft_lockup.is_none() {
                self.soft_lockup = Some(line.trim().to_string());
            }
            self.in_report = true;
        } else if self.in_report {
            self.patching |= PATCHING.iter().any(|frame| line.contains(frame));
            self.stopping |= STOPPING.iter().any(|frame| line.contains(frame));
            self.in_report &= !line.contains("</TASK>");
        }
    }

    /// The hazard the guest died of, if it was one.
    fn tcg_hazard(&self) -> Option<TcgHazard> {
        if self.int3_oops {
            Some(TcgHazard::Int3Oops)
        } else if self.soft_lockup.is_some() && self.patching {
            Some(TcgHazard::StuckPatchingText)
        } else if self.soft_lockup.is_some() && self.stopping {
            Some(TcgHazard::StuckStoppingMachine)
        } else {
            None
        }
    }
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
        // (single-threaded TCG hides most of 6.1's mutex contention). Its cost: see TcgHazard.
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
            "console=ttyS0 panic=-1 loglevel=5 tsc=reliable softlockup_panic=1 \
             softlockup_all_cpu_backtrace=1 bufscope.scenario={scenario}"
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
    let mut lockups = LockupWatch::default();
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
                lockups.line(&line);
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
    if let Some(hazard) = lockups.tcg_hazard() {
        return Err(hazard.into());
    }
    if let Some(lockup) = &lockups.soft_lockup {
        failures.push(lockup.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(console: &str) -> LockupWatch {
        let mut watch = LockupWatch::default();
        console.lines().for_each(|line| watch.line(line));
        watch
    }

    /// The CI console of 6.1 verity-nosleep that hung (trimmed): CPU 1 arms a kprobe and waits
    /// for the sync IPI of text_poke_bp_batch.
    const STUCK_IN_TEXT_POKE: &str = "\
[  544.808027] watchdog: BUG: soft lockup - CPU#1 stuck for 496s! [sh:131]
[  544.817829] RIP: 0010:smp_call_function_many_cond+0xf1/0x330
[  544.854924] Call Trace:
[  544.855015]  <TASK>
[  544.857725]  on_each_cpu_cond_mask+0x20/0x40
[  544.857725]  text_poke_bp_batch+0xb7/0x300
[  544.857908]  text_poke_finish+0x1b/0x30
[  544.870997]  arm_kprobe+0xa0/0x100
[  544.923230]  </TASK>
";

    /// The CI console of 6.1 bufio-hotspot that hung (trimmed): CPU 1 arms a kprobe through
    /// tracefs and waits in the TLB flush of an ftrace trampoline made read-only.
    const STUCK_IN_FTRACE_TRAMPOLINE: &str = "\
[   40.821004] watchdog: BUG: soft lockup - CPU#1 stuck for 27s! [sh:118]
[   40.824561] RIP: 0010:smp_call_function_many_cond+0xf1/0x330
[   40.828046] Call Trace:
[   40.828633]  <TASK>
[   40.829453]  on_each_cpu_cond_mask+0x20/0x40
[   40.830044]  __purge_vmap_area_lazy+0xd6/0x750
[   40.832478]  set_memory_ro+0x26/0x30
[   40.832911]  arch_ftrace_update_trampoline+0x2e9/0x320
[   40.835191]  __register_ftrace_function+0x8a/0xe0
[   40.837074]  arm_kprobe+0xd1/0x100
[   40.849229]  </TASK>
[   40.850692] NMI backtrace for cpu 0
[   40.852655] RIP: 0010:exc_int3+0xe/0x120
";

    #[test]
    fn a_soft_lockup_while_patching_text_is_the_tcg_hazard() {
        let text_poke = watch(STUCK_IN_TEXT_POKE);
        assert!(matches!(
            text_poke.tcg_hazard(),
            Some(TcgHazard::StuckPatchingText)
        ));
        assert!(matches!(
            watch(STUCK_IN_FTRACE_TRAMPOLINE).tcg_hazard(),
            Some(TcgHazard::StuckPatchingText)
        ));
        assert_eq!(
            text_poke.soft_lockup.as_deref(),
            Some("[  544.808027] watchdog: BUG: soft lockup - CPU#1 stuck for 496s! [sh:131]")
        );
    }

    /// The console of 6.1 verity-nosleep that hung at boot in a CI-like run (trimmed): CPU 0's
    /// stopper waits for the other vCPUs.
    const STUCK_STOPPING_THE_MACHINE: &str = "\
[   28.524146] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [migration/0:16]
[   28.525101] Stopper: multi_cpu_stop+0x0/0x120 <- stop_machine_cpuslocked+0x16c/0x1b0
[   28.527907] RIP: 0010:stop_machine_yield+0x2/0x10
[   28.527907] Call Trace:
[   28.527907]  <TASK>
[   28.527907]  multi_cpu_stop+0x9d/0x120
[   28.527907]  cpu_stopper_thread+0x93/0x140
[   28.527907]  </TASK>
[   28.527907] Kernel panic - not syncing: softlockup: hung tasks
";

    #[test]
    fn a_soft_lockup_stopping_the_machine_is_the_tcg_hazard_too() {
        assert!(matches!(
            watch(STUCK_STOPPING_THE_MACHINE).tcg_hazard(),
            Some(TcgHazard::StuckStoppingMachine)
        ));
    }

    #[test]
    fn a_soft_lockup_elsewhere_is_a_failure_not_retried() {
        // text_poke in another CPU's backtrace, after the stuck CPU's trace ended, does not count.
        let console = "\
[  30.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [kworker/0:1:40]
[  30.2] Call Trace:
[  30.2]  <TASK>
[  30.3]  queued_spin_lock_slowpath+0x40/0x1e0
[  30.4]  dm_bufio_lock+0x10/0x20 [dm_bufio]
[  30.5]  </TASK>
[  30.6] NMI backtrace for cpu 1
[  30.7]  text_poke_bp_batch+0xb7/0x300
";
        let watch = watch(console);
        assert!(watch.tcg_hazard().is_none());
        assert!(watch.soft_lockup.is_some());
    }

    #[test]
    fn an_int3_oops_is_the_tcg_hazard_and_a_clean_console_is_nothing() {
        assert!(matches!(
            watch("[ 12.0] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI").tcg_hazard(),
            Some(TcgHazard::Int3Oops)
        ));
        let clean = watch("BUFSCOPE-START scenario=thin-hotspot\nBUFSCOPE-DONE rc=0");
        assert!(clean.tcg_hazard().is_none() && clean.soft_lockup.is_none());
    }
}
