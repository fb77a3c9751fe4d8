//! Kernel stacks to names: blazesym symbolizes the addresses (kallsyms, or a vmlinux when one
//! is installed), and kallsyms' text-section markers say which frames are inside the locking
//! code, so a wait can be named by its caller the way `perf lock contention` does.

use std::{fs, ops::Range};

use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Kernel, Source},
    },
};
use bufscope_trace::Symbol;

/// Address ranges of the kernel's lock and scheduler text (`__lock_text_start..end`,
/// `__sched_text_start..end`): frames there are the lock's own slow path, not its caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockText {
    ranges: Vec<(u64, u64)>,
}

impl LockText {
    pub fn from_kallsyms() -> Self {
        fs::read_to_string("/proc/kallsyms")
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    pub fn parse(kallsyms: &str) -> Self {
        let mut marks = std::collections::HashMap::new();
        for line in kallsyms.lines() {
            let mut fields = line.split_whitespace();
            let (Some(addr), Some(_), Some(name)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if matches!(
                name,
                "__lock_text_start" | "__lock_text_end" | "__sched_text_start" | "__sched_text_end"
            ) && let Ok(addr) = u64::from_str_radix(addr, 16)
            {
                marks.insert(name.to_string(), addr);
            }
        }
        let mut ranges = Vec::new();
        for section in ["__lock_text", "__sched_text"] {
            if let (Some(&start), Some(&end)) = (
                marks.get(&format!("{section}_start")),
                marks.get(&format!("{section}_end")),
            ) && start != 0
                && start < end
            {
                ranges.push((start, end));
            }
        }
        Self { ranges }
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.ranges.iter().any(|&(s, e)| addr >= s && addr < e)
    }
}

/// Names kernel addresses again and again in one session (the live view names each new stack
/// as it comes): one symbolizer, which keeps what it parsed of kallsyms, and the data symbols and
/// lock text read once. Made afresh for each batch, symbolizing re-read and re-parsed kallsyms
/// every time: 0.3–2.3 s per refresh in a debug build, with the view frozen meanwhile.
pub struct KernelSymbols {
    symbolizer: Symbolizer,
    lock_text: LockText,
    /// /proc/kallsyms as read when the session started, for the static locks' names.
    kallsyms: String,
    data: DataSymbols,
}

impl KernelSymbols {
    pub fn new() -> Self {
        let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        Self {
            symbolizer: Symbolizer::new(),
            lock_text: LockText::parse(&kallsyms),
            data: DataSymbols::parse(&kallsyms),
            kallsyms,
        }
    }

    /// As [`symbolize_kernel`], with what was parsed before.
    pub fn symbolize(&self, addrs: &[u64]) -> (Vec<Symbol>, Option<String>) {
        symbolize_with(&self.symbolizer, addrs, &self.lock_text)
    }

    /// As [`static_lock_names`], from the kallsyms read when this was made.
    pub fn static_lock_names(&self, addrs: &[u64]) -> Vec<Symbol> {
        self.data.lock_names(&self.kallsyms, addrs)
    }
}

impl Default for KernelSymbols {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for KernelSymbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelSymbols")
            .field("lock_text", &self.lock_text)
            .finish_non_exhaustive()
    }
}

/// Symbolizes kernel addresses; addresses that cannot be named get their hex value, so a
/// stack always reads. Returns the symbols and a note when symbolization failed as a whole.
pub fn symbolize_kernel(addrs: &[u64], lock_text: &LockText) -> (Vec<Symbol>, Option<String>) {
    symbolize_with(&Symbolizer::new(), addrs, lock_text)
}

fn symbolize_with(
    symbolizer: &Symbolizer,
    addrs: &[u64],
    lock_text: &LockText,
) -> (Vec<Symbol>, Option<String>) {
    let src = Source::Kernel(Kernel {
        kallsyms: MaybeDefault::Default,
        vmlinux: MaybeDefault::Default,
        ..Kernel::default()
    });
    let (resolved, note) = match symbolizer.symbolize(&src, Input::AbsAddr(addrs)) {
        Ok(resolved) => (resolved, None),
        Err(e) => (Vec::new(), Some(format!("kernel symbols unavailable: {e}"))),
    };
    let symbols = addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let (name, module) = match resolved.get(i) {
                Some(Symbolized::Sym(sym)) if inside(sym.offset, sym.size) => (
                    if sym.offset == 0 {
                        sym.name.to_string()
                    } else {
                        format!("{}+{:#x}", sym.name, sym.offset)
                    },
                    sym.module
                        .as_ref()
                        .map(|m| m.to_string_lossy().trim_matches(['[', ']']).to_string()),
                ),
                _ => (format!("{addr:#x}"), None),
            };
            Symbol {
                addr,
                name,
                module,
                lock_text: lock_text.contains(addr),
            }
        })
        .collect();
    (symbols, note)
}

/// Whether an address `offset` bytes past a symbol's start can be in it: within its size where
/// that is known, else within [`MAX_FUNCTION_BYTES`]. An address in code kallsyms does not list
/// (a BPF trampoline, where BPF's kallsyms entries are off) otherwise takes the name of the last
/// symbol below it, however far: "__init_scratch_end+0xf886b7c" in the 6.12 test bed.
fn inside(offset: usize, size: Option<usize>) -> bool {
    match size {
        Some(size) if size > 0 => offset < size,
        _ => offset < MAX_FUNCTION_BYTES,
    }
}

/// Larger than any kernel function (the largest are a few tens of KiB).
const MAX_FUNCTION_BYTES: usize = 1 << 20;

/// Names of static locks (kernel or module data, as `perf lock contention -l` names them) from
/// /proc/kallsyms' data symbols: `rtnl_mutex`, or `symbol+0x10` inside a struct. Heap addresses
/// get no name.
pub fn static_lock_names(addrs: &[u64]) -> Vec<Symbol> {
    match fs::read_to_string("/proc/kallsyms") {
        Ok(text) => static_lock_names_in(&text, addrs),
        Err(_) => Vec::new(),
    }
}

fn static_lock_names_in(kallsyms: &str, addrs: &[u64]) -> Vec<Symbol> {
    DataSymbols::parse(kallsyms).lock_names(kallsyms, addrs)
}

/// Every kallsyms symbol in address order, marked data or not, so a data symbol is bounded by
/// the next one; names are ranges of the text they were parsed from.
#[derive(Debug, Default)]
struct DataSymbols {
    sorted: Vec<KallsymsEntry>,
}

/// One kallsyms line: address, whether it is data, and its name's and module's place in the text.
type KallsymsEntry = (u64, bool, Range<usize>, Option<Range<usize>>);

impl DataSymbols {
    fn parse(kallsyms: &str) -> Self {
        let base = kallsyms.as_ptr() as usize;
        let range = |s: &str| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let mut sorted: Vec<_> = kallsyms
            .lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let kind = f.next()?;
                let name = f.next()?;
                let module = f.next().map(|m| range(m.trim_matches(['[', ']'])));
                let data = matches!(kind, "d" | "D" | "b" | "B");
                // Per-CPU offsets and hidden (zeroed) addresses are not lock addresses.
                (addr >= 0xffff_0000_0000_0000).then(|| (addr, data, range(name), module))
            })
            .collect();
        sorted.sort_by_key(|s| s.0);
        Self { sorted }
    }

    /// Names of the addresses that fall inside a data symbol (within 4 KiB of its start);
    /// `kallsyms` is the text this was parsed from.
    fn lock_names(&self, kallsyms: &str, addrs: &[u64]) -> Vec<Symbol> {
        let all = &self.sorted;
        addrs
            .iter()
            .filter_map(|&addr| {
                let i = all.partition_point(|s| s.0 <= addr).checked_sub(1)?;
                let (start, data, name, module) = &all[i];
                let name = &kallsyms[name.clone()];
                let next = all.get(i + 1).map_or(u64::MAX, |s| s.0);
                let offset = addr - start;
                (*data && addr < next && offset < 4096).then(|| Symbol {
                    addr,
                    name: if offset == 0 {
                        name.to_string()
                    } else {
                        format!("{name}+{offset:#x}")
                    },
                    module: module.clone().map(|m| kallsyms[m].to_string()),
                    lock_text: false,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_locks_are_named_by_their_data_symbol() {
        let text = "\
ffffffff82000000 D text_mutex
ffffffff82000020 d other_thing
ffffffff82000100 T some_function
ffffffffc0010000 b pool_lock\t[dm_thin_pool]
";
        let names = static_lock_names_in(
            text,
            &[
                0xffff_ffff_8200_0000,
                0xffff_ffff_8200_0028,
                0xffff_ffff_8200_0100,
                0xffff_ffff_c001_0000,
                0xffff_8881_0000_0000,
            ],
        );
        let got: Vec<(&str, Option<&str>)> = names
            .iter()
            .map(|s| (s.name.as_str(), s.module.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("text_mutex", None),
                ("other_thing+0x8", None),
                ("pool_lock", Some("dm_thin_pool"))
            ],
            "text addresses and heap addresses get no lock name"
        );
    }

    #[test]
    fn lock_text_ranges_come_from_the_markers() {
        let text = "\
ffffffff81e00000 T __lock_text_start
ffffffff81e01000 T _raw_spin_lock
ffffffff81e08000 T __lock_text_end
ffffffff81d00000 T __sched_text_start
ffffffff81d80000 T __sched_text_end
ffffffff81000000 T _text
";
        let lock_text = LockText::parse(text);
        assert!(lock_text.contains(0xffff_ffff_81e0_1000));
        assert!(lock_text.contains(0xffff_ffff_81d4_0000));
        assert!(
            !lock_text.contains(0xffff_ffff_81e0_8000),
            "end is exclusive"
        );
        assert!(!lock_text.contains(0xffff_ffff_8100_0000));
        // Unprivileged readers see zero addresses: no ranges rather than a bogus one.
        let zeros = "0000000000000000 T __lock_text_start\n0000000000000000 T __lock_text_end\n";
        assert_eq!(LockText::parse(zeros), LockText::default());
    }

    /// Real symbolization of a real kernel address (root only: kallsyms hides addresses
    /// from others).
    #[test]
    fn names_a_kernel_function_from_kallsyms() {
        let Ok(text) = fs::read_to_string("/proc/kallsyms") else {
            crate::skip_or_fail("/proc/kallsyms is not readable");
            return;
        };
        let Some(addr) = text.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let _kind = f.next()?;
            (f.next()? == "schedule" && addr != 0).then_some(addr)
        }) else {
            crate::skip_or_fail("kallsyms shows no address for schedule (not root?)");
            return;
        };
        let (symbols, note) = symbolize_kernel(&[addr + 4], &LockText::from_kallsyms());
        assert_eq!(note, None);
        assert_eq!(symbols[0].name, "schedule+0x4");
        assert!(symbols[0].lock_text, "schedule is in the scheduler text");
    }

    #[test]
    fn an_address_far_past_the_last_symbol_below_it_keeps_its_address() {
        assert!(inside(0x52, Some(0x200)));
        assert!(!inside(0x200, Some(0x200)));
        assert!(inside(0x1000, None));
        assert!(
            !inside(0xf88_6b7c, None),
            "a trampoline 260 MB past __init_scratch_end"
        );
    }
}
