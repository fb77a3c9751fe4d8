//! Developer and CI tasks for bufscope.
//!
//! `cargo xtask setup` installs everything the project needs on a fresh machine, `cargo xtask test`
//! runs the whole suite as CI does, `cargo xtask run -- ARGS` builds and runs bufscope, and
//! `cargo xtask bench` prints the benchmarks side by side, and `cargo xtask dist` builds the packages
//! users install.

mod bench;
mod cmd;
mod dist;
mod fuzz;
mod run;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Developer and CI tasks for bufscope")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the toolchain pieces and Debian packages bufscope needs (idempotent).
    Setup,
    /// Build bufscope in release mode and run it with ARGS (eBPF commands need root).
    Run {
        /// Arguments passed to bufscope, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then formatting, clippy on every crate, and every test (a test that cannot run here,
    /// such as one that needs root, fails rather than skips).
    Test,
    /// Benchmarks: throughput and size figures printed side by side with their targets.
    Bench,
    /// Boot Debian kernels with dm-bufio under qemu (TCG) and run bufscope scenarios inside them.
    VmTest {
        /// Kernel line: 6.1, 6.12, 7.3 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Scenario (a script in xtask/vm/), or all.
        #[arg(long, default_value = "all")]
        scenario: String,
        /// Keep the results disk images under target/vm/.
        #[arg(long)]
        keep: bool,
        /// Copy each recording to samples/ and rewrite samples/README.md.
        #[arg(long)]
        save_samples: bool,
    },
    /// Build what users install: a static x86_64 bufscope (eBPF object inside) with its man pages
    /// and bash, zsh and fish completions, README, copyright and samples, as a .deb and a tarball
    /// in target/dist/.
    Dist {
        /// Then install the .deb into a scratch root and use it (doctor, info on a sample,
        /// completions, man -l, the copyright file), as `cargo xtask test` does.
        #[arg(long)]
        check: bool,
    },
    /// Fuzz the trace reader and the chunk decoder with cargo-fuzz (nightly), from the seed
    /// corpora; a crash is kept as a seed. `cargo xtask test` runs each for 30 s.
    Fuzz {
        /// How long to fuzz each target.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Only this target (repeat): trace_reader, chunk_decoder.
        #[arg(long = "target", value_name = "TARGET")]
        targets: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Run { args } => run::run(&args),
        Task::Test => test::run(),
        Task::Bench => bench::run(),
        Task::Fuzz { seconds, targets } => {
            let targets: Vec<&str> = if targets.is_empty() {
                fuzz::TARGETS.to_vec()
            } else {
                targets.iter().map(String::as_str).collect()
            };
            fuzz::run(&targets, seconds)
        }
        Task::Dist { check } => {
            setup::run()?;
            let packages = dist::run()?;
            if check {
                dist::check(&packages)?;
            }
            Ok(())
        }
        Task::VmTest {
            kernel,
            scenario,
            keep,
            save_samples,
        } => {
            setup::run()?;
            vm::run(&kernel, &scenario, keep, save_samples)
        }
    }
}
