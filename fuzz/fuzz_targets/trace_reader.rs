//! Any bytes given to the trace reader end in records or a clean error, never a panic, a hang
//! or a huge allocation. The same bytes, read as edits of a whole trace (`fuzzing::read_damaged`),
//! fuzz the reader's resynchronisation after damage: one changed byte must cost exactly one
//! record. The seed corpus (corpus/trace_reader/seed-*) also runs as a normal test.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let error = match bufscope_trace::fuzzing::read_all_from_bytes(data) {
        Ok(read) => read.error,
        Err(e) => Some(e),
    };
    if let Some(e) = error {
        // Every error must render and say where it happened.
        assert!(e.to_string().contains("at offset"));
    }
    bufscope_trace::fuzzing::read_damaged(data);
});
