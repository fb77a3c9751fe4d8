//! The package's /usr/share/doc/bufscope/copyright in Debian's machine-readable format (DEP-5):
//! bufscope's own license from the workspace's Cargo metadata, the eBPF programs' declared
//! license, and every crate linked into the static binary with the license its Cargo.toml states.

use std::{collections::BTreeSet, fmt::Write, process::Command};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{MAINTAINER, TARGET, output_checked};
use crate::cmd::workspace_root;

pub const FORMAT: &str = "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/";

/// The eBPF programs' source, whose `license` section the kernel reads.
const EBPF_SOURCE: &str = "ebpf/probes/src/main.rs";

/// Standalone license paragraphs for the licenses bufscope itself may be under, by DEP-5 short
/// name: a license Debian ships in /usr/share/common-licenses is referred to, the others quoted.
const LICENSE_TEXTS: &[(&str, &str)] = &[
    (
        "Expat",
        "Permission is hereby granted, free of charge, to any person obtaining a copy of this
software and associated documentation files (the \"Software\"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.",
    ),
    (
        "Apache-2.0",
        "On Debian systems, the full text of the Apache License, Version 2.0 can be found in
/usr/share/common-licenses/Apache-2.0.",
    ),
    (
        "GPL-2",
        "On Debian systems, the full text of the GNU General Public License, version 2 can be found
in /usr/share/common-licenses/GPL-2.",
    ),
];

/// What the copyright file is made from.
#[derive(Debug)]
pub struct Sources {
    /// The workspace's license, an SPDX expression ("MIT OR Apache-2.0").
    pub license: String,
    /// The license the eBPF object declares to the kernel ("Dual MIT/GPL").
    pub ebpf_license: String,
    /// (name, version, license) of each crate from crates.io linked into the binary.
    pub crates: Vec<(String, String, String)>,
}

impl Sources {
    /// Reads them from `cargo metadata` (for the static binary's target) and the eBPF source.
    pub fn read() -> anyhow::Result<Self> {
        let root = workspace_root();
        let metadata = output_checked(
            Command::new("cargo")
                .args(["metadata", "--format-version", "1", "--locked"])
                .args(["--filter-platform", TARGET])
                .current_dir(&root),
        )?;
        let metadata: Value =
            serde_json::from_str(&metadata).context("cargo metadata printed no JSON")?;
        let ebpf = root.join(EBPF_SOURCE);
        let source = std::fs::read_to_string(&ebpf)
            .with_context(|| format!("reading {}", ebpf.display()))?;
        Ok(Self {
            license: package_license(&metadata, "bufscope")?,
            ebpf_license: declared_ebpf_license(&source)
                .with_context(|| format!("no `static LICENSE = *b\"…\\0\"` in {EBPF_SOURCE}"))?,
            crates: linked_crates(&metadata, "bufscope")?,
        })
    }
}

/// The file's text.
pub fn render(sources: &Sources) -> anyhow::Result<String> {
    let Sources {
        license,
        ebpf_license,
        crates,
    } = sources;
    let own = dep5_license(license);
    let mut out = format!(
        "Format: {FORMAT}\n\
         Upstream-Name: bufscope\n\
         Upstream-Contact: {MAINTAINER}\n\
         Comment: bufscope is one static binary. Besides its own code it holds the GNU C Library\n \
         (LGPL-2.1-or-later) and these {} Rust crates from crates.io, each under the license its\n \
         Cargo.toml states:\n .\n",
        crates.len()
    );
    for (name, version, license) in crates {
        let _ = writeln!(out, " {name} {version}: {license}");
    }
    let _ = write!(
        out,
        "\nFiles: *\n\
         Copyright: bufscope developers\n\
         License: {own}\n\
         \n\
         Files: ebpf/probes/*\n\
         Copyright: bufscope developers\n\
         License: {own}\n\
         Comment: The eBPF programs: an object inside the binary that bufscope loads into the\n \
         kernel. The object declares its license to the kernel as \"{ebpf_license}\": the kernel\n \
         lets only GPL-compatible programs call its GPL-only helpers (bpf_probe_read_kernel and\n \
         others), and MIT (Expat), under which the programs may be used, is GPL-compatible.\n"
    );
    for name in short_names(&own) {
        let Some((_, text)) = LICENSE_TEXTS.iter().find(|(n, _)| *n == name) else {
            bail!(
                "no license text for {name} (bufscope's license is {license}): add it to LICENSE_TEXTS"
            );
        };
        let _ = writeln!(out, "\nLicense: {name}");
        for line in text.lines() {
            let line = if line.is_empty() { "." } else { line };
            let _ = writeln!(out, " {line}");
        }
    }
    Ok(out)
}

/// An SPDX expression in DEP-5's words: lowercase operators, and MIT by its Debian name, Expat.
pub fn dep5_license(spdx: &str) -> String {
    spdx.split_whitespace()
        .map(|word| match word {
            "OR" => "or",
            "AND" => "and",
            "MIT" => "Expat",
            "GPL-2.0-only" | "GPL-2.0" => "GPL-2",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The license short names a DEP-5 License field combines.
pub fn short_names(field: &str) -> BTreeSet<&str> {
    field
        .split_whitespace()
        .filter(|w| !matches!(*w, "or" | "and"))
        .map(|w| w.trim_matches(['(', ')', ',']))
        .collect()
}

/// The string in `static LICENSE: [u8; N] = *b"…\0";`.
fn declared_ebpf_license(source: &str) -> Option<String> {
    let at = source.find("static LICENSE")?;
    let rest = &source[at..];
    let start = rest.find("b\"")? + 2;
    let end = start + rest[start..].find("\\0\"")?;
    Some(rest[start..end].to_string())
}

fn packages(metadata: &Value) -> anyhow::Result<&Vec<Value>> {
    metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages")
}

fn package_license(metadata: &Value, name: &str) -> anyhow::Result<String> {
    let package = packages(metadata)?
        .iter()
        .find(|p| p["name"] == name)
        .with_context(|| format!("cargo metadata: no package {name}"))?;
    package["license"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{name} has no license in its Cargo.toml"))
}

/// The crates outside the workspace that `root` links: its normal dependencies and theirs,
/// without build and dev dependencies and without proc macros (which run in the compiler), sorted.
fn linked_crates(metadata: &Value, root: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let packages = packages(metadata)?;
    let package = |id: &str| packages.iter().find(|p| p["id"] == id);
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no resolve graph")?;
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .context("cargo metadata: no workspace members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let root_id = packages
        .iter()
        .find(|p| p["name"] == root && members.contains(p["id"].as_str().unwrap_or("")))
        .and_then(|p| p["id"].as_str())
        .with_context(|| format!("cargo metadata: no workspace package {root}"))?;
    let mut linked = BTreeSet::new();
    let mut todo = vec![root_id];
    while let Some(id) = todo.pop() {
        let node = nodes
            .iter()
            .find(|n| n["id"] == id)
            .with_context(|| format!("cargo metadata: {id} is not in the resolve graph"))?;
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            let Some(dep_id) = dep["pkg"].as_str() else {
                continue;
            };
            let proc_macro = package(dep_id).is_some_and(|p| {
                p["targets"].as_array().into_iter().flatten().any(|t| {
                    t["kind"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|k| k == "proc-macro")
                })
            });
            if normal && !proc_macro && linked.insert(dep_id) {
                todo.push(dep_id);
            }
        }
    }
    let mut crates = Vec::new();
    for id in linked.into_iter().filter(|id| !members.contains(id)) {
        let p = package(id).with_context(|| format!("cargo metadata: no package {id}"))?;
        let text = |field: &str| p[field].as_str().unwrap_or("").to_string();
        let license = match p["license"].as_str() {
            Some(l) => l.to_string(),
            None => format!("see its {}", text("license_file")),
        };
        crates.push((text("name"), text("version"), license));
    }
    crates.sort();
    Ok(crates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_expressions_become_dep5_short_names() {
        assert_eq!(dep5_license("MIT OR Apache-2.0"), "Expat or Apache-2.0");
        assert_eq!(dep5_license("GPL-2.0-only AND MIT"), "GPL-2 and Expat");
        assert_eq!(
            short_names("Expat or Apache-2.0"),
            BTreeSet::from(["Expat", "Apache-2.0"])
        );
    }

    #[test]
    fn the_ebpf_license_is_read_from_the_programs_source() {
        let source = std::fs::read_to_string(workspace_root().join(EBPF_SOURCE)).unwrap();
        assert_eq!(
            declared_ebpf_license(&source).as_deref(),
            Some("Dual MIT/GPL")
        );
    }

    /// A resolve graph: bufscope → a → b (normal), bufscope → derive (a proc macro) → c,
    /// bufscope → cc (build only), bufscope → dev (dev only), bufscope → abi (a workspace member)
    /// → d.
    fn metadata() -> Value {
        let package = |id: &str, license: Option<&str>, kind: &str| {
            serde_json::json!({
                "id": id, "name": id, "version": "1.0.0", "license": license,
                "license_file": "LICENSE", "targets": [{"kind": [kind]}]
            })
        };
        let dep = |id: &str, kind: Option<&str>| serde_json::json!({"pkg": id, "dep_kinds": [{"kind": kind, "target": null}]});
        let node = |id: &str, deps: Vec<Value>| serde_json::json!({"id": id, "deps": deps});
        serde_json::json!({
            "packages": [
                package("bufscope", Some("MIT OR Apache-2.0"), "bin"),
                package("abi", Some("MIT OR Apache-2.0"), "lib"),
                package("a", Some("MIT"), "lib"),
                package("b", None, "lib"),
                package("c", Some("MIT"), "lib"),
                package("d", Some("Zlib"), "lib"),
                package("derive", Some("MIT"), "proc-macro"),
                package("cc", Some("MIT"), "lib"),
                package("dev", Some("MIT"), "lib"),
            ],
            "workspace_members": ["bufscope", "abi"],
            "resolve": {"nodes": [
                node("bufscope", vec![
                    dep("a", None), dep("derive", None), dep("cc", Some("build")),
                    dep("dev", Some("dev")), dep("abi", None),
                ]),
                node("a", vec![dep("b", None)]),
                node("b", vec![]),
                node("derive", vec![dep("c", None)]),
                node("abi", vec![dep("d", None)]),
                node("d", vec![]),
            ]},
        })
    }

    #[test]
    fn linked_crates_are_the_normal_dependencies_outside_the_workspace() {
        let crates = linked_crates(&metadata(), "bufscope").unwrap();
        let names: Vec<(&str, &str)> = crates
            .iter()
            .map(|(n, _, l)| (n.as_str(), l.as_str()))
            .collect();
        assert_eq!(
            names,
            [("a", "MIT"), ("b", "see its LICENSE"), ("d", "Zlib")]
        );
        assert_eq!(
            package_license(&metadata(), "bufscope").unwrap(),
            "MIT OR Apache-2.0"
        );
    }

    #[test]
    fn the_file_has_a_header_files_paragraphs_and_each_license_s_text() {
        let text = render(&Sources {
            license: "MIT OR Apache-2.0".into(),
            ebpf_license: "Dual MIT/GPL".into(),
            crates: vec![("btf-rs".into(), "2.0.0".into(), "LGPL-2.1-or-later".into())],
        })
        .unwrap();
        let paragraphs: Vec<&str> = text.split("\n\n").collect();
        assert!(paragraphs[0].starts_with(&format!("Format: {FORMAT}\n")));
        assert!(paragraphs[0].contains("\n btf-rs 2.0.0: LGPL-2.1-or-later"));
        assert!(paragraphs[1].starts_with("Files: *\n"));
        assert!(paragraphs[1].ends_with("License: Expat or Apache-2.0"));
        assert!(paragraphs[2].starts_with("Files: ebpf/probes/*\n"));
        assert!(paragraphs[2].contains("\"Dual MIT/GPL\""));
        assert!(paragraphs[3].starts_with("License: Apache-2.0\n"));
        assert!(paragraphs[4].starts_with("License: Expat\n Permission is hereby granted"));
        assert_eq!(paragraphs.len(), 5, "{text}");
        // Continuation lines start with a space; an empty one is " .".
        for line in text.lines().filter(|l| !l.contains(": ") && !l.is_empty()) {
            assert!(line.starts_with(' ') && line != " ", "{line:?}");
        }
        assert!(
            render(&Sources {
                license: "MPL-2.0".into(),
                ebpf_license: String::new(),
                crates: vec![],
            })
            .is_err()
        );
    }
}
