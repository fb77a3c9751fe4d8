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
/// as it comes): one symbolizer, which keeps what it parsed of kallsyms, and the kallsyms index and
/// lock text read once. Made afresh for each batch, symbolizing re-read and re-parsed kallsyms
/// every time: 0.3–2.3 s per refresh in a debug build, with the view frozen meanwhile.
pub struct KernelSymbols {
    symbolizer: Symbolizer,
    lock_text: LockText,
    /// /proc/kallsyms as read when the session started, for the static locks' names.
    kallsyms: String,
    index: KallsymsIndex,
}

impl KernelSymbols {
    pub fn new() -> Self {
        let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        Self {
            symbolizer: Symbolizer::new(),
            lock_text: LockText::parse(&kallsyms),
            index: KallsymsIndex::parse(&kallsyms),
            kallsyms,
        }
    }

    /// Names kernel addresses (stack frames); addresses that cannot be named get their hex
    /// value, so a stack always reads. Returns the symbols and a note when symbolization failed
    /// as a whole.
    pub fn symbolize(&self, addrs: &[u64]) -> (Vec<Symbol>, Option<String>) {
        let src = Source::Kernel(Kernel {
            kallsyms: MaybeDefault::Default,
            vmlinux: MaybeDefault::Default,
            ..Kernel::default()
        });
        let (resolved, note) = match self.symbolizer.symbolize(&src, Input::AbsAddr(addrs)) {
            Ok(resolved) => (resolved, None),
            Err(e) => (Vec::new(), Some(format!("kernel symbols unavailable: {e}"))),
        };
        let symbols = addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let (name, module) = match resolved.get(i) {
                    Some(Symbolized::Sym(sym)) if self.inside(addr, sym.offset, sym.size) => (
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
                    lock_text: self.lock_text.contains(addr),
                }
            })
            .collect();
        (symbols, note)
    }

    /// Whether `addr`, `offset` bytes past the start of the symbol the symbolizer found, can be
    /// in that symbol: within its size where that is known. Else (kallsyms gives no sizes) the
    /// symbol kallsyms lists last at or below `addr` must be code and the address below the
    /// next symbol, and no function is longer than [`MAX_FUNCTION_BYTES`].
    ///
    /// Code kallsyms does not list (BPF programs and trampolines, where BPF's kallsyms entries
    /// are off) otherwise takes the name of whatever symbol lies below it: a BPF trampoline
    /// became "__init_scratch_end+0xf886b7c" in the 6.12 test bed, and a BPF program, loaded
    /// in the module area, "__kstrtabns_dm_bufio_set_sector_offset+0x5d76" (module rodata) in
    /// 7.3's, so that a `--stack bufio` filter kept waits in wait4.
    fn inside(&self, addr: u64, offset: usize, size: Option<usize>) -> bool {
        match size {
            Some(size) if size > 0 => offset < size,
            _ => offset < MAX_FUNCTION_BYTES && self.index.in_code(addr).unwrap_or(true),
        }
    }

    /// Names of static locks (kernel or module data, as `perf lock contention -l` names them)
    /// from the kallsyms read when this was made: `rtnl_mutex`, or `symbol+0x10` inside a
    /// struct. Heap addresses get no name.
    pub fn static_lock_names(&self, addrs: &[u64]) -> Vec<Symbol> {
        self.index.lock_names(&self.kallsyms, addrs)
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

/// Larger than any kernel function (the largest are a few tens of KiB).
const MAX_FUNCTION_BYTES: usize = 1 << 20;

/// Every kallsyms symbol in address order, with what kind of symbol it is, so that a symbol is
/// bounded by the next one; names are ranges of the text they were parsed from.
#[derive(Debug, Default)]
struct KallsymsIndex {
    sorted: Vec<KallsymsEntry>,
    /// `_etext`: the kernel image's symbols from here on are data, whatever letter kallsyms
    /// gives them (7.3 lists `tasklist_lock` and `mmlist_lock` as `T`).
    text_end: Option<u64>,
}

/// What a kallsyms symbol's type letter says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SymbolKind {
    /// `t`, `T`, `w`, `W`: a function.
    Code,
    /// `d`, `D`, `b`, `B`: writable data, where locks live.
    Data,
    /// Read-only data, section markers and the rest.
    Other,
}

impl SymbolKind {
    fn of(letter: &str) -> Self {
        match letter {
            "t" | "T" | "w" | "W" => Self::Code,
            "d" | "D" | "b" | "B" => Self::Data,
            _ => Self::Other,
        }
    }
}

/// One kallsyms line: address, kind, and its name's and module's place in the text.
type KallsymsEntry = (u64, SymbolKind, Range<usize>, Option<Range<usize>>);

impl KallsymsIndex {
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
                // Per-CPU offsets and hidden (zeroed) addresses are not lock addresses.
                (addr >= 0xffff_0000_0000_0000)
                    .then(|| (addr, SymbolKind::of(kind), range(name), module))
            })
            .collect();
        sorted.sort_by_key(|s| s.0);
        let text_end = sorted
            .iter()
            .find(|s| s.3.is_none() && &kallsyms[s.2.clone()] == "_etext")
            .map(|s| s.0);
        Self { sorted, text_end }
    }

    /// Names of the addresses that fall inside a data symbol (within 4 KiB of its start, below
    /// the next symbol): one kallsyms calls data, or any of the kernel image's past `_etext`;
    /// `kallsyms` is the text this was parsed from.
    fn lock_names(&self, kallsyms: &str, addrs: &[u64]) -> Vec<Symbol> {
        let all = &self.sorted;
        addrs
            .iter()
            .filter_map(|&addr| {
                let i = all.partition_point(|s| s.0 <= addr).checked_sub(1)?;
                let (start, kind, name, module) = &all[i];
                let name = &kallsyms[name.clone()];
                let next = all.get(i + 1).map_or(u64::MAX, |s| s.0);
                let offset = addr - start;
                let data = *kind == SymbolKind::Data
                    || (module.is_none() && self.text_end.is_some_and(|end| *start >= end));
                (data && addr < next && offset < 4096).then(|| Symbol {
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

    /// Whether `addr` lies in a function kallsyms lists: the last symbol at or below it is code
    /// and the next one is above it. `None` when kallsyms gave no addresses (not root).
    fn in_code(&self, addr: u64) -> Option<bool> {
        if self.sorted.is_empty() {
            return None;
        }
        let i = match self.sorted.partition_point(|s| s.0 <= addr).checked_sub(1) {
            Some(i) => i,
            None => return Some(false),
        };
        // Aliases share an address: any of them being code makes it code.
        let at = self.sorted[i].0;
        let code = self.sorted[..=i]
            .iter()
            .rev()
            .take_while(|s| s.0 == at)
            .any(|s| s.1 == SymbolKind::Code);
        let next = self.sorted.get(i + 1).map_or(u64::MAX, |s| s.0);
        Some(code && addr < next)
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
ffffffff82000200 T _etext
ffffffff82001000 T tasklist_lock
ffffffffc0010000 b pool_lock\t[dm_thin_pool]
ffffffffc0010100 t pool_function\t[dm_thin_pool]
";
        let names = KallsymsIndex::parse(text).lock_names(
            text,
            &[
                0xffff_ffff_8200_0000,
                0xffff_ffff_8200_0028,
                0xffff_ffff_8200_0100,
                0xffff_ffff_8200_1000,
                0xffff_ffff_c001_0000,
                0xffff_ffff_c001_0100,
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
                ("tasklist_lock", None),
                ("pool_lock", Some("dm_thin_pool"))
            ],
            "text addresses and heap addresses get no lock name; 7.3 calls some data `T`"
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
        let (symbols, note) = KernelSymbols::new().symbolize(&[addr + 4]);
        assert_eq!(note, None);
        assert_eq!(symbols[0].name, "schedule+0x4");
        assert!(symbols[0].lock_text, "schedule is in the scheduler text");
    }

    #[test]
    fn only_an_address_inside_a_listed_function_is_code() {
        // 7.3's test bed: a BPF program loaded in the module area, above dm_bufio's rodata.
        let text = "\
ffffffff81000000 T _stext
ffffffff81000100 T schedule
ffffffff81000100 t __pfx_alias
ffffffff82000000 D text_mutex
ffffffffc0010000 t dm_bufio_lock\t[dm_bufio]
ffffffffc0010080 t dm_bufio_unlock\t[dm_bufio]
ffffffffc0012000 r __kstrtabns_dm_bufio_set_sector_offset\t[dm_bufio]
";
        let kallsyms = KallsymsIndex::parse(text);
        assert_eq!(kallsyms.in_code(0xffff_ffff_8100_0104), Some(true));
        assert_eq!(kallsyms.in_code(0xffff_ffff_c001_0090), Some(true));
        assert_eq!(
            kallsyms.in_code(0xffff_ffff_c001_7d76),
            Some(false),
            "past the module's rodata: a BPF program, not dm-bufio"
        );
        assert_eq!(kallsyms.in_code(0xffff_ffff_8200_0008), Some(false), "data");
        assert_eq!(
            kallsyms.in_code(0xffff_ffff_8000_0000),
            Some(false),
            "below all"
        );
        assert_eq!(
            KallsymsIndex::parse("").in_code(0xffff_ffff_8100_0104),
            None
        );
        let hidden = "0000000000000000 T schedule\n";
        assert_eq!(
            KallsymsIndex::parse(hidden).in_code(0x100),
            None,
            "not root"
        );
    }
}
