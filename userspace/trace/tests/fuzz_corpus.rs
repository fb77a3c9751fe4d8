//! The reader fuzz target's seed corpus (fuzz/corpus/trace_reader/seed-*), run as a normal test
//! through the same entry point the fuzz target calls.

use std::{fs, path::PathBuf};

#[test]
fn seed_corpus_reads_or_fails_cleanly() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/trace_reader");
    let mut seeds: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "seed corpus has {} files", seeds.len());
    for seed in seeds {
        let name = seed.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&seed).unwrap();
        match bufscope_trace::read_all_from_bytes(&bytes) {
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
