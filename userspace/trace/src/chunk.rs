//! The columnar encoding of event chunks, before compression. Both event kinds start alike:
//!
//! ```text
//! varint n                      events in the chunk
//! varint K, K × u64             address dictionary (locks, or clients), first-seen order
//! varint T, T × (varint tid, varint tgid)   thread dictionary
//! n × zigzag varint             end time, delta from the previous event's (first from 0)
//! n × varint                    duration (wait ns, or op ns)
//! n × varint                    address index
//! n × varint                    thread index
//! n × varint                    cpu
//! ```
//! then, for lock waits: `n × varint flags`, `n × zigzag ret`; for dm-bufio operations:
//! `n × varint kind`, `n × varint result`, `n × zigzag block delta` (from the previous op's
//! block), `n × varint arg0`, `n × varint arg1`.
//!
//! Layout V2 (format 1.2, record kinds 5 and 6) appends, for lock waits: `n × varint stack`
//! (id + 1, 0 for none), `n × varint operation` (0 for none), `varint C, C × u64` client
//! dictionary, `n × varint client` (index + 1, 0 for none); for operations: `n × varint`
//! client-mutex wait ns, `n × varint` hold ns.
//!
//! Layout V3 (format 1.3, record kind 7; lock waits only) appends to V2's: `varint O, O ×
//! (varint tid, varint tgid)` owner dictionary, `n × varint owner` (0 not known, 1 free,
//! 2 readers, index + 3 for a thread), `n × varint owner operation` (0 for none).
//!
//! Layout V4 (format 1.4, record kind 8; lock waits only) appends to V3's: `n × varint owner
//! stack` (the owner's stack id + 1, 0 for none; only a thread owner has one).
//!
//! Layout V5 (format 1.5, record kind 9; operations only) appends to V2's: `n × varint` first
//! client-lock attempt, `n × varint` last client-lock release, each as its offset from the
//! operation's start + 1 (0 for none). A time outside its operation is written clamped to it.
//!
//! Columns of small, similar numbers are what zstd compresses best; end times arrive nearly in
//! order, so their deltas are small, and so are the block deltas of scans.

use std::hash::Hash;

use foldhash::HashMap;

use integer_encoding::VarInt;

use crate::{BufioOp, LockOwner, LockWait, OpKind, OpResult, Owner};

/// The owner column's first thread index: 0, 1 and 2 say not known, free and readers.
const OWNER_INDEX_BASE: u32 = 3;

/// The smallest encoding of one lock wait and of one operation: a byte per column (V1).
const MIN_LOCK_WAIT_BYTES: usize = 7;
const MIN_BUFIO_OP_BYTES: usize = 10;

/// Which columns a chunk has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Formats 1.0 and 1.1 (record kinds 1 and 4).
    V1,
    /// Format 1.2 on (record kinds 5 and 6).
    V2,
    /// Format 1.3, lock waits only (record kind 7).
    V3,
    /// Format 1.4 on, lock waits only (record kind 8).
    V4,
    /// Format 1.5 on, operations only (record kind 9).
    V5,
}

/// A dictionary in first-seen order, reused across chunks.
#[derive(Debug, Default)]
struct Dict<K> {
    index: HashMap<K, u32>,
    order: Vec<K>,
}

impl<K: Hash + Eq + Copy> Dict<K> {
    fn clear(&mut self) {
        self.index.clear();
        self.order.clear();
    }

    fn index_of(&mut self, key: K) -> u32 {
        let next = self.order.len() as u32;
        let index = *self.index.entry(key).or_insert(next);
        if index == next {
            self.order.push(key);
        }
        index
    }
}

/// What every event kind shares: an address, a thread, a cpu, an end time and a duration.
struct Common {
    addr: u64,
    tid: u32,
    tgid: u32,
    cpu: u32,
    end_ns: u64,
    duration_ns: u64,
}

/// Reusable dictionaries and columns, so encoding allocates nothing once warmed up.
#[derive(Debug, Default)]
pub(crate) struct ChunkEncoder {
    addrs: Dict<u64>,
    threads: Dict<(u32, u32)>,
    addr_column: Vec<u32>,
    thread_column: Vec<u32>,
    owners: Dict<(u32, u32)>,
}

fn put<V: VarInt>(out: &mut Vec<u8>, value: V) {
    let mut buf = [0u8; 10];
    let n = value.encode_var(&mut buf);
    out.extend_from_slice(&buf[..n]);
}

impl ChunkEncoder {
    /// Writes the shared part: count, dictionaries and the five common columns.
    fn encode_common(
        &mut self,
        events: impl Iterator<Item = Common> + Clone,
        n: usize,
        out: &mut Vec<u8>,
    ) {
        self.addrs.clear();
        self.threads.clear();
        self.addr_column.clear();
        self.thread_column.clear();
        for e in events.clone() {
            let addr = self.addrs.index_of(e.addr);
            self.addr_column.push(addr);
            let thread = self.threads.index_of((e.tid, e.tgid));
            self.thread_column.push(thread);
        }
        put(out, n as u64);
        put(out, self.addrs.order.len() as u64);
        for addr in &self.addrs.order {
            out.extend_from_slice(&addr.to_le_bytes());
        }
        put(out, self.threads.order.len() as u64);
        for &(tid, tgid) in &self.threads.order {
            put(out, tid);
            put(out, tgid);
        }
        let mut previous_end = 0u64;
        for e in events.clone() {
            put(out, e.end_ns.wrapping_sub(previous_end) as i64);
            previous_end = e.end_ns;
        }
        for e in events.clone() {
            put(out, e.duration_ns);
        }
        for &addr in &self.addr_column {
            put(out, addr);
        }
        for &thread in &self.thread_column {
            put(out, thread);
        }
        for e in events {
            put(out, e.cpu);
        }
    }

    /// Appends the encoding of lock waits to `out`.
    pub(crate) fn encode_lock_waits(
        &mut self,
        events: &[LockWait],
        layout: Layout,
        out: &mut Vec<u8>,
    ) {
        let common = events.iter().map(|e| Common {
            addr: e.lock_addr,
            tid: e.tid,
            tgid: e.tgid,
            cpu: e.cpu,
            end_ns: e.end_ns(),
            duration_ns: e.wait_ns,
        });
        self.encode_common(common, events.len(), out);
        for e in events {
            put(out, e.flags);
        }
        for e in events {
            put(out, e.ret);
        }
        if layout == Layout::V1 {
            return;
        }
        for e in events {
            put(out, e.stack_id.map_or(0, |id| u64::from(id) + 1));
        }
        for e in events {
            put(out, e.op.map_or(0, |op| op as u8));
        }
        self.addrs.clear();
        self.addr_column.clear();
        for e in events {
            let index = if e.op_client == 0 {
                0
            } else {
                self.addrs.index_of(e.op_client) + 1
            };
            self.addr_column.push(index);
        }
        put(out, self.addrs.order.len() as u64);
        for addr in &self.addrs.order {
            out.extend_from_slice(&addr.to_le_bytes());
        }
        for &index in &self.addr_column {
            put(out, index);
        }
        if layout == Layout::V2 {
            return;
        }
        self.owners.clear();
        self.addr_column.clear();
        for e in events {
            let index = match e.owner {
                LockOwner::Unknown => 0,
                LockOwner::Free => 1,
                LockOwner::Readers => 2,
                LockOwner::Thread(o) => self.owners.index_of((o.tid, o.tgid)) + OWNER_INDEX_BASE,
            };
            self.addr_column.push(index);
        }
        put(out, self.owners.order.len() as u64);
        for &(tid, tgid) in &self.owners.order {
            put(out, tid);
            put(out, tgid);
        }
        for &index in &self.addr_column {
            put(out, index);
        }
        for e in events {
            put(
                out,
                e.owner.thread().and_then(|o| o.op).map_or(0, |op| op as u8),
            );
        }
        if layout == Layout::V3 {
            return;
        }
        for e in events {
            put(
                out,
                e.owner
                    .thread()
                    .and_then(|o| o.stack_id)
                    .map_or(0, |id| u64::from(id) + 1),
            );
        }
    }

    /// Appends the encoding of dm-bufio operations to `out`.
    pub(crate) fn encode_bufio_ops(&mut self, ops: &[BufioOp], layout: Layout, out: &mut Vec<u8>) {
        let common = ops.iter().map(|o| Common {
            addr: o.client,
            tid: o.tid,
            tgid: o.tgid,
            cpu: o.cpu,
            end_ns: o.end_ns(),
            duration_ns: o.duration_ns,
        });
        self.encode_common(common, ops.len(), out);
        for o in ops {
            put(out, o.kind as u8);
        }
        for o in ops {
            put(out, o.result as u8);
        }
        let mut previous_block = 0u64;
        for o in ops {
            put(out, o.block.wrapping_sub(previous_block) as i64);
            previous_block = o.block;
        }
        for o in ops {
            put(out, o.arg0);
        }
        for o in ops {
            put(out, o.arg1);
        }
        if layout == Layout::V1 {
            return;
        }
        for o in ops {
            put(out, o.lock_wait_ns);
        }
        for o in ops {
            put(out, o.lock_hold_ns);
        }
        if layout != Layout::V5 {
            return;
        }
        for o in ops {
            put(out, offset_in(o, o.lock_attempt_ns));
        }
        for o in ops {
            put(out, offset_in(o, o.lock_release_ns));
        }
    }
}

/// A time inside operation `o` as its offset from the start + 1, clamped to the operation; 0
/// for none.
fn offset_in(o: &BufioOp, at_ns: u64) -> u64 {
    if at_ns == 0 {
        return 0;
    }
    at_ns.clamp(o.start_ns, o.start_ns.saturating_add(o.duration_ns)) - o.start_ns + 1
}

/// The time an [`offset_in`] `o` of `encoded` stands for.
fn time_in(o: &BufioOp, encoded: u64, what: &str, at: usize) -> Result<u64, String> {
    match encoded {
        0 => Ok(0),
        offset if offset - 1 <= o.duration_ns && o.start_ns.checked_add(offset - 1).is_some() => {
            Ok(o.start_ns + (offset - 1))
        }
        offset => Err(format!(
            "{what} {} ns after its operation's start, outside its {} ns, at byte {at} of the chunk",
            offset - 1,
            o.duration_ns
        )),
    }
}

/// Reads varints from a chunk, naming the column and byte of anything malformed.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn varint<V: VarInt>(&mut self, what: &str) -> Result<V, String> {
        let (value, len) = V::decode_var(&self.buf[self.pos..])
            .ok_or_else(|| format!("malformed {what} at byte {} of the chunk", self.pos))?;
        self.pos += len;
        Ok(value)
    }

    fn count(&mut self, what: &str, max: usize) -> Result<usize, String> {
        let at = self.pos;
        let n: u64 = self.varint(what)?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("{what} {n} at byte {at} of the chunk exceeds {max}"))
    }

    fn u64_le(&mut self, what: &str) -> Result<u64, String> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| format!("{what} cut short at byte {} of the chunk", self.pos))?;
        self.pos += 8;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn index(&mut self, what: &str, len: usize) -> Result<usize, String> {
        let at = self.pos;
        let i: u32 = self.varint(what)?;
        let i = i as usize;
        if i >= len {
            return Err(format!(
                "{what} {i} at byte {at} of the chunk is outside its dictionary of {len}"
            ));
        }
        Ok(i)
    }

    fn finish(&self) -> Result<(), String> {
        if self.pos != self.buf.len() {
            return Err(format!(
                "{} bytes left over after the last column of the chunk",
                self.buf.len() - self.pos
            ));
        }
        Ok(())
    }
}

/// Decodes the shared part into `n` events made by `make`, then hands the cursor back for the
/// kind's own columns.
fn decode_common<'a, E: Clone>(
    raw: &'a [u8],
    expected: u32,
    min_event_bytes: usize,
    addr_name: &str,
    blank: E,
    mut set: impl FnMut(&mut E, Common),
) -> Result<(Vec<E>, Cursor<'a>), String> {
    let mut cur = Cursor { buf: raw, pos: 0 };
    let n = cur.count("event count", raw.len() / min_event_bytes)?;
    if n != expected as usize {
        return Err(format!(
            "chunk holds {n} events but its record header says {expected}"
        ));
    }
    let n_addrs = cur.count(&format!("{addr_name} dictionary size"), raw.len() / 8)?;
    let mut addrs = Vec::with_capacity(n_addrs);
    for _ in 0..n_addrs {
        addrs.push(cur.u64_le(&format!("{addr_name} address"))?);
    }
    let n_threads = cur.count("thread dictionary size", raw.len() / 2)?;
    let mut threads = Vec::with_capacity(n_threads);
    for _ in 0..n_threads {
        threads.push((cur.varint::<u32>("tid")?, cur.varint::<u32>("tgid")?));
    }
    let mut common: Vec<Common> = Vec::with_capacity(n);
    let mut end = 0u64;
    for _ in 0..n {
        end = end.wrapping_add(cur.varint::<i64>("end time delta")? as u64);
        common.push(Common {
            addr: 0,
            tid: 0,
            tgid: 0,
            cpu: 0,
            end_ns: end,
            duration_ns: 0,
        });
    }
    for c in common.iter_mut() {
        c.duration_ns = cur.varint("duration")?;
    }
    let index_name = format!("{addr_name} index");
    for c in common.iter_mut() {
        c.addr = addrs[cur.index(&index_name, addrs.len())?];
    }
    for c in common.iter_mut() {
        (c.tid, c.tgid) = threads[cur.index("thread index", threads.len())?];
    }
    for c in common.iter_mut() {
        c.cpu = cur.varint("cpu")?;
    }
    let events = common
        .into_iter()
        .map(|c| {
            let mut e = blank.clone();
            set(&mut e, c);
            e
        })
        .collect();
    Ok((events, cur))
}

/// Decodes a lock-wait chunk that claims `expected` events.
pub(crate) fn decode_lock_waits(
    raw: &[u8],
    expected: u32,
    layout: Layout,
) -> Result<Vec<LockWait>, String> {
    let (mut events, mut cur) = decode_common(
        raw,
        expected,
        MIN_LOCK_WAIT_BYTES,
        "lock",
        LockWait::default(),
        |e: &mut LockWait, c| {
            e.lock_addr = c.addr;
            (e.tid, e.tgid, e.cpu) = (c.tid, c.tgid, c.cpu);
            e.wait_ns = c.duration_ns;
            e.start_ns = c.end_ns.wrapping_sub(c.duration_ns);
        },
    )?;
    for e in events.iter_mut() {
        e.flags = cur.varint("flags")?;
    }
    for e in events.iter_mut() {
        e.ret = cur.varint("ret")?;
    }
    if layout != Layout::V1 {
        for e in events.iter_mut() {
            let at = cur.pos;
            let id: u64 = cur.varint("stack id")?;
            e.stack_id = match id {
                0 => None,
                id => Some(u32::try_from(id - 1).map_err(|_| {
                    format!("stack id {} at byte {at} of the chunk is too large", id - 1)
                })?),
            };
        }
        for e in events.iter_mut() {
            let at = cur.pos;
            let op: u8 = cur.varint("operation")?;
            e.op = optional_op(op, at)?;
        }
        let n_clients = cur.count("client dictionary size", raw.len() / 8)?;
        let mut clients = Vec::with_capacity(n_clients);
        for _ in 0..n_clients {
            clients.push(cur.u64_le("client address")?);
        }
        for e in events.iter_mut() {
            let index = cur.index("client index", clients.len() + 1)?;
            e.op_client = if index == 0 { 0 } else { clients[index - 1] };
        }
    }
    if matches!(layout, Layout::V3 | Layout::V4) {
        let n_owners = cur.count("owner dictionary size", raw.len() / 2)?;
        let mut owners = Vec::with_capacity(n_owners);
        for _ in 0..n_owners {
            owners.push((
                cur.varint::<u32>("owner tid")?,
                cur.varint::<u32>("owner tgid")?,
            ));
        }
        for e in events.iter_mut() {
            e.owner = match cur.index("owner index", owners.len() + OWNER_INDEX_BASE as usize)? {
                0 => LockOwner::Unknown,
                1 => LockOwner::Free,
                2 => LockOwner::Readers,
                index => {
                    let (tid, tgid) = owners[index - OWNER_INDEX_BASE as usize];
                    LockOwner::Thread(Owner {
                        tid,
                        tgid,
                        op: None,
                        stack_id: None,
                    })
                }
            };
        }
        for e in events.iter_mut() {
            let at = cur.pos;
            let op: u8 = cur.varint("owner operation")?;
            match (&mut e.owner, op) {
                (_, 0) => {}
                (LockOwner::Thread(owner), op) => owner.op = optional_op(op, at)?,
                _ => {
                    return Err(format!(
                        "owner operation {op} at byte {at} of the chunk for a wait without owner"
                    ));
                }
            }
        }
    }
    if layout == Layout::V4 {
        for e in events.iter_mut() {
            let at = cur.pos;
            let stack: u64 = cur.varint("owner stack")?;
            match (&mut e.owner, stack) {
                (_, 0) => {}
                (LockOwner::Thread(owner), stack) => {
                    owner.stack_id = Some(u32::try_from(stack - 1).map_err(|_| {
                        format!("owner stack {stack} at byte {at} of the chunk is out of range")
                    })?)
                }
                _ => {
                    return Err(format!(
                        "owner stack {stack} at byte {at} of the chunk for a wait without owner"
                    ));
                }
            }
        }
    }
    cur.finish()?;
    Ok(events)
}

/// An operation column's value: 0 for none, else a known [`OpKind`].
fn optional_op(op: u8, at: usize) -> Result<Option<OpKind>, String> {
    match op {
        0 => Ok(None),
        op => OpKind::from_u8(op)
            .map(Some)
            .ok_or_else(|| format!("unknown operation kind {op} at byte {at} of the chunk")),
    }
}

/// Decodes a dm-bufio operation chunk that claims `expected` operations.
pub(crate) fn decode_bufio_ops(
    raw: &[u8],
    expected: u32,
    layout: Layout,
) -> Result<Vec<BufioOp>, String> {
    let (mut ops, mut cur) = decode_common(
        raw,
        expected,
        MIN_BUFIO_OP_BYTES,
        "client",
        BufioOp::default(),
        |o: &mut BufioOp, c| {
            o.client = c.addr;
            (o.tid, o.tgid, o.cpu) = (c.tid, c.tgid, c.cpu);
            o.duration_ns = c.duration_ns;
            o.start_ns = c.end_ns.wrapping_sub(c.duration_ns);
        },
    )?;
    for o in ops.iter_mut() {
        let at = cur.pos;
        let kind: u8 = cur.varint("operation kind")?;
        o.kind = OpKind::from_u8(kind)
            .ok_or_else(|| format!("unknown operation kind {kind} at byte {at} of the chunk"))?;
    }
    for o in ops.iter_mut() {
        let at = cur.pos;
        let result: u8 = cur.varint("operation result")?;
        o.result = OpResult::from_u8(result).ok_or_else(|| {
            format!("unknown operation result {result} at byte {at} of the chunk")
        })?;
    }
    let mut block = 0u64;
    for o in ops.iter_mut() {
        block = block.wrapping_add(cur.varint::<i64>("block delta")? as u64);
        o.block = block;
    }
    for o in ops.iter_mut() {
        o.arg0 = cur.varint("arg0")?;
    }
    for o in ops.iter_mut() {
        o.arg1 = cur.varint("arg1")?;
    }
    if layout != Layout::V1 {
        for o in ops.iter_mut() {
            o.lock_wait_ns = cur.varint("client-mutex wait")?;
        }
        for o in ops.iter_mut() {
            o.lock_hold_ns = cur.varint("client-mutex hold")?;
        }
    }
    if layout == Layout::V5 {
        for o in ops.iter_mut() {
            let at = cur.pos;
            let encoded = cur.varint("client-lock attempt")?;
            o.lock_attempt_ns = time_in(o, encoded, "client-lock attempt", at)?;
        }
        for o in ops.iter_mut() {
            let at = cur.pos;
            let encoded = cur.varint("client-lock release")?;
            o.lock_release_ns = time_in(o, encoded, "client-lock release", at)?;
        }
    }
    cur.finish()?;
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<LockWait> {
        (0..100u64)
            .map(|i| LockWait {
                start_ns: 1_000_000 + i * 997,
                wait_ns: 50 + i * i,
                lock_addr: 0xffff_8880_0000_0000 + (i % 3) * 64,
                tid: 100 + (i % 5) as u32,
                tgid: 100,
                cpu: (i % 2) as u32,
                flags: 32,
                ret: if i == 7 { -4 } else { 0 },
                ..LockWait::default()
            })
            .collect()
    }

    #[test]
    fn round_trips_and_uses_dictionaries() {
        let events = sample();
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_lock_waits(&events, Layout::V1, &mut raw);
        assert_eq!(
            decode_lock_waits(&raw, 100, Layout::V1).expect("decodes"),
            events
        );
        // 3 locks × 8 bytes in the dictionary, not 100 × 8 in the column.
        assert!(raw.len() < 100 * 12, "encoded to {} bytes", raw.len());
    }

    #[test]
    fn wrong_count_and_bad_index_are_named() {
        let events = sample();
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_lock_waits(&events, Layout::V1, &mut raw);
        let err = decode_lock_waits(&raw, 99, Layout::V1).expect_err("count mismatch");
        assert!(err.contains("holds 100 events"), "{err}");

        let one = [LockWait::default()];
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_lock_waits(&one, Layout::V1, &mut raw);
        // Layout: n=1, L=1, 8 address bytes, T=1, tid, tgid, then the seven columns.
        let lock_index_at = 1 + 1 + 8 + 1 + 1 + 1 + 1 + 1;
        raw[lock_index_at] = 5;
        let err = decode_lock_waits(&raw, 1, Layout::V1).expect_err("index outside the dictionary");
        assert!(err.contains("lock index 5"), "{err}");
    }

    #[test]
    fn v2_columns_round_trip_and_v1_drops_them() {
        let mut events = sample();
        for (i, e) in events.iter_mut().enumerate() {
            if i % 3 != 0 {
                e.stack_id = Some(i as u32 * 7);
                e.op = Some(OpKind::Read);
                e.op_client = 0xffff_8881_0000_0000 + (i % 2) as u64 * 0x400;
            }
        }
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_lock_waits(&events, Layout::V2, &mut raw);
        assert_eq!(
            decode_lock_waits(&raw, 100, Layout::V2).expect("decodes"),
            events
        );
        let err = decode_lock_waits(&raw, 100, Layout::V1).expect_err("V1 sees extra bytes");
        assert!(err.contains("left over"), "{err}");

        let ops: Vec<BufioOp> = (0..10)
            .map(|i| BufioOp {
                start_ns: 100 * i,
                lock_wait_ns: i * 1000,
                lock_hold_ns: i * 10,
                ..BufioOp::default()
            })
            .collect();
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_bufio_ops(&ops, Layout::V2, &mut raw);
        assert_eq!(
            decode_bufio_ops(&raw, 10, Layout::V2).expect("decodes"),
            ops
        );
    }

    #[test]
    fn leftover_bytes_are_an_error() {
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_lock_waits(&sample(), Layout::V1, &mut raw);
        raw.push(0);
        let err = decode_lock_waits(&raw, 100, Layout::V1).expect_err("trailing byte");
        assert!(err.contains("1 bytes left over"), "{err}");
    }

    #[test]
    fn bufio_ops_round_trip_with_small_block_deltas() {
        let ops: Vec<BufioOp> = (0..200u64)
            .map(|i| BufioOp {
                start_ns: 10_000 + i * 300,
                duration_ns: 40 + i % 7,
                client: 0xffff_8881_2000_0000,
                block: 1024 + i / 2,
                tid: 500 + (i % 16) as u32,
                tgid: 500,
                cpu: (i % 2) as u32,
                kind: if i % 2 == 0 {
                    OpKind::Read
                } else {
                    OpKind::Release
                },
                result: if i % 2 == 0 {
                    OpResult::Hit
                } else {
                    OpResult::None
                },
                ..BufioOp::default()
            })
            .collect();
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_bufio_ops(&ops, Layout::V1, &mut raw);
        assert_eq!(
            decode_bufio_ops(&raw, 200, Layout::V1).expect("decodes"),
            ops
        );
        assert!(raw.len() < 200 * 12, "encoded to {} bytes", raw.len());

        // From the end: arg1, arg0 (a byte each), block deltas (the first, 1024, takes two),
        // result, then the kinds.
        let kind_column = raw.len() - (4 * 200 + 201);
        let mut bad = raw.clone();
        bad[kind_column] = 99;
        let err = decode_bufio_ops(&bad, 200, Layout::V1).expect_err("unknown kind");
        assert!(err.contains("unknown operation kind 99"), "{err}");
    }

    #[test]
    fn v5_keeps_lock_attempts_and_releases_inside_their_operations() {
        let ops: Vec<BufioOp> = (0..10u64)
            .map(|i| BufioOp {
                start_ns: 1_000_000 + 5_000 * i,
                duration_ns: 4_000,
                lock_hold_ns: if i == 4 { 0 } else { 900 },
                lock_attempt_ns: if i == 4 {
                    0
                } else {
                    1_000_000 + 5_000 * i + 100 * i
                },
                lock_release_ns: if i == 4 {
                    0
                } else {
                    1_000_000 + 5_000 * i + 4_000 - i
                },
                ..BufioOp::default()
            })
            .collect();
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_bufio_ops(&ops, Layout::V5, &mut raw);
        assert_eq!(
            decode_bufio_ops(&raw, 10, Layout::V5).expect("decodes"),
            ops
        );
        let err = decode_bufio_ops(&raw, 10, Layout::V2).expect_err("V2 sees extra bytes");
        assert!(err.contains("left over"), "{err}");

        // A time outside its operation is written clamped to it.
        let mut early = ops.clone();
        early[0].lock_attempt_ns = early[0].start_ns - 50;
        early[1].lock_release_ns = early[1].end_ns() + 50;
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_bufio_ops(&early, Layout::V5, &mut raw);
        let decoded = decode_bufio_ops(&raw, 10, Layout::V5).expect("decodes");
        assert_eq!(
            (decoded[0].lock_attempt_ns, decoded[1].lock_release_ns),
            (ops[0].start_ns, ops[1].end_ns())
        );

        // A chunk that says otherwise is refused, naming the column and the byte.
        let mut raw = Vec::new();
        ChunkEncoder::default().encode_bufio_ops(&ops[..1], Layout::V2, &mut raw);
        put(&mut raw, 1u64);
        let at = raw.len();
        put(&mut raw, 4_002u64);
        let err = decode_bufio_ops(&raw, 1, Layout::V5).expect_err("release after the return");
        assert_eq!(
            err,
            format!(
                "client-lock release 4001 ns after its operation's start, outside its 4000 ns, \
                 at byte {at} of the chunk"
            )
        );
    }
}
