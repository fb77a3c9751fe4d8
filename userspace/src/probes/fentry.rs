//! fentry/fexit on a kernel module's functions, which aya 0.14 cannot attach: its loader resolves
//! a tracing program's target in vmlinux's BTF only (aya issue #301), and dm-bufio is a module.
//!
//! A tracing program names its target by a BTF type id *and* the BTF object that id lives in
//! (`attach_btf_obj_fd`, Linux 5.11+). So, for a module:
//! 1. its BTF object: the kernel's BTF objects are walked (BPF_BTF_GET_NEXT_ID,
//!    BPF_BTF_GET_FD_BY_ID) until one is named after the module ([`ModuleBtf::open`]);
//! 2. the function's type id: looked up in the module's types (`/sys/kernel/btf/<module>`,
//!    split BTF whose ids continue vmlinux's, as the kernel numbers them);
//! 3. the program's instructions: bufscope's eBPF object parsed again by aya-obj and relocated
//!    against the maps aya already created, so both kinds of program share every map
//!    ([`TracingPrograms`]);
//! 4. BPF_PROG_LOAD as a tracing program for that target, then BPF_RAW_TRACEPOINT_OPEN without a
//!    name, which links it to the target given at load ([`TracingLink`]).
//!
//! One program's instructions can be loaded for many functions (the fexit return program is).
//! Failures are typed: [`FentryUnavailable`] when no function of the module can be traced this
//! way, [`FentryError`] for one function, each with the kernel's reason, so the caller can fall
//! back to kprobes and say why.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use aya_obj::generated::bpf_insn;
use btf_rs::{Btf, Type};

use super::sys::{self, LoadError, ProgRunInfo, TracingKind, TracingTarget};

/// Why no function of a module can be traced with fentry/fexit here. Each message is complete,
/// its cause included (no error source): it is printed and kept in trace files as text.
#[derive(Debug, thiserror::Error)]
pub enum FentryUnavailable {
    #[error("listing the kernel's BTF objects: {0}")]
    List(io::Error),
    #[error("no BTF object named {0} is loaded (a kernel without CONFIG_DEBUG_INFO_BTF_MODULES?)")]
    NoBtfObject(String),
    #[error("parsing bufscope's eBPF object: {0}")]
    Parse(aya_obj::ParseError),
    #[error("no descriptor for map {0} (a mismatched build?)")]
    MissingMap(String),
    #[error("relocating bufscope's eBPF object: {0}")]
    Relocate(aya_obj::relocation::EbpfRelocationError),
    #[error("linking the eBPF programs' kernel-function calls: {0}")]
    Kfunc(String),
}

/// Why one function is not traced with fentry/fexit. Each message is complete, the kernel's reason
/// included (no error source): it is printed and kept in trace files as text.
#[derive(Debug, thiserror::Error)]
pub enum FentryError {
    #[error("{function} has no function type in {module}'s BTF (inlined, or not in this build)")]
    NoFunction { function: String, module: String },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(String),
    #[error("loading {program} as {kind} of {function}: {cause}", kind = .kind.name())]
    Load {
        program: String,
        kind: TracingKind,
        function: String,
        cause: LoadError,
    },
    #[error("attaching {program} to {function}: {}", sys::describe(.cause))]
    Attach {
        program: String,
        function: String,
        cause: io::Error,
    },
}

/// A loaded module's BTF: the kernel's object (for `attach_btf_obj_fd`) and its types.
pub struct ModuleBtf {
    module: String,
    fd: OwnedFd,
    btf: Btf,
}

impl ModuleBtf {
    /// Finds the kernel's BTF object named `module` ("vmlinux" for built-in code) whose types,
    /// already read, are `btf`.
    pub fn open(module: &str, btf: Btf) -> Result<Self, FentryUnavailable> {
        Ok(Self {
            module: module.to_string(),
            fd: find_btf_object(module)?,
            btf,
        })
    }

    /// The type id of function `name` (a `BTF_KIND_FUNC`), as the kernel numbers it.
    pub fn function_id(&self, name: &str) -> Result<u32, FentryError> {
        self.btf
            .resolve_ids_by_name(name)
            .unwrap_or_default()
            .into_iter()
            .find(|&id| matches!(self.btf.resolve_type_by_id(id), Ok(Type::Func(_))))
            .ok_or_else(|| FentryError::NoFunction {
                function: name.to_string(),
                module: self.module.clone(),
            })
    }
}

/// The kernel's BTF object named `name`.
fn find_btf_object(name: &str) -> Result<OwnedFd, FentryUnavailable> {
    let mut id = 0;
    while let Some(next) = sys::next_btf_id(id).map_err(FentryUnavailable::List)? {
        id = next;
        // An object can go between listing and opening (a module unloading): skip it.
        let Ok(fd) = sys::btf_fd_by_id(id) else {
            continue;
        };
        match sys::btf_name(fd.as_fd()) {
            Ok((found, true)) if found == name => return Ok(fd),
            Ok(_) => {}
            Err(e) => return Err(FentryUnavailable::List(e)),
        }
    }
    Err(FentryUnavailable::NoBtfObject(name.to_string()))
}

/// bufscope's eBPF programs relocated against maps that already exist: the instructions a
/// tracing program is loaded from.
pub struct TracingPrograms {
    object: aya_obj::Object,
}

impl TracingPrograms {
    /// Parses the eBPF object `elf` and points its map references at `maps` (name → the
    /// descriptor of the map aya created under that name).
    pub fn relocate(
        elf: &[u8],
        maps: &HashMap<String, OwnedFd>,
    ) -> Result<Self, FentryUnavailable> {
        // No tracing program calls a kfunc, but aya relocates every program's calls: the kfunc
        // calls (in the contention programs) must not look like calls to it.
        let linked = super::kfunc::link_kfuncs(elf, None)
            .map_err(|e| FentryUnavailable::Kfunc(e.to_string()))?;
        let mut object =
            aya_obj::Object::parse(&linked.object).map_err(FentryUnavailable::Parse)?;
        let text_sections: HashSet<usize> = object
            .functions
            .keys()
            .map(|(section, _)| *section)
            .collect();
        let definitions: HashMap<String, aya_obj::Map> = object.maps.drain().collect();
        let mut relocations = Vec::with_capacity(definitions.len());
        for (name, definition) in &definitions {
            let fd = maps
                .get(name)
                .ok_or_else(|| FentryUnavailable::MissingMap(name.clone()))?;
            relocations.push((name.as_str(), fd.as_raw_fd(), definition));
        }
        object
            .relocate_maps(relocations.into_iter(), &text_sections)
            .map_err(FentryUnavailable::Relocate)?;
        object
            .relocate_calls(&text_sections)
            .map_err(FentryUnavailable::Relocate)?;
        // No CO-RE relocation: rustc emits none for BPF (AYA.md), which
        // `the_object_needs_no_core_relocation` checks.
        Ok(Self { object })
    }

    /// Program `name`'s instructions, relocated.
    pub fn instructions(&self, name: &str) -> Option<&[bpf_insn]> {
        let program = self.object.programs.get(name)?;
        let function = self.object.functions.get(&program.function_key())?;
        Some(&function.instructions)
    }

    fn license(&self) -> &CString {
        &self.object.license
    }
}

/// A tracing program attached to a module function; detached when dropped.
pub struct TracingLink {
    pub program: String,
    pub kind: TracingKind,
    pub function: String,
    prog: OwnedFd,
    _link: OwnedFd,
}

impl TracingLink {
    /// This attachment's run statistics (each function's program is its own).
    pub fn run_info(&self) -> io::Result<ProgRunInfo> {
        sys::prog_run_info(self.prog.as_fd())
    }
}

impl std::fmt::Debug for TracingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} on {}",
            self.kind.name(),
            self.program,
            self.function
        )
    }
}

/// Loads program `program` as `kind` of `function` in `module` and attaches it.
pub fn attach(
    programs: &TracingPrograms,
    module: &ModuleBtf,
    program: &str,
    kind: TracingKind,
    function: &str,
) -> Result<TracingLink, FentryError> {
    let insns = programs
        .instructions(program)
        .ok_or_else(|| FentryError::MissingProgram(program.to_string()))?;
    let target = TracingTarget {
        kind,
        btf_obj: module.fd.as_fd(),
        btf_id: module.function_id(function)?,
    };
    let prog = sys::load_tracing(program, insns, programs.license(), &target).map_err(|cause| {
        FentryError::Load {
            program: program.to_string(),
            kind,
            function: function.to_string(),
            cause,
        }
    })?;
    let link = sys::attach_tracing(prog.as_fd()).map_err(|cause| FentryError::Attach {
        program: program.to_string(),
        function: function.to_string(),
        cause,
    })?;
    Ok(TracingLink {
        program: program.to_string(),
        kind,
        function: function.to_string(),
        prog,
        _link: link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> aya_obj::Object {
        aya_obj::Object::parse(super::super::attach::EBPF_OBJECT).unwrap()
    }

    #[test]
    fn the_object_needs_no_core_relocation() {
        // Relocating against an empty BTF fails for any CO-RE relocation the object carries:
        // none may, since TracingPrograms does not apply them.
        let mut object = object();
        object
            .relocate_btf(&aya_obj::btf::Btf::new())
            .expect("bufscope's eBPF object has CO-RE relocations");
    }

    #[test]
    fn programs_relocate_against_the_maps_given() {
        // Any open descriptor stands in for a map: relocation only writes its number into the
        // map-load instructions.
        let names: Vec<String> = object().maps.keys().cloned().collect();
        let mut fds = HashMap::new();
        let mut numbers = HashSet::new();
        for name in &names {
            let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            numbers.insert(fd.as_raw_fd());
            fds.insert(name.clone(), fd);
        }
        let programs = TracingPrograms::relocate(super::super::attach::EBPF_OBJECT, &fds).unwrap();
        let insns = programs.instructions("bufio_op_fexit").unwrap();
        // BPF_LD_IMM64 with src BPF_PSEUDO_MAP_FD (1) or BPF_PSEUDO_MAP_VALUE (2) carries the fd.
        let map_loads: Vec<i32> = insns
            .iter()
            .filter(|i| i.code == 0x18 && matches!(i.src_reg(), 1 | 2))
            .map(|i| i.imm)
            .collect();
        assert!(!map_loads.is_empty(), "the fexit program uses maps");
        for fd in map_loads {
            assert!(numbers.contains(&fd), "map load of fd {fd}, not one given");
        }
        assert!(programs.instructions("bufio_get_fentry").is_some());
        assert!(programs.instructions("no_such_program").is_none());

        fds.remove(&names[0]);
        assert!(matches!(
            TracingPrograms::relocate(super::super::attach::EBPF_OBJECT, &fds),
            Err(FentryUnavailable::MissingMap(name)) if name == names[0]
        ));
    }
}
