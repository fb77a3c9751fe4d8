//! The bpf(2) commands aya 0.14 does not offer: walking the kernel's BTF objects, loading a
//! tracing program against a module's BTF, linking it, and reading a program's run statistics
//! with its recursion misses. Each function wraps one command; the layouts are aya-obj's
//! bindings of the kernel's uapi (`aya_obj::generated`), zeroed beyond what a command reads, as
//! the kernel requires.

use std::{
    ffi::CStr,
    io, mem,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_btf_info, bpf_cmd, bpf_insn, bpf_prog_info, bpf_prog_type,
};

/// Where a tracing program runs: before the function (fentry) or after it returns (fexit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracingKind {
    Fentry,
    Fexit,
}

impl TracingKind {
    pub fn name(self) -> &'static str {
        match self {
            TracingKind::Fentry => "fentry",
            TracingKind::Fexit => "fexit",
        }
    }

    fn attach_type(self) -> bpf_attach_type {
        match self {
            TracingKind::Fentry => bpf_attach_type::BPF_TRACE_FENTRY,
            TracingKind::Fexit => bpf_attach_type::BPF_TRACE_FEXIT,
        }
    }
}

/// The kernel's refusal of a program: the errno and the end of the verifier's log. The message
/// is complete (no error source), as messages of probe points are.
#[derive(Debug, thiserror::Error)]
#[error("{}{}", describe(.error), if .log.is_empty() { String::new() } else { format!("; verifier: {}", .log) })]
pub struct LoadError {
    pub error: io::Error,
    /// The log's last lines (where the verifier says why), joined with " | ".
    pub log: String,
}

/// The kernel-internal ENOTSUPP, which bpf(2) can return and libc has no name for.
const ENOTSUPP: i32 = 524;

/// An errno from bpf(2) in words, naming the kernel-internal ones libc cannot.
pub fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(ENOTSUPP) => "ENOTSUPP (524): the kernel cannot build a BPF trampoline for this \
                           function (on x86 before Linux 6.6: more than 6 arguments)"
            .to_string(),
        _ => error.to_string(),
    }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr whose pointers (if any) point into
    // buffers that outlive the call; the size is the struct's.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is plain data; all-zero is every command's "unset".
    unsafe { mem::zeroed() }
}

fn owned_fd(ret: i64) -> io::Result<OwnedFd> {
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("bpf returned no descriptor"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets `key` to `value` in the `u32 → u32` map `map_fd`; the raw result (0, or -1 with errno
/// set). Async-signal-safe (one system call on the stack's data, no allocation), so a child
/// between fork and exec can put its own process id in a map it inherited.
pub fn map_update_u32(map_fd: std::os::fd::RawFd, key: u32, value: u32) -> i64 {
    let mut attr = zeroed_attr();
    // SAFETY: the map-element member of the union, the one BPF_MAP_UPDATE_ELEM reads.
    let elem = unsafe { &mut attr.__bindgen_anon_2 };
    elem.map_fd = map_fd as u32;
    elem.key = std::ptr::from_ref(&key) as u64;
    elem.__bindgen_anon_1.value = std::ptr::from_ref(&value) as u64;
    elem.flags = 0; // BPF_ANY
    // SAFETY: attr is initialised and points at key and value, which outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_UPDATE_ELEM as libc::c_long,
            std::ptr::from_mut(&mut attr),
            mem::size_of::<bpf_attr>(),
        )
    }
}

/// The id of the next BTF object after `start` (0: the first), `None` after the last.
pub fn next_btf_id(start: u32) -> io::Result<Option<u32>> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.start_id = start;
    match bpf(bpf_cmd::BPF_BTF_GET_NEXT_ID, &mut attr) {
        // SAFETY: the kernel filled next_id.
        Ok(_) => Ok(Some(unsafe { attr.__bindgen_anon_6.next_id })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A descriptor of BTF object `id` (it may have gone since it was listed: ENOENT).
pub fn btf_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
    owned_fd(bpf(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut attr)?)
}

/// A BTF object's name ("vmlinux", a module's name, or empty for a program's) and whether it is
/// the kernel's own.
pub fn btf_name(fd: BorrowedFd<'_>) -> io::Result<(String, bool)> {
    let mut name = [0u8; 64];
    // SAFETY: plain data.
    let mut info: bpf_btf_info = unsafe { mem::zeroed() };
    info.name = name.as_mut_ptr() as u64;
    info.name_len = name.len() as u32;
    obj_info(fd, &mut info)?;
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok((
        String::from_utf8_lossy(&name[..len]).into_owned(),
        info.kernel_btf != 0,
    ))
}

fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = mem::size_of::<T>() as u32;
    attr.info.info = std::ptr::from_mut(info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

/// A program's run statistics as the kernel keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgRunInfo {
    /// Time spent in the program (only counted while BPF statistics are enabled).
    pub run_time_ns: u64,
    pub run_count: u64,
    /// Times the kernel skipped the program because it was already running on that CPU
    /// (fentry/fexit, tp_btf, and kprobes from 6.7): events lost without any other trace.
    pub recursion_misses: u64,
}

/// Run time, run count and recursion misses of the program behind `fd`.
pub fn prog_run_info(fd: BorrowedFd<'_>) -> io::Result<ProgRunInfo> {
    // SAFETY: plain data; zero pointers ask for no arrays.
    let mut info: bpf_prog_info = unsafe { mem::zeroed() };
    obj_info(fd, &mut info)?;
    Ok(ProgRunInfo {
        run_time_ns: info.run_time_ns,
        run_count: info.run_cnt,
        recursion_misses: info.recursion_misses,
    })
}

/// What a tracing program attaches to: a function (`btf_id`) in a BTF object (`btf_obj`).
pub struct TracingTarget<'a> {
    pub kind: TracingKind,
    pub btf_obj: BorrowedFd<'a>,
    pub btf_id: u32,
}

/// Loads a tracing program. The kernel resolves the target when it verifies the program, so a
/// function the trampoline cannot take (e.g. more arguments than this kernel's trampoline
/// passes) is refused here, with the verifier's reason.
pub fn load_tracing(
    name: &str,
    insns: &[bpf_insn],
    license: &CStr,
    target: &TracingTarget<'_>,
) -> Result<OwnedFd, LoadError> {
    let load = |log: Option<&mut Vec<u8>>| {
        let mut attr = zeroed_attr();
        // SAFETY: writing plain fields of the union's program-load member.
        let p = unsafe { &mut attr.__bindgen_anon_3 };
        p.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
        p.expected_attach_type = target.kind.attach_type() as u32;
        p.insns = insns.as_ptr() as u64;
        p.insn_cnt = insns.len() as u32;
        p.license = license.as_ptr() as u64;
        p.attach_btf_id = target.btf_id;
        p.__bindgen_anon_1.attach_btf_obj_fd = target.btf_obj.as_raw_fd() as u32;
        for (slot, byte) in p.prog_name.iter_mut().zip(program_name(name).bytes()) {
            *slot = byte as libc::c_char;
        }
        if let Some(log) = log {
            p.log_level = 1;
            p.log_buf = log.as_mut_ptr() as u64;
            p.log_size = log.len() as u32;
        }
        bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).and_then(owned_fd)
    };
    match load(None) {
        Ok(fd) => Ok(fd),
        Err(source) => {
            // Again with the verifier's log, as libbpf does: a log costs time only on failure.
            let mut log = vec![0u8; 1 << 20];
            let _ = load(Some(&mut log));
            Err(LoadError {
                error: source,
                log: log_tail(&log, 3),
            })
        }
    }
}

/// The kernel's name for a program: at most 15 of `[A-Za-z0-9_.]`.
fn program_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .take(15)
        .collect()
}

/// The last `n` non-empty lines of a NUL-terminated verifier log.
fn log_tail(log: &[u8], n: usize) -> String {
    let len = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..len]);
    // The verifier's verdict is the last line before its statistics ("processed N insns") and,
    // on newer kernels, before its hints ("Suggestion: ..."), which would otherwise fill the tail.
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Suggestion:"))
        .filter(|l| !l.is_empty() && !l.starts_with("processed "))
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Runs a loaded program once in this thread (BPF_PROG_TEST_RUN), with an empty context; its
/// return value. For a raw tracepoint program, current is the calling task.
pub fn prog_test_run(prog: BorrowedFd<'_>) -> io::Result<u32> {
    let mut attr = zeroed_attr();
    // The test member of the union, the one BPF_PROG_TEST_RUN reads; all else zero.
    attr.test.prog_fd = prog.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr)?;
    // SAFETY: the kernel wrote the result into the same member.
    Ok(unsafe { attr.test.retval })
}

/// Attaches a loaded tracing program to the target it was loaded for; it stays attached while
/// the returned link descriptor is open.
pub fn attach_tracing(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // No tracepoint name: a tracing program's target is the one given at load.
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    owned_fd(bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_fit_the_kernel() {
        assert_eq!(
            program_name("bufio_write_dirty_async_fentry"),
            "bufio_write_dir"
        );
        assert_eq!(program_name("bufio_op_fexit:dm-bufio"), "bufio_op_fexitd");
        assert_eq!(program_name("get"), "get");
    }

    #[test]
    fn the_log_tail_is_the_last_lines() {
        let log = b"0: (79) r1 = *(u64 *)(r1 +0)\n\nfunc 'f' doesn't have 3-th argument\ninvalid bpf_context access off=16 size=8\n\0garbage";
        assert_eq!(
            log_tail(log, 2),
            "func 'f' doesn't have 3-th argument | invalid bpf_context access off=16 size=8"
        );
        assert_eq!(log_tail(b"\0", 3), "");
        // Statistics and a newer kernel's hints follow the verdict: they are left out.
        let hinted = b"5: (7b) *(u64 *)(r0 +8) = r1\ninvalid access to map value, value_size=8 off=8 size=8\n\
            Suggestion: bounds\n  Add or adjust a bounds check\nprocessed 6 insns (limit 1000000)\n";
        assert_eq!(
            log_tail(hinted, 2),
            "5: (7b) *(u64 *)(r0 +8) = r1 | invalid access to map value, value_size=8 off=8 size=8"
        );
    }

    #[test]
    fn a_load_error_says_the_errno_and_the_verifier() {
        let e = LoadError {
            error: io::Error::from_raw_os_error(libc::EACCES),
            log: "R1 invalid mem access".into(),
        };
        assert_eq!(
            e.to_string(),
            "Permission denied (os error 13); verifier: R1 invalid mem access"
        );
        let quiet = LoadError {
            error: io::Error::from_raw_os_error(libc::EPERM),
            log: String::new(),
        };
        assert_eq!(quiet.to_string(), "Operation not permitted (os error 1)");
        assert!(
            describe(&io::Error::from_raw_os_error(524)).starts_with("ENOTSUPP (524): "),
            "named, not \"Unknown error 524\""
        );
    }

    /// Needs root: this host's BTF objects are listed and vmlinux is among them, named.
    #[test]
    fn the_kernel_btf_objects_are_listed_by_name() {
        if !crate::kernel::system::is_root() {
            crate::skip_or_fail("listing BTF objects needs root");
            return;
        }
        let mut id = 0;
        let mut names = Vec::new();
        while let Some(next) = next_btf_id(id).unwrap() {
            id = next;
            let Ok(fd) = btf_fd_by_id(id) else { continue };
            let (name, kernel) = btf_name(std::os::fd::AsFd::as_fd(&fd)).unwrap();
            if kernel {
                names.push(name);
            }
        }
        assert!(names.iter().any(|n| n == "vmlinux"), "{names:?}");
    }
}
