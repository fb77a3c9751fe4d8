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
    search: &'static str,
    fallback: &'static str,
}

pub const KERNELS: &[KernelLine] = &[
    KernelLine {
        name: "6.1",
        search: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
        fallback: "linux-image-6.1.0-56-cloud-amd64-unsigned",
    },
    KernelLine {
        name: "6.12",
        search: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
        fallback: "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
    },
];

/// Downloads (once) and extracts (once) the newest package of a kernel line.
pub fn fetch_kernel(work: &Path, kernel: &KernelLine) -> anyhow::Result<PathBuf> {
    let package = output_of("apt-cache", &["search", "--names-only", kernel.search])
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
    if extracted.join("boot").is_dir() {
        heading(
            "vm-test",
            &format!("kernel {}: {package} (cached)", kernel.name),
        );
        return Ok(extracted);
    }
    let debs = work.join("debs");
    fs::create_dir_all(&debs)?;
    heading(
        "vm-test",
        &format!("kernel {}: downloading {package}", kernel.name),
    );
    run_checked(
        "vm-test",
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&debs),
    )
    .context("apt-get download failed; is `apt-get update` done (cargo xtask setup does it)?")?;
    let deb = fs::read_dir(&debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| {
            format!(
                "the downloaded .deb of {package} is not in {}",
                debs.display()
            )
        })?;
    // Package names are full of dots: append to the name rather than set an extension.
    let partial = work.join("kernels").join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    run_checked(
        "vm-test",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial),
    )?;
    fs::rename(&partial, &extracted)?;
    Ok(extracted)
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

/// The kernel image of an extracted package.
pub fn vmlinuz(extracted: &Path) -> anyhow::Result<PathBuf> {
    find_file(&extracted.join("boot"), &|n| n.starts_with("vmlinuz-"))
        .context("no vmlinuz in the kernel package")
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
