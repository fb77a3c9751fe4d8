//! dm-bufio on the running kernel: which of its functions can be probed (a compatibility table
//! checked against /proc/kallsyms), where its private struct fields are (from the module's split
//! BTF), and where each client's locks are, so that lock waits can be named.

use std::{collections::HashSet, fs, path::Path};

use btf_rs::{Btf, Type};
use bufscope_abi::{BufioOffsets, ClientEvent};
use bufscope_trace::ClientLocks;

/// Where dm-bufio's split BTF lives when the module is loaded (or built in: then its types are
/// in vmlinux).
pub const MODULE_BTF: &str = "/sys/kernel/btf/dm_bufio";
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// dm-bufio's cache size parameter: the bytes of buffers all its clients together keep before
/// its global cleanup evicts (the module computes a default from memory at load, so it is never
/// 0 once loaded).
pub const CACHE_SIZE_PARAMETER: &str = "/sys/module/dm_bufio/parameters/max_cache_size_bytes";

/// dm-bufio's cache size in bytes now; `None` where the module is not loaded (or the file does
/// not read as a number).
pub fn cache_size_bytes() -> Option<u64> {
    fs::read_to_string(CACHE_SIZE_PARAMETER)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&bytes| bytes > 0)
}

/// What a probe point is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An exported operation: entry program plus the shared return program.
    Operation,
    /// Runs only on a cache miss: splits hits from misses.
    Miss,
    /// dm_bufio_lock / dm_bufio_unlock entries: client-mutex hold time.
    ClientMutex,
}

/// One row of the compatibility table: a kernel function and the program attached to it.
#[derive(Clone, Copy, Debug)]
pub struct ProbePoint {
    pub function: &'static str,
    pub program: &'static str,
    pub role: Role,
    /// Kernels that have it, for messages about a missing one.
    pub kernels: &'static str,
}

const fn op(function: &'static str, program: &'static str, kernels: &'static str) -> ProbePoint {
    ProbePoint {
        function,
        program,
        role: Role::Operation,
        kernels,
    }
}

/// dm-bufio's exported API, as in DM-BUFIO.md §6 (6.1 and 6.12).
pub const OPERATIONS: &[ProbePoint] = &[
    op("dm_bufio_get", "bufio_get", "all"),
    op("dm_bufio_read", "bufio_read", "all"),
    op("dm_bufio_read_with_ioprio", "bufio_read", "6.8+"),
    op("dm_bufio_new", "bufio_new", "all"),
    op("dm_bufio_prefetch", "bufio_prefetch", "all"),
    op("dm_bufio_prefetch_with_ioprio", "bufio_prefetch", "6.8+"),
    op("dm_bufio_release", "bufio_release", "all"),
    op("dm_bufio_mark_buffer_dirty", "bufio_mark_dirty", "all"),
    op(
        "dm_bufio_mark_partial_buffer_dirty",
        "bufio_mark_partial_dirty",
        "all",
    ),
    op(
        "dm_bufio_write_dirty_buffers_async",
        "bufio_write_dirty_async",
        "all",
    ),
    op("dm_bufio_write_dirty_buffers", "bufio_write_dirty", "all"),
    op("dm_bufio_forget", "bufio_forget", "all"),
    op("dm_bufio_forget_buffers", "bufio_forget_buffers", "all"),
    op("dm_bufio_client_create", "bufio_client_create", "all"),
    op("dm_bufio_client_destroy", "bufio_client_destroy", "all"),
    // dm-bufio's background work: static functions, each a work item's function (never
    // inlined), whose client mutex holds readers wait behind.
    op(
        "do_global_cleanup",
        "bufio_global_cleanup",
        "all (a static function)",
    ),
    op(
        "shrink_work",
        "bufio_shrink_work",
        "all (a static function)",
    ),
    op("work_fn", "bufio_age_cleanup", "all (a static function)"),
];

/// The internal points: each is optional, and each missing one only loses a detail.
pub fn internal_points(design: Design) -> [ProbePoint; 3] {
    let miss = match design {
        // 6.4+: __bufio_new runs only after cache_get missed.
        Design::Sharded => ProbePoint {
            function: "__bufio_new",
            program: bufscope_abi::names::MISS_PROGRAM,
            role: Role::Miss,
            kernels: "6.4+",
        },
        // Before 6.4 __bufio_new runs for hits too; __link_buffer inserts a new buffer.
        Design::Classic => ProbePoint {
            function: "__link_buffer",
            program: bufscope_abi::names::MISS_PROGRAM,
            role: Role::Miss,
            kernels: "before 6.4",
        },
    };
    [
        miss,
        ProbePoint {
            function: "dm_bufio_lock",
            program: bufscope_abi::names::LOCK_PROGRAM,
            role: Role::ClientMutex,
            kernels: "all (a static function; may be inlined)",
        },
        ProbePoint {
            function: "dm_bufio_unlock",
            program: bufscope_abi::names::UNLOCK_PROGRAM,
            role: Role::ClientMutex,
            kernels: "all (a static function; may be inlined)",
        },
    ]
}

/// Which dm-bufio design the kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    /// Before 6.4: one client mutex for everything.
    Classic,
    /// 6.4 on: per-tree rw-locks, the client mutex for misses and writeback.
    Sharded,
}

impl Design {
    pub fn describe(self) -> &'static str {
        match self {
            Design::Classic => "one client mutex (before 6.4)",
            Design::Sharded => "sharded tree locks (6.4+)",
        }
    }
}

/// dm-bufio's functions in /proc/kallsyms (module or built-in), without the clone suffixes.
#[derive(Debug, Default)]
pub struct Symbols {
    names: HashSet<String>,
}

impl Symbols {
    pub fn from_kallsyms() -> std::io::Result<Self> {
        Ok(Self::parse(&fs::read_to_string("/proc/kallsyms")?))
    }

    /// Keeps text symbols of the dm_bufio module, and built-in ones whose names say dm-bufio
    /// or are the internal functions bufscope probes. `shrink_work` and `work_fn` are names
    /// other built-in code has too: they are kept from the module only.
    pub fn parse(kallsyms: &str) -> Self {
        let wanted_builtin: HashSet<&str> = OPERATIONS
            .iter()
            .map(|p| p.function)
            .filter(|f| !matches!(*f, "shrink_work" | "work_fn"))
            .chain(["__bufio_new", "__link_buffer", "cache_get"])
            .collect();
        let mut names = HashSet::new();
        for line in kallsyms.lines() {
            let mut fields = line.split_whitespace();
            let (Some(_addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T") {
                continue;
            }
            let module = fields.next();
            if module == Some("[dm_bufio]")
                || (module.is_none()
                    && (wanted_builtin.contains(name) || name.starts_with("dm_bufio_")))
            {
                names.insert(name.to_string());
            }
        }
        Self { names }
    }

    pub fn has(&self, function: &str) -> bool {
        self.names.contains(function)
    }

    /// dm-bufio is present at all (loaded module or built in).
    pub fn present(&self) -> bool {
        self.has("dm_bufio_client_create")
    }

    /// The design, told by the 6.4 rework's lock-free lookup function.
    pub fn design(&self) -> Design {
        if self.has("cache_get") {
            Design::Sharded
        } else {
            Design::Classic
        }
    }
}

/// Why dm-bufio's struct layout could not be read from BTF. Each message is complete, its cause
/// included: they reach the user as text (why no dm-bufio probe was attached, in record, live,
/// doctor and trace files), never through a chain of sources.
#[derive(Debug, thiserror::Error)]
pub enum BtfLayoutError {
    #[error("reading {path}: {cause}")]
    Read {
        path: &'static str,
        cause: btf_rs::Error,
    },
    /// dm-bufio's types are not in vmlinux, and it has no split BTF of its own.
    #[error(
        "{cause} (and {MODULE_BTF} is missing: is dm_bufio loaded, with \
         CONFIG_DEBUG_INFO_BTF_MODULES?)"
    )]
    NoModuleBtf { cause: Box<BtfLayoutError> },
    #[error("struct {0} is not in the BTF")]
    NoStruct(&'static str),
    #[error("no field {0}")]
    NoField(&'static str),
    #[error("field {0} is a bitfield")]
    Bitfield(&'static str),
    #[error("field {0} is not a struct")]
    NotAStruct(&'static str),
    #[error("an unnamed type")]
    UnnamedType,
    #[error("a typedef chain too long")]
    TypedefChainTooLong,
    #[error("dm_buffer_cache.trees is not an array")]
    TreesNotAnArray,
    #[error("dm_buffer_cache.trees is not an array of structs")]
    TreesNotStructs,
    /// Resolving a type id or name failed.
    #[error(transparent)]
    Btf(#[from] btf_rs::Error),
}

/// Where dm-bufio's fields and locks are on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Handed to the eBPF programs before load.
    pub offsets: BufioOffsets,
    /// Offset of the client spinlock (`spinlock`, Linux 6.0 on), which no-sleep clients take
    /// instead of the mutex.
    pub spinlock: Option<u64>,
    /// Tree locks (6.4+): offset of `cache.trees[0]`'s lock in the client, and the array stride.
    pub trees: Option<(u64, u64)>,
}

/// dm-bufio's types: its module's split BTF, or vmlinux's when it is built in.
pub struct BufioBtf {
    pub btf: Btf,
    /// The kernel BTF object that holds them: "dm_bufio" or "vmlinux".
    pub object: &'static str,
}

impl std::fmt::Debug for BufioBtf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufioBtf({})", self.object)
    }
}

impl BufioBtf {
    /// Reads vmlinux's BTF and, when dm-bufio is a module with BTF, its split BTF on top.
    pub fn read() -> Result<Self, BtfLayoutError> {
        let base = Btf::from_file(VMLINUX_BTF).map_err(|cause| BtfLayoutError::Read {
            path: VMLINUX_BTF,
            cause,
        })?;
        if !Path::new(MODULE_BTF).exists() {
            return Ok(Self {
                btf: base,
                object: "vmlinux",
            });
        }
        let module =
            Btf::from_split_file(MODULE_BTF, &base).map_err(|cause| BtfLayoutError::Read {
                path: MODULE_BTF,
                cause,
            })?;
        Ok(Self {
            btf: module,
            object: "dm_bufio",
        })
    }
}

impl Layout {
    /// Reads the offsets from vmlinux BTF and dm-bufio's split BTF (or vmlinux alone when
    /// dm-bufio is built in).
    pub fn from_sys_fs() -> Result<Self, BtfLayoutError> {
        Self::of(&BufioBtf::read()?)
    }

    pub fn of(types: &BufioBtf) -> Result<Self, BtfLayoutError> {
        let layout = Self::from_btf(&types.btf);
        if types.object == "vmlinux" {
            layout.map_err(|e| BtfLayoutError::NoModuleBtf { cause: Box::new(e) })
        } else {
            layout
        }
    }

    pub fn from_btf(btf: &Btf) -> Result<Self, BtfLayoutError> {
        let client = find_struct(btf, "dm_bufio_client")?;
        let buffer = find_struct(btf, "dm_buffer")?;
        let bdev = find_struct(btf, "block_device")?;
        let offsets = BufioOffsets {
            client_bdev: field(btf, &client, "bdev")?.0,
            bdev_dev: field(btf, &bdev, "bd_dev")?.0,
            client_block_size: field(btf, &client, "block_size")?.0,
            client_lock: field(btf, &client, "lock")?.0,
            client_num_locks: field(btf, &client, "cache.num_locks")
                .map(|f| f.0)
                .unwrap_or(BufioOffsets::ABSENT),
            buffer_block: field(btf, &buffer, "block")?.0,
            buffer_client: field(btf, &buffer, "c")?.0,
            client_no_sleep: field(btf, &client, "no_sleep")
                .map(|f| f.0)
                .unwrap_or(BufioOffsets::ABSENT),
            client_spinlock: field(btf, &client, "spinlock")
                .map(|f| f.0)
                .unwrap_or(BufioOffsets::ABSENT),
        };
        // 6.0 on: a no-sleep client's lock.
        let spinlock = field(btf, &client, "spinlock").ok().map(|f| u64::from(f.0));
        let trees = match field(btf, &client, "cache.trees") {
            Ok((offset, Type::Array(array))) => {
                let element = resolve(btf, btf.resolve_chained_type(&array)?)?;
                let Type::Struct(tree) = element else {
                    return Err(BtfLayoutError::TreesNotStructs);
                };
                let (lock, _) =
                    field(btf, &tree, "u.lock").or_else(|_| field(btf, &tree, "lock"))?;
                Some((u64::from(offset + lock), tree.size() as u64))
            }
            Ok(_) => return Err(BtfLayoutError::TreesNotAnArray),
            Err(_) => None,
        };
        Ok(Self {
            offsets,
            spinlock,
            trees,
        })
    }

    /// The lock addresses of the client at `client`, given what the eBPF side read from it.
    pub fn client_locks(&self, client: u64, num_locks: u32, no_sleep: bool) -> ClientLocks {
        let (first_tree, tree_stride) = self.trees.unwrap_or((0, 0));
        ClientLocks {
            mutex: client + u64::from(self.offsets.client_lock),
            spinlock: self.spinlock.map_or(0, |offset| client + offset),
            no_sleep,
            trees: if self.trees.is_some() { num_locks } else { 0 },
            first_tree: if self.trees.is_some() {
                client + first_tree
            } else {
                0
            },
            tree_stride,
        }
    }
}

/// "major:minor" of a client event's device.
pub fn device_name(event: &ClientEvent) -> String {
    let (major, minor) = ClientEvent::major_minor(event.dev);
    format!("{major}:{minor}")
}

pub(crate) fn find_struct(btf: &Btf, name: &'static str) -> Result<btf_rs::Struct, BtfLayoutError> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|_| BtfLayoutError::NoStruct(name))?;
    types
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or(BtfLayoutError::NoStruct(name))
}

/// Follows typedefs and qualifiers to the type underneath.
fn resolve(btf: &Btf, mut t: Type) -> Result<Type, BtfLayoutError> {
    for _ in 0..16 {
        match t {
            Type::Typedef(_)
            | Type::Volatile(_)
            | Type::Const(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                let inner = t.as_btf_type().ok_or(BtfLayoutError::UnnamedType)?;
                t = btf.resolve_chained_type(inner)?;
            }
            other => return Ok(other),
        }
    }
    Err(BtfLayoutError::TypedefChainTooLong)
}

/// Byte offset and type of a member path like "cache.num_locks", looking through anonymous
/// structs and unions as C does.
pub(crate) fn field(
    btf: &Btf,
    s: &btf_rs::Struct,
    path: &'static str,
) -> Result<(u32, Type), BtfLayoutError> {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let (bits, t) = member(btf, s, head, 0)?.ok_or(BtfLayoutError::NoField(path))?;
    if bits % 8 != 0 {
        return Err(BtfLayoutError::Bitfield(head));
    }
    let offset = bits / 8;
    match rest {
        None => Ok((offset, t)),
        Some(rest) => match t {
            Type::Struct(inner) | Type::Union(inner) => {
                let (inner_offset, t) = field(btf, &inner, rest)?;
                Ok((offset + inner_offset, t))
            }
            _ => Err(BtfLayoutError::NotAStruct(head)),
        },
    }
}

fn member(
    btf: &Btf,
    s: &btf_rs::Struct,
    name: &str,
    depth: u32,
) -> Result<Option<(u32, Type)>, BtfLayoutError> {
    if depth > 4 {
        return Ok(None);
    }
    for m in &s.members {
        let m_name = btf.resolve_name(m).unwrap_or_default();
        let t = resolve(btf, btf.resolve_chained_type(m)?)?;
        if m_name == name {
            return Ok(Some((m.bit_offset(), t)));
        }
        if m_name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = &t
            && let Some((bits, found)) = member(btf, inner, name, depth + 1)?
        {
            return Ok(Some((m.bit_offset() + bits, found)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_keeps_dm_bufio_functions_and_tells_the_design() {
        let text = "\
ffffffffc0400000 t cache_get\t[dm_bufio]
ffffffffc0400100 T dm_bufio_read\t[dm_bufio]
ffffffffc0400200 T dm_bufio_client_create\t[dm_bufio]
ffffffffc0400300 t __bufio_new\t[dm_bufio]
ffffffffc0400400 d dm_bufio_cache_size\t[dm_bufio]
ffffffff81000000 T _text
ffffffff81000100 T schedule
ffffffffc0500000 T dm_thin_foo\t[dm_thin_pool]
";
        let symbols = Symbols::parse(text);
        assert!(symbols.present());
        assert!(symbols.has("dm_bufio_read") && symbols.has("__bufio_new"));
        assert!(
            !symbols.has("dm_bufio_cache_size"),
            "data symbols are not functions"
        );
        assert!(!symbols.has("schedule") && !symbols.has("dm_thin_foo"));
        assert_eq!(symbols.design(), Design::Sharded);

        let builtin = Symbols::parse(
            "\
ffffffff81200000 t do_global_cleanup
ffffffff81200100 t work_fn
ffffffff81300000 t shrink_work\t[dm_bufio]
",
        );
        assert!(builtin.has("do_global_cleanup") && builtin.has("shrink_work"));
        assert!(
            !builtin.has("work_fn"),
            "a built-in work_fn may be anyone's: dm-bufio's is taken from its module only"
        );

        let classic = Symbols::parse("ffffffffc0400200 T dm_bufio_client_create\t[dm_bufio]\n");
        assert_eq!(classic.design(), Design::Classic);
        assert!(!Symbols::parse("ffffffff81000000 T _text\n").present());
    }

    #[test]
    fn client_locks_follow_the_layout() {
        let layout = Layout {
            offsets: BufioOffsets {
                client_lock: 16,
                ..BufioOffsets::UNSET
            },
            spinlock: Some(48),
            trees: Some((384, 64)),
        };
        let locks = layout.client_locks(0xffff_8880_1000_0000, 32, true);
        assert_eq!(locks.mutex, 0xffff_8880_1000_0010);
        assert_eq!(
            (locks.spinlock, locks.no_sleep),
            (0xffff_8880_1000_0030, true)
        );
        assert_eq!(
            locks.classify(0xffff_8880_1000_0030),
            Some(bufscope_trace::ClientLock::Spinlock)
        );
        assert_eq!(locks.first_tree, 0xffff_8880_1000_0180);
        assert_eq!(
            locks.classify(0xffff_8880_1000_0180 + 17 * 64),
            Some(bufscope_trace::ClientLock::Tree(17))
        );
        assert_eq!(
            locks.classify(0xffff_8880_1000_0180 + 32 * 64),
            None,
            "past the last tree"
        );
        assert_eq!(
            locks.classify(0xffff_8880_1000_0181),
            None,
            "inside a tree, not its lock"
        );

        let classic = Layout {
            trees: None,
            ..layout
        };
        let locks = classic.client_locks(0x1000, 0, false);
        assert_eq!((locks.mutex, locks.trees), (0x1010, 0));
        assert_eq!(
            locks.classify(0x1010),
            Some(bufscope_trace::ClientLock::Mutex)
        );
    }

    #[test]
    fn a_built_in_lookup_says_the_module_btf_is_missing() {
        let err = BtfLayoutError::NoModuleBtf {
            cause: Box::new(BtfLayoutError::NoStruct("dm_bufio_client")),
        };
        assert_eq!(
            err.to_string(),
            "struct dm_bufio_client is not in the BTF (and /sys/kernel/btf/dm_bufio is missing: \
             is dm_bufio loaded, with CONFIG_DEBUG_INFO_BTF_MODULES?)"
        );
    }

    /// On a kernel with BTF, the struct-reading code must at least find vmlinux's own
    /// `block_device.bd_dev`; dm-bufio itself is checked in the VM test bed.
    #[test]
    fn reads_a_real_field_from_vmlinux_btf() {
        let Ok(btf) = Btf::from_file(VMLINUX_BTF) else {
            crate::skip_or_fail(&format!("{VMLINUX_BTF} is not readable here"));
            return;
        };
        let bdev = find_struct(&btf, "block_device").expect("block_device");
        let (offset, t) = field(&btf, &bdev, "bd_dev").expect("bd_dev");
        assert!(offset > 0 && offset < 1024, "bd_dev at {offset}");
        assert!(matches!(t, Type::Int(_)), "dev_t is an integer: {t:?}");
        let task = find_struct(&btf, "task_struct").expect("task_struct");
        assert!(field(&btf, &task, "no_such_field").is_err());
    }
}
