//! `bufscope export FILE --format F -o OUT`: a trace in the formats other tools load (see
//! `bufscope_analyses::export`). The output is written beside under a temporary name and renamed into
//! place when complete, so an interrupted export never leaves a half-written file behind.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context, bail};
use bufscope_analyses::{
    export::{Format, chrome, folded, perfetto, table},
    tracedata::TraceData,
    units::thousands,
};

use crate::args::DamageArgs;

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    bufscope export t.bftrace --format perfetto -o t.perfetto-trace   (open in ui.perfetto.dev)\n  \
    bufscope export t.bftrace --format folded -o - | inferno-flamegraph > waits.svg\n  \
    bufscope export t.bftrace --format parquet -o t.parquet           (DuckDB: SELECT ... FROM 't.parquet')\n  \
    bufscope export t.bftrace --format parquet --host testbox-3 -o traces/testbox-3.parquet\n\n\
    The csv, json (JSON Lines) and parquet formats share one schema; `bufscope export --schema` prints it.")]
pub struct Options {
    /// Trace file: a kernel recording, or a design's run from `replay --trace-out`.
    #[arg(required_unless_present = "schema")]
    pub file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, required_unless_present = "schema")]
    pub format: Option<Format>,
    /// Output file; `-` for standard output (not for parquet).
    #[arg(short, long, value_name = "OUT", required_unless_present = "schema")]
    pub output: Option<PathBuf>,
    /// Overwrite OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// folded: weigh stacks by total wait (ns) or by number of waits.
    #[arg(long, value_enum, default_value_t = folded::Weight::Wait)]
    pub weight: folded::Weight,
    /// csv/json/parquet: the `host` column's value, instead of the recording machine's name from
    /// the trace's header (to tell apart traces from machines that had the same name or none, such
    /// as the test bed's VMs).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Print the csv/json/parquet schema and exit.
    #[arg(long)]
    pub schema: bool,
    #[command(flatten)]
    pub damage: DamageArgs,
}

pub fn run(o: &Options) -> anyhow::Result<ExitCode> {
    if o.schema {
        println!("{:<15} {:<26} meaning", "column", "parquet type");
        for c in table::COLUMNS {
            println!("{:<15} {:<26} {}", c.name, c.parquet, c.doc);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(file), Some(format), Some(output)) = (&o.file, o.format, &o.output) else {
        bail!("FILE, --format and --output are needed");
    };
    if o.host.is_some() && !matches!(format, Format::Csv | Format::Json | Format::Parquet) {
        bail!("--host sets the host column, which only csv, json and parquet have");
    }
    let mut trace = TraceData::load(file)?;
    if let Some(host) = &o.host {
        trace.header.host.clone_from(host);
    }
    o.damage
        .check(trace.skipped_message(), trace.problem.as_deref())?;
    if let Some(problem) = &trace.problem {
        eprintln!("bufscope: warning: {problem}; exporting what came before it");
    }
    if trace.waits.is_empty() && trace.ops.is_empty() {
        bail!("{} holds no events; nothing to export", file.display());
    }
    if format == Format::Folded && trace.waits.is_empty() {
        bail!(
            "{} holds no lock waits, so there are no stacks to fold",
            file.display()
        );
    }
    let started = Instant::now();
    let events = if output == Path::new("-") {
        if format == Format::Parquet {
            bail!("parquet needs a file: Parquet's footer is written last and read first");
        }
        write(&trace, format, o.weight, std::io::stdout())?
    } else {
        write_file(&trace, format, o.weight, output, o.force)?
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "bufscope: exported {} events as {:?} to {} in {:.2} s ({} events/s)",
        thousands(events),
        format,
        output.display(),
        secs,
        thousands((events as f64 / secs.max(1e-9)) as u64)
    );
    Ok(ExitCode::SUCCESS)
}

fn write<W: Write + Send>(
    trace: &TraceData,
    format: Format,
    weight: folded::Weight,
    out: W,
) -> anyhow::Result<u64> {
    match format {
        Format::Perfetto => perfetto::write(trace, out),
        Format::Chrome => chrome::write(trace, out),
        Format::Folded => folded::write(trace, weight, std::io::BufWriter::new(out)),
        Format::Csv => table::write_csv(trace, std::io::BufWriter::new(out)),
        Format::Json => table::write_json(trace, out),
        Format::Parquet => table::write_parquet(trace, std::io::BufWriter::new(out)),
    }
    .map_err(Into::into)
}

/// Writes to `OUT.partial` and renames it to `OUT` once complete.
fn write_file(
    trace: &TraceData,
    format: Format,
    weight: folded::Weight,
    output: &Path,
    force: bool,
) -> anyhow::Result<u64> {
    if output.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", output.display());
    }
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let written = write(trace, format, weight, &file)
        .and_then(|n| file.sync_all().map(|()| n).map_err(Into::into));
    match written {
        Ok(n) => {
            std::fs::rename(&partial, output)
                .with_context(|| format!("renaming {} into place", partial.display()))?;
            Ok(n)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e.context(format!("writing {}", output.display())))
        }
    }
}
