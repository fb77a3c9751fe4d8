//! `cargo xtask test`: the whole suite, exactly as CI runs it: formatting, clippy on every crate,
//! every test, the packages `cargo xtask dist` makes installed and used, every fuzz target for
//! 30 s, and the VM test bed on real Debian kernels.
//!
//! A run that skips is not a pass: the tests run with BUFSCOPE_REQUIRE_ALL_TESTS=1, under which an
//! integration test that cannot run here (not root, tmux or the Python readers missing) fails
//! instead of skipping. A plain `cargo test` still skips them, saying why.

use std::process::Command;

use crate::{
    cmd::{heading, is_root, run_checked},
    setup,
};

/// The test that measures bufscope's own cost: run after the release binary is built, with it.
const RELEASE_ONLY_TEST: &str = "recorded_waits_are_as_short_as_a_minimal_probe_sees_them";

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    run_checked(
        "test",
        Command::new("cargo").args(["fmt", "--all", "--check"]),
    )?;
    run_checked(
        "test",
        Command::new("cargo").args([
            "clippy",
            "--workspace",
            "--exclude",
            "bufscope-ebpf",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The eBPF crate only builds for the BPF target, with nightly and build-std; it gets its own
    // target directory so the two toolchains never invalidate each other's artefacts.
    run_checked(
        "test",
        Command::new("cargo")
            .args([
                "+nightly",
                "clippy",
                "--package",
                "bufscope-ebpf",
                "--release",
                "--locked",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
                "target/ebpf-clippy",
                "--",
                "-D",
                "warnings",
            ])
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "--cfg=bpf_target_arch=\"x86_64\"",
            ),
    )?;
    if !is_root() {
        heading(
            "test",
            "not root: the integration tests that load eBPF programs will fail (a skip is not a pass)",
        );
    }
    run_checked(
        "test",
        Command::new("cargo")
            .args([
                "test",
                "--workspace",
                "--exclude",
                "bufscope-ebpf",
                "--locked",
                "--",
                "--skip",
                RELEASE_ONLY_TEST,
            ])
            .env("BUFSCOPE_REQUIRE_ALL_TESTS", "1"),
    )?;
    // The packages users install, installed into a scratch root and used. Their static binary is
    // the one the test bed boots (one build, target/static), so this costs a few seconds more.
    let packages = crate::dist::run()?;
    crate::dist::check(&packages)?;
    // What recording costs the workload it measures, with the binary users run: a debug build's
    // reader takes a CPU of the two from the workload.
    run_checked(
        "test",
        Command::new("cargo")
            .args([
                "test",
                "--locked",
                "--package",
                "bufscope",
                "--test",
                "distortion",
                "--",
                RELEASE_ONLY_TEST,
            ])
            .env("BUFSCOPE_REQUIRE_ALL_TESTS", "1")
            .env("BUFSCOPE_BIN", &packages.binary),
    )?;
    // Every fuzz target, briefly: a crash fails the run and is kept as a seed.
    crate::fuzz::run(&crate::fuzz::TARGETS, crate::fuzz::SUITE_SECONDS)?;
    // The real-kernel test bed: Debian 6.1, 6.12 and 7.3 under qemu, with dm-bufio.
    crate::vm::run("all", "all", false, false)?;
    heading("test", "all green");
    Ok(())
}
