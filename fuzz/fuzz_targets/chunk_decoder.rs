//! The columnar chunk decoders, reached directly: the trace reader's checksums keep random bytes
//! from ever getting this far. Input: a selector byte (even: lock waits, odd: dm-bufio
//! operations), 4 bytes of claimed count, then the raw chunk. Any input decodes or fails cleanly,
//! and whatever decodes survives an encode/decode round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, raw)) = data.split_first_chunk::<5>() else {
        return;
    };
    let count = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let _ = bufscope_trace::fuzzing::check_chunk(head[0], raw, count);
});
