//! The guest's initramfs: busybox, /init and the scenarios, a static bufscope, dmsetup and
//! veritysetup with their libraries, the dm modules with their dependencies in load order, and
//! the test module (fixture.rs) in /fixtures.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, ensure};

use super::{
    PROBE_COST, SCENARIOS,
    fixture::{MODULE_FILE, build_hotspot_module},
    kernels::{KernelLine, is_builtin, module_bytes, modules_dir},
};
use crate::cmd::{output_of, run_checked};

/// Shell functions every scenario sources.
const SCENARIO_LIB: &str = include_str!("../../vm/lib.sh");

const INIT: &str = include_str!("../../vm/init.sh");

/// Modules the scenarios use; their dependencies are added from each module's .modinfo, and
/// those a kernel has built in (modules.builtin) are skipped. virtio_pci is the transport of the
/// results disk: built into 6.12, a module in 6.1, and no module names it as a dependency.
const MODULES: &[&str] = &[
    "loop",
    "virtio_pci",
    "virtio_blk",
    "dm-thin-pool",
    "dm-verity",
];

/// The initramfs: busybox, /init, the scenarios, bufscope, dmsetup with its libraries, modules.
pub fn build_initramfs(
    work: &Path,
    line: &KernelLine,
    extracted: &Path,
    bufscope: &Path,
) -> anyhow::Result<PathBuf> {
    let root = work.join(format!("initramfs-{}", line.name));
    let _ = fs::remove_dir_all(&root);
    for dir in ["bin", "sbin", "modules", "scenarios", "results", "etc"] {
        fs::create_dir_all(root.join(dir))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("busybox is missing: run `cargo xtask setup` (busybox-static)")?;
    copy_executable(busybox, &root.join("bin/busybox"))?;
    copy_executable(bufscope, &root.join("bin/bufscope"))?;
    fs::write(root.join("init"), INIT)?;
    set_executable(&root.join("init"))?;
    for (name, script) in SCENARIOS.iter().chain([&PROBE_COST]) {
        fs::write(root.join("scenarios").join(format!("{name}.sh")), script)?;
    }
    fs::write(root.join("scenarios/lib.sh"), SCENARIO_LIB)?;
    // dmsetup builds the devices; veritysetup only formats verity hash images.
    for tool in ["dmsetup", "veritysetup"] {
        let path = Path::new("/sbin").join(tool);
        ensure!(path.exists(), "{tool} is missing: run `cargo xtask setup`");
        copy_executable(&path, &root.join("sbin").join(tool))?;
        copy_libraries(&path, &root)?;
    }

    let modules_dir = modules_dir(extracted);
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for module in MODULES {
        add_module(
            &modules_dir,
            module,
            &root.join("modules"),
            &mut done,
            &mut order,
        )?;
    }
    fs::write(root.join("modules/order"), order.join("\n") + "\n")?;
    // Test modules, loaded by the scenarios that use them (not by /init).
    fs::create_dir_all(root.join("fixtures"))?;
    if line.no_module.is_none() {
        let fixture = build_hotspot_module(work, extracted)?;
        fs::copy(&fixture, root.join("fixtures").join(MODULE_FILE))?;
    }

    let image = work.join(format!("initramfs-{}.cpio.gz", line.name));
    let script = format!(
        "cd '{}' && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        root.display(),
        image.display()
    );
    run_checked("vm-test", Command::new("sh").args(["-c", &script]))?;
    Ok(image)
}

/// Writes `name` and its dependencies into `out`, dependencies first; returns the load order.
fn add_module(
    modules_dir: &Path,
    name: &str,
    out: &Path,
    done: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> anyhow::Result<()> {
    if !done.insert(name.to_string()) || is_builtin(modules_dir, name) {
        return Ok(());
    }
    let bytes = module_bytes(modules_dir, name)?;
    for dependency in module_depends(&bytes) {
        add_module(modules_dir, &dependency, out, done, order)?;
    }
    fs::write(out.join(format!("{name}.ko")), bytes)?;
    order.push(name.to_string());
    Ok(())
}

/// The `depends=` entry of a module's .modinfo section.
fn module_depends(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn copy_executable(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    set_executable(to)
}

fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Copies the shared libraries `ldd` names for `binary` (and the dynamic loader) into `root`.
fn copy_libraries(binary: &Path, root: &Path) -> anyhow::Result<()> {
    let listing = output_of("ldd", &[&binary.to_string_lossy()])
        .with_context(|| format!("ldd {} failed", binary.display()))?;
    for line in listing.lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(Path::new);
        if let Some(path) = path {
            let to = root.join(path.strip_prefix("/")?);
            fs::create_dir_all(to.parent().context("a library path has a parent")?)?;
            fs::copy(path, &to).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_dependencies_come_from_modinfo() {
        let modinfo = b"\0license=GPL\0depends=dm-mod,dm-bufio,reed_solomon\0vermagic=6.12\0";
        assert_eq!(
            module_depends(modinfo),
            ["dm-mod", "dm-bufio", "reed_solomon"]
        );
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"no modinfo here").is_empty());
    }
}
