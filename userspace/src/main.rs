//! The `bufscope` command line.

mod args;
mod cmd;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{CommandFactory, Parser, Subcommand};

use bufscope::probes::{AttachMode, BufioProbes, DEFAULT_RINGBUF_BYTES, RingWakeup};

#[derive(Debug, Parser)]
#[command(
    name = "bufscope",
    version,
    about = "See lock contention in the Linux dm-bufio buffer cache",
    long_about = "See lock contention in the Linux dm-bufio buffer cache.\n\n\
        bufscope records who waited on which kernel lock and for how long (eBPF on \
        lock:contention_begin/end), writes it to trace files and summarises them, and replays \
        dm-bufio operation traces through models of the kernel's cache designs."
)]
struct Cli {
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Record kernel lock contention and dm-bufio operations to a trace file (root). Ctrl-C or
    /// SIGTERM ends it cleanly.
    Record {
        /// Trace file to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Stop after this long, e.g. 10s, 2m, 500ms (default: until Ctrl-C).
        #[arg(short, long, value_parser = args::parse_positive_duration)]
        duration: Option<Duration>,
        /// How to attach to the lock tracepoints.
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        attach: AttachMode,
        /// Ring buffer size in bytes: a power of two, at least one page.
        #[arg(long, default_value_t = DEFAULT_RINGBUF_BYTES, value_parser = args::parse_ringbuf_size)]
        ringbuf_size: u32,
        /// When the probes wake bufscope to read their events.
        #[arg(long, value_enum, default_value_t = RingWakeup::Batched)]
        ring_wakeup: RingWakeup,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        stacks: args::StackArgs,
        /// Leave dm-bufio's functions alone: lock contention only.
        #[arg(long)]
        no_bufio: bool,
        /// How to probe dm-bufio's functions: fentry/fexit through the module's BTF where the
        /// kernel allows it, else kprobes (auto); or one kind only.
        #[arg(long, value_enum, default_value_t = BufioProbes::Auto, conflicts_with = "no_bufio")]
        bufio_probes: BufioProbes,
        #[command(flatten)]
        processes: args::ProcessArgs,
        #[command(flatten)]
        types: args::LockTypeArgs,
        #[command(flatten)]
        waits: args::WaitArgs,
        #[command(flatten)]
        watched: args::CommandArgs,
    },
    /// Watch kernel lock waits and dm-bufio operations as they happen (root): the full-screen
    /// view, or with `--no-tui` a table per interval from in-kernel histograms; `-- CMD ARGS…`
    /// watches for exactly the command's lifetime and exits with its status.
    Live(cmd::live::Options),
    /// Summarise a trace file: header, time span, counts per event kind and lock type, losses.
    Info {
        /// Trace file to read.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        damage: args::DamageArgs,
    },
    /// Tables of a trace's lock waits by lock, caller, operation, thread, thread role, type or
    /// client, in perf lock contention's terms, with percentiles and histograms; or, with
    /// --ops, of how long its dm-bufio operations took, by thread, role, operation or client.
    Report(cmd::report::Options),
    /// Kernel vs reference designs: replay a recording's dm-bufio operations through each design
    /// and put their lock waits side by side, with the design closest to the kernel.
    Compare(cmd::compare::Options),
    /// Write a trace for other tools: Perfetto, Chrome JSON, folded stacks (flame graphs), CSV,
    /// JSON Lines or Parquet.
    Export(cmd::export::Options),
    /// Make a trace of dm-bufio operations without a kernel (e.g. the hotspot test).
    Synth(cmd::synth::Options),
    /// Run a trace's dm-bufio operations through the reference cache designs and measure their
    /// lock waits and each thread role's buffer acquisition time.
    Replay(cmd::replay::Options),
    /// Drive a block device with reader (and writer) threads of direct I/O and report ops/s and
    /// latency: the workload the VM test bed runs under dm-thin and dm-verity.
    Stress(cmd::stress::Options),
    /// Report what this kernel offers bufscope (BTF, tracepoints, kprobes, fentry, dm-bufio,
    /// privileges) and what bufscope does without each missing piece.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print bufscope's completion script for a shell on stdout.
    ///
    /// The .deb installs the scripts for bash, zsh and fish. Without it, write one where the
    /// shell looks for it:
    ///
    /// bash: `bufscope completions bash > ~/.local/share/bash-completion/completions/bufscope`
    ///
    /// zsh: `bufscope completions zsh > ~/.zfunc/_bufscope`, with `fpath+=~/.zfunc` before
    /// `compinit` in ~/.zshrc
    ///
    /// fish: `bufscope completions fish > ~/.config/fish/completions/bufscope.fish`
    Completions {
        /// The shell to complete bufscope's subcommands, options and values in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (bufscope.1 and bufscope-SUBCOMMAND.1 for each subcommand) into DIR,
    /// created if missing; `cargo xtask dist` packages them.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into.
        dir: PathBuf,
        /// The date the pages show, YYYY-MM-DD (default: today).
        #[arg(long, value_parser = cmd::man::parse_date)]
        date: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    // Commands that print and end (info, report, ...) stop quietly when their reader goes away
    // (`bufscope info F | head`), as other command-line tools do; record and live keep writing
    // their files whatever happens to a pipe.
    if !matches!(cli.command, Command::Record { .. } | Command::Live(_)) {
        // SAFETY: restoring the default disposition of a signal; no handler is involved.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Record {
            output,
            duration,
            attach,
            ringbuf_size,
            ring_wakeup,
            force,
            stacks,
            no_bufio,
            bufio_probes,
            processes,
            types,
            waits,
            watched,
        } => cmd::record::run(cmd::record::Options {
            output,
            duration,
            attach,
            ringbuf_bytes: ringbuf_size,
            ring_wakeup,
            force,
            stacks: stacks.mode(),
            owners: stacks.owners(),
            bufio: !no_bufio,
            bufio_probes,
            processes: processes.filter(),
            lock_types: types.mask(),
            waits: waits.filter(),
            only_cmd: watched.only_cmd,
            command: watched.command,
        }),
        Command::Info { file, json, damage } => cmd::info::run(&file, json, &damage),
        Command::Live(options) => cmd::live::run(&options),
        Command::Doctor { json } => cmd::doctor::run(json),
        Command::Synth(options) => cmd::synth::run(&options),
        Command::Replay(options) => cmd::replay::run(&options),
        Command::Report(options) => cmd::report::run(&options),
        Command::Compare(options) => cmd::compare::run(&options),
        Command::Export(options) => cmd::export::run(&options),
        Command::Stress(options) => cmd::stress::run(&options),
        Command::Completions { shell } => cmd::completions::run(shell, Cli::command()),
        Command::Man { dir, date } => cmd::man::run(&dir, date.as_deref(), Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bufscope: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
