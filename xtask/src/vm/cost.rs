//! The test bed's half of the probe-overhead benchmark: what recording and watching dm-bufio
//! cost the workload they measure, on each kernel, in one boot per kernel (xtask/vm/probe-cost.sh).
//! Two workloads: 16 readers of a thin volume's hot regions, run alone, under `record` with
//! fentry/fexit, under `record --ring-wakeup each`, under `record --bufio-probes kprobe`, under
//! `live --no-tui` and under the kernel's own function_graph tracer on the same functions (the
//! anchor: what seeing every call and return costs here without BPF), in rotating turns, three
//! rounds; and, where the test module is built, the seed's experiment (bufio-hotspot) alone,
//! under `record`, `record --no-bufio`, `live --no-tui` and function_graph, two rounds, by the module's own
//! timing. Printed with the targets: record keeps ≥ 90 % of the unprobed rate, live
//! ≥ 97 %.

use std::{fs, path::Path};

use anyhow::Context;

use super::{
    PROBE_COST, build_initramfs, fetch_kernel, hotspot::ModuleRun, kernels::KERNELS,
    qemu::boot_retrying_tcg_hazards,
};
use crate::{
    cmd::{heading, workspace_root},
    dist::build_static_bufscope,
};

/// The ways the workload runs, in the order the table prints them, with the share of the
/// unprobed reads/s each must keep (none for the rows there for comparison).
const HOW: &[(&str, &str, Option<f64>)] = &[
    ("none", "no probe", None),
    ("record", "record (fentry/fexit)", Some(0.90)),
    ("wake-each", "record --ring-wakeup each", None),
    ("kprobe", "record --bufio-probes kprobe", None),
    ("live", "live --no-tui", Some(0.97)),
    ("graph", "function_graph (no BPF)", None),
];

const ROUNDS: u32 = 3;

/// The seed's experiment's runs, as [`HOW`] (probe-cost.sh's part 2).
const SEED_HOW: &[(&str, &str, Option<f64>)] = &[
    ("none", "no probe", None),
    ("record", "record (fentry/fexit)", Some(0.90)),
    ("nobufio", "record --no-bufio", None),
    ("live", "live --no-tui", Some(0.97)),
    ("graph", "function_graph (no BPF)", None),
];

const SEED_ROUNDS: u32 = 2;

pub fn probe_cost(kernel: &str) -> anyhow::Result<()> {
    let work = workspace_root().join("target/vm");
    fs::create_dir_all(&work)?;
    let bufscope = build_static_bufscope("bench")?;
    for line in KERNELS
        .iter()
        .filter(|k| kernel == "all" || k.name == kernel)
    {
        let extracted = fetch_kernel(&work, line)?;
        let initramfs = build_initramfs(&work, line, &extracted, &bufscope)?;
        let guest =
            boot_retrying_tcg_hazards(&work, line.name, &extracted, &initramfs, PROBE_COST.0)?;
        let runs = read_runs(&guest.dir)
            .with_context(|| format!("{} {}: reading the runs", line.name, PROBE_COST.0))?;
        print_table(
            &format!(
                "probe cost in the test bed: Linux {} ({}), thin volume, 16 hot readers",
                guest.release, line.name
            ),
            "reads/s",
            HOW,
            &runs,
        );
        if line.no_module.is_none() {
            let seed = read_seed_runs(&guest.dir)
                .with_context(|| format!("{} {}: the seed's runs", line.name, PROBE_COST.0))?;
            print_table(
                &format!(
                    "probe cost in the test bed: Linux {} ({}), the seed's experiment \
                     (bufio_hotspot.ko: 16 hotspot readers and a dirtier)",
                    guest.release, line.name
                ),
                "reads/s/thread",
                SEED_HOW,
                &seed,
            );
        }
        let _ = fs::remove_file(&guest.disk);
    }
    Ok(())
}

/// Reads/s of every run, by way of running: `runs[how][round]`.
fn read_runs(results: &Path) -> anyhow::Result<Vec<Vec<f64>>> {
    runs_by_way(results, HOW, ROUNDS, "cost", "json", |text, path| {
        let report: serde_json::Value = serde_json::from_str(text)?;
        report["reads"]["ops_per_s"]
            .as_f64()
            .with_context(|| format!("{}: no reads.ops_per_s", path.display()))
    })
}

/// The hotspot threads' reads per second of their own time inside dm_bufio_read (the inverse of
/// their mean acquisition time, the module's timing), by way of running: `runs[how][round]`.
fn read_seed_runs(results: &Path) -> anyhow::Result<Vec<Vec<f64>>> {
    runs_by_way(results, SEED_HOW, SEED_ROUNDS, "seed", "txt", |text, _| {
        Ok(1e9 / ModuleRun::parse(text)?.hotspot_mean_ns())
    })
}

/// Each run's figure, `rate(its file's text, its path)`, by way of running: `runs[how][round]`,
/// from probe-cost.sh's `/results/{prefix}-{how}-{round}.{ext}`.
fn runs_by_way(
    results: &Path,
    how: &[(&str, &str, Option<f64>)],
    rounds: u32,
    prefix: &str,
    ext: &str,
    rate: impl Fn(&str, &Path) -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<Vec<f64>>> {
    how.iter()
        .map(|(how, _, _)| {
            (1..=rounds)
                .map(|round| {
                    let path = results.join(format!("{prefix}-{how}-{round}.{ext}"));
                    let text =
                        fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
                    rate(&text, &path).with_context(|| format!("{}", path.display()))
                })
                .collect()
        })
        .collect()
}

/// The middle run, or the mean of the two middle ones.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let half = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[half - 1] + sorted[half]) / 2.0
    } else {
        sorted[half]
    }
}

/// One table: each way of running's median rate, its runs, and the share of the unprobed rate it
/// kept, against its target.
fn print_table(title: &str, unit: &str, how: &[(&str, &str, Option<f64>)], runs: &[Vec<f64>]) {
    heading("bench", title);
    let unprobed = median(&runs[0]);
    println!(
        "{:<30} {:>15} {:>28} {:>8}  target",
        "workload under", unit, "runs", "kept"
    );
    for ((_, name, target), values) in how.iter().zip(runs) {
        let m = median(values);
        let kept = m / unprobed;
        let runs = values
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ");
        let verdict = match target {
            Some(t) if kept >= *t => format!("≥ {:.0} %: met", t * 100.0),
            Some(t) => format!("≥ {:.0} %: MISSED", t * 100.0),
            None => "-".to_string(),
        };
        println!(
            "{name:<30} {m:>15.0} {runs:>28} {:>7.1}%  {verdict}",
            kept * 100.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_run() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[5.0]), 5.0);
        assert_eq!(median(&[4.0, 2.0]), 3.0);
    }
}
