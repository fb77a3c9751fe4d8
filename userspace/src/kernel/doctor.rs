//! `bufscope doctor`: what this kernel offers bufscope, and what bufscope does without each
//! missing piece.

use std::{fs, path::Path};

use aya::maps::MapType;
use serde::Serialize;

use super::system;
use crate::probes::{AttachOptions, BufioReport, LockProbes, error_chain};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and usable.
    Ok,
    /// Not in this kernel or not mounted.
    Missing,
    /// Present, but the kernel (or its policy, or our privileges) refuses it.
    Refused,
    /// Not checked (e.g. needs root).
    Skipped,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Refused => "refused",
            Status::Skipped => "skipped",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What bufscope does about it, when the status is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consequence: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kernel_release: String,
    pub machine: String,
    pub cpus: u32,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        consequence: None,
    }
}

impl Check {
    fn otherwise(mut self, consequence: &str) -> Self {
        if self.status != Status::Ok {
            self.consequence = Some(consequence.to_string());
        }
        self
    }
}

/// Runs every check. Nothing here changes the system (tracefs is only looked for, and the trial
/// attach is detached at once).
pub fn run() -> Report {
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe");
    let root = system::is_root();
    let (attach, bufio_probes) = trial_attach(root);
    let checks = vec![
        privileges(root),
        if btf.exists() {
            check("btf", Status::Ok, btf.display().to_string())
        } else {
            check("btf", Status::Missing, format!("no {}", btf.display()))
        }
        .otherwise(
            "tp_btf and fentry need it: lock contention falls back to the classic tracepoint",
        ),
        ring_buffer(),
        lock_tracepoints_in_btf(btf),
        tracefs(),
        attach,
        if kprobe_pmu.exists() {
            check("kprobes", Status::Ok, kprobe_pmu.display().to_string())
        } else {
            check(
                "kprobes",
                Status::Missing,
                format!("no {} (CONFIG_KPROBES off)", kprobe_pmu.display()),
            )
        }
        .otherwise(
            "dm-bufio's functions are probed with fentry/fexit (below) where the kernel allows, \
             else with kprobes; lock contention is recorded either way",
        ),
        fentry(),
        dm_bufio(),
        bufio_probes,
    ];
    Report {
        kernel_release: system::kernel_release(),
        machine: system::machine(),
        cpus: system::online_cpus(),
        checks,
    }
}

fn privileges(root: bool) -> Check {
    let (held, missing) = system::split_capabilities(system::effective_capabilities());
    let who = if root { "root" } else { "not root" };
    let needed_missing: Vec<_> = missing
        .iter()
        .filter(|c| ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"].contains(c))
        .collect();
    let status = if root || needed_missing.len() < 3 && held.contains(&"CAP_BPF") {
        Status::Ok
    } else {
        Status::Refused
    };
    let mut detail = format!("{who}; capabilities: {}", held.join(" "));
    if !missing.is_empty() {
        detail.push_str(&format!("; lacking: {}", missing.join(" ")));
    }
    check("privileges", status, detail)
        .otherwise("run bufscope as root (sudo -E) to load eBPF programs; `info` works without")
}

fn ring_buffer() -> Check {
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => check(
            "bpf ring buffer",
            Status::Ok,
            "BPF syscall works; ring buffers supported",
        ),
        Ok(false) => check("bpf ring buffer", Status::Missing, "kernel older than 5.8"),
        Err(e) => check(
            "bpf ring buffer",
            Status::Refused,
            format!("BPF syscall: {}", error_chain(&e)),
        ),
    }
    .otherwise("bufscope cannot stream events from this kernel")
}

fn lock_tracepoints_in_btf(btf_path: &Path) -> Check {
    let name = "lock tracepoints";
    if !btf_path.exists() {
        return check(name, Status::Skipped, "no BTF to look in; see tracefs");
    }
    match aya::Btf::from_sys_fs() {
        Ok(btf) => {
            let has = |event: &str| {
                btf.id_by_type_name_kind(
                    &format!("btf_trace_{event}"),
                    aya_obj::btf::BtfKind::Typedef,
                )
                .is_ok()
            };
            if has("contention_begin") && has("contention_end") {
                check(
                    name,
                    Status::Ok,
                    "lock:contention_begin/end in BTF (Linux 5.19+)",
                )
            } else {
                check(
                    name,
                    Status::Missing,
                    "lock:contention_begin/end not in BTF (Linux < 5.19)",
                )
            }
        }
        Err(e) => check(name, Status::Refused, format!("reading BTF failed: {e}")),
    }
    .otherwise("lock contention cannot be recorded on this kernel")
}

fn tracefs() -> Check {
    match system::tracefs_mount() {
        Some(path) => {
            let format = path.join("events/lock/contention_begin/format");
            if format.exists() {
                check(
                    "tracefs",
                    Status::Ok,
                    format!("{} (lock events present)", path.display()),
                )
            } else {
                check(
                    "tracefs",
                    Status::Missing,
                    format!("{} has no lock events", path.display()),
                )
            }
        }
        None => check("tracefs", Status::Missing, "not mounted").otherwise(
            "only the classic-tracepoint fallback needs it; bufscope mounts it at \
             /sys/kernel/tracing when it does",
        ),
    }
}

/// Attaches everything for real and detaches again: the lock probes, then the dm-bufio ones.
fn trial_attach(root: bool) -> (Check, Check) {
    let name = "lock probes attach";
    let bufio_name = "dm-bufio probes";
    if !root {
        return (
            check(name, Status::Skipped, "needs root")
                .otherwise("run `sudo -E bufscope doctor` to try attaching"),
            check(bufio_name, Status::Skipped, "needs root")
                .otherwise("run `sudo -E bufscope doctor` to try attaching"),
        );
    }
    let options = AttachOptions {
        ringbuf_bytes: 4096 * 16,
        ..AttachOptions::default()
    };
    match LockProbes::attach(options) {
        Ok(probes) => {
            let mut detail = format!("attached and detached again as {}", probes.mode());
            for note in probes.notes() {
                detail.push_str(&format!("; {note}"));
            }
            (
                check(name, Status::Ok, detail),
                bufio_check(bufio_name, probes.bufio()),
            )
        }
        Err(e) => (
            check(name, Status::Refused, error_chain(&e))
                .otherwise("lock contention cannot be recorded"),
            check(bufio_name, Status::Skipped, "the lock probes did not load")
                .otherwise("nothing can be recorded"),
        ),
    }
}

/// Which dm-bufio probe points attached, and why the others did not.
fn bufio_check(name: &'static str, report: &BufioReport) -> Check {
    if let Some(why) = &report.unavailable {
        return check(name, Status::Missing, why.to_string()).otherwise(
            "no dm-bufio operations or named dm-bufio locks; kernel-wide lock contention is \
             still recorded",
        );
    }
    let attached = report.attached().count();
    let total = report.points.len();
    let design = report.design.map_or("unknown design", |d| d.describe());
    let mut detail = format!(
        "{attached} of {total} probe points attached ({}); {design}",
        report.attached_by_kind()
    );
    if let Some(why) = &report.tracing_unavailable {
        detail.push_str(&format!("; kprobes, not fentry/fexit, because {why}"));
    }
    for point in &report.points {
        if let Some(why) = &point.not_fentry {
            detail.push_str(&format!("; {} as kprobe, because {why}", point.function));
        }
    }
    let missing: Vec<String> = report
        .missing()
        .map(|p| format!("{}: {}", p.function, p.status.as_ref().unwrap_err()))
        .collect();
    if !missing.is_empty() {
        detail.push_str(&format!("; missing {}", missing.join("; ")));
    }
    if report.sees_operations() {
        check(name, Status::Ok, detail)
    } else {
        check(name, Status::Refused, detail)
            .otherwise("no dm-bufio operations; lock waits are still recorded")
    }
}

fn fentry() -> Check {
    match aya::sys::is_program_supported(aya::programs::ProgramType::Tracing) {
        Ok(true) => check("fentry", Status::Ok, "fentry/fexit programs load"),
        Ok(false) => check(
            "fentry",
            Status::Missing,
            "no fentry/fexit (kernel < 5.5 or no BTF)",
        ),
        Err(e) => check(
            "fentry",
            Status::Refused,
            format!("refused by the kernel: {}", error_chain(&e)),
        ),
    }
    .otherwise("dm-bufio's functions are probed with kprobes and kretprobes instead")
}

fn dm_bufio() -> Check {
    let module = Path::new("/sys/module/dm_bufio").exists();
    let module_btf = Path::new("/sys/kernel/btf/dm_bufio").exists();
    let in_kallsyms = fs::read_to_string("/proc/kallsyms")
        .map(|k| {
            k.lines()
                .any(|l| l.ends_with(" dm_bufio_get") || l.contains(" dm_bufio_get\t"))
        })
        .unwrap_or(false);
    if !module && !in_kallsyms {
        return check(
            "dm-bufio",
            Status::Missing,
            "not loaded (no /sys/module/dm_bufio, no dm_bufio_get in /proc/kallsyms)",
        )
        .otherwise(
            "no dm-bufio clients to watch: bufscope shows kernel-wide lock contention; \
             load dm-thin-pool or dm-verity (modprobe) to get dm-bufio",
        );
    }
    let mut detail = vec![];
    if module {
        detail.push("module loaded");
    }
    if in_kallsyms {
        detail.push("dm_bufio_get in kallsyms");
    }
    detail.push(if module_btf {
        "module BTF present"
    } else {
        "no module BTF (struct offsets unknown)"
    });
    check("dm-bufio", Status::Ok, detail.join("; "))
}
