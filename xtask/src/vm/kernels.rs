//! The Debian cloud kernels the test bed boots: which package each kernel line takes, its
//! download and extraction under target/vm/, and finding files (vmlinuz, modules) inside it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, ensure};

use crate::cmd::{heading, output_of, run_checked};

/// A kernel line the test bed boots: its name, how to find the newest package, and a fallback.
pub struct KernelLine {
    pub name: &'static str,
    /// The package with the kernel image, as a regex for `apt-cache search --names-only`.
    search: &'static str,
    fallback: &'static str,
    /// What comes before and after the kernel release in that package's name.
    affixes: (&'static str, &'static str),
    /// The other packages the kernel comes in, `{release}` standing for its release (trixie
    /// splits image, modules and the base files that list built-in modules).
    companions: &'static [&'static str],
    /// A sources.list line for a suite the host does not use, consulted only for this line's
    /// downloads (its own lists and cache under target/vm/apt/), never installed from.
    apt_source: Option<&'static str>,
    /// Why the test module (fixture.rs) cannot be built for this kernel on this host, if not.
    pub no_module: Option<&'static str>,
    /// The kernel may preempt a BPF program (full or lazy preemption): a thread preempted inside
    /// one makes the kernel skip that program for the next thread on the CPU (a recursion miss),
    /// so the test bed's oversubscribed vCPUs lose a few operations, each one counted.
    pub preemptible_bpf: bool,
}

pub const KERNELS: &[KernelLine] = &[
    KernelLine {
        name: "6.1",
        search: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        fallback: "linux-image-6.1.0-56-cloud-amd64-unsigned",
        affixes: ("linux-image-", "-unsigned"),
        companions: &[],
        apt_source: None,
        no_module: None,
        // PREEMPT_VOLUNTARY.
        preemptible_bpf: false,
    },
    KernelLine {
        name: "6.12",
        search: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
        fallback: "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
        affixes: ("linux-image-", "-unsigned"),
        companions: &[],
        apt_source: None,
        no_module: None,
        // PREEMPT_VOLUNTARY.
        preemptible_bpf: false,
    },
    // The newest kernel users run: Debian trixie-backports.
    KernelLine {
        name: "7.3",
        search: r"^linux-binary-unsigned-7\.3\.[0-9]+\+deb13-cloud-amd64$",
        fallback: "linux-binary-unsigned-7.3.4+deb13-cloud-amd64",
        affixes: ("linux-binary-unsigned-", ""),
        companions: &["linux-modules-{release}", "linux-base-{release}"],
        apt_source: Some(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian trixie-backports main",
        ),
        // Measured 2026-11-28: its headers' Makefile wants gcc-14 (gcc-12 refuses
        // -fmin-function-alignment), and its objtool needs glibc 2.38; bookworm has gcc-12 and
        // glibc 2.36.
        no_module: Some(
            "not built here: Debian's 7.3 headers need gcc-14 and a glibc 2.38 objtool; this \
             host (bookworm) has gcc-12 and glibc 2.36",
        ),
        // PREEMPT_LAZY: measured 2026-11-28, thin-hotspot lost 2.7 % of dm_bufio_get's calls
        // to skipped runs (each counted), 6.1 and 6.12 (PREEMPT_VOLUNTARY) none.
        preemptible_bpf: true,
    },
];

impl KernelLine {
    /// The kernel release in a package name of this line.
    fn release_of<'a>(&self, package: &'a str) -> Option<&'a str> {
        package
            .strip_prefix(self.affixes.0)?
            .strip_suffix(self.affixes.1)
    }
}

/// apt as one kernel line uses it: the host's sources, or its own list for its own suite.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    /// For a line with its own source: a sources.list, lists and cache under target/vm/apt/NAME,
    /// updated now.
    fn for_line(work: &Path, kernel: &KernelLine) -> anyhow::Result<Self> {
        let Some(source) = kernel.apt_source else {
            return Ok(Self {
                options: Vec::new(),
            });
        };
        let dir = work.join("apt").join(kernel.name);
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        fs::write(dir.join("sources.list"), format!("{source}\n"))?;
        let d = |sub: &str| dir.join(sub).display().to_string();
        let apt = Self {
            options: vec![
                format!("Dir::Etc::SourceList={}", d("sources.list")),
                "Dir::Etc::SourceParts=/dev/null".into(),
                format!("Dir::State::Lists={}", d("lists")),
                format!("Dir::Cache={}", d("cache")),
                // Nothing is installed from it: no dpkg status to consult.
                "Dir::State::Status=/dev/null".into(),
            ],
        };
        let mut update = apt.command("apt-get");
        update.args(["update", "-q"]);
        if let Err(e) = run_checked("vm-test", &mut update) {
            heading(
                "vm-test",
                &format!("updating {source} failed ({e}); using what was fetched before"),
            );
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        for option in &self.options {
            command.args(["-o", option]);
        }
        command
    }

    fn search(&self, regex: &str) -> Option<String> {
        let mut args: Vec<&str> = Vec::new();
        for option in &self.options {
            args.extend(["-o", option]);
        }
        args.extend(["search", "--names-only", regex]);
        output_of("apt-cache", &args)
    }
}

/// Downloads (once) and extracts (once) the newest package of a kernel line, and its companions,
/// into one directory.
pub fn fetch_kernel(work: &Path, kernel: &KernelLine) -> anyhow::Result<PathBuf> {
    let apt = Apt::for_line(work, kernel)?;
    let package = apt
        .search(kernel.search)
        .and_then(|listing| {
            let mut names: Vec<String> = listing
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .collect();
            names.sort_by(|a, b| version_order(a, b));
            names.pop()
        })
        .unwrap_or_else(|| {
            heading(
                "vm-test",
                &format!(
                    "apt-cache found no {}: using {}",
                    kernel.search, kernel.fallback
                ),
            );
            kernel.fallback.to_string()
        });
    let extracted = work.join("kernels").join(&package);
    // `boot`: what extractions made before the marker existed have.
    if extracted.join(".complete").is_file() || extracted.join("boot").is_dir() {
        heading(
            "vm-test",
            &format!("kernel {}: {package} (cached)", kernel.name),
        );
        return Ok(extracted);
    }
    let release = kernel
        .release_of(&package)
        .with_context(|| format!("{package} does not name a {} kernel release", kernel.name))?;
    let mut packages = vec![package.clone()];
    packages.extend(
        kernel
            .companions
            .iter()
            .map(|c| c.replace("{release}", release)),
    );
    let debs = work.join("debs");
    fs::create_dir_all(&debs)?;
    heading(
        "vm-test",
        &format!(
            "kernel {}: downloading {}",
            kernel.name,
            packages.join(", ")
        ),
    );
    let mut download = apt.command("apt-get");
    download
        .args(["download", "-q"])
        .args(&packages)
        .current_dir(&debs);
    run_checked("vm-test", &mut download).context(
        "apt-get download failed; is `apt-get update` done (cargo xtask setup does it)?",
    )?;
    // Package names are full of dots: append to the name rather than set an extension.
    let partial = work.join("kernels").join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    for name in &packages {
        let (deb, _) = downloaded_deb(&debs, name, None)?;
        run_checked(
            "vm-test",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial),
        )?;
    }
    fs::write(partial.join(".complete"), "")?;
    fs::rename(&partial, &extracted)?;
    Ok(extracted)
}

/// A .deb that `apt-get download` left in `debs` (`<package>_<version>_<arch>.deb`), of
/// `version` if one is given: its path and version.
pub fn downloaded_deb(
    debs: &Path,
    package: &str,
    version: Option<&str>,
) -> anyhow::Result<(PathBuf, String)> {
    fs::read_dir(debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find_map(|path| {
            let found = deb_version(&path.file_name()?.to_string_lossy(), package)?;
            version.is_none_or(|v| v == found).then_some((path, found))
        })
        .with_context(|| {
            format!(
                "no downloaded .deb of {package}{} in {}",
                version.map(|v| format!(" {v}")).unwrap_or_default(),
                debs.display()
            )
        })
}

/// `<package>_<version>_<arch>.deb` → version (apt writes an epoch's colon as %3a).
fn deb_version(file: &str, package: &str) -> Option<String> {
    let rest = file.strip_prefix(package)?.strip_prefix('_')?;
    let (version, arch) = rest.strip_suffix(".deb")?.rsplit_once('_')?;
    (!version.is_empty() && !arch.is_empty()).then(|| version.replace("%3a", ":"))
}

/// Orders package names by their version numbers (`sort -V`).
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let numbers = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    numbers(a).cmp(&numbers(b))
}

/// The kernel image of an extracted package: boot/vmlinuz-* (bookworm), or
/// usr/lib/modules/RELEASE/vmlinuz* (trixie).
pub fn vmlinuz(extracted: &Path) -> anyhow::Result<PathBuf> {
    find_file(&extracted.join("boot"), &|n| n.starts_with("vmlinuz-"))
        .or_else(|| find_file(&modules_dir(extracted), &|n| n.starts_with("vmlinuz")))
        .context("no vmlinuz in the kernel package")
}

/// Where an extracted kernel keeps its modules: lib/modules, or usr/lib/modules in packages made
/// for a merged /usr (trixie).
pub fn modules_dir(extracted: &Path) -> PathBuf {
    let old = extracted.join("lib/modules");
    if old.is_dir() {
        old
    } else {
        extracted.join("usr/lib/modules")
    }
}

fn find_file(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, wanted) {
                return Some(found);
            }
        } else if path
            .file_name()
            .is_some_and(|n| wanted(&n.to_string_lossy()))
        {
            return Some(path);
        }
    }
    None
}

/// A module's file, decompressed; kernel module names treat '-' and '_' alike.
pub fn module_bytes(modules_dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let normal = |s: &str| s.replace('-', "_");
    let wanted = format!("{}.ko", normal(name));
    let path = find_file(modules_dir, &|file| {
        let file = normal(file);
        file == wanted || file == format!("{wanted}.xz")
    })
    .with_context(|| format!("module {name} is not in {}", modules_dir.display()))?;
    if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz").arg("-dc").arg(&path).output()?;
        ensure!(out.status.success(), "xz -dc {} failed", path.display());
        Ok(out.stdout)
    } else {
        Ok(fs::read(&path)?)
    }
}

/// True when the kernel has `name` built in (listed in modules.builtin).
pub fn is_builtin(modules_dir: &Path, name: &str) -> bool {
    let wanted = format!("{}.ko", name.replace('-', "_"));
    find_file(modules_dir, &|file| file == "modules.builtin")
        .and_then(|list| fs::read_to_string(list).ok())
        .is_some_and(|list| {
            list.lines().any(|line| {
                line.rsplit('/')
                    .next()
                    .is_some_and(|file| file.replace('-', "_") == wanted)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_file_names_give_their_version() {
        assert_eq!(
            deb_version(
                "linux-image-6.12.117+deb12-cloud-amd64-unsigned_6.12.117-1~deb12u1_amd64.deb",
                "linux-image-6.12.117+deb12-cloud-amd64-unsigned"
            )
            .as_deref(),
            Some("6.12.117-1~deb12u1")
        );
        assert_eq!(
            deb_version("linux-kbuild-6.1_6.1.192-2_amd64.deb", "linux-kbuild-6.1").as_deref(),
            Some("6.1.192-2")
        );
        // A longer package with the same prefix is not this one.
        assert_eq!(
            deb_version(
                "linux-headers-6.1.0-56-common_6.1.192-2_all.deb",
                "linux-headers-6.1.0-56"
            ),
            None
        );
    }

    #[test]
    fn every_line_names_its_release_in_its_fallback() {
        let releases: Vec<&str> = KERNELS
            .iter()
            .map(|k| k.release_of(k.fallback).unwrap())
            .collect();
        assert_eq!(
            releases,
            [
                "6.1.0-56-cloud-amd64",
                "6.12.117+deb12-cloud-amd64",
                "7.3.4+deb13-cloud-amd64"
            ]
        );
        assert_eq!(
            KERNELS[0].release_of("linux-headers-6.1.0-56-cloud-amd64"),
            None
        );
    }

    #[test]
    fn versions_sort_numerically() {
        let mut names = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.1.0-10-cloud-amd64-unsigned",
        ];
        names.sort_by(|a, b| version_order(a, b));
        assert_eq!(names[2], "linux-image-6.1.0-56-cloud-amd64-unsigned");
    }
}
