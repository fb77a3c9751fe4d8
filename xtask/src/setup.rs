//! `cargo xtask setup`: brings a fresh machine of the project's kind to a state where every crate
//! builds and every test runs. Each step checks first and skips what is already present.

use std::{process::Command, thread, time::Duration};

use anyhow::{Context, bail};

use crate::cmd::{heading, is_root, output_of, run_checked, workspace_root};

/// Debian packages, with the reason each one is needed.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "bpf-linker links against LLVM 22, rustc's LLVM",
    ),
    ("libpolly-22-dev", "LLVM 22's cmake files refer to Polly"),
    ("libzstd-dev", "LLVM 22 link dependency"),
    ("zlib1g-dev", "LLVM 22 link dependency"),
    ("libxml2-dev", "LLVM 22 link dependency"),
    (
        "qemu-system-x86",
        "the VM test bed boots Debian kernels with dm-bufio",
    ),
    ("busybox-static", "the VM test bed's initramfs userland"),
    (
        "dmsetup",
        "the VM test bed builds thin pools and verity devices with it",
    ),
    ("xz-utils", "the VM test bed decompresses kernel modules"),
    (
        "cryptsetup-bin",
        "the VM test bed formats dm-verity hash images with veritysetup",
    ),
    (
        "make",
        "the VM test bed builds its test module against each kernel's headers",
    ),
    (
        "gcc-12",
        "the compiler Debian's bookworm kernels and their modules are built with",
    ),
    ("bpftrace", "cross-checks and the overhead benchmark"),
    ("bpftool", "inspecting loaded programs and BTF"),
    ("tmux", "end-to-end tests of the terminal UI"),
    (
        "man-db",
        "the dist check renders the packaged man pages with man -l",
    ),
    (
        "fonts-dejavu-core",
        "compare --plot draws its text with DejaVu Sans",
    ),
    (
        "prometheus",
        "the metrics test scrapes `live --metrics` with a real Prometheus and lints it with promtool",
    ),
];

/// Debian packages whose service setup must not start or enable: a system Prometheus would hold
/// :9090 and scrape itself forever; the metrics test runs its own instance on a free port.
const SERVICES_KEPT_OFF: &[&str] = &["prometheus"];

/// Debian's hook for asking maintainer scripts not to start services (invoke-rc.d and
/// deb-systemd-invoke consult it).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

const BPF_LINKER_VERSION: &str = "0.13";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    nightly_toolchain()?;
    nightly_rust_src()?;
    debian_packages()?;
    bpf_linker()?;
    py_readers()?;
    heading("setup", "everything is in place");
    Ok(())
}

fn nightly_toolchain() -> anyhow::Result<()> {
    let toolchains = output_of("rustup", &["toolchain", "list"]).unwrap_or_default();
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        heading("setup", "nightly toolchain: present");
        return Ok(());
    }
    heading(
        "setup",
        "nightly toolchain: installing (the eBPF build needs it)",
    );
    with_retries("rustup toolchain install nightly", || {
        Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()
            .map(|s| s.success())
    })
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = output_of(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        heading("setup", "nightly rust-src: present");
        return Ok(());
    }
    heading(
        "setup",
        "nightly rust-src: installing (-Z build-std=core needs it)",
    );
    with_retries("rustup component add rust-src --toolchain nightly", || {
        Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .status()
            .map(|s| s.success())
    })
}

/// rustup's server is not one of the registries this workplace promises, so its downloads are
/// retried a few times before setup gives up with one clear line.
fn with_retries(
    what: &str,
    mut attempt: impl FnMut() -> std::io::Result<bool>,
) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 3;
    for n in 1..=ATTEMPTS {
        match attempt() {
            Ok(true) => return Ok(()),
            Ok(false) => heading(
                "setup",
                &format!("`{what}` failed (attempt {n}/{ATTEMPTS})"),
            ),
            Err(e) => bail!("could not start `{what}`: {e}"),
        }
        if n < ATTEMPTS {
            thread::sleep(Duration::from_secs(5 * u64::from(n)));
        }
    }
    bail!(
        "`{what}` failed {ATTEMPTS} times; only the eBPF build needs it (the reference cache and \
         trace format build on stable alone); try again later"
    )
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !dpkg_installed(name))
        .collect();
    if missing.is_empty() {
        heading("setup", "Debian packages: all present");
        return Ok(());
    }
    for (name, why) in DEBIAN_PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        heading("setup", &format!("Debian package {name}: missing ({why})"));
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}; apt-get needs root: run `sudo -E cargo xtask setup`",
            missing.join(" ")
        );
    }
    run_checked(
        "setup",
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let services_held = ServiceStartsHeld::hold()?;
    run_checked(
        "setup",
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    drop(services_held);
    for service in SERVICES_KEPT_OFF.iter().filter(|s| missing.contains(s)) {
        keep_service_off(service)?;
    }
    Ok(())
}

/// A `policy-rc.d` that denies every service start, for the length of an install; removed when
/// dropped. One already there (a container's, an administrator's) is left as it is.
struct ServiceStartsHeld {
    created: bool,
}

impl ServiceStartsHeld {
    fn hold() -> anyhow::Result<Self> {
        let path = std::path::Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(Self { created: false });
        }
        std::fs::write(
            path,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs packages.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(Self { created: true })
    }
}

impl Drop for ServiceStartsHeld {
    fn drop(&mut self) {
        if self.created
            && let Err(e) = std::fs::remove_file(POLICY_RC_D)
        {
            heading("setup", &format!("could not remove {POLICY_RC_D}: {e}"));
        }
    }
}

/// Stops a just-installed package's service where a policy-rc.d of someone else's let it start,
/// and disables it for later boots (update-rc.d removes the sysvinit and the systemd links).
fn keep_service_off(service: &str) -> anyhow::Result<()> {
    heading(
        "setup",
        &format!("{service}: stopping and disabling its service (tests run their own)"),
    );
    if std::path::Path::new("/run/systemd/system").exists() {
        return run_checked(
            "setup",
            Command::new("systemctl").args(["disable", "--now", &format!("{service}.service")]),
        );
    }
    let init_script = format!("/etc/init.d/{service}");
    if std::path::Path::new(&init_script).exists() {
        run_checked("setup", Command::new(&init_script).arg("stop"))?;
        run_checked(
            "setup",
            Command::new("update-rc.d").args([service, "disable"]),
        )?;
    }
    Ok(())
}

/// The Python readers the export tests check Perfetto and Parquet files with, in a virtual
/// environment of their own (target/py-readers), pinned by userspace/tests/readers/requirements.txt.
fn py_readers() -> anyhow::Result<()> {
    let root = workspace_root();
    let venv = root.join("target/py-readers");
    let python = venv.join("bin/python");
    let requirements = root.join("userspace/tests/readers/requirements.txt");
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        heading(
            "setup",
            "Python export readers (perfetto, pyarrow, duckdb): present",
        );
        return Ok(());
    }
    heading(
        "setup",
        "Python export readers: installing perfetto, protobuf, pyarrow and duckdb from PyPI into target/py-readers",
    );
    run_checked(
        "setup",
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
    )
    .context("python3 -m venv failed (on Debian: apt-get install python3-venv)")?;
    run_checked(
        "setup",
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    output_of("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|status| status.contains("install ok installed"))
}

fn bpf_linker() -> anyhow::Result<()> {
    if let Some(version) = output_of("bpf-linker", &["--version"]) {
        let version = version.trim();
        if version.contains(&format!(" {BPF_LINKER_VERSION}.")) {
            heading("setup", &format!("bpf-linker: present ({version})"));
            return Ok(());
        }
        heading(
            "setup",
            &format!("bpf-linker: {version} found, want {BPF_LINKER_VERSION}.x: reinstalling"),
        );
    } else {
        heading(
            "setup",
            "bpf-linker: installing from crates.io against LLVM 22 (about a minute)",
        );
    }
    let path = std::env::var("PATH").unwrap_or_default();
    run_checked(
        "setup",
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                &format!("^{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", format!("{LLVM_PREFIX}/bin:{path}")),
    )
    .context("building bpf-linker failed; is llvm-22-dev installed (see above)?")
}
