//! The columnar chunk decoder, reached directly: the trace reader's checksums keep random bytes
//! from ever getting this far. Input: 4 bytes of claimed event count, then the raw chunk. Any
//! input decodes or fails cleanly, and whatever decodes survives an encode/decode round trip.

#![no_main]

use bufscope_trace::fuzzing::{decode_chunk, encode_chunk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((count, raw)) = data.split_first_chunk::<4>() else {
        return;
    };
    if let Ok(events) = decode_chunk(raw, u32::from_le_bytes(*count)) {
        let again = decode_chunk(&encode_chunk(&events), events.len() as u32)
            .expect("an encoded chunk decodes");
        assert_eq!(again, events);
    }
});
