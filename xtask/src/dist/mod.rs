//! `cargo xtask dist`: bufscope as users install it. A static x86_64 binary (eBPF object inside)
//! with man pages, bash/zsh/fish completions, README, copyright and samples, as a .deb and a
//! tarball under target/dist/; [`check`] installs the .deb into a scratch root and uses it.

mod check;
mod copyright;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, bail, ensure};

use crate::cmd::{describe, heading, output_of, run_checked, workspace_root};

pub use check::check;

/// The static binary's Rust target: the gnu one with glibc linked in (`+crt-static`), since no
/// musl target is installed on these machines and rustup's downloads are not to be relied on.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The control file's fields beside the name, version (the binary's) and architecture.
const MAINTAINER: &str = "bufscope developers <dev@bufscope.invalid>";
const SECTION: &str = "devel";
const SYNOPSIS: &str = "lock contention in the Linux dm-bufio buffer cache, live and recorded";
const DESCRIPTION: &[&str] = &[
    "bufscope records who waited on which kernel lock, for how long, from which kernel stack",
    "and inside which dm-bufio operation (eBPF on the lock contention tracepoints and on",
    "dm-bufio's functions), shows it live in a terminal UI, writes it to trace files and",
    "summarises them, and replays dm-bufio operation traces through models of the kernel's",
    "cache designs (the single-mutex one before 6.4, the sharded one since).",
    "",
    "A static binary: the eBPF programs are inside it. Recording needs root.",
];

/// Where each file goes below the prefix: /usr in the .deb, the top directory in the tarball.
const BINARY: &str = "bin/bufscope";
const MAN_DIR: &str = "share/man/man1";
const DOC_DIR: &str = "share/doc/bufscope";
const SAMPLES_DIR: &str = "share/bufscope/samples";
/// (shell, completion script): Debian's standard places, which the shells read without setup.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "share/bash-completion/completions/bufscope"),
    ("zsh", "share/zsh/vendor-completions/_bufscope"),
    ("fish", "share/fish/vendor_completions.d/bufscope.fish"),
];

/// What `cargo xtask dist` made.
#[derive(Debug)]
pub struct Packages {
    /// The version in the package names: the one the binary reports.
    pub version: String,
    pub binary: PathBuf,
    pub deb: PathBuf,
    pub tarball: PathBuf,
}

/// The release binary built static, with the eBPF object inside: what dist packages and the VM
/// test bed boots (one target directory, so `cargo xtask test` builds it once for both).
pub fn build_static_bufscope(task: &str) -> anyhow::Result<PathBuf> {
    let target_dir = workspace_root().join("target/static");
    run_checked(
        task,
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--locked",
                "--package",
                "bufscope",
                "--target",
                TARGET,
                "--target-dir",
            ])
            .arg(&target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    Ok(target_dir.join(TARGET).join("release/bufscope"))
}

/// Builds the binary, stages its files and packs them: target/dist/bufscope_VERSION_amd64.deb
/// and target/dist/bufscope-VERSION-x86_64-linux.tar.gz.
pub fn run() -> anyhow::Result<Packages> {
    let started = Instant::now();
    let out = workspace_root().join("target/dist");
    fs::create_dir_all(&out)?;

    heading(
        "dist",
        "1/6 static bufscope: release build for x86_64, glibc linked in, eBPF object inside",
    );
    let binary = build_static_bufscope("dist")?;
    ensure!(
        !needs_interpreter(&binary)?,
        "{} is dynamically linked although it was built with +crt-static",
        binary.display()
    );
    let version = version_of(&binary)?;

    let stage = out.join(format!("bufscope_{version}_amd64"));
    heading(
        "dist",
        &format!(
            "2/6 staging bufscope {version}: binary, README, copyright, samples in {}",
            stage.display()
        ),
    );
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let usr = stage.join("usr");
    copy_file(&binary, &usr.join(BINARY))?;
    let root = workspace_root();
    copy_file(
        &root.join("README.md"),
        &usr.join(DOC_DIR).join("README.md"),
    )?;
    write_file(
        &usr.join(DOC_DIR).join("copyright"),
        copyright::render(&copyright::Sources::read()?)?.as_bytes(),
    )?;
    let samples = root.join("samples");
    for entry in fs::read_dir(&samples).with_context(|| format!("{}", samples.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let name = path.file_name().context("a file has a name")?;
            copy_file(&path, &usr.join(SAMPLES_DIR).join(name))?;
        }
    }

    heading(
        "dist",
        "3/6 man pages from the clap definitions: `bufscope man`, gzipped",
    );
    let man_dir = usr.join(MAN_DIR);
    let mut man = Command::new(&binary);
    man.arg("man").arg(&man_dir);
    // The pages' date: the last commit's, so that the same sources make the same pages.
    let root_str = root.to_string_lossy();
    if let Some(date) = output_of("git", &["-C", &root_str, "log", "-1", "--format=%cs"]) {
        man.args(["--date", date.trim()]);
    }
    let listing = output_checked(&mut man)?;
    let pages: Vec<&str> = listing.lines().collect();
    ensure!(
        !pages.is_empty(),
        "`bufscope man` wrote no page into {}",
        man_dir.display()
    );
    run_checked("dist", Command::new("gzip").arg("-9n").args(&pages))?;

    heading(
        "dist",
        "4/6 shell completions: `bufscope completions bash|zsh|fish`",
    );
    for (shell, path) in COMPLETIONS {
        let script = output_checked(Command::new(&binary).args(["completions", shell]))?;
        write_file(&usr.join(path), script.as_bytes())?;
    }

    let deb = out.join(format!("bufscope_{version}_amd64.deb"));
    heading(
        "dist",
        &format!(
            "5/6 Debian package: control file, dpkg-deb --build → {}",
            deb.display()
        ),
    );
    let control = control_file(&version, installed_kib(&usr)?);
    write_file(&stage.join("DEBIAN/control"), control.as_bytes())?;
    normalise_modes(&stage, &usr.join(BINARY))?;
    run_checked(
        "dist",
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;

    let top = format!("bufscope-{version}-x86_64-linux");
    let tarball = out.join(format!("{top}.tar.gz"));
    heading(
        "dist",
        &format!(
            "6/6 tarball: the same files under {top}/ → {}",
            tarball.display()
        ),
    );
    run_checked(
        "dist",
        Command::new("tar")
            .args([
                "--create",
                "--gzip",
                "--sort=name",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
            ])
            .arg(format!("--transform=s,^usr,{top},"))
            .arg("--file")
            .arg(&tarball)
            .arg("--directory")
            .arg(&stage)
            .arg("usr"),
    )?;

    heading(
        "dist",
        &format!("done in {:.0}s", started.elapsed().as_secs_f64()),
    );
    for path in [&binary, &deb, &tarball] {
        println!(
            "{:>9}  {}",
            human_size(fs::metadata(path)?.len()),
            path.display()
        );
    }
    Ok(Packages {
        version,
        binary,
        deb,
        tarball,
    })
}

/// DEBIAN/control. A static binary needs no Depends.
fn control_file(version: &str, installed_kib: u64) -> String {
    let mut control = format!(
        "Package: bufscope\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Section: {SECTION}\n\
         Priority: optional\n\
         Description: {SYNOPSIS}\n"
    );
    for line in DESCRIPTION {
        // Extended description: every line indented by one space, an empty line as " .".
        let line = if line.is_empty() { "." } else { line };
        control.push_str(&format!(" {line}\n"));
    }
    control
}

/// "bufscope 0.1.0" from `bufscope --version` → "0.1.0".
fn version_of(binary: &Path) -> anyhow::Result<String> {
    let out = output_checked(Command::new(binary).arg("--version"))?;
    parse_version(&out).with_context(|| {
        format!(
            "`{} --version` printed {out:?}, not `bufscope VERSION`",
            binary.display()
        )
    })
}

fn parse_version(line: &str) -> Option<String> {
    let version = line.trim().strip_prefix("bufscope ")?;
    let debian_safe = !version.is_empty()
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c));
    debian_safe.then(|| version.to_string())
}

/// True when the ELF file asks for a dynamic loader (a PT_INTERP program header): a static
/// binary, static-pie included, has none.
pub fn needs_interpreter(binary: &Path) -> anyhow::Result<bool> {
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    elf_has_interpreter(&bytes)
        .with_context(|| format!("{} is not a 64-bit ELF file", binary.display()))
}

fn elf_has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    let field = |at: usize, len: usize| elf.get(at..at + len);
    // 64-bit, little-endian.
    if field(0, 4)? != b"\x7fELF" || elf.get(4)? != &2 || elf.get(5)? != &1 {
        return None;
    }
    let phoff = u64::from_le_bytes(field(0x20, 8)?.try_into().ok()?) as usize;
    let phentsize = u16::from_le_bytes(field(0x36, 2)?.try_into().ok()?) as usize;
    let phnum = u16::from_le_bytes(field(0x38, 2)?.try_into().ok()?) as usize;
    let mut interp = false;
    for i in 0..phnum {
        let p_type = u32::from_le_bytes(field(phoff + i * phentsize, 4)?.try_into().ok()?);
        interp |= p_type == PT_INTERP;
    }
    Some(interp)
}

/// Runs a command and returns its stdout; fails with the command line, status and stderr.
fn output_checked(cmd: &mut Command) -> anyhow::Result<String> {
    let line = describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed something not UTF-8"))
}

fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Directories 0755, files 0644, `executable` 0755: what a package installs, whatever the umask.
fn normalise_modes(dir: &Path, executable: &Path) -> anyhow::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            normalise_modes(&path, executable)?;
        } else {
            let mode = if path == executable { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
        }
    }
    Ok(())
}

/// Installed-Size: the staged files' sizes in KiB, each rounded up, as dpkg counts them.
fn installed_kib(dir: &Path) -> anyhow::Result<u64> {
    let mut kib = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        kib += if meta.is_dir() {
            installed_kib(&entry.path())?
        } else {
            meta.len().div_ceil(1024)
        };
    }
    Ok(kib)
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_file_has_the_fields_dpkg_wants_and_a_folded_description() {
        let control = control_file("1.2.3", 4096);
        for field in [
            "Package: bufscope\n",
            "Version: 1.2.3\n",
            "Architecture: amd64\n",
            "Installed-Size: 4096\n",
            "Section: devel\n",
            "Priority: optional\n",
        ] {
            assert!(control.contains(field), "{field:?} missing: {control}");
        }
        assert!(!control.contains("Depends:"), "{control}");
        let description = control.split_once("Description: ").unwrap().1;
        let mut lines = description.lines();
        assert!(lines.next().unwrap().len() < 80);
        assert!(
            lines.all(|l| l.starts_with(' ') && l.len() <= 91 && l != " "),
            "{description}"
        );
        assert!(description.contains("\n .\n"), "{description}");
    }

    #[test]
    fn version_comes_from_the_binary_and_must_suit_debian() {
        assert_eq!(parse_version("bufscope 0.1.0\n").as_deref(), Some("0.1.0"));
        assert_eq!(
            parse_version("bufscope 1.0.0-rc.1").as_deref(),
            Some("1.0.0-rc.1")
        );
        assert_eq!(parse_version("other 0.1.0"), None);
        assert_eq!(parse_version("bufscope "), None);
        assert_eq!(parse_version("bufscope 0.1 beta"), None);
    }

    #[test]
    fn a_dynamic_executable_asks_for_an_interpreter_and_garbage_is_refused() {
        // This test binary is linked dynamically, as cargo builds tests by default.
        let me = std::env::current_exe().unwrap();
        assert!(needs_interpreter(&me).unwrap());
        assert_eq!(elf_has_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(elf_has_interpreter(b"\x7fELF\x02\x01"), None);
    }
}
