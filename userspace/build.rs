//! Builds the eBPF object from source (ebpf/probes) on every build that needs it, silently unless
//! it fails. Missing toolchain pieces fail the build with one line that says what to run.
//!
//! The nested cargo build is the one aya-build 0.2 runs (same arguments, flags and target), run
//! here because aya-build forwards every line of its output as a cargo warning.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const SETUP_HINT: &str = "run `cargo xtask setup` (installs bpf-linker and nightly rust-src)";

/// The eBPF crate, and the nightly toolchain it builds with (build-std needs nightly).
const EBPF_PACKAGE: &str = "bufscope-ebpf";
const EBPF_TOOLCHAIN: &str = "nightly";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf_dir = manifest_dir.join("../ebpf/probes");
    // The build-dependency on bufscope-ebpf reruns this script when its library or dependencies
    // change; its binary, the eBPF programs, is covered only by watching the whole crate.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../ebpf/abi/src").display()
    );

    if let Err(missing) = check_toolchain() {
        fail(&format!(
            "cannot build the eBPF programs: {missing}; {SETUP_HINT}"
        ));
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    if let Err(e) = build_ebpf(&out_dir) {
        fail(&format!("building the eBPF programs failed: {e}"));
    }
}

fn check_toolchain() -> Result<(), String> {
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !linker_ok {
        return Err("bpf-linker is not on PATH".into());
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map_err(|e| format!("rustup could not be run ({e})"))?;
    let listing = String::from_utf8_lossy(&components.stdout);
    if !listing.lines().any(|l| l.starts_with("rust-src")) {
        return Err("the nightly toolchain's rust-src component is missing".into());
    }
    Ok(())
}

/// Builds the eBPF crate's binaries for the BPF target of this build's endianness, and copies
/// each into OUT_DIR under its target's name (where `include_bytes_aligned!` reads it). Its
/// output is printed only when it fails, whole.
fn build_ebpf(out_dir: &Path) -> Result<(), String> {
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => "bpfel-unknown-none",
        Ok("big") => "bpfeb-unknown-none",
        other => return Err(format!("unsupported target endianness {other:?}")),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").map_err(|_| "CARGO_CFG_TARGET_ARCH not set")?;
    // A target directory of its own: the outer cargo holds the lock on its own.
    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            EBPF_TOOLCHAIN,
            "cargo",
            "build",
            "--package",
            EBPF_PACKAGE,
        ])
        .args([
            "--bins",
            "--message-format=json",
            "--release",
            "--target",
            target,
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{arch}\""),
                "-Cdebuginfo=2".into(),
                "-Clink-arg=--btf".into(),
            ]
            .join("\x1f"),
        )
        // The outer build's compiler and wrapper would override the nightly toolchain's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let out = cargo
        .output()
        .map_err(|e| format!("could not start {cargo:?}: {e}"))?;

    let mut messages = Vec::new();
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            messages.push(line.to_string());
            continue;
        };
        match message["reason"].as_str() {
            Some("compiler-artifact") => {
                if let (Some(name), Some(executable)) = (
                    message["target"]["name"].as_str(),
                    message["executable"].as_str(),
                ) {
                    binaries.push((name.to_string(), PathBuf::from(executable)));
                }
            }
            Some("compiler-message") => {
                let rendered = message["message"]["rendered"].as_str().unwrap_or_default();
                messages.extend(rendered.lines().map(String::from));
            }
            _ => {}
        }
    }
    if !out.status.success() {
        for line in messages
            .iter()
            .map(String::as_str)
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("cargo::warning={line}");
        }
        return Err(format!(
            "{cargo:?} failed ({}); its output is above",
            out.status
        ));
    }
    for (name, binary) in binaries {
        let to = out_dir.join(&name);
        fs::copy(&binary, &to).map_err(|e| {
            format!(
                "copying {} to {} failed: {e}",
                binary.display(),
                to.display()
            )
        })?;
    }
    Ok(())
}

fn fail(message: &str) -> ! {
    println!("cargo::error={message}");
    std::process::exit(1);
}
