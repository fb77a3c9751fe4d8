//! The memory zones' locks (`zone->lock`: the page allocator's lock, taken when a CPU's page
//! lists are refilled or drained and for every allocation too large for them), named as
//! "zone lock (node 0 Normal)". The eBPF program `find_nodes` finds each node's
//! `struct pglist_data` (see [`ZoneOffsets`]); this module has the offsets it follows and the
//! ones that turn a node into its zones' lock addresses, from vmlinux BTF.

use btf_rs::{Btf, Type};
use bufscope_abi::ZoneOffsets;
use bufscope_trace::Symbol;

use super::bufio::{BtfLayoutError, VMLINUX_BTF, field, find_struct};

/// Where a node's zones and their locks are, and what the zones are called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneLayout {
    /// `pglist_data.node_zones`.
    pub node_zones: u32,
    /// `sizeof(struct zone)`: the stride of `node_zones`.
    pub zone_size: u32,
    /// `zone.lock`.
    pub zone_lock: u32,
    /// Each zone's name by index (`enum zone_type`), as /proc/zoneinfo spells them: "DMA",
    /// "DMA32", "Normal", "Movable", "Device".
    pub names: Vec<String>,
}

impl ZoneLayout {
    /// Each zone lock of the nodes found, as the symbol that names it.
    pub fn lock_symbols(&self, nodes: &[(u32, u64)]) -> Vec<Symbol> {
        nodes
            .iter()
            .flat_map(|&(node, pgdat)| {
                self.names.iter().enumerate().map(move |(i, zone)| Symbol {
                    addr: pgdat
                        + u64::from(self.node_zones)
                        + i as u64 * u64::from(self.zone_size)
                        + u64::from(self.zone_lock),
                    name: format!("zone lock (node {node} {zone})"),
                    module: None,
                    lock_text: false,
                })
            })
            .collect()
    }
}

/// Why zone locks cannot be named here.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error(transparent)]
    Layout(#[from] BtfLayoutError),
    #[error("enum {0} is not in the BTF (a kernel without memory cgroups?)")]
    NoEnum(&'static str),
    #[error("enum {enumeration} has no {value}")]
    NoEnumValue {
        enumeration: &'static str,
        value: &'static str,
    },
    #[error("pglist_data.node_zones is not an array of structs")]
    NodeZones,
}

/// The offsets `find_nodes` follows and the zones' layout, from this kernel's BTF; `nodes` is
/// how many node ids to look up ([`possible_nodes`]).
pub fn zone_layout(nodes: u32) -> Result<(ZoneOffsets, ZoneLayout), ZoneError> {
    let btf = Btf::from_file(VMLINUX_BTF).map_err(|cause| BtfLayoutError::Read {
        path: VMLINUX_BTF,
        cause,
    })?;
    from_btf(&btf, nodes)
}

fn from_btf(btf: &Btf, nodes: u32) -> Result<(ZoneOffsets, ZoneLayout), ZoneError> {
    let offset = |s: &btf_rs::Struct, path| field(btf, s, path).map(|(offset, _)| offset);
    let task = find_struct(btf, "task_struct")?;
    let css_set = find_struct(btf, "css_set")?;
    let memcg = find_struct(btf, "mem_cgroup")?;
    let per_node = find_struct(btf, "mem_cgroup_per_node")?;
    let pgdat = find_struct(btf, "pglist_data")?;
    let zone = find_struct(btf, "zone")?;
    let memory_id = enum_value(btf, "cgroup_subsys_id", "memory_cgrp_id")?;
    let offsets = ZoneOffsets {
        task_cgroups: offset(&task, "cgroups")?,
        css_set_memory: offset(&css_set, "subsys")? + memory_id * 8,
        memcg_css: offset(&memcg, "css")?,
        memcg_nodeinfo: offset(&memcg, "nodeinfo")?,
        per_node_pgdat: offset(&per_node, "lruvec.pgdat")?,
        nodes: nodes.min(ZoneOffsets::MAX_NODES),
    };
    let (node_zones, zones) = match field(btf, &pgdat, "node_zones")? {
        (offset, Type::Array(array)) => (offset, array.len()),
        _ => return Err(ZoneError::NodeZones),
    };
    let names = enum_names(btf, "zone_type")?
        .into_iter()
        .filter(|(_, value)| (*value as usize) < zones)
        .map(|(name, _)| zone_name(&name))
        .collect();
    let layout = ZoneLayout {
        node_zones,
        zone_size: zone.size() as u32,
        zone_lock: offset(&zone, "lock")?,
        names,
    };
    Ok((offsets, layout))
}

/// "ZONE_NORMAL" → "Normal", as /proc/zoneinfo names zones.
fn zone_name(enumerator: &str) -> String {
    let bare = enumerator.strip_prefix("ZONE_").unwrap_or(enumerator);
    match bare {
        "DMA" | "DMA32" => bare.to_string(),
        _ => {
            let lower = bare.to_lowercase();
            let mut chars = lower.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        }
    }
}

fn enum_names(btf: &Btf, name: &'static str) -> Result<Vec<(String, u32)>, ZoneError> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|_| ZoneError::NoEnum(name))?;
    let enumeration = types
        .into_iter()
        .find_map(|t| match t {
            Type::Enum(e) => Some(e),
            _ => None,
        })
        .ok_or(ZoneError::NoEnum(name))?;
    let mut members: Vec<(String, u32)> = enumeration
        .members
        .iter()
        .map(|m| (btf.resolve_name(m).unwrap_or_default(), m.val()))
        .collect();
    members.sort_by_key(|(_, value)| *value);
    Ok(members)
}

fn enum_value(btf: &Btf, name: &'static str, value: &'static str) -> Result<u32, ZoneError> {
    enum_names(btf, name)?
        .into_iter()
        .find(|(n, _)| n == value)
        .map(|(_, v)| v)
        .ok_or(ZoneError::NoEnumValue {
            enumeration: name,
            value,
        })
}

/// How many node ids this kernel may use: one more than the highest in
/// /sys/devices/system/node/possible ("0", "0-3", "0,2-3"); 1 where it cannot be read.
pub fn possible_nodes() -> u32 {
    std::fs::read_to_string("/sys/devices/system/node/possible")
        .ok()
        .and_then(|list| highest_in_list(&list))
        .map_or(1, |highest| highest + 1)
}

fn highest_in_list(list: &str) -> Option<u32> {
    list.trim()
        .split(',')
        .filter_map(|range| range.rsplit('-').next()?.trim().parse::<u32>().ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_named_as_zoneinfo_names_them() {
        let names: Vec<String> = ["ZONE_DMA", "ZONE_DMA32", "ZONE_NORMAL", "ZONE_MOVABLE"]
            .iter()
            .map(|n| zone_name(n))
            .collect();
        assert_eq!(names, ["DMA", "DMA32", "Normal", "Movable"]);
    }

    #[test]
    fn node_lists_give_the_highest_id() {
        assert_eq!(highest_in_list("0\n"), Some(0));
        assert_eq!(highest_in_list("0-3\n"), Some(3));
        assert_eq!(highest_in_list("0,2-5,7\n"), Some(7));
        assert_eq!(highest_in_list(""), None);
    }

    #[test]
    fn each_node_s_zone_locks_are_at_its_zones_stride() {
        let layout = ZoneLayout {
            node_zones: 0,
            zone_size: 0x700,
            zone_lock: 0x40,
            names: vec!["DMA".into(), "Normal".into()],
        };
        let symbols = layout.lock_symbols(&[(0, 0x1000), (1, 0x9000)]);
        let got: Vec<(u64, &str)> = symbols.iter().map(|s| (s.addr, s.name.as_str())).collect();
        assert_eq!(
            got,
            [
                (0x1040, "zone lock (node 0 DMA)"),
                (0x1740, "zone lock (node 0 Normal)"),
                (0x9040, "zone lock (node 1 DMA)"),
                (0x9740, "zone lock (node 1 Normal)"),
            ]
        );
    }

    /// This kernel's zones, against /proc/zoneinfo: the same names, in the same order.
    #[test]
    fn this_kernel_s_zones_match_zoneinfo() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            crate::skip_or_fail("no vmlinux BTF here");
            return;
        }
        let (offsets, layout) = zone_layout(possible_nodes()).unwrap();
        assert!(offsets.nodes >= 1);
        let zoneinfo = std::fs::read_to_string("/proc/zoneinfo").unwrap();
        // "Node 0, zone   Normal": every zone of node 0, in index order.
        let listed: Vec<&str> = zoneinfo
            .lines()
            .filter_map(|l| l.strip_prefix("Node 0, zone"))
            .map(str::trim)
            .collect();
        assert_eq!(layout.names, listed);
    }
}
