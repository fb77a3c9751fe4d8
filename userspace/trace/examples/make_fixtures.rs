//! Writes the seed corpora of the fuzz targets (fuzz/corpus/trace_reader/, chunk_decoder/):
//! `cargo run -p bufscope-trace --example make_fixtures`. The seeds are committed; rerun this
//! only when the format gains something the seeds should cover.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{fs, path::PathBuf};

use bufscope_trace::{
    TraceReader,
    fuzzing::{
        encode_bufio_op_chunk, encode_bufio_op_chunk_v5, encode_lock_wait_chunk,
        encode_lock_wait_chunk_v3, encode_lock_wait_chunk_v4, undamaged_trace,
    },
};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/trace_reader");
    fs::create_dir_all(&dir)?;
    let valid = common::trace_bytes(&common::events(40), 16);
    let cut = &valid[..valid.len() - 30];
    let mut flipped = valid.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    // A record in the middle, its header and its sync marker damaged: the reader resynchronises.
    let mut reader = TraceReader::new(&valid[..], "valid").expect("valid");
    for _ in 0..3 {
        reader.next_record().expect("valid");
    }
    let record = reader.offset() as usize;
    let mut bad_header = valid.clone();
    bad_header[record + 9] ^= 0x01;
    let mut bad_sync = valid.clone();
    bad_sync[record] = b'X';
    // The same three kinds of damage as edits of `fuzzing::undamaged_trace` (position u32 LE,
    // then the byte to xor there), which the fuzz target reads its input as too.
    let mut reader = TraceReader::new(undamaged_trace(), "undamaged").expect("valid");
    for _ in 0..5 {
        reader.next_record().expect("valid");
    }
    let at = reader.offset() as u32;
    let edit = |pos: u32, xor: u8| [&pos.to_le_bytes()[..], &[xor]].concat();
    let seeds: [(&str, &[u8]); 11] = [
        ("seed-valid-small", &valid),
        ("seed-valid-empty", &common::trace_bytes(&[], 16)),
        ("seed-cut", cut),
        ("seed-flipped", &flipped),
        ("seed-flipped-header", &bad_header),
        ("seed-flipped-sync", &bad_sync),
        ("seed-header-only", &valid[..valid.len().min(200)]),
        ("seed-garbage", b"not a trace at all, just some text\n"),
        ("seed-edit-payload", &edit(at + 40, 0x04)),
        ("seed-edit-header", &edit(at + 9, 0x04)),
        ("seed-edit-sync", &edit(at, 0x04)),
    ];
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes)?;
        println!("trace_reader/{name}: {} bytes", bytes.len());
    }

    // The chunk decoders' input: selector (modulo 10: lock waits V1, operations V1, lock waits
    // V2, operations V2, lock waits V3, operations V2, lock waits V4, operations V2, lock waits
    // V2, operations V5), claimed count (u32 LE), then a raw chunk.
    let dir = dir.join("../chunk_decoder");
    fs::create_dir_all(&dir)?;
    let input = |selector: u8, count: usize, raw: Vec<u8>| {
        let mut input = vec![selector];
        input.extend((count as u32).to_le_bytes());
        input.extend(raw);
        input
    };
    let waits = |n| input(2, n, encode_lock_wait_chunk(&common::events(n)));
    let owned = |n| input(4, n, encode_lock_wait_chunk_v3(&common::events(n)));
    let owner_stacks = |n| input(6, n, encode_lock_wait_chunk_v4(&common::events(n)));
    let ops = |n| input(3, n, encode_bufio_op_chunk(&common::ops(n)));
    let timed_ops = |n| input(9, n, encode_bufio_op_chunk_v5(&common::ops(n)));
    let mut wrong_count = waits(20);
    wrong_count[1] = 21;
    let seeds: [(&str, Vec<u8>); 10] = [
        ("seed-valid-v5-ops-30", timed_ops(30)),
        ("seed-valid-v4-waits-20", owner_stacks(20)),
        ("seed-valid-v3-waits-20", owned(20)),
        ("seed-valid-v3-waits-1", owned(1)),
        ("seed-valid-v2-waits-20", waits(20)),
        ("seed-valid-v2-waits-1", waits(1)),
        ("seed-valid-v2-waits-0", waits(0)),
        ("seed-valid-v2-ops-30", ops(30)),
        ("seed-valid-v2-ops-1", ops(1)),
        ("seed-v2-wrong-count", wrong_count),
    ];
    for (name, bytes) in seeds {
        fs::write(dir.join(name), &bytes)?;
        println!("chunk_decoder/{name}: {} bytes", bytes.len());
    }
    Ok(())
}
