//! The test bed's kernel-module fixture, xtask/vm/bufio-hotspot/ (the dm-bufio hotspot
//! experiment, self-timed), built for each booted kernel against that kernel's own Debian
//! headers: `linux-headers-<release>`, its `-common` half and `linux-kbuild-*`, at the image's
//! exact package version, downloaded into target/vm/debs and extracted once under
//! target/vm/headers/<release>. Nothing is installed on the host: the headers' Makefile, which
//! includes the common half by its absolute /usr/src path, is pointed at the extracted copy.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail, ensure};

use super::kernels::downloaded_deb;
use crate::cmd::{heading, output_of, run_checked};

const SOURCE: &str = include_str!("../../vm/bufio-hotspot/bufio_hotspot.c");
const KBUILD: &str = include_str!("../../vm/bufio-hotspot/Kbuild");
/// The module file the scenario loads, and its name in the initramfs' /fixtures.
pub const MODULE_FILE: &str = "bufio_hotspot.ko";

/// Builds the fixture for the kernel extracted at `extracted` (a `linux-image-*` package
/// fetched by `kernels::fetch_kernel`); returns the .ko.
pub fn build_hotspot_module(work: &Path, extracted: &Path) -> anyhow::Result<PathBuf> {
    let release = release_of(extracted)?;
    let headers = fetch_headers(work, extracted, &release)?;
    let dir = work.join("fixtures").join(&release);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("bufio_hotspot.c"), SOURCE)?;
    fs::write(dir.join("Kbuild"), KBUILD)?;
    heading(
        "vm-test",
        &format!("building the bufio-hotspot module for {release}"),
    );
    run_checked(
        "vm-test",
        Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(headers.join(format!("usr/src/linux-headers-{release}")))
            .arg(format!("M={}", dir.display()))
            // The fixture needs no BTF of its own, and pahole is not one of the bed's tools.
            .arg("CONFIG_DEBUG_INFO_BTF_MODULES=")
            .arg("modules"),
    )
    .context(
        "building the test module failed (make and gcc-12 come with `cargo xtask setup`; \
         the compiler messages are above)",
    )?;
    let ko = dir.join(MODULE_FILE);
    ensure!(ko.is_file(), "make succeeded but left no {}", ko.display());
    Ok(ko)
}

/// The kernel release of an extracted image package: the one directory in lib/modules.
fn release_of(extracted: &Path) -> anyhow::Result<String> {
    let modules = super::kernels::modules_dir(extracted);
    let mut releases: Vec<String> = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => bail!("{} holds {n} kernel releases, want one", modules.display()),
    }
}

/// The version of the image package whose .deb `fetch_kernel` downloaded.
fn image_version(work: &Path, extracted: &Path) -> anyhow::Result<String> {
    let package = extracted
        .file_name()
        .context("an extracted kernel without a name")?
        .to_string_lossy()
        .into_owned();
    Ok(downloaded_deb(&work.join("debs"), &package, None)?.1)
}

/// The three header packages of `release` at the image's version, extracted once; returns the
/// root they were extracted into.
fn fetch_headers(work: &Path, extracted: &Path, release: &str) -> anyhow::Result<PathBuf> {
    let root = work.join("headers").join(release);
    let makefile = root.join(format!("usr/src/linux-headers-{release}/Makefile"));
    if root.join(".complete").is_file() {
        heading("vm-test", &format!("headers of {release} (cached)"));
        return Ok(root);
    }
    let version = image_version(work, extracted)?;
    let headers = format!("linux-headers-{release}");
    let show =
        output_of("apt-cache", &["show", &format!("{headers}={version}")]).with_context(|| {
            format!(
                "apt-cache knows no {headers} at version {version} (the image's); \
                 is `apt-get update` done (cargo xtask setup does it)?"
            )
        })?;
    let packages = header_packages(&headers, &show)
        .with_context(|| format!("{headers} {version} names no -common or linux-kbuild package"))?;
    let debs = work.join("debs");
    fs::create_dir_all(&debs)?;
    heading(
        "vm-test",
        &format!("headers of {release}: downloading {}", packages.join(", ")),
    );
    let mut download = Command::new("apt-get");
    download.args(["download", "-q"]).current_dir(&debs);
    for package in &packages {
        download.arg(format!("{package}={version}"));
    }
    run_checked("vm-test", &mut download)
        .context("apt-get download of the kernel headers failed")?;

    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    for package in &packages {
        let (deb, _) = downloaded_deb(&debs, package, Some(&version))?;
        run_checked(
            "vm-test",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        )?;
    }
    let text = fs::read_to_string(&makefile)
        .with_context(|| format!("{} missing after extraction", makefile.display()))?;
    let rerooted = reroot_makefile(&text, &root)
        .with_context(|| format!("{} includes no /usr/src Makefile", makefile.display()))?;
    fs::write(&makefile, rerooted)?;
    fs::write(root.join(".complete"), "")?;
    Ok(root)
}

/// From `apt-cache show linux-headers-<release>`: that package and the ones it depends on for
/// building modules (the `-common` headers and `linux-kbuild-*`).
fn header_packages(headers: &str, show: &str) -> Option<Vec<String>> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends: "))?;
    let mut packages = vec![headers.to_string()];
    for alternative in depends.split(',') {
        let name = alternative.split_whitespace().next()?;
        if (name.starts_with("linux-headers-") && name.ends_with("-common"))
            || name.starts_with("linux-kbuild-")
        {
            packages.push(name.to_string());
        }
    }
    (packages.len() == 3).then_some(packages)
}

/// Debian's per-flavour Makefile is one `include /usr/src/<common>/Makefile` line; point it at
/// the extracted tree.
fn reroot_makefile(text: &str, root: &Path) -> Option<String> {
    text.contains("include /usr/src/").then(|| {
        text.replace(
            "include /usr/src/",
            &format!("include {}/usr/src/", root.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_depends_name_common_and_kbuild() {
        let show = "Package: linux-headers-6.12.117+deb12-cloud-amd64\n\
            Version: 6.12.117-1~deb12u1\n\
            Depends: linux-base (>= 4.12~), linux-headers-6.12.117+deb12-common (= 6.12.117-1~deb12u1), \
            linux-image-6.12.117+deb12-cloud-amd64 (= 6.12.117-1~deb12u1) | \
            linux-image-6.12.117+deb12-cloud-amd64-unsigned (= 6.12.117-1~deb12u1), \
            linux-kbuild-6.12.117+deb12, gcc-12\n";
        assert_eq!(
            header_packages("linux-headers-6.12.117+deb12-cloud-amd64", show).unwrap(),
            [
                "linux-headers-6.12.117+deb12-cloud-amd64",
                "linux-headers-6.12.117+deb12-common",
                "linux-kbuild-6.12.117+deb12",
            ]
        );
        assert!(header_packages("linux-headers-x", "Depends: gcc-12\n").is_none());
    }

    #[test]
    fn the_makefile_includes_the_extracted_common_tree() {
        let text = "include /usr/src/linux-headers-6.1.0-56-common/Makefile\n";
        assert_eq!(
            reroot_makefile(text, Path::new("/w/headers/6.1.0-56-cloud-amd64")).unwrap(),
            "include /w/headers/6.1.0-56-cloud-amd64/usr/src/linux-headers-6.1.0-56-common/Makefile\n"
        );
        assert!(reroot_makefile("all:\n", Path::new("/w")).is_none());
    }
}
