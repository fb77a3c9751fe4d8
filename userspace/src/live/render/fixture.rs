//! The screens' test fixture: a model fed fixed events (waits on named and unnamed locks, a
//! client's operations, a design's results), and helpers to draw it on a test backend.

use bufscope_abi::LockFlags;
use bufscope_trace::{
    BufioOp, ClientLocks, LockOwner, LockWait, Metadata, OpKind, OpResult, Owner, Symbol,
};
use ratatui::{Terminal, backend::TestBackend};

use super::draw;
use crate::live::{
    hist::Log2Hist,
    model::{BufioStatus, CompareSource, Header, LockSort, Model, Source},
    shadow::DesignResult,
    ui::Ui,
};
use reference_cache::Design;

pub(crate) const CLIENT: u64 = 0xffff_8880_0100_0000;
pub(crate) const OTHER: u64 = 0xffff_8880_0200_0000;
pub(crate) const MUTEX: u64 = CLIENT + 0x40;
pub(crate) const STATIC_LOCK: u64 = 0xffff_ffff_8300_1000;
pub(crate) const ANON_SPIN: u64 = 0xffff_8880_0300_0080;

pub(crate) fn wait(
    lock_addr: u64,
    flags: u32,
    wait_ns: u64,
    stack: u32,
    op: Option<OpKind>,
) -> LockWait {
    LockWait {
        start_ns: 1_000,
        wait_ns,
        lock_addr,
        tid: 100,
        tgid: 100,
        cpu: 0,
        flags,
        ret: 0,
        stack_id: Some(stack),
        op,
        op_client: if op.is_some() { CLIENT } else { 0 },
        owner: LockOwner::Unknown,
    }
}

pub(crate) fn op(client: u64, kind: OpKind, block: u64, result: OpResult) -> BufioOp {
    BufioOp {
        start_ns: 1_000 + block,
        duration_ns: 2_000,
        client,
        block,
        tid: 100 + (block % 4) as u32,
        tgid: 100,
        cpu: 0,
        kind,
        result,
        arg0: 0,
        arg1: 0,
        lock_wait_ns: 0,
        lock_hold_ns: 0,
        lock_attempt_ns: 0,
        lock_release_ns: 0,
    }
}

pub(crate) fn hist(samples: &[(u64, u64)]) -> Log2Hist {
    let mut h = Log2Hist::default();
    for &(ns, n) in samples {
        for _ in 0..n {
            h.add(ns);
        }
    }
    h
}

/// A 6.1-like machine: one dm-thin metadata client whose mutex is hot, a second quiet
/// client, a static lock and an anonymous spinlock; two seconds in; one window compared.
pub(crate) fn fixture() -> Model {
    let designs = vec![Design::Classic, Design::Sharded];
    let mut m = Model::new(
        Header {
            kernel: "6.1.0-40-amd64".into(),
            source: Source::Live {
                attach: "tp_btf".into(),
            },
            bufio: BufioStatus::Probed {
                attached: 10,
                points: 11,
                design: Some("classic (one client mutex)".into()),
                missing: vec![(
                    "dm_bufio_forget_buffers".into(),
                    "not in this kernel".into(),
                )],
            },
            events_per_sec: 0.0,
            lost: 3,
            overhead: Some(0.0042),
            recording: None,
            status: None,
        },
        CompareSource::Tables,
        &designs,
    );
    for (addr, device) in [(CLIENT, "253:2"), (OTHER, "253:5")] {
        m.add_metadata(&Metadata::Client {
            addr,
            device: device.into(),
            block_size: 4096,
            locks: Some(ClientLocks {
                mutex: addr + 0x40,
                trees: 0,
                first_tree: 0,
                tree_stride: 0,
                ..Default::default()
            }),
            seen_ns: 0,
            destroyed_ns: None,
        });
    }
    m.add_metadata(&Metadata::Stack {
        id: 1,
        frames: vec![0x10, 0x20, 0x30, 0x40],
    });
    m.add_metadata(&Metadata::Stack {
        id: 2,
        frames: vec![0x10, 0x20, 0x50, 0x60],
    });
    let sym = |addr, name: &str, module: Option<&str>, lock_text| Symbol {
        addr,
        name: name.into(),
        module: module.map(Into::into),
        lock_text,
    };
    m.add_metadata(&Metadata::Symbols {
        symbols: vec![
            sym(0x10, "__mutex_lock.constprop.0", None, true),
            sym(0x20, "mutex_lock", None, true),
            sym(0x30, "dm_bufio_get", Some("dm_bufio"), false),
            sym(0x40, "dm_tm_read_lock", Some("dm_persistent_data"), false),
            sym(0x50, "dm_bufio_release", Some("dm_bufio"), false),
            sym(0x60, "dm_tm_unlock", Some("dm_persistent_data"), false),
            sym(STATIC_LOCK, "rcu_state", None, false),
        ],
    });
    // The mutex's holders: mostly the dirtier writing back, then a reader; some found free.
    let dirtier = LockOwner::Thread(Owner {
        tid: 102,
        tgid: 100,
        op: Some(OpKind::WriteDirty),
        stack_id: None,
    });
    let reader = LockOwner::Thread(Owner {
        tid: 101,
        tgid: 100,
        op: Some(OpKind::Get),
        stack_id: None,
    });
    for i in 0..300u64 {
        let mut w = wait(
            MUTEX,
            LockFlags::MUTEX,
            20_000 + i * 100,
            1,
            Some(OpKind::Get),
        );
        w.owner = [dirtier, dirtier, reader, LockOwner::Free][i as usize % 4];
        m.add_wait(&w);
    }
    for i in 0..120u64 {
        let mut w = wait(
            MUTEX,
            LockFlags::MUTEX,
            60_000 + i * 500,
            2,
            Some(OpKind::Release),
        );
        w.owner = dirtier;
        // The dirtier's own waits, from a thread no metadata names.
        w.tid = 103;
        m.add_wait(&w);
    }
    for _ in 0..40 {
        m.add_wait(&wait(STATIC_LOCK, LockFlags::SPIN, 3_000, 1, None));
    }
    m.add_wait(&wait(ANON_SPIN, LockFlags::SPIN, 900, 2, None));
    // Threads 100 and 101 are hotspot readers, 102 the dirtier, 103 is not named.
    let thread = |tid, comm: &str| bufscope_trace::Thread {
        tid,
        tgid: 100,
        comm: comm.into(),
        cgroup: Some("/system.slice/dmtest.service".into()),
    };
    m.add_metadata(&Metadata::Threads {
        threads: vec![
            thread(100, "bufio_hot/0"),
            thread(101, "bufio_hot/1"),
            thread(102, "bufio_dirty"),
        ],
    });
    for block in 0..2_000u64 {
        let result = if block % 10 == 0 {
            OpResult::Miss
        } else {
            OpResult::Hit
        };
        let mut get = op(CLIENT, OpKind::Get, block % 64, result);
        // The dirtier's acquisitions are slow, a quarter of them waiting for the mutex.
        if get.tid == 102 {
            get.duration_ns = 40_000;
            get.lock_wait_ns = 10_000;
        } else {
            get.duration_ns = 1_000 + block;
        }
        m.add_op(&get);
        m.add_op(&op(CLIENT, OpKind::Release, block % 64, OpResult::None));
    }
    for block in 0..40u64 {
        m.add_op(&op(CLIENT, OpKind::MarkDirty, block, OpResult::None));
        m.add_op(&op(OTHER, OpKind::Read, block, OpResult::Miss));
    }
    let window = m
        .tick(1.0, LockSort::Total, "")
        .expect("a window to compare");
    assert_eq!(window.client, CLIENT);
    m.design_result(DesignResult {
        window: window.id,
        design: 0,
        waits: hist(&[(30_000, 350), (90_000, 60)]),
        steps: 4_040,
        mismatched: 2,
        error: None,
    });
    m.design_result(DesignResult {
        window: window.id,
        design: 1,
        waits: hist(&[(1_500, 12)]),
        steps: 4_040,
        mismatched: 2,
        error: None,
    });
    for i in 0..50u64 {
        m.add_wait(&wait(
            MUTEX,
            LockFlags::MUTEX,
            25_000 + i,
            1,
            Some(OpKind::Get),
        ));
        m.add_op(&op(CLIENT, OpKind::Get, i, OpResult::Hit));
        m.add_op(&op(CLIENT, OpKind::Release, i, OpResult::None));
    }
    m.tick(1.0, LockSort::Total, "");
    m
}

pub(crate) fn render(model: &Model, ui: &Ui, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| draw(f, model, ui)).unwrap();
    terminal.backend().to_string()
}

pub(crate) fn ui() -> Ui {
    Ui::new(&[Design::Classic, Design::Sharded], false)
}
