//! Writes the seed corpora of the fuzz targets (fuzz/corpus/trace_reader/, chunk_decoder/):
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
        println!("trace_reader/{name}: {} bytes", bytes.len());
    }

    // The chunk decoder's input: claimed event count (u32 LE), then a raw chunk.
    let dir = dir.join("../chunk_decoder");
    fs::create_dir_all(&dir)?;
    let chunk = |events: &[bufscope_trace::LockWait]| {
        let mut input = (events.len() as u32).to_le_bytes().to_vec();
        input.extend(bufscope_trace::fuzzing::encode_chunk(events));
        input
    };
    let mut wrong_count = chunk(&common::events(20));
    wrong_count[0] = 21;
    let seeds: [(&str, Vec<u8>); 4] = [
        ("seed-valid-20", chunk(&common::events(20))),
        ("seed-valid-1", chunk(&common::events(1))),
        ("seed-valid-0", chunk(&[])),
        ("seed-wrong-count", wrong_count),
    ];
    for (name, bytes) in seeds {
        fs::write(dir.join(name), &bytes)?;
        println!("chunk_decoder/{name}: {} bytes", bytes.len());
    }
    Ok(())
}
