//! Writes the seed corpus of the reader's fuzz target (fuzz/corpus/trace_reader/):
//! `cargo run -p bufscope-trace --example make_fixtures`. The seeds are committed; rerun this
//! only when the format gains something the seeds should cover.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{fs, path::PathBuf};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/trace_reader");
    fs::create_dir_all(&dir)?;
    let valid = common::trace_bytes(&common::events(40), 16);
    let cut = &valid[..valid.len() - 30];
    let mut flipped = valid.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    let seeds: [(&str, &[u8]); 6] = [
        ("seed-valid-small", &valid),
        ("seed-valid-empty", &common::trace_bytes(&[], 16)),
        ("seed-cut", cut),
        ("seed-flipped", &flipped),
        ("seed-header-only", &valid[..valid.len().min(200)]),
        ("seed-garbage", b"not a trace at all, just some text\n"),
    ];
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes)?;
        println!("{name}: {} bytes", bytes.len());
    }
    Ok(())
}
