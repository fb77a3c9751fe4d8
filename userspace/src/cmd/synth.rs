//! `bufscope synth WORKLOAD -o FILE`: traces of dm-bufio operations made without a kernel
//! ([`bufscope_analyses::synth`]); this checks the arguments, names the trace and says what it
//! wrote.

use std::{path::PathBuf, process::ExitCode};

use anyhow::bail;
use bufscope::kernel::system;
use bufscope_analyses::{synth::Workload, units::thousands};
use bufscope_trace::TraceHeader;

#[derive(Debug, clap::Args)]
pub struct Options {
    #[command(subcommand)]
    pub workload: Workload,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, clap::Args)]
pub struct Common {
    /// Trace file to write.
    #[arg(short, long, value_name = "FILE", global = true)]
    pub output: Option<PathBuf>,
    /// Block size in bytes.
    #[arg(long, default_value_t = 4096, global = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub block_size: u32,
    /// Seed of the random workloads.
    #[arg(long, default_value_t = 1, global = true)]
    pub seed: u64,
    /// Overwrite FILE if it exists.
    #[arg(long, global = true)]
    pub force: bool,
}

pub fn run(o: &Options) -> anyhow::Result<ExitCode> {
    let Some(output) = &o.common.output else {
        bail!("the output file is missing: pass -o FILE");
    };
    o.workload.validate()?;
    if output.exists() && !o.common.force {
        bail!("{} exists; pass --force to overwrite it", output.display());
    }
    let seed = o.common.seed;
    let threads = o.workload.threads(seed)?;
    let header = TraceHeader {
        writer: format!("bufscope {} synth", env!("CARGO_PKG_VERSION")),
        kernel_release: "synthetic".into(),
        host: system::host_name(),
        clock: "synthetic (500 ns per operation per thread)".into(),
        start_unix_ns: system::unix_ns(),
        start_clock_ns: 0,
        cpus: system::online_cpus(),
        probes: vec![format!(
            "synth {}: {}, {} B blocks, seed {seed}",
            o.workload.name(),
            o.workload.describe(),
            o.common.block_size
        )],
    };
    let ops = bufscope_analyses::synth::write_trace(
        output,
        &header,
        o.common.block_size,
        threads,
        system::unix_ns(),
    )?;
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "bufscope: wrote {} dm-bufio operations ({} bytes) to {}; replay it with `bufscope replay {}`",
        thousands(ops),
        thousands(bytes),
        output.display(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}
