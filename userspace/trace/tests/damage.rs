//! Damaged files: cut at every byte, or with any byte flipped. The reader hands out every whole
//! record before the damage, then says where and why it stopped; it never panics and never
//! mistakes damage for a cut or a cut for damage.

mod common;

use bufscope_trace::{TraceError, TraceErrorKind, TraceReader};

/// Reads every record; returns how many, and the error that stopped the reader, if any.
fn read(bytes: &[u8]) -> (usize, Option<TraceError>) {
    let mut reader = match TraceReader::new(bytes, "damaged.bftrace") {
        Ok(r) => r,
        Err(e) => return (0, Some(e)),
    };
    let mut records = 0;
    loop {
        match reader.next_record() {
            Ok(Some(_)) => records += 1,
            Ok(None) => return (records, None),
            Err(e) => return (records, Some(e)),
        }
    }
}

/// Byte offsets at which the header and each record end.
fn boundaries(bytes: &[u8]) -> (u64, Vec<u64>) {
    let mut reader = TraceReader::new(bytes, "whole").unwrap();
    let header_end = reader.offset();
    let mut ends = Vec::new();
    while reader.next_record().unwrap().is_some() {
        ends.push(reader.offset());
    }
    (header_end, ends)
}

#[test]
fn a_cut_at_any_byte_reads_back_every_whole_record() {
    let bytes = common::trace_bytes(&common::events(60), 16);
    let (header_end, ends) = boundaries(&bytes);
    assert!(ends.len() >= 6, "want several records, got {}", ends.len());
    assert_eq!(*ends.last().unwrap(), bytes.len() as u64);

    for cut in 0..bytes.len() {
        let (records, err) = read(&bytes[..cut]);
        let err = err.unwrap_or_else(|| panic!("cut at {cut}: read as a whole file"));
        assert!(err.is_truncation(), "cut at {cut}: {err}");
        let whole = ends.iter().filter(|&&end| end <= cut as u64).count();
        assert_eq!(records, whole, "cut at {cut}: {err}");
        if (cut as u64) < header_end {
            assert!(err.offset < header_end, "cut at {cut}: {err}");
            assert_eq!(err.record, None, "cut at {cut}: {err}");
        } else {
            let last_whole = if whole == 0 {
                header_end
            } else {
                ends[whole - 1]
            };
            assert_eq!(err.offset, last_whole, "cut at {cut}: {err}");
            assert_eq!(err.record, Some(whole as u64), "cut at {cut}");
        }
        assert!(
            err.to_string().starts_with("damaged.bftrace: at offset"),
            "{err}"
        );
    }
    let (records, err) = read(&bytes);
    assert!(err.is_none(), "the whole file: {err:?}");
    assert_eq!(records, ends.len());
}

#[test]
fn any_flipped_byte_is_caught_and_named() {
    let bytes = common::trace_bytes(&common::events(30), 8);
    let (header_end, ends) = boundaries(&bytes);
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[pos] ^= mask;
            let (records, err) = read(&damaged);
            let err = err.unwrap_or_else(|| panic!("flip {mask:#x} at {pos} went unnoticed"));
            assert!(
                !err.is_truncation(),
                "flip at {pos} reported as a cut: {err}"
            );
            assert!(
                matches!(
                    err.kind,
                    TraceErrorKind::ChecksumMismatch { .. }
                        | TraceErrorKind::NotATrace { .. }
                        | TraceErrorKind::Corrupt { .. }
                ),
                "flip at {pos}: {err}"
            );
            // The error names the record holding the flipped byte, and nothing before it is lost.
            let record = ends.iter().filter(|&&end| end <= pos as u64).count();
            if (pos as u64) >= header_end {
                assert_eq!(records, record, "flip at {pos}: {err}");
                assert_eq!(err.record, Some(record as u64), "flip at {pos}: {err}");
            } else {
                assert_eq!(records, 0);
            }
        }
    }
}

#[test]
fn garbage_and_foreign_files_get_clear_errors() {
    let (_, err) = read(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    let err = err.unwrap();
    assert!(
        matches!(err.kind, TraceErrorKind::NotATrace { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not a bufscope trace"), "{err}");

    let (_, err) = read(b"");
    assert!(err.unwrap().is_truncation());

    // A newer major version is refused with advice, not misread.
    let mut newer = common::trace_bytes(&common::events(3), 8);
    newer[8] = 2;
    let fixed_crc = crc32c::crc32c(&newer[..20]);
    newer[20..24].copy_from_slice(&fixed_crc.to_le_bytes());
    let (_, err) = read(&newer);
    let err = err.unwrap();
    assert!(
        matches!(
            err.kind,
            TraceErrorKind::UnsupportedVersion { major: 2, .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("use a newer bufscope"), "{err}");
}

#[test]
fn records_after_the_end_are_reported() {
    let mut bytes = common::trace_bytes(&common::events(5), 8);
    let len = bytes.len() as u64;
    bytes.extend_from_slice(b"trailing");
    let (records, err) = read(&bytes);
    let err = err.expect("trailing data is an error");
    assert_eq!(err.offset, len);
    assert!(err.to_string().contains("after the end record"), "{err}");
    assert!(records > 0);
}
