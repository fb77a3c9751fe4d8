//! Rebuild the eBPF object whenever bpf-linker changes.

fn main() {
    if let Some(linker) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.exists())
    }) {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
