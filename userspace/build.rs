//! Builds the eBPF object from source (ebpf/probes) with aya-build, on every build that needs it.
//! Missing toolchain pieces fail the build with one line that says what to run.

use std::{env, path::PathBuf, process::Command};

const SETUP_HINT: &str = "run `cargo xtask setup` (installs bpf-linker and nightly rust-src)";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ebpf_dir = manifest_dir.join("../ebpf/probes");
    for dir in ["src", "Cargo.toml", "build.rs"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../ebpf/abi/src").display()
    );

    if let Err(missing) = check_toolchain() {
        fail(&format!(
            "cannot build the eBPF programs: {missing}; {SETUP_HINT}"
        ));
    }
    let root_dir = ebpf_dir.to_string_lossy().into_owned();
    let package = aya_build::Package {
        name: "bufscope-ebpf",
        root_dir: &root_dir,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::default()) {
        fail(&format!("building the eBPF programs failed: {e:#}"));
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

fn fail(message: &str) -> ! {
    println!("cargo::error={message}");
    std::process::exit(1);
}
