//! The packages used as a user would (`cargo xtask dist --check`, part of `cargo xtask test`): the
//! .deb installed by dpkg into a scratch root (`--root`, a database of its own), its bufscope run
//! (doctor, info on a packaged sample), its completions read, its man pages rendered with `man -l`,
//! its copyright file read, then purged; the tarball holds the same files.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, ensure};

use super::{
    BINARY, COMPLETIONS, DOC_DIR, MAN_DIR, Packages, SAMPLES_DIR, copyright, needs_interpreter,
    output_checked,
};
use crate::cmd::{heading, run_checked, workspace_root};

/// The sample `info` reads: a 6.1 recording with the client mutex contended.
const SAMPLE: &str = "6.1-thin-hotspot.bftrace";

/// man's line width, fixed so the rendered text does not depend on the terminal.
const MANWIDTH: &str = "100";

pub fn check(packages: &Packages) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = workspace_root().join("target/dist/installed");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    // An empty dpkg database of its own: dpkg installs into the scratch root and nowhere else.
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates"] {
        fs::create_dir_all(admin.join(dir))?;
    }
    fs::write(admin.join("status"), "")?;
    fs::create_dir_all(root.join("var/log"))?;
    heading(
        "dist check",
        &format!(
            "dpkg -i {} into the scratch root {}",
            packages.deb.display(),
            root.display()
        ),
    );
    run_checked(
        "dist check",
        dpkg(&root).arg("--install").arg(&packages.deb),
    )?;
    let status = output_checked(dpkg(&root).args(["--status", "bufscope"]))?;
    ensure!(
        status.contains("Status: install ok installed"),
        "dpkg does not hold bufscope as installed:\n{status}"
    );
    let usr = root.join("usr");

    heading("dist check", "control fields and files");
    control_fields(packages)?;
    same_files_in_tarball(packages, &usr)?;
    ensure!(
        usr.join(DOC_DIR).join("README.md").is_file(),
        "the README is not in /usr/{DOC_DIR}"
    );
    heading(
        "dist check",
        &format!("/usr/{DOC_DIR}/copyright: machine-readable, bufscope's license"),
    );
    copyright_file(&usr.join(DOC_DIR).join("copyright"))?;

    let bufscope = usr.join(BINARY);
    ensure!(
        fs::read(&bufscope)? == fs::read(&packages.binary)?,
        "{} is not the binary built ({})",
        bufscope.display(),
        packages.binary.display()
    );
    heading(
        "dist check",
        &format!("{}: static, --version, doctor, info", bufscope.display()),
    );
    installed_binary_runs(&bufscope, &packages.version, &usr)?;

    heading("dist check", "completions for bash, zsh and fish");
    completions(&usr)?;

    heading(
        "dist check",
        &format!("man pages, rendered with MANWIDTH={MANWIDTH} man -l"),
    );
    man_pages(&usr.join(MAN_DIR))?;

    heading("dist check", "dpkg --purge bufscope leaves nothing behind");
    run_checked("dist check", dpkg(&root).args(["--purge", "bufscope"]))?;
    let mut left = BTreeSet::new();
    if usr.exists() {
        files_below(&usr, &usr, &mut left)?;
    }
    ensure!(left.is_empty(), "left after dpkg --purge: {left:?}");

    heading(
        "dist check",
        &format!(
            "the packages install, run and uninstall: ok in {:.1}s",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// dpkg working on the scratch root only: its files, its database, its log.
fn dpkg(root: &Path) -> Command {
    let mut dpkg = Command::new("dpkg");
    dpkg.arg(format!("--root={}", root.display()))
        .arg(format!("--log={}", root.join("var/log/dpkg.log").display()));
    dpkg
}

fn control_fields(packages: &Packages) -> anyhow::Result<()> {
    let deb = packages.deb.to_string_lossy();
    let fields = output_checked(Command::new("dpkg-deb").args([
        "--field",
        &deb,
        "Package",
        "Version",
        "Architecture",
        "Depends",
    ]))?;
    let expected = format!(
        "Package: bufscope\nVersion: {}\nArchitecture: amd64\n",
        packages.version
    );
    ensure!(
        fields == expected,
        "{deb}'s control fields: expected (and no Depends)\n{expected}got\n{fields}"
    );
    Ok(())
}

/// The tarball holds the .deb's files, under its top directory instead of /usr.
fn same_files_in_tarball(packages: &Packages, usr: &Path) -> anyhow::Result<()> {
    let mut in_deb = BTreeSet::new();
    files_below(usr, usr, &mut in_deb)?;
    let listing = output_checked(Command::new("tar").arg("-tzf").arg(&packages.tarball))?;
    let in_tarball: BTreeSet<PathBuf> = listing
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| Path::new(l).components().skip(1).collect::<PathBuf>())
        .collect();
    ensure!(
        in_deb == in_tarball,
        "the .deb and the tarball differ: only in the .deb {:?}, only in the tarball {:?}",
        in_deb.difference(&in_tarball).collect::<Vec<_>>(),
        in_tarball.difference(&in_deb).collect::<Vec<_>>()
    );
    for must in [BINARY, "share/man/man1/bufscope.1.gz"] {
        ensure!(
            in_deb.contains(Path::new(must)),
            "{must} is not packaged: {in_deb:?}"
        );
    }
    ensure!(
        in_deb.iter().any(|p| p.starts_with(SAMPLES_DIR)),
        "no sample under {SAMPLES_DIR}: {in_deb:?}"
    );
    Ok(())
}

fn files_below(base: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files_below(base, &path, out)?;
        } else {
            out.insert(path.strip_prefix(base)?.to_path_buf());
        }
    }
    Ok(())
}

fn installed_binary_runs(bufscope: &Path, version: &str, usr: &Path) -> anyhow::Result<()> {
    ensure!(
        !needs_interpreter(bufscope)?,
        "{} asks for a dynamic loader: not static",
        bufscope.display()
    );
    let printed = output_checked(Command::new(bufscope).arg("--version"))?;
    ensure!(
        printed.trim() == format!("bufscope {version}"),
        "--version printed {printed:?}, expected `bufscope {version}`"
    );

    // doctor reports and exits 0 whatever the machine lacks (privileges, dm-bufio, kprobes).
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let report = output_checked(Command::new(bufscope).arg("doctor"))?;
    ensure!(
        report.starts_with(&format!("bufscope doctor: Linux {} ", release.trim())),
        "doctor does not name this kernel ({}):\n{report}",
        release.trim()
    );
    ensure!(
        report.contains("bufscope can record") || report.contains("bufscope cannot record"),
        "doctor's verdict is missing:\n{report}"
    );
    let json: serde_json::Value = serde_json::from_str(&output_checked(
        Command::new(bufscope).args(["doctor", "--json"]),
    )?)
    .context("doctor --json is not JSON")?;
    let checks = json["checks"].as_array().map_or(0, Vec::len);
    ensure!(checks >= 5, "doctor --json has {checks} checks: {json}");

    let sample = usr.join(SAMPLES_DIR).join(SAMPLE);
    let summary = output_checked(Command::new(bufscope).arg("info").arg(&sample))?;
    ensure!(
        summary.contains("kernel          6.1.") && summary.contains("dm-bufio operations"),
        "info {} shows no 6.1 kernel or dm-bufio operations:\n{summary}",
        sample.display()
    );
    let json: serde_json::Value = serde_json::from_str(&output_checked(
        Command::new(bufscope)
            .arg("info")
            .arg("--json")
            .arg(&sample),
    )?)?;
    let ops = json["bufio_ops"].as_u64().unwrap_or(0);
    ensure!(
        json["problem"].is_null() && ops > 1000,
        "info --json {}: problem {}, {ops} dm-bufio operations",
        sample.display(),
        json["problem"]
    );
    Ok(())
}

/// Debian's copyright file in the machine-readable format: its header, a `Files: *` paragraph
/// under the workspace's license (Cargo.toml's, in DEP-5 words), the eBPF programs' paragraph
/// with the license they declare to the kernel, a standalone paragraph for each license named, and
/// the linked crates with their licenses (the one non-permissive, btf-rs, among them).
fn copyright_file(path: &Path) -> anyhow::Result<()> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("the package has no {}", path.display()))?;
    let paragraphs: Vec<&str> = text.split("\n\n").map(str::trim_end).collect();
    let field = |paragraph: &str, name: &str| {
        paragraph
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    ensure!(
        field(paragraphs[0], "Format").as_deref() == Some(copyright::FORMAT),
        "{}: no DEP-5 Format line first:\n{text}",
        path.display()
    );
    let files = |pattern: &str| {
        paragraphs
            .iter()
            .find(|p| field(p, "Files").as_deref() == Some(pattern))
            .with_context(|| format!("{}: no `Files: {pattern}` paragraph", path.display()))
    };
    let sources = copyright::Sources::read()?;
    let own = copyright::dep5_license(&sources.license);
    let all = files("*")?;
    ensure!(
        field(all, "License").as_deref() == Some(own.as_str()),
        "{}: `Files: *` is not under Cargo.toml's license ({own}):\n{all}",
        path.display()
    );
    let ebpf = files("ebpf/probes/*")?;
    ensure!(
        ebpf.contains(&format!("\"{}\"", sources.ebpf_license)),
        "{}: the eBPF paragraph does not name the license the programs declare ({}):\n{ebpf}",
        path.display(),
        sources.ebpf_license
    );
    for name in copyright::short_names(&own) {
        ensure!(
            paragraphs
                .iter()
                .any(|p| p.starts_with(&format!("License: {name}\n "))),
            "{}: no standalone paragraph with the text of {name}",
            path.display()
        );
    }
    for linked in [" aya ", " btf-rs "] {
        ensure!(
            paragraphs[0].contains(&format!("\n{linked}")),
            "{}: the linked crates do not list{linked}",
            path.display()
        );
    }
    Ok(())
}

fn completions(usr: &Path) -> anyhow::Result<()> {
    for (shell, path) in COMPLETIONS {
        let path = usr.join(path);
        let script =
            fs::read_to_string(&path).with_context(|| format!("{shell}: {}", path.display()))?;
        let marker = match *shell {
            "bash" => "complete -F _bufscope",
            "zsh" => "#compdef bufscope",
            _ => "complete -c bufscope",
        };
        // Subcommands, an option of one and the values of another.
        let missing: Vec<&str> = [marker, "record", "live", "duration", "perfetto"]
            .into_iter()
            .filter(|word| !script.contains(word))
            .collect();
        ensure!(
            missing.is_empty() && script.len() > 4096,
            "{shell} completions {} ({} bytes) lack {missing:?}",
            path.display(),
            script.len()
        );
    }
    Ok(())
}

/// Every page renders with a NAME section naming it; each page installed is listed by its
/// parent's (bufscope.1 lists bufscope-live(1), …) and each listed is installed; bufscope.1 is
/// bufscope's and bufscope-record.1 shows record's options.
fn man_pages(dir: &Path) -> anyhow::Result<()> {
    let installed: BTreeSet<String> = fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    let mut listed = BTreeSet::from(["bufscope.1.gz".to_string()]);
    for page in &installed {
        // Words only: man justifies and wraps the text to MANWIDTH.
        let text = render(&dir.join(page))?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let name = page.trim_end_matches(".1.gz");
        ensure!(
            text.contains(&format!("NAME {name} - ")),
            "{page}: no NAME section naming {name}: {text}"
        );
        listed.extend(
            text.split(' ')
                .filter_map(|w| w.strip_prefix("bufscope-")?.strip_suffix("(1)"))
                .map(|sub| format!("bufscope-{sub}.1.gz"))
                .filter(|listed| listed != page),
        );
        match page.as_str() {
            "bufscope.1.gz" => ensure!(
                text.contains(
                    "NAME bufscope - See lock contention in the Linux dm-bufio buffer cache"
                ),
                "{page}: the NAME line is not bufscope's: {text}"
            ),
            "bufscope-record.1.gz" => ensure!(
                text.contains("--duration") && text.contains("-o, --output <FILE>"),
                "{page}: record's options are missing: {text}"
            ),
            _ => {}
        }
    }
    ensure!(
        installed == listed,
        "the pages list {listed:?}, {} holds {installed:?}",
        dir.display()
    );
    for must in [
        "bufscope-live.1.gz",
        "bufscope-record.1.gz",
        "bufscope-completions.1.gz",
    ] {
        ensure!(installed.contains(must), "{must} is missing: {installed:?}");
    }
    Ok(())
}

fn render(page: &Path) -> anyhow::Result<String> {
    output_checked(
        Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANWIDTH", MANWIDTH)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            // ASCII hyphens and no overstriking.
            .env("LC_ALL", "C")
            .env("MAN_KEEP_FORMATTING", ""),
    )
    .with_context(|| format!("rendering {} (man-db: `cargo xtask setup`)", page.display()))
}
