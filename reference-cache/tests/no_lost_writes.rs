//! No lost writes: random operation sequences run through every design over a real file; every
//! read sees the last data written (or, after forget, what the device holds), and after a final
//! write_dirty_buffers the file's bytes match a plain map. A small capacity forces evictions of
//! dirty buffers and watermark writebacks along the way.

use std::{collections::HashMap, os::unix::fs::FileExt, sync::Arc};

use proptest::prelude::*;
use reference_cache::{CacheConfig, Design, FileIo, FileIoOptions, ThreadRecorder, build};

const BLOCK: usize = 512;
const BLOCKS: u64 = 24;

#[derive(Clone, Debug)]
enum Op {
    Read(u64),
    Write(u64, u8),
    New(u64, u8),
    PartialWrite(u64, u8),
    WritebackAsync,
    Forget(u64),
    ForgetRange(u64, u64),
    Prefetch(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let block = 0..BLOCKS;
    prop_oneof![
        4 => block.clone().prop_map(Op::Read),
        4 => (block.clone(), any::<u8>()).prop_map(|(b, v)| Op::Write(b, v)),
        2 => (block.clone(), any::<u8>()).prop_map(|(b, v)| Op::New(b, v)),
        2 => (block.clone(), any::<u8>()).prop_map(|(b, v)| Op::PartialWrite(b, v)),
        1 => Just(Op::WritebackAsync),
        1 => block.clone().prop_map(Op::Forget),
        1 => (block.clone(), 1u64..6).prop_map(|(b, n)| Op::ForgetRange(b, n)),
        1 => (block, 1u64..4).prop_map(|(b, n)| Op::Prefetch(b, n)),
    ]
}

fn device_block(file: &std::fs::File, block: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK];
    file.read_exact_at(&mut buf, block * BLOCK as u64).unwrap();
    buf
}

fn run(design: Design, capacity: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.img");
    // The device starts with each block stamped with its number.
    let image: Vec<u8> = (0..BLOCKS)
        .flat_map(|b| vec![b as u8 ^ 0xa5; BLOCK])
        .collect();
    std::fs::write(&path, &image).unwrap();
    let options = FileIoOptions {
        direct: false,
        allow_writes: true,
    };
    let io = Arc::new(FileIo::open(&path, BLOCK, options).unwrap());
    let cache = build(design, CacheConfig::new(BLOCK, capacity), io);
    let check = std::fs::File::open(&path).unwrap();
    let rec = ThreadRecorder::new();
    // What a reader must see for each block.
    let mut visible: HashMap<u64, Vec<u8>> = (0..BLOCKS)
        .map(|b| (b, vec![b as u8 ^ 0xa5; BLOCK]))
        .collect();

    for op in ops {
        match *op {
            Op::Read(b) => {
                let buf = cache.read(&rec, b).unwrap();
                let same = buf.data()[..] == visible[&b][..];
                cache.release(&rec, buf);
                prop_assert!(same, "{design}: block {b} lost its last write after {op:?}");
            }
            Op::Write(b, v) => {
                let buf = cache.read(&rec, b).unwrap();
                buf.data().fill(v);
                cache.mark_dirty(&rec, &buf);
                cache.release(&rec, buf);
                visible.insert(b, vec![v; BLOCK]);
            }
            Op::New(b, v) => {
                let buf = cache.new_buffer(&rec, b).unwrap();
                buf.data().fill(v);
                cache.mark_dirty(&rec, &buf);
                cache.release(&rec, buf);
                visible.insert(b, vec![v; BLOCK]);
            }
            Op::PartialWrite(b, v) => {
                let buf = cache.read(&rec, b).unwrap();
                buf.data()[100..200].fill(v);
                cache.mark_partial_dirty(&rec, &buf, 100, 200);
                cache.release(&rec, buf);
                visible.get_mut(&b).unwrap()[100..200].fill(v);
            }
            Op::WritebackAsync => cache.write_dirty_buffers_async(&rec).unwrap(),
            Op::Forget(b) => {
                cache.forget(&rec, b);
                // Unwritten changes are gone: a reader now sees the device.
                visible.insert(b, device_block(&check, b));
            }
            Op::ForgetRange(b, n) => {
                cache.forget_buffers(&rec, b, n);
                for b in b..(b + n).min(BLOCKS) {
                    visible.insert(b, device_block(&check, b));
                }
            }
            Op::Prefetch(b, n) => cache.prefetch(&rec, b, n.min(BLOCKS - b)),
        }
        let occ = cache.occupancy(&rec);
        prop_assert!(
            occ.buffers <= capacity as u64,
            "{design}: {occ:?} over capacity"
        );
        prop_assert!(occ.dirty <= occ.buffers);
    }
    cache.write_dirty_buffers(&rec).unwrap();
    prop_assert_eq!(cache.occupancy(&rec).dirty, 0);
    for b in 0..BLOCKS {
        prop_assert!(
            device_block(&check, b) == visible[&b],
            "{}: block {} on the device differs from the last write",
            design,
            b
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn no_design_loses_a_write(ops in proptest::collection::vec(op(), 1..160), capacity in 2usize..12) {
        for design in Design::ALL {
            run(design, capacity, &ops)?;
        }
    }
}
