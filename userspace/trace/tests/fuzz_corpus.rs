//! The fuzz targets' seed corpora (fuzz/corpus/*/seed-*), run as normal tests through the same
//! entry points the fuzz targets call. Seeds named seed-valid-* must read whole, seed-flipped-*
//! must read with one damaged record skipped, seed-edit-* (edits of a whole trace) must cost one
//! record; the others must fail cleanly.

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
    let undamaged = bufscope_trace::fuzzing::read_damaged(&[]);
    assert!(
        undamaged.error.is_none() && undamaged.skipped == 0,
        "{undamaged:?}"
    );
    for (name, bytes) in seeds("trace_reader") {
        match bufscope_trace::fuzzing::read_all_from_bytes(&bytes) {
            Ok(read) if name.starts_with("seed-valid") => {
                assert!(read.error.is_none(), "{name}: {read:?}");
                assert_eq!(read.skipped, 0, "{name}");
                assert!(read.records >= 1, "{name}: no end record");
            }
            // A changed byte in a record costs that record only.
            Ok(read) if name.starts_with("seed-flipped") => {
                assert!(read.error.is_none(), "{name}: {read:?}");
                assert_eq!(read.skipped, 1, "{name}");
            }
            Ok(read) => {
                let e = read.error.unwrap_or_else(|| panic!("{name} read whole"));
                assert!(e.to_string().contains("at offset"), "{name}: {e}");
            }
            Err(e) => {
                assert!(!name.starts_with("seed-valid"), "{name}: {e}");
                assert!(e.to_string().contains("at offset"), "{name}: {e}");
            }
        }
        // The fuzz target reads every input as edits of a whole trace too; one edit costs one
        // record (read_damaged panics otherwise).
        let damaged = bufscope_trace::fuzzing::read_damaged(&bytes);
        if name.starts_with("seed-edit") {
            assert_eq!(
                damaged.records,
                undamaged.records - 1,
                "{name}: {damaged:?}"
            );
            assert_eq!(damaged.skipped, 1, "{name}: {damaged:?}");
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
