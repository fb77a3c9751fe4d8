//! Calls from bufscope's eBPF programs to kernel functions (kfuncs), which aya 0.14 cannot load:
//! its object parser knows helper calls and calls between the object's own functions, nothing
//! else (the kfunc loader came with a later aya line, whose rust-version no toolchain here has).
//!
//! A kfunc is declared in the eBPF crate as an `extern "C"` function. bpf-linker leaves each call
//! to it as `call -1` (a BPF-to-BPF call, source register 1) with an `R_BPF_64_32` relocation
//! against the undefined symbol of that name. The kernel wants instead source register 2
//! (BPF_PSEUDO_KFUNC_CALL) and, as the immediate, the function's type id in vmlinux's BTF.
//! [`link_kfuncs`] rewrites the object's bytes so before any loader sees them:
//! - a kfunc this kernel has becomes a kfunc call to its BTF id;
//! - a kfunc it lacks (older kernels) becomes `r0 = 0`: the call returns NULL, which every
//!   caller already handles (the kfuncs bufscope calls may return NULL), as libbpf does for a
//!   weak kfunc it cannot find.
//!
//! aya's relocation then passes the rewritten instructions by: a source register other than 1 is
//! no call to link, and the relocation's undefined symbol is no map. Only the kfuncs in
//! [`KFUNCS`] are rewritten; any other undefined call target is an error, named.

use std::borrow::Cow;

use btf_rs::{Btf, Type};
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

/// The kernel functions bufscope's programs may call, and the kernel they came with.
pub const KFUNCS: &[(&str, &str)] = &[
    // The slab cache an address belongs to: names a lock inside a slab object ("&dentry").
    ("bpf_get_kmem_cache", "Linux 6.13"),
    // A task by thread id, with a reference, and the reference's release: a lock owner's kernel
    // stack (`--owner-stacks`).
    ("bpf_task_from_pid", "Linux 6.2"),
    ("bpf_task_release", "Linux 6.2"),
];

/// BPF_JMP | BPF_CALL: the opcode of both calls.
const CALL: u8 = 0x85;
/// BPF_PSEUDO_CALL, as bpf-linker leaves an extern call.
const PSEUDO_CALL: u8 = 1;
/// BPF_PSEUDO_KFUNC_CALL.
const PSEUDO_KFUNC_CALL: u8 = 2;
/// BPF_ALU64 | BPF_MOV | BPF_K: `r0 = imm` with the destination register 0.
const MOV64_IMM: u8 = 0xb7;

/// Why the object's kfunc calls cannot be linked: a mismatched or damaged build.
#[derive(Debug, thiserror::Error)]
pub enum KfuncError {
    #[error("parsing bufscope's eBPF object: {0}")]
    Parse(#[source] object::Error),
    #[error("a call to {name} at byte {offset} of section {section} is not a BPF call instruction")]
    NotACall {
        name: String,
        section: String,
        offset: u64,
    },
    #[error(
        "the eBPF programs call {0}, which is no kernel function bufscope knows (kfunc::KFUNCS)"
    )]
    Unknown(String),
}

/// The object with its kfunc calls linked for one kernel, and what this kernel offered.
#[derive(Debug)]
pub struct Linked<'a> {
    pub object: Cow<'a, [u8]>,
    /// Each kfunc called, with its BTF id here, or `None` where this kernel lacks it.
    pub kfuncs: Vec<(&'static str, Option<u32>)>,
}

impl Linked<'_> {
    /// Whether this kernel has the kfunc `name`.
    pub fn has(&self, name: &str) -> bool {
        self.kfuncs.iter().any(|(k, id)| *k == name && id.is_some())
    }
}

/// A relocation against an undefined symbol: where it points, and the symbol's name.
struct ExternCall {
    section: String,
    /// The instruction's offset in its section...
    offset: u64,
    /// ...and in the file.
    at: usize,
    name: String,
}

/// Every relocation of `file` against an undefined symbol: bpf-linker's extern calls.
fn extern_calls(file: &object::File) -> Vec<ExternCall> {
    let mut calls = Vec::new();
    for section in file.sections() {
        let Some((start, _)) = section.file_range() else {
            continue;
        };
        for (offset, relocation) in section.relocations() {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let Ok(symbol) = file.symbol_by_index(index) else {
                continue;
            };
            if symbol.is_undefined() {
                calls.push(ExternCall {
                    section: section.name().unwrap_or("?").to_string(),
                    offset,
                    at: (start + offset) as usize,
                    name: symbol.name().unwrap_or_default().to_string(),
                });
            }
        }
    }
    calls
}

/// Rewrites every call to a kfunc of [`KFUNCS`] in `elf` for the kernel whose BTF is `vmlinux`.
pub fn link_kfuncs<'a>(elf: &'a [u8], vmlinux: Option<&Btf>) -> Result<Linked<'a>, KfuncError> {
    let file = object::File::parse(elf).map_err(KfuncError::Parse)?;
    let mut patches = Vec::new();
    let mut kfuncs: Vec<(&'static str, Option<u32>)> = Vec::new();
    for call in extern_calls(&file) {
        let &(kfunc, _) = KFUNCS
            .iter()
            .find(|(k, _)| *k == call.name)
            .ok_or_else(|| KfuncError::Unknown(call.name.clone()))?;
        let at = call.at;
        let insn = elf
            .get(at..at + 8)
            .filter(|i| i[0] == CALL && i[1] >> 4 == PSEUDO_CALL && i[1] & 0x0f == 0);
        if insn.is_none() {
            return Err(KfuncError::NotACall {
                name: call.name,
                section: call.section,
                offset: call.offset,
            });
        }
        let id = match kfuncs.iter().find(|(k, _)| *k == kfunc) {
            Some(&(_, id)) => id,
            None => {
                let id = vmlinux.and_then(|btf| function_id(btf, kfunc));
                kfuncs.push((kfunc, id));
                id
            }
        };
        patches.push((at, id));
    }
    if patches.is_empty() {
        return Ok(Linked {
            object: Cow::Borrowed(elf),
            kfuncs,
        });
    }
    let mut bytes = elf.to_vec();
    for (at, id) in patches {
        let insn = &mut bytes[at..at + 8];
        match id {
            Some(id) => {
                insn[1] = PSEUDO_KFUNC_CALL << 4;
                insn[4..8].copy_from_slice(&id.to_le_bytes());
            }
            None => insn.copy_from_slice(&[MOV64_IMM, 0, 0, 0, 0, 0, 0, 0]),
        }
    }
    Ok(Linked {
        object: Cow::Owned(bytes),
        kfuncs,
    })
}

/// The type id of the function `name` in `btf`.
fn function_id(btf: &Btf, name: &str) -> Option<u32> {
    btf.resolve_ids_by_name(name)
        .unwrap_or_default()
        .into_iter()
        .find(|&id| matches!(btf.resolve_type_by_id(id), Ok(Type::Func(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::attach::EBPF_OBJECT;

    /// Every instruction the kfunc relocations point at, as (section, byte offset, bytes).
    /// Each kfunc call in `elf`: the function, where, and the instruction.
    fn kfunc_calls(elf: &[u8]) -> Vec<(String, String, u64, [u8; 8])> {
        let file = object::File::parse(elf).unwrap();
        extern_calls(&file)
            .into_iter()
            .filter(|c| KFUNCS.iter().any(|(k, _)| *k == c.name))
            .map(|c| {
                let insn = elf[c.at..c.at + 8].try_into().unwrap();
                (c.name.to_string(), c.section, c.offset, insn)
            })
            .collect()
    }

    #[test]
    fn the_programs_call_kfuncs_as_bpf_linker_leaves_them() {
        let calls = kfunc_calls(EBPF_OBJECT);
        // Every kfunc bufscope knows is called: a name left in KFUNCS unused would be linked
        // for nothing.
        for (kfunc, _) in KFUNCS {
            assert!(
                calls.iter().any(|(name, ..)| name == kfunc),
                "the programs call {kfunc}"
            );
        }
        for (name, section, offset, insn) in &calls {
            assert_eq!(
                (
                    insn[0],
                    insn[1],
                    i32::from_le_bytes(insn[4..8].try_into().unwrap())
                ),
                (CALL, PSEUDO_CALL << 4, -1),
                "{name} at {section}+{offset}"
            );
        }
    }

    #[test]
    fn a_kernel_with_the_kfunc_gets_kfunc_calls_to_its_btf_id() {
        let Ok(vmlinux) = Btf::from_file("/sys/kernel/btf/vmlinux") else {
            crate::skip_or_fail("no /sys/kernel/btf/vmlinux here");
            return;
        };
        let linked = link_kfuncs(EBPF_OBJECT, Some(&vmlinux)).unwrap();
        let expected: Vec<(&str, Option<u32>)> = KFUNCS
            .iter()
            .map(|(name, _)| (*name, function_id(&vmlinux, name)))
            .collect();
        assert_eq!(linked.kfuncs, expected);
        let calls = kfunc_calls(&linked.object);
        assert_eq!(calls.len(), kfunc_calls(EBPF_OBJECT).len());
        for (name, section, offset, insn) in calls {
            match function_id(&vmlinux, &name) {
                Some(id) => assert_eq!(
                    (
                        insn[0],
                        insn[1],
                        u32::from_le_bytes(insn[4..8].try_into().unwrap())
                    ),
                    (CALL, PSEUDO_KFUNC_CALL << 4, id),
                    "{name} at {section}+{offset}"
                ),
                None => assert_eq!(insn, [MOV64_IMM, 0, 0, 0, 0, 0, 0, 0]),
            }
        }
        // Nothing else moved.
        let changed = EBPF_OBJECT
            .iter()
            .zip(linked.object.iter())
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            changed <= 5 * kfunc_calls(EBPF_OBJECT).len(),
            "{changed} bytes changed"
        );
    }

    #[test]
    fn a_kernel_without_the_kfunc_gets_a_null_result_in_its_place() {
        let linked = link_kfuncs(EBPF_OBJECT, None).unwrap();
        let none: Vec<(&str, Option<u32>)> = KFUNCS.iter().map(|(name, _)| (*name, None)).collect();
        assert_eq!(linked.kfuncs, none);
        assert!(KFUNCS.iter().all(|(name, _)| !linked.has(name)));
        for (_, _, _, insn) in kfunc_calls(&linked.object) {
            assert_eq!(insn, [MOV64_IMM, 0, 0, 0, 0, 0, 0, 0]);
        }
        // aya still parses and relocates the result.
        aya_obj::Object::parse(&linked.object).expect("the rewritten object parses");
    }
}
