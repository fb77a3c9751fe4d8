//! Fuzzing with cargo-fuzz (nightly, libFuzzer), starting from the committed seed corpora:
//! `cargo xtask fuzz [--seconds N] [--target T]` for a longer run by hand, and a short bounded
//! run of every target inside `cargo xtask test`.
//!
//! A crash fails the run, and its input is copied into the target's corpus as
//! `seed-crash-<hash>` (the names the repository keeps), so that committing it makes the
//! trace crate's corpus test (`userspace/trace/tests/fuzz_corpus.rs`) replay it on every
//! `cargo test` from then on.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::cmd::{heading, output_of, run_checked};

/// The targets under fuzz/fuzz_targets.
pub const TARGETS: [&str; 2] = ["trace_reader", "chunk_decoder"];

/// How long `cargo xtask test` fuzzes each target.
pub const SUITE_SECONDS: u64 = 30;

/// Installs cargo-fuzz from crates.io when missing (setup calls this).
pub fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if let Some(version) = output_of("cargo", &["fuzz", "--version"]) {
        heading(
            "setup",
            &format!("cargo-fuzz: present ({})", version.trim()),
        );
        return Ok(());
    }
    heading("setup", "cargo-fuzz: installing from crates.io");
    run_checked(
        "setup",
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
    )
}

/// Fuzzes `targets` for `seconds` each; a crash is kept in the corpus and fails the run.
pub fn run(targets: &[&str], seconds: u64) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace root")?
        .to_path_buf();
    for &target in targets {
        if !TARGETS.contains(&target) {
            bail!(
                "no fuzz target {target:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
        heading(
            "fuzz",
            &format!("{target}: {seconds} s from fuzz/corpus/{target}"),
        );
        let artifacts = root.join("fuzz/artifacts").join(target);
        let before = crash_files(&artifacts);
        let ran = run_checked(
            "fuzz",
            Command::new("cargo")
                .current_dir(&root)
                .args(["+nightly", "fuzz", "run", "--fuzz-dir", "fuzz", target])
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-rss_limit_mb=2048"),
        );
        let new: Vec<PathBuf> = crash_files(&artifacts)
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        if !new.is_empty() {
            let kept = keep_in_corpus(&root, target, &new)?;
            bail!(
                "fuzzing {target} found {} crashing input(s), kept as {}: fix the reader, then \
                 commit them so the corpus test replays them",
                new.len(),
                kept.join(", ")
            );
        }
        ran?;
    }
    Ok(())
}

/// libFuzzer's crash and timeout inputs in `dir`.
fn crash_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                ["crash-", "timeout-", "oom-", "leak-"]
                    .iter()
                    .any(|k| n.starts_with(k))
            })
        })
        .collect();
    files.sort();
    files
}

/// Copies each input into the target's corpus as `seed-<its name>`; returns the new paths.
fn keep_in_corpus(root: &Path, target: &str, inputs: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    inputs
        .iter()
        .map(|input| {
            let name = input
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("input");
            let kept = corpus.join(format!("seed-{name}"));
            std::fs::copy(input, &kept)
                .with_context(|| format!("copying {} to {}", input.display(), kept.display()))?;
            Ok(kept
                .strip_prefix(root)
                .unwrap_or(&kept)
                .display()
                .to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_inputs_are_told_from_the_rest_and_kept_as_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = dir.path().join("fuzz/artifacts/trace_reader");
        std::fs::create_dir_all(&artifacts).unwrap();
        for name in ["crash-abc", "timeout-def", "notes.txt"] {
            std::fs::write(artifacts.join(name), name).unwrap();
        }
        let found = crash_files(&artifacts);
        assert_eq!(found.len(), 2);
        let kept = keep_in_corpus(dir.path(), "trace_reader", &found).unwrap();
        assert_eq!(
            kept,
            [
                "fuzz/corpus/trace_reader/seed-crash-abc",
                "fuzz/corpus/trace_reader/seed-timeout-def"
            ]
        );
        let copied =
            std::fs::read_to_string(dir.path().join("fuzz/corpus/trace_reader/seed-crash-abc"))
                .unwrap();
        assert_eq!(copied, "crash-abc");
    }
}
