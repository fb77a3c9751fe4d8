//! `cargo xtask vm-test`: the real-kernel test bed. Boots Debian's cloud kernels (6.1: the
//! single-mutex dm-bufio; 6.12: the sharded one) under qemu with TCG (KVM does not work on these
//! machines), with a busybox initramfs holding a static bufscope, dmsetup and the dm modules, runs
//! a scenario inside, and checks what bufscope saw there.
//!
//! Downloads and extracted kernels are cached under target/vm/. The guest's /init is
//! xtask/vm/init.sh; each scenario is xtask/vm/<name>.sh. Results come back as a tar archive on
//! a second virtio disk.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use crate::cmd::{heading, output_of, run_checked, workspace_root};

/// A kernel line the test bed boots: its name, how to find the newest package, and a fallback.
struct KernelLine {
    name: &'static str,
    search: &'static str,
    fallback: &'static str,
}

const KERNELS: &[KernelLine] = &[
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

/// Scenarios, each a script in xtask/vm/.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("thin-hotspot", include_str!("../vm/thin-hotspot.sh")),
    ("small-cache", include_str!("../vm/small-cache.sh")),
    ("verity-read", include_str!("../vm/verity-read.sh")),
];

/// Shell functions every scenario sources.
const SCENARIO_LIB: &str = include_str!("../vm/lib.sh");

const INIT: &str = include_str!("../vm/init.sh");

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

/// How long one boot may take before it is killed as hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(kernel: &str, scenario: &str, keep: bool, save_samples: bool) -> anyhow::Result<()> {
    let kernels: Vec<&KernelLine> = KERNELS
        .iter()
        .filter(|k| kernel == "all" || k.name == kernel)
        .collect();
    ensure!(
        !kernels.is_empty(),
        "unknown --kernel {kernel}; known: 6.1, 6.12, all"
    );
    let scenarios: Vec<&(&str, &str)> = SCENARIOS
        .iter()
        .filter(|(name, _)| scenario == "all" || *name == scenario)
        .collect();
    ensure!(
        !scenarios.is_empty(),
        "unknown --scenario {scenario}; known: {}, all",
        SCENARIOS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let work = workspace_root().join("target/vm");
    fs::create_dir_all(&work)?;
    let bufscope = build_static_bufscope(&work)?;

    let mut rows = Vec::new();
    for kernel in kernels {
        let extracted = fetch_kernel(&work, kernel)?;
        let initramfs = build_initramfs(&work, kernel.name, &extracted, &bufscope)?;
        for (name, _) in &scenarios {
            let outcome = boot_retrying_tcg_int3(
                &work,
                kernel.name,
                &extracted,
                &initramfs,
                name,
                &bufscope,
                keep,
            )
            .with_context(|| format!("{} {name}", kernel.name))?;
            if save_samples {
                save_sample(&work, &outcome, &extracted)?;
            }
            rows.push(outcome);
        }
    }
    if save_samples {
        write_samples_readme()?;
    }
    println!();
    println!(
        "{:<6} {:<13} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  kernel release",
        "kernel",
        "scenario",
        "reads/s",
        "lock waits",
        "kp get",
        "kp read",
        "kp rel",
        "bufio ops",
        "mutex w",
        "tree w",
        "lost",
    );
    for r in &rows {
        println!(
            "{:<6} {:<13} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  {}",
            r.kernel,
            r.scenario,
            r.reads_per_sec,
            r.lock_waits,
            r.gets,
            r.reads,
            r.releases,
            r.bufio_ops,
            r.mutex_waits,
            r.tree_waits,
            r.returns_missed + r.ringbuf_full,
            r.release
        );
    }
    Ok(())
}

/// Largest sample kept in the repository (a 12 s recording with every dm-bufio operation of
/// the workload takes about 2 MB).
const MAX_SAMPLE_BYTES: u64 = 4 << 20;

/// Copies a run's recording to samples/KERNEL-SCENARIO.bftrace, with a note of how it was made.
fn save_sample(work: &Path, outcome: &Outcome, extracted: &Path) -> anyhow::Result<()> {
    let from = work
        .join(format!("run-{}-{}", outcome.kernel, outcome.scenario))
        .join("results")
        .join(format!("{}.bftrace", outcome.scenario));
    let size = fs::metadata(&from)?.len();
    ensure!(
        size <= MAX_SAMPLE_BYTES,
        "{} is {size} bytes, over the {MAX_SAMPLE_BYTES} a sample may take",
        from.display()
    );
    let package = extracted
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let samples = workspace_root().join("samples");
    fs::create_dir_all(&samples)?;
    let name = format!("{}-{}", outcome.kernel, outcome.scenario);
    fs::copy(&from, samples.join(format!("{name}.bftrace")))?;
    let note = format!(
        "kernel package: {package}\n\
         kernel release: {release}\n\
         scenario: {scenario} (xtask/vm/{scenario}.sh)\n\
         made by: cargo xtask vm-test --kernel {kernel} --scenario {scenario} --save-samples\n\
         workload driver: {rate} reads/s\n\
         lock waits recorded: {waits}\n\
         kprobe counts: dm_bufio_get {gets}, dm_bufio_read {reads}, dm_bufio_release {releases}\n\
         dm-bufio operations recorded: {ops}\n\
         waits named: client mutex {mutex}, tree locks {trees}\n\
         lost: {missed} operation returns, {full} events (ring buffer full)\n",
        ops = outcome.bufio_ops,
        mutex = outcome.mutex_waits,
        trees = outcome.tree_waits,
        missed = outcome.returns_missed,
        full = outcome.ringbuf_full,
        release = outcome.release,
        scenario = outcome.scenario,
        kernel = outcome.kernel,
        rate = outcome.reads_per_sec,
        waits = outcome.lock_waits,
        gets = outcome.gets,
        reads = outcome.reads,
        releases = outcome.releases,
    );
    fs::write(samples.join(format!("{name}.txt")), note)?;
    heading(
        "vm-test",
        &format!("saved samples/{name}.bftrace ({size} bytes)"),
    );
    Ok(())
}

/// Lists the samples in samples/README.md.
fn write_samples_readme() -> anyhow::Result<()> {
    let samples = workspace_root().join("samples");
    let mut traces: Vec<String> = fs::read_dir(&samples)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bftrace"))
        .collect();
    traces.sort();
    let mut readme = String::from(
        "# Sample traces\n\n\
         Recorded by bufscope inside real Debian kernels booted by the VM test bed\n\
         (`cargo xtask vm-test --save-samples` regenerates them), one per kernel and scenario, each\n\
         at most 4 MB: what demos and tests use on machines without dm-bufio. The `.txt` beside each\n\
         trace names the kernel package, the scenario and the command that made it, and what the run\n\
         counted.\n\n| trace | how it was made |\n|---|---|\n",
    );
    for trace in traces {
        let note = trace.replace(".bftrace", ".txt");
        readme.push_str(&format!("| `{trace}` | [{note}]({note}) |\n"));
    }
    fs::write(samples.join("README.md"), readme)?;
    Ok(())
}

/// What one boot measured.
struct Outcome {
    kernel: &'static str,
    scenario: String,
    release: String,
    lock_waits: u64,
    /// The workload driver's reads per second.
    reads_per_sec: u64,
    gets: u64,
    reads: u64,
    releases: u64,
    /// dm-bufio operations bufscope recorded, and lock waits it named as a client's mutex or
    /// tree locks.
    bufio_ops: u64,
    mutex_waits: u64,
    tree_waits: u64,
    /// Operations lost for want of a kretprobe instance, and events lost to a full ring buffer.
    returns_missed: u64,
    ringbuf_full: u64,
}

/// bufscope built static, for the initramfs (and usable on the host to read results back).
fn build_static_bufscope(work: &Path) -> anyhow::Result<PathBuf> {
    let target_dir = work.join("static");
    run_checked(
        "vm-test",
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--locked",
                "--package",
                "bufscope",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
            ])
            .arg(&target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release/bufscope"))
}

/// Downloads (once) and extracts (once) the newest package of a kernel line.
fn fetch_kernel(work: &Path, kernel: &KernelLine) -> anyhow::Result<PathBuf> {
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
fn module_bytes(modules_dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
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

/// True when the kernel has `name` built in (listed in modules.builtin).
fn is_builtin(modules_dir: &Path, name: &str) -> bool {
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

/// The initramfs: busybox, /init, the scenarios, bufscope, dmsetup with its libraries, modules.
fn build_initramfs(
    work: &Path,
    kernel: &str,
    extracted: &Path,
    bufscope: &Path,
) -> anyhow::Result<PathBuf> {
    let root = work.join(format!("initramfs-{kernel}"));
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
    for (name, script) in SCENARIOS {
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

    let modules_dir = extracted.join("lib/modules");
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

    let image = work.join(format!("initramfs-{kernel}.cpio.gz"));
    let script = format!(
        "cd '{}' && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
        root.display(),
        image.display()
    );
    run_checked("vm-test", Command::new("sh").args(["-c", &script]))?;
    Ok(image)
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

/// The guest died of an int3 Oops: under multi-threaded TCG a vCPU can run code another vCPU
/// is live-patching (static keys, kprobes and tracepoints arm through int3) from a stale
/// translation, a known hazard of TCG with cross-modifying code, not a kernel or bufscope fault.
#[derive(Debug)]
struct TcgInt3;

impl std::fmt::Display for TcgInt3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the guest died of an int3 Oops (TCG running half-patched kernel code)"
        )
    }
}

impl std::error::Error for TcgInt3 {}

/// Boots, and boots again (at most twice more) only when the guest died of [`TcgInt3`].
fn boot_retrying_tcg_int3(
    work: &Path,
    kernel: &'static str,
    extracted: &Path,
    initramfs: &Path,
    scenario: &str,
    bufscope: &Path,
    keep: bool,
) -> anyhow::Result<Outcome> {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        match boot(work, kernel, extracted, initramfs, scenario, bufscope, keep) {
            Err(e) if e.is::<TcgInt3>() && attempt < ATTEMPTS => heading(
                "vm-test",
                &format!("{kernel} {scenario}: {e}; booting again ({attempt}/{ATTEMPTS})"),
            ),
            result => return result,
        }
    }
    unreachable!("the last attempt returns")
}

/// Boots one kernel with one scenario and checks what came back.
fn boot(
    work: &Path,
    kernel: &'static str,
    extracted: &Path,
    initramfs: &Path,
    scenario: &str,
    bufscope: &Path,
    keep: bool,
) -> anyhow::Result<Outcome> {
    let vmlinuz = find_file(&extracted.join("boot"), &|n| n.starts_with("vmlinuz-"))
        .context("no vmlinuz in the kernel package")?;
    let run_dir = work.join(format!("run-{kernel}-{scenario}"));
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;
    let disk = run_dir.join("results.img");
    fs::File::create(&disk)?.set_len(64 << 20)?;

    heading(
        "vm-test",
        &format!("booting {kernel} for {scenario} (TCG, 2 vCPUs)"),
    );
    let mut qemu = Command::new("qemu-system-x86_64")
        // Multi-threaded TCG, so the two vCPUs really run in parallel and locks really contend
        // (single-threaded TCG hides most of 6.1's mutex contention). Its cost: see TcgInt3.
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 loglevel=5 bufscope.scenario={scenario}"
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    let (lines_tx, lines_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = fs::File::create(run_dir.join("console.log"))?;
    let started = Instant::now();
    let mut done_rc = None;
    let mut failures = Vec::new();
    let mut tcg_int3 = false;
    let mut release = String::new();
    loop {
        let left = BOOT_TIMEOUT.saturating_sub(started.elapsed());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                println!("[vm {kernel}] {line}");
                // Markers may follow the firmware's terminal escape codes on the same line.
                let after = |marker: &str| line.split_once(marker).map(|(_, rest)| rest);
                if let Some(rc) = after("BUFSCOPE-DONE rc=") {
                    done_rc = rc.trim().parse::<i32>().ok();
                }
                if let Some(start) = after("BUFSCOPE-START ") {
                    release = start
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("kernel="))
                        .unwrap_or_default()
                        .to_string();
                }
                tcg_int3 |= line.contains("Oops: int3");
                if line.contains("BUFSCOPE-FAIL") || line.contains("Kernel panic") {
                    failures.push(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = qemu.kill();
                bail!(
                    "{kernel} {scenario}: no end after {} s (hung?); console in {}",
                    BOOT_TIMEOUT.as_secs(),
                    run_dir.join("console.log").display()
                );
            }
        }
    }
    qemu.wait()?;
    heading(
        "vm-test",
        &format!(
            "{kernel} {scenario}: guest ran {:.0} s",
            started.elapsed().as_secs_f64()
        ),
    );
    if tcg_int3 {
        return Err(TcgInt3.into());
    }
    ensure!(
        failures.is_empty(),
        "{kernel} {scenario}: {}",
        failures.join("; ")
    );
    ensure!(
        done_rc == Some(0),
        "{kernel} {scenario}: the scenario failed (rc {done_rc:?}); console in {}",
        run_dir.join("console.log").display()
    );

    let results = run_dir.join("results");
    fs::create_dir_all(&results)?;
    run_checked(
        "vm-test",
        Command::new("tar")
            .arg("-xf")
            .arg(&disk)
            .arg("-C")
            .arg(&results),
    )?;
    let outcome = check_results(kernel, scenario, release, &results, bufscope)?;
    if !keep {
        let _ = fs::remove_file(&disk);
    }
    Ok(outcome)
}

/// What the guest wrote must show real dm-bufio traffic and a readable recording.
fn check_results(
    kernel: &'static str,
    scenario: &str,
    release: String,
    results: &Path,
    bufscope: &Path,
) -> anyhow::Result<Outcome> {
    let doctor: serde_json::Value = serde_json::from_slice(
        &fs::read(results.join("doctor.json")).context("doctor.json missing from the results")?,
    )?;
    let status = |name: &str| -> String {
        doctor["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["name"] == name))
            .and_then(|c| c["status"].as_str())
            .unwrap_or("absent")
            .to_string()
    };
    for check in [
        "kprobes",
        "dm-bufio",
        "lock probes attach",
        "dm-bufio probes",
    ] {
        ensure!(
            status(check) == "ok",
            "{kernel}: bufscope doctor in the guest says {check} is {}",
            status(check)
        );
    }

    let trace = results.join(format!("{scenario}.bftrace"));
    let info = Command::new(bufscope)
        .args(["info", "--json"])
        .arg(&trace)
        .output()?;
    ensure!(
        info.status.success(),
        "{kernel}: the guest's recording does not read back: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout)?;
    let lock_waits = info["lock_waits"].as_u64().unwrap_or(0);
    ensure!(lock_waits > 0, "{kernel}: the guest recorded no lock waits");

    let kprobes = fs::read_to_string(results.join("kprobes.txt"))?;
    let hits = |function: &str| -> u64 {
        kprobes
            .lines()
            // kprobe_profile names events without their group: "dm_bufio_get  HITS  MISSES".
            .find(|l| l.split_whitespace().next() == Some(function))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // dm-verity reads through dm_bufio_read_with_ioprio on kernels that have it (6.12).
    let (gets, reads, releases) = (
        hits("dm_bufio_get"),
        hits("dm_bufio_read") + hits("dm_bufio_read_with_ioprio"),
        hits("dm_bufio_release"),
    );
    ensure!(
        gets + reads > 0 && releases > 0,
        "{kernel}: no dm-bufio traffic counted (get {gets}, read {reads}, release {releases})"
    );
    let params = fs::read_to_string(results.join("dm_bufio.txt"))?;
    let param = |name: &str| -> u64 {
        params
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    if scenario == "small-cache" {
        let (max, current) = (
            param("max_cache_size_bytes "),
            param("current_allocated_bytes "),
        );
        ensure!(
            max == 64 << 10 && current <= 2 * max,
            "{kernel}: dm-bufio's cache was not held small (max {max}, current {current} bytes)"
        );
    }
    let stress: serde_json::Value = serde_json::from_slice(
        &fs::read(results.join("stress.json")).context("stress.json missing from the results")?,
    )?;
    let reads_per_sec = stress["reads"]["ops_per_s"].as_f64().unwrap_or(0.0) as u64;
    ensure!(
        reads_per_sec > 0,
        "{kernel}: the workload driver read nothing: {stress}"
    );
    let bufio = check_bufio(kernel, scenario, &info, results)?;
    Ok(Outcome {
        kernel,
        scenario: scenario.to_string(),
        release,
        lock_waits,
        reads_per_sec,
        gets,
        reads,
        releases,
        bufio_ops: bufio.0,
        mutex_waits: bufio.1,
        tree_waits: bufio.2,
        returns_missed: bufio.3,
        ringbuf_full: bufio.4,
    })
}

/// What the dm-bufio probes recorded: operations of the expected kinds on blocks inside their
/// devices, clients named by device, and waits named as the design predicts (6.1: the client
/// mutex; 6.12: tree locks, and the client mutex where misses or writeback take it). Returns
/// operations, mutex waits, tree waits, missed returns and ring-buffer losses.
fn check_bufio(
    kernel: &str,
    scenario: &str,
    info: &serde_json::Value,
    results: &Path,
) -> anyhow::Result<(u64, u64, u64, u64, u64)> {
    let ops = info["bufio_ops"].as_u64().unwrap_or(0);
    ensure!(
        ops > 0,
        "{kernel} {scenario}: no dm-bufio operations recorded"
    );
    let count = |function: &str| info["by_op"][function]["count"].as_u64().unwrap_or(0);
    let reads = count("dm_bufio_read") + count("dm_bufio_get");
    ensure!(
        reads > 0 && count("dm_bufio_release") > 0,
        "{kernel} {scenario}: expected reads and releases among the operations: {}",
        info["by_op"]
    );
    let hits: u64 = ["dm_bufio_read", "dm_bufio_get"]
        .iter()
        .map(|f| info["by_op"][f]["hits"].as_u64().unwrap_or(0))
        .sum();
    ensure!(
        hits > 0,
        "{kernel} {scenario}: no read was a hit: {}",
        info["by_op"]
    );

    // "major:minor sectors" of the guest's block devices.
    let devices: std::collections::HashMap<String, u64> =
        fs::read_to_string(results.join("devices.txt"))?
            .lines()
            .filter_map(|l| {
                let (dev, sectors) = l.split_once(' ')?;
                Some((dev.to_string(), sectors.trim().parse().ok()?))
            })
            .collect();
    let clients = info["client_list"].as_array().cloned().unwrap_or_default();
    ensure!(
        !clients.is_empty(),
        "{kernel} {scenario}: no dm-bufio client was described"
    );
    let (mut mutex_waits, mut tree_waits) = (0, 0);
    for c in &clients {
        let device = c["device"].as_str().unwrap_or("?");
        let sectors = *devices.get(device).ok_or_else(|| {
            anyhow::anyhow!(
                "{kernel} {scenario}: client device {device} is not a block device of the guest"
            )
        })?;
        let block_size = c["block_size"].as_u64().unwrap_or(0);
        ensure!(
            block_size >= 512 && block_size.is_power_of_two(),
            "{kernel} {scenario}: client {device} has block size {block_size}"
        );
        let blocks = sectors * 512 / block_size;
        let max_block = c["max_block"].as_u64().unwrap_or(0);
        ensure!(
            c["ops"].as_u64().unwrap_or(0) == 0 || max_block < blocks,
            "{kernel} {scenario}: client {device} read block {max_block}, past its {blocks} blocks"
        );
        mutex_waits += c["waits_on_mutex"].as_u64().unwrap_or(0);
        tree_waits += c["waits_on_trees"].as_u64().unwrap_or(0);
    }
    let trees: Vec<u64> = clients
        .iter()
        .map(|c| c["trees"].as_u64().unwrap_or(0))
        .collect();
    match kernel {
        // One client mutex: the readers' waits are on it, and there are no trees to name.
        "6.1" => ensure!(
            mutex_waits > 0 && tree_waits == 0 && trees.iter().all(|&t| t == 0),
            "{kernel} {scenario}: expected waits on the client mutex only (mutex {mutex_waits}, \
             trees {tree_waits}, tree locks per client {trees:?})"
        ),
        // Sharded: every client has its tree locks located from BTF. Waits on them are named when
        // they happen, but this workload rarely makes any: 6.12's rwsem waits in thin-hotspot are
        // dm-thin's own pmd->root_lock (caller dm_thin_find_block), which must stay unnamed.
        _ => ensure!(
            !trees.is_empty() && trees.iter().all(|&t| t > 0),
            "{kernel} {scenario}: clients without tree locks on a sharded kernel: {trees:?}"
        ),
    }
    let kernel_counter = |name: &str| info["losses"]["kernel"][name].as_u64();
    let (Some(missed), Some(full)) = (
        kernel_counter("op_return_missed"),
        kernel_counter("ringbuf_full"),
    ) else {
        anyhow::bail!("{kernel} {scenario}: the recording has no loss counts");
    };
    Ok((ops, mutex_waits, tree_waits, missed, full))
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
