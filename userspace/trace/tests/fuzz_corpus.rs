//! The fuzz targets' seed corpora (fuzz/corpus/*/seed-*), run as normal tests through the same
//! entry points the fuzz targets call. Seeds named seed-valid-* must read; the others must fail
//! cleanly.

use std::{fs, path::PathBuf};

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 4,
        "{target} seed corpus has {} files",
        seeds.len()
    );
    seeds
}

#[test]
fn trace_reader_seeds_read_or_fail_cleanly() {
    for (name, bytes) in seeds("trace_reader") {
        match bufscope_trace::fuzzing::read_all_from_bytes(&bytes) {
            Ok(records) => {
                assert!(name.starts_with("seed-valid"), "{name} read as valid");
                assert!(records >= 1, "{name}: no end record");
            }
            Err(e) => {
                assert!(!name.starts_with("seed-valid"), "{name}: {e}");
                assert!(e.to_string().contains("at offset"), "{name}: {e}");
            }
        }
    }
}

#[test]
fn chunk_decoder_seeds_decode_or_fail_cleanly() {
    for (name, bytes) in seeds("chunk_decoder") {
        let (head, raw) = bytes.split_first_chunk::<5>().expect("selector and count");
        let count = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        match bufscope_trace::fuzzing::check_chunk(head[0], raw, count) {
            Ok(n) => {
                assert!(name.starts_with("seed-valid"), "{name} decoded");
                assert_eq!(n, count as usize, "{name}");
            }
            Err(e) => assert!(!name.starts_with("seed-valid"), "{name}: {e}"),
        }
    }
}
