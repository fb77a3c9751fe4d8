//! Any bytes given to the trace reader end in records or a clean error, never a panic, a hang
//! or a huge allocation. The seed corpus (corpus/trace_reader/seed-*) also runs as a normal test.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = bufscope_trace::fuzzing::read_all_from_bytes(data) {
        // Every error must render and say where it happened.
        assert!(e.to_string().contains("at offset"));
    }
});
