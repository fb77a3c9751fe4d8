//! `cargo xtask vm-test`: the real-kernel test bed. Boots Debian's cloud kernels (6.1: the
//! single-mutex dm-bufio; 6.12: the sharded one; 7.3: the newest, from trixie-backports), runs
//! scenarios and checks what bufscope saw.
//!
//! Downloads, extracted kernels and their headers are cached under target/vm/. The guest's /init is
//! xtask/vm/init.sh; each scenario is xtask/vm/<name>.sh. Results come back as a tar archive on
//! a second virtio disk.

mod checks;
mod cost;
mod fixture;
mod holds;
mod hotspot;
mod initramfs;
mod kernels;
mod qemu;

use std::{fs, path::Path};

use anyhow::{Context, ensure};

use crate::{
    cmd::{heading, workspace_root},
    dist::build_static_bufscope,
};
use checks::{Hotspot, NO_SLEEP_SCENARIO, Outcome, check_results};
use initramfs::build_initramfs;
use kernels::{KERNELS, KernelLine, fetch_kernel};
use qemu::boot_retrying_tcg_hazards;

pub use cost::probe_cost;

/// Scenarios, each a script in xtask/vm/.
const SCENARIOS: &[(&str, &str)] = &[
    ("thin-hotspot", include_str!("../../vm/thin-hotspot.sh")),
    ("small-cache", include_str!("../../vm/small-cache.sh")),
    ("verity-read", include_str!("../../vm/verity-read.sh")),
    ("verity-nosleep", include_str!("../../vm/verity-nosleep.sh")),
    (HOTSPOT, include_str!("../../vm/bufio-hotspot.sh")),
];

/// The scenario that needs the test module.
const HOTSPOT: &str = "bufio-hotspot";

/// The benchmark's scenario (`cargo xtask bench`), in the initramfs beside the others.
const PROBE_COST: (&str, &str) = ("probe-cost", include_str!("../../vm/probe-cost.sh"));

pub fn run(kernel: &str, scenario: &str, keep: bool, save_samples: bool) -> anyhow::Result<()> {
    if scenario == PROBE_COST.0 {
        // The benchmark's scenario on its own: its table, no checks.
        return probe_cost(kernel);
    }
    let kernels: Vec<&KernelLine> = KERNELS
        .iter()
        .filter(|k| kernel == "all" || k.name == kernel)
        .collect();
    ensure!(
        !kernels.is_empty(),
        "unknown --kernel {kernel}; known: {}, all",
        KERNELS
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let scenarios: Vec<&(&str, &str)> = SCENARIOS
        .iter()
        .filter(|(name, _)| scenario == "all" || *name == scenario)
        .collect();
    ensure!(
        !scenarios.is_empty(),
        "unknown --scenario {scenario}; known: {}, all, probe-cost (the benchmark's)",
        SCENARIOS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let work = workspace_root().join("target/vm");
    fs::create_dir_all(&work)?;
    let bufscope = build_static_bufscope("vm-test")?;

    let mut rows = Vec::new();
    let mut not_run = Vec::new();
    for kernel in kernels {
        let extracted = fetch_kernel(&work, kernel)?;
        let initramfs = build_initramfs(&work, kernel, &extracted, &bufscope)?;
        for (name, _) in &scenarios {
            if let (HOTSPOT, Some(why)) = (*name, kernel.no_module) {
                // Said in the table: the issue of record asks for it rather than a silent gap.
                not_run.push(format!("{:<6} {HOTSPOT:<14} {why}", kernel.name));
                continue;
            }
            let outcome =
                run_scenario(&work, kernel, &extracted, &initramfs, name, &bufscope, keep)
                    .with_context(|| format!("{} {name}", kernel.name))?;
            if save_samples {
                if bundled(kernel.name, name) {
                    save_sample(&work, &outcome, &extracted)?;
                } else {
                    println!(
                        "[vm-test] {} {name}: not a bundled sample, not saved",
                        kernel.name
                    );
                }
            }
            rows.push(outcome);
        }
    }
    if save_samples {
        write_samples_readme()?;
    }
    println!();
    println!(
        "{:<6} {:<14} {:>8} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>7} {:>7} {:>7} {:>8} {:>7} {:>9} {:>7} {:>9}  {:<16} kernel release",
        "kernel",
        "scenario",
        "reads/s",
        "lock waits",
        "begin/run",
        "end/run",
        "kp get",
        "kp read",
        "kp rel",
        "bufio ops",
        "mutex w",
        "spin w",
        "tree w",
        "lost",
        "skipped",
        "missing",
        "misattr.",
        "stale w",
        "bad holds",
        "tried w",
        "thin root",
        "dm_bufio_get as",
    );
    for r in &rows {
        println!(
            "{:<6} {:<14} {:>8} {:>10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>7} {:>7} {:>6.2}% {:>8} {:>7} {:>8.3}% {:>6.1}% {:>9}  {:<16} {}",
            r.kernel,
            r.scenario,
            r.reads_per_sec,
            r.lock_waits,
            micros(r.bufio.begin_ns_per_run),
            micros(r.bufio.end_ns_per_run),
            r.gets,
            r.reads,
            r.releases,
            r.bufio.ops,
            r.bufio.mutex_waits,
            r.bufio.spinlock_waits,
            r.bufio.tree_waits,
            r.bufio.returns_missed + r.bufio.ringbuf_full,
            r.bufio.skipped_runs,
            r.missing_share * 100.0,
            r.misattributed,
            r.bufio.stale_waits,
            r.holds.impossible_share() * 100.0,
            r.holds.waited_share() * 100.0,
            r.thin_root_waits.map_or("-".to_string(), |n| n.to_string()),
            r.bufio.attached_as,
            r.release
        );
    }
    for line in &not_run {
        println!("{line}");
    }
    print_hotspot(&rows);
    print_no_sleep(&rows);
    print_owner_stacks(&rows);
    Ok(())
}

/// A program's average run time as the results table shows it: "9.9us", or "-" when it never ran.
fn micros(ns: Option<u64>) -> String {
    ns.map_or("-".to_string(), |ns| format!("{:.1}us", ns as f64 / 1000.0))
}

/// What the holders of dm-thin's root_lock were doing (`record --owner-stacks`).
fn print_owner_stacks(rows: &[Outcome]) {
    let runs: Vec<_> = rows
        .iter()
        .filter_map(|r| Some((r.kernel, &r.scenario, r.owner_stacks.as_ref()?)))
        .collect();
    if runs.is_empty() {
        return;
    }
    println!();
    println!(
        "owner stacks: dm-thin root_lock waits, those whose owner's stack was taken (a holder off \
         its CPU), and of those the ones inside dm-thin's metadata code, the ones cut at an \
         interrupt's return (a holder preempted there), the walks cut short (the owner ran \
         meanwhile) and the ones ending in a BPF program (a holder preempted in a probe)"
    );
    println!(
        "{:<6} {:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  note",
        "kernel",
        "scenario",
        "root waits",
        "stacks",
        "in dm-thin",
        "preempted",
        "cut short",
        "in BPF"
    );
    for (kernel, scenario, s) in runs {
        println!(
            "{:<6} {:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  {}",
            kernel,
            scenario,
            s.root_waits,
            s.with_stack,
            s.in_metadata_code,
            s.preempted,
            s.cut_short,
            s.in_bpf_program,
            s.not_taken.as_deref().unwrap_or("")
        );
    }
}

/// How the no-sleep client's lock waits were named on each kernel.
fn print_no_sleep(rows: &[Outcome]) {
    let runs: Vec<_> = rows
        .iter()
        .filter_map(|r| Some((r.kernel, r.no_sleep.as_ref()?)))
        .collect();
    if runs.is_empty() {
        return;
    }
    println!();
    println!(
        "{NO_SLEEP_SCENARIO}: dm-verity's no-sleep client; waits in dm_bufio_lock and those named \
         its client spinlock, rwlock waits in dm-bufio and those named a tree's rwlock"
    );
    println!(
        "{:<6} {:>15} {:>15} {:>15} {:>15}",
        "kernel", "in lock fn", "spinlock named", "rwlock waits", "tree named"
    );
    for (kernel, w) in runs {
        println!(
            "{:<6} {:>15} {:>15} {:>15} {:>15}",
            kernel, w.in_client_lock, w.client_spinlock, w.rwlocks_in_bufio, w.tree_rwlocks
        );
    }
}

/// The seed's figure: how long the hotspot threads took to acquire a buffer on each kernel, by
/// the module's own clock (alone and recorded), and the ratio between the kernels.
fn print_hotspot(rows: &[Outcome]) {
    let runs: Vec<(&str, &Hotspot)> = rows
        .iter()
        .filter_map(|r| Some((r.kernel, r.hotspot.as_ref()?)))
        .collect();
    if runs.is_empty() {
        return;
    }
    println!();
    println!(
        "bufio-hotspot: buffer acquisition (dm_bufio_read) of the 16 hotspot threads; the module's \
         own mean alone and recorded, bufscope's of the recorded run"
    );
    println!(
        "{:<6} {:>13} {:>13} {:>13} {:>13} {:>13} {:>10}",
        "kernel",
        "module alone",
        "module rec.",
        "bufscope",
        "bufscope p50",
        "bufscope p99",
        "reads"
    );
    for (kernel, h) in &runs {
        let b = &h.by_bufscope;
        println!(
            "{:<6} {:>10.1} us {:>10.1} us {:>10.1} us {:>10.1} us {:>10.1} us {:>10}",
            kernel,
            h.alone.hotspot_mean_ns() / 1e3,
            h.recorded.hotspot_mean_ns() / 1e3,
            b.mean_ns / 1e3,
            b.p50_ns as f64 / 1e3,
            b.p99_ns as f64 / 1e3,
            b.count,
        );
    }
    for (kernel, h) in &runs {
        println!(
            "{kernel}: the hotspot threads' waits on the client's dm-bufio locks held by a thread: \
             {}, by the dirtier {} ({:.1}%)",
            h.held_by_threads,
            h.held_by_dirtier,
            100.0 * h.held_by_dirtier as f64 / h.held_by_threads.max(1) as f64
        );
    }
    let of = |name: &str| runs.iter().find(|(k, _)| *k == name).map(|(_, h)| *h);
    if let (Some(old), Some(new)) = (of("6.1"), of("6.12")) {
        println!(
            "6.1 / 6.12 mean acquisition: module alone {:.2}x, module recorded {:.2}x, bufscope \
             {:.2}x (the seed, on a many-core machine: \"about 25 times faster\")",
            old.alone.hotspot_mean_ns() / new.alone.hotspot_mean_ns().max(1.0),
            old.recorded.hotspot_mean_ns() / new.recorded.hotspot_mean_ns().max(1.0),
            old.by_bufscope.mean_ns / new.by_bufscope.mean_ns.max(1.0),
        );
    }
}

/// Boots one kernel with one scenario and checks what came back; the results disk is removed
/// after checks that pass, unless kept.
fn run_scenario(
    work: &Path,
    line: &KernelLine,
    extracted: &Path,
    initramfs: &Path,
    scenario: &str,
    bufscope: &Path,
    keep: bool,
) -> anyhow::Result<Outcome> {
    let guest = boot_retrying_tcg_hazards(work, line.name, extracted, initramfs, scenario)?;
    let outcome = check_results(
        line.name,
        scenario,
        guest.release,
        &guest.dir,
        bufscope,
        line.preemptible_bpf,
    )?;
    if !keep {
        let _ = fs::remove_file(&guest.disk);
    }
    Ok(outcome)
}

/// Largest sample kept in the repository (6.1 bufio-hotspot, 560k dm-bufio operations and 117k
/// client-mutex waits with their lock-attempt stamps, format 1.5: 4.8 MB).
const MAX_SAMPLE_BYTES: u64 = 6 << 20;

/// The samples bufscope ships (`samples/`, in the .deb): each scenario the tests and the
/// fidelity bench read, on the kernel before dm-bufio's 6.4 rework and one after. Other runs
/// (7.3, verity-nosleep) are checked by the test bed but not bundled.
const BUNDLED_KERNELS: [&str; 2] = ["6.1", "6.12"];
const BUNDLED_SCENARIOS: [&str; 4] = [
    "bufio-hotspot",
    "thin-hotspot",
    "small-cache",
    "verity-read",
];

/// Whether `--save-samples` keeps the run of `scenario` on `kernel`.
fn bundled(kernel: &str, scenario: &str) -> bool {
    BUNDLED_KERNELS.contains(&kernel) && BUNDLED_SCENARIOS.contains(&scenario)
}

/// Copies a run's recording to samples/KERNEL-SCENARIO.bftrace, with a note of how it was made.
fn save_sample(work: &Path, outcome: &Outcome, extracted: &Path) -> anyhow::Result<()> {
    let from = work
        .join(format!("run-{}-{}", outcome.kernel, outcome.scenario))
        .join("results")
        .join(format!("{}.bftrace", outcome.scenario));
    let size = fs::metadata(&from)?.len();
    ensure!(
        size <= MAX_SAMPLE_BYTES,
        "{} is {size} bytes, over the {MAX_SAMPLE_BYTES} a sample may take",
        from.display()
    );
    let package = extracted
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let samples = workspace_root().join("samples");
    fs::create_dir_all(&samples)?;
    let name = format!("{}-{}", outcome.kernel, outcome.scenario);
    fs::copy(&from, samples.join(format!("{name}.bftrace")))?;
    let note = format!(
        "kernel package: {package}\n\
         kernel release: {release}\n\
         scenario: {scenario} (xtask/vm/{scenario}.sh)\n\
         made by: cargo xtask vm-test --kernel {kernel} --scenario {scenario} --save-samples\n\
         workload driver: {rate} reads/s\n\
         lock waits recorded: {waits}\n\
         kprobe counts: dm_bufio_get {gets}, dm_bufio_read {reads}, dm_bufio_release {releases}\n\
         dm-bufio operations recorded: {ops}\n\
         waits named: client mutex {mutex}, client spinlock {spinlock}, tree locks {trees}\n\
         dm-bufio probed as: {attached_as}\n\
         lost: {missed} operation returns, {full} events (ring buffer full), {skipped} program \
         runs the kernel skipped\n",
        attached_as = outcome.bufio.attached_as,
        skipped = outcome.bufio.skipped_runs,
        ops = outcome.bufio.ops,
        mutex = outcome.bufio.mutex_waits,
        spinlock = outcome.bufio.spinlock_waits,
        trees = outcome.bufio.tree_waits,
        missed = outcome.bufio.returns_missed,
        full = outcome.bufio.ringbuf_full,
        release = outcome.release,
        scenario = outcome.scenario,
        kernel = outcome.kernel,
        rate = outcome.reads_per_sec,
        waits = outcome.lock_waits,
        gets = outcome.gets,
        reads = outcome.reads,
        releases = outcome.releases,
    );
    let mut note = note;
    if let Some(h) = &outcome.hotspot {
        note.push_str(&format!(
            "hotspot threads' mean acquisition (dm_bufio_read): the module alone {:.1} us, the \
             module recorded {:.1} us, bufscope {:.1} us (p50 {:.1} us, p99 {:.1} us) over {} reads\n",
            h.alone.hotspot_mean_ns() / 1e3,
            h.recorded.hotspot_mean_ns() / 1e3,
            h.by_bufscope.mean_ns / 1e3,
            h.by_bufscope.p50_ns as f64 / 1e3,
            h.by_bufscope.p99_ns as f64 / 1e3,
            h.by_bufscope.count,
        ));
    }
    fs::write(samples.join(format!("{name}.txt")), note)?;
    heading(
        "vm-test",
        &format!("saved samples/{name}.bftrace ({size} bytes)"),
    );
    Ok(())
}

/// Lists the samples in samples/README.md.
fn write_samples_readme() -> anyhow::Result<()> {
    let samples = workspace_root().join("samples");
    let mut traces: Vec<String> = fs::read_dir(&samples)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bftrace"))
        .collect();
    traces.sort();
    let mut readme = String::from(
        "# Sample traces\n\n\
         Recorded by bufscope inside real Debian kernels booted by the VM test bed\n\
         (`cargo xtask vm-test --save-samples` regenerates them), one per kernel and scenario, each\n\
         at most 6 MiB: what demos and tests use on machines without dm-bufio. The `.txt` beside each\n\
         trace names the kernel package, the scenario and the command that made it, and what the run\n\
         counted.\n\n| trace | how it was made |\n|---|---|\n",
    );
    for trace in traces {
        let note = trace.replace(".bftrace", ".txt");
        readme.push_str(&format!("| `{trace}` | [{note}]({note}) |\n"));
    }
    readme.push_str(
        "\n`*-bufio-hotspot` is the experiment of dm-bufio's 6.4 rework: the test bed's module\n\
         (`xtask/vm/bufio-hotspot/`) runs 16 threads reading their own 1,024-block regions while one\n\
         thread dirties the whole device, and times its own acquisitions (in the `.txt`). See them\n\
         with `bufscope report FILE --ops --by role` and `bufscope report FILE --by role --lock \"client\n\
         mutex\"`; rerun with `cargo xtask vm-test --scenario bufio-hotspot --kernel all`.\n",
    );
    fs::write(samples.join("README.md"), readme)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_samples_are_the_four_scenarios_on_6_1_and_6_12() {
        let saved: Vec<String> = ["6.1", "6.12", "7.3"]
            .iter()
            .flat_map(|k| SCENARIOS.iter().map(move |(s, _)| (*k, *s)))
            .filter(|(k, s)| bundled(k, s))
            .map(|(k, s)| format!("{k}-{s}"))
            .collect();
        assert_eq!(saved.len(), 8, "{saved:?}");
        assert!(
            saved
                .iter()
                .all(|n| !n.starts_with("7.3") && !n.ends_with("nosleep"))
        );
        // Every bundled scenario is one the test bed runs.
        for scenario in BUNDLED_SCENARIOS {
            assert!(SCENARIOS.iter().any(|(s, _)| *s == scenario), "{scenario}");
        }
    }
}
