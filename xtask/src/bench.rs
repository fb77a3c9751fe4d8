//! `cargo xtask bench`: every benchmark of the project, each printing its figures next to its
//! targets, then the probes' cost to a dm-bufio workload inside the test bed's kernels. Numbers from these shared 2-core machines are noisy: compare ratios within one run.

use std::process::Command;

use crate::cmd::run_checked;

/// (package, bench target) of every benchmark, in the order they print.
const BENCHES: &[(&str, &str)] = &[
    ("bufscope-trace", "trace_throughput"),
    ("reference-cache", "designs"),
    ("bufscope-analyses", "analyses"),
    ("bufscope-analyses", "fidelity"),
    ("bufscope", "live_view"),
    ("bufscope", "probe_overhead"),
];

pub fn run() -> anyhow::Result<()> {
    for (package, bench) in BENCHES {
        run_checked(
            "bench",
            Command::new("cargo").args([
                "bench",
                "--locked",
                "--package",
                package,
                "--bench",
                bench,
            ]),
        )?;
    }
    // The dm-bufio half of probe_overhead: it needs the kernels of the test bed.
    crate::vm::probe_cost("all")
}
