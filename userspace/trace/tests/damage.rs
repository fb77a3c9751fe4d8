//! Damaged files: cut at every byte, or with any byte changed. A cut file reads back every whole
//! record before the cut, then says where it stopped; a changed byte costs only the record it is
//! in, which the reader names and skips. It never panics and never mistakes damage for a cut or a
//! cut for damage.

mod common;

use bufscope_trace::{
    Damage, LostCounts, Record, SkippedDamage, SkippedRecord, TraceError, TraceErrorKind,
    TraceReader,
    format::{RECORD_HEADER_LEN, RecordKind},
};

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

/// One record of an undamaged file: where it lies and what it holds.
#[derive(Clone, Debug)]
struct Layout {
    offset: u64,
    bytes: u64,
    kind: RecordKind,
    /// Events, operations or 1 (metadata, end).
    items: u32,
}

/// The file header's length and each record of an undamaged file.
fn layout(bytes: &[u8]) -> (u64, Vec<Layout>) {
    let mut reader = TraceReader::new(bytes, "whole").unwrap();
    let header_end = reader.offset();
    let mut records = Vec::new();
    loop {
        let offset = reader.offset();
        let Some(record) = reader.next_record().unwrap() else {
            break;
        };
        // The kind as the record's header says (byte 4), the items as read.
        let kind = RecordKind::from_u8(bytes[offset as usize + 4]).expect("a known kind");
        let items = match &record {
            Record::LockWaits(w) => w.len() as u32,
            Record::BufioOps(o) => o.len() as u32,
            Record::Metadata(_) | Record::End(_) => 1,
        };
        records.push(Layout {
            offset,
            bytes: reader.offset() - offset,
            kind,
            items,
        });
    }
    (header_end, records)
}

/// Lock waits, operations and metadata records read, the reader's skips, and the error that
/// stopped it.
#[derive(Debug)]
struct Contents {
    waits: u64,
    ops: u64,
    metadata: u64,
    records: u64,
    skipped: SkippedDamage,
    error: Option<TraceError>,
}

fn contents(bytes: &[u8]) -> Contents {
    let mut reader = TraceReader::new(bytes, "damaged.bftrace").unwrap();
    let (mut waits, mut ops, mut metadata) = (0, 0, 0);
    let error = loop {
        match reader.next_record() {
            Ok(Some(Record::LockWaits(w))) => waits += w.len() as u64,
            Ok(Some(Record::BufioOps(o))) => ops += o.len() as u64,
            Ok(Some(Record::Metadata(_))) => metadata += 1,
            Ok(Some(Record::End(_))) => {}
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    Contents {
        waits,
        ops,
        metadata,
        records: reader.records_read(),
        skipped: reader.skipped().clone(),
        error,
    }
}

/// What the end record says `record` held.
fn lost(record: &Layout) -> LostCounts {
    let n = u64::from(record.items);
    match record.kind {
        RecordKind::LockWaits
        | RecordKind::LockWaitsV2
        | RecordKind::LockWaitsV3
        | RecordKind::LockWaitsV4 => LostCounts {
            lock_waits: n,
            ..LostCounts::default()
        },
        RecordKind::BufioOps | RecordKind::BufioOpsV2 | RecordKind::BufioOpsV5 => LostCounts {
            bufio_ops: n,
            ..LostCounts::default()
        },
        RecordKind::Metadata => LostCounts {
            metadata_records: 1,
            ..LostCounts::default()
        },
        RecordKind::End => unreachable!("the end record counts the others"),
    }
}

#[test]
fn a_changed_byte_costs_only_the_record_it_is_in() {
    let bytes = common::trace_bytes(&common::events(30), 8);
    let (header_end, records) = layout(&bytes);
    assert!(records.len() >= 8, "want several records, got {records:?}");
    let whole = contents(&bytes);
    let last = records.len() - 1;
    for pos in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[pos] ^= mask;
            if (pos as u64) < header_end {
                let (records_read, err) = read(&damaged);
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
                assert_eq!(records_read, 0);
                continue;
            }
            let r = records
                .iter()
                .rposition(|l| l.offset <= pos as u64)
                .unwrap();
            let hit = &records[r];
            let in_header = (pos as u64) < hit.offset + RECORD_HEADER_LEN as u64;
            let got = contents(&damaged);
            let context = format!("flip {mask:#x} at {pos} (record {r}, {hit:?}): {got:?}");
            assert_eq!(got.records, records.len() as u64 - 1, "{context}");
            let (waits, ops, metadata) = match hit.kind {
                RecordKind::End => (whole.waits, whole.ops, whole.metadata),
                _ => {
                    let l = lost(hit);
                    (
                        whole.waits - l.lock_waits,
                        whole.ops - l.bufio_ops,
                        whole.metadata - l.metadata_records,
                    )
                }
            };
            assert_eq!(
                (got.waits, got.ops, got.metadata),
                (waits, ops, metadata),
                "{context}"
            );
            if r == last && in_header {
                // Nothing follows the end record to read on from: damage, not a cut.
                let err = got.error.expect(&context);
                assert!(!err.is_truncation(), "{context}");
                assert_eq!(
                    (err.offset, err.record),
                    (hit.offset, Some(r as u64)),
                    "{context}"
                );
                assert!(got.skipped.is_empty(), "{context}");
                continue;
            }
            assert!(got.error.is_none(), "{context}");
            let expected = SkippedRecord {
                offset: hit.offset,
                record: r as u64,
                bytes: hit.bytes,
                kind: (!in_header).then_some(hit.kind),
                items: (!in_header).then_some(hit.items),
                damage: got.skipped.listed[0].damage.clone(),
            };
            assert_eq!(got.skipped.listed, [expected], "{context}");
            assert_eq!(
                (got.skipped.records, got.skipped.bytes),
                (1, hit.bytes),
                "{context}"
            );
            let damage = &got.skipped.listed[0].damage;
            match pos as u64 - hit.offset {
                0..4 => assert!(matches!(damage, Damage::NoSync { .. }), "{context}"),
                4..28 => assert!(matches!(damage, Damage::HeaderChecksum { .. }), "{context}"),
                _ => assert!(
                    matches!(damage, Damage::PayloadChecksum { .. }),
                    "{context}"
                ),
            }
            let lost_by_end = (r != last).then(|| lost(hit));
            assert_eq!(got.skipped.lost, lost_by_end, "{context}");
        }
    }
}

fn sample(name: &str) -> Vec<u8> {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bundled recording of dm-verity reads, with one byte changed in the middle of a payload,
/// in a record header (its length, its payload's checksum), and in a sync marker: every record but
/// the damaged one comes back.
#[test]
fn a_changed_byte_in_a_real_recording_costs_only_its_record() {
    let bytes = sample("6.1-verity-read.bftrace");
    let (_, records) = layout(&bytes);
    let whole = contents(&bytes);
    assert!(
        whole.error.is_none() && whole.skipped.is_empty(),
        "{whole:?}"
    );
    // Byte 300,000 lies in a chunk of operations (record 6 of the sample of 2026-11-29), the
    // record after it is a chunk of lock waits.
    let at = records
        .iter()
        .position(|r| r.offset <= 300_000 && 300_000 < r.offset + r.bytes)
        .expect("byte 300,000 lies in a record");
    let (ops, next) = (&records[at], &records[at + 1]);
    assert_eq!(
        (ops.kind, next.kind),
        (RecordKind::BufioOpsV5, RecordKind::LockWaitsV4),
        "{ops:?} {next:?}"
    );
    let cases = [
        (
            "payload",
            300_000,
            at,
            Damage::PayloadChecksum {
                stored: 0,
                computed: 0,
            },
        ),
        (
            "stored length",
            next.offset + 9,
            at + 1,
            Damage::HeaderChecksum {
                stored: 0,
                computed: 0,
            },
        ),
        (
            "sync marker",
            next.offset + 1,
            at + 1,
            Damage::NoSync { found: [0; 4] },
        ),
        // Finding the next record means scanning past 122 kB, more than the reader looks ahead
        // at once.
        (
            "payload checksum",
            ops.offset + 21,
            at,
            Damage::HeaderChecksum {
                stored: 0,
                computed: 0,
            },
        ),
    ];
    for (what, pos, r, damage) in cases {
        let mut damaged = bytes.clone();
        damaged[pos as usize] ^= 0x20;
        let got = contents(&damaged);
        let hit = &records[r];
        let l = lost(hit);
        assert!(got.error.is_none(), "{what}: {got:?}");
        assert_eq!(
            (got.waits, got.ops, got.metadata, got.records),
            (
                whole.waits - l.lock_waits,
                whole.ops - l.bufio_ops,
                whole.metadata - l.metadata_records,
                whole.records - 1
            ),
            "{what}"
        );
        assert!(l.lock_waits + l.bufio_ops > 100, "{what}: {hit:?}");
        let skipped = &got.skipped.listed[..];
        assert_eq!(skipped.len(), 1, "{what}: {skipped:?}");
        assert_eq!(
            (skipped[0].offset, skipped[0].record, skipped[0].bytes),
            (hit.offset, r as u64, hit.bytes),
            "{what}"
        );
        assert_eq!(
            std::mem::discriminant(&skipped[0].damage),
            std::mem::discriminant(&damage),
            "{what}: {skipped:?}"
        );
        assert_eq!(got.skipped.lost, Some(l), "{what}");
    }
}

#[test]
fn two_damaged_records_cost_two_and_a_cut_after_damage_is_still_a_cut() {
    let bytes = common::trace_bytes(&common::events(60), 8);
    let (_, records) = layout(&bytes);
    let whole = contents(&bytes);
    let (a, b) = (&records[1], &records[4]);
    let mut damaged = bytes.clone();
    damaged[(a.offset + a.bytes / 2 + 14) as usize] ^= 0x08;
    damaged[(b.offset + 2) as usize] ^= 0x08;
    let got = contents(&damaged);
    assert!(got.error.is_none(), "{got:?}");
    let (la, lb) = (lost(a), lost(b));
    assert_eq!(
        (got.waits, got.ops, got.metadata),
        (
            whole.waits - la.lock_waits - lb.lock_waits,
            whole.ops - la.bufio_ops - lb.bufio_ops,
            whole.metadata - la.metadata_records - lb.metadata_records
        )
    );
    let offsets: Vec<(u64, u64)> = got
        .skipped
        .listed
        .iter()
        .map(|s| (s.offset, s.record))
        .collect();
    assert_eq!(offsets, [(a.offset, 1), (b.offset, 4)]);
    assert_eq!(got.skipped.bytes, a.bytes + b.bytes);

    // The same damage in a file that then stops in the middle of a record: the damage is
    // skipped, and the reader says the file was cut short where it was.
    let c = &records[7];
    let cut = &damaged[..(c.offset + c.bytes / 2) as usize];
    let got = contents(cut);
    let err = got.error.expect("a cut file");
    assert!(err.is_truncation(), "{err}");
    assert_eq!((err.offset, err.record), (c.offset, Some(7)));
    assert_eq!(got.records, 7 - 2);
    assert_eq!(got.skipped.records, 2);
    assert_eq!(got.skipped.lost, None, "no end record to count them");
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
