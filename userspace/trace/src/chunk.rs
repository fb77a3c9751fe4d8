//! The columnar encoding of a chunk of lock-wait events, before compression.
//!
//! ```text
//! varint n                      events in the chunk
//! varint L, L × u64             lock address dictionary, in first-seen order
//! varint T, T × (varint tid, varint tgid)   thread dictionary
//! n × zigzag varint             end time, delta from the previous event's (first from 0)
//! n × varint                    wait ns
//! n × varint                    lock index
//! n × varint                    thread index
//! n × varint                    cpu
//! n × varint                    flags
//! n × zigzag varint             ret
//! ```
//! Columns of small, similar numbers are what zstd compresses best; end times arrive nearly in
//! order, so their deltas are small.

use std::collections::HashMap;

use integer_encoding::VarInt;

use crate::LockWait;

/// The smallest encoding of one event: one byte in each of the seven columns.
const MIN_EVENT_BYTES: usize = 7;

/// Reusable dictionaries, so encoding a chunk allocates nothing once warmed up.
#[derive(Debug, Default)]
pub(crate) struct ChunkEncoder {
    locks: HashMap<u64, u32>,
    lock_order: Vec<u64>,
    threads: HashMap<(u32, u32), u32>,
    thread_order: Vec<(u32, u32)>,
    lock_column: Vec<u32>,
    thread_column: Vec<u32>,
}

fn put<V: VarInt>(out: &mut Vec<u8>, value: V) {
    let mut buf = [0u8; 10];
    let n = value.encode_var(&mut buf);
    out.extend_from_slice(&buf[..n]);
}

impl ChunkEncoder {
    /// Appends the encoding of `events` to `out`.
    pub(crate) fn encode(&mut self, events: &[LockWait], out: &mut Vec<u8>) {
        self.locks.clear();
        self.lock_order.clear();
        self.threads.clear();
        self.thread_order.clear();
        self.lock_column.clear();
        self.thread_column.clear();
        for e in events {
            let next = self.lock_order.len() as u32;
            let lock = *self.locks.entry(e.lock_addr).or_insert(next);
            if lock == next {
                self.lock_order.push(e.lock_addr);
            }
            self.lock_column.push(lock);
            let next = self.thread_order.len() as u32;
            let thread = *self.threads.entry((e.tid, e.tgid)).or_insert(next);
            if thread == next {
                self.thread_order.push((e.tid, e.tgid));
            }
            self.thread_column.push(thread);
        }

        put(out, events.len() as u64);
        put(out, self.lock_order.len() as u64);
        for addr in &self.lock_order {
            out.extend_from_slice(&addr.to_le_bytes());
        }
        put(out, self.thread_order.len() as u64);
        for &(tid, tgid) in &self.thread_order {
            put(out, tid);
            put(out, tgid);
        }
        let mut previous_end = 0u64;
        for e in events {
            let end = e.end_ns();
            put(out, end.wrapping_sub(previous_end) as i64);
            previous_end = end;
        }
        for e in events {
            put(out, e.wait_ns);
        }
        for &lock in &self.lock_column {
            put(out, lock);
        }
        for &thread in &self.thread_column {
            put(out, thread);
        }
        for e in events {
            put(out, e.cpu);
        }
        for e in events {
            put(out, e.flags);
        }
        for e in events {
            put(out, e.ret);
        }
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
}

/// Decodes a chunk that claims `expected` events.
pub(crate) fn decode(raw: &[u8], expected: u32) -> Result<Vec<LockWait>, String> {
    let mut cur = Cursor { buf: raw, pos: 0 };
    let n = cur.count("event count", raw.len() / MIN_EVENT_BYTES)?;
    if n != expected as usize {
        return Err(format!(
            "chunk holds {n} events but its record header says {expected}"
        ));
    }
    let n_locks = cur.count("lock dictionary size", raw.len() / 8)?;
    let mut locks = Vec::with_capacity(n_locks);
    for _ in 0..n_locks {
        locks.push(cur.u64_le("lock address")?);
    }
    let n_threads = cur.count("thread dictionary size", raw.len() / 2)?;
    let mut threads = Vec::with_capacity(n_threads);
    for _ in 0..n_threads {
        threads.push((cur.varint::<u32>("tid")?, cur.varint::<u32>("tgid")?));
    }

    let mut events = vec![LockWait::default(); n];
    let mut end = 0u64;
    for e in events.iter_mut() {
        end = end.wrapping_add(cur.varint::<i64>("end time delta")? as u64);
        e.start_ns = end; // becomes the start once the wait is known
    }
    for e in events.iter_mut() {
        e.wait_ns = cur.varint("wait time")?;
        e.start_ns = e.start_ns.wrapping_sub(e.wait_ns);
    }
    for e in events.iter_mut() {
        e.lock_addr = locks[cur.index("lock index", locks.len())?];
    }
    for e in events.iter_mut() {
        (e.tid, e.tgid) = threads[cur.index("thread index", threads.len())?];
    }
    for e in events.iter_mut() {
        e.cpu = cur.varint("cpu")?;
    }
    for e in events.iter_mut() {
        e.flags = cur.varint("flags")?;
    }
    for e in events.iter_mut() {
        e.ret = cur.varint("ret")?;
    }
    if cur.pos != raw.len() {
        return Err(format!(
            "{} bytes left over after the last column of the chunk",
            raw.len() - cur.pos
        ));
    }
    Ok(events)
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
            })
            .collect()
    }

    #[test]
    fn round_trips_and_uses_dictionaries() {
        let events = sample();
        let mut raw = Vec::new();
        ChunkEncoder::default().encode(&events, &mut raw);
        assert_eq!(decode(&raw, 100).expect("decodes"), events);
        // 3 locks × 8 bytes in the dictionary, not 100 × 8 in the column.
        assert!(raw.len() < 100 * 12, "encoded to {} bytes", raw.len());
    }

    #[test]
    fn wrong_count_and_bad_index_are_named() {
        let events = sample();
        let mut raw = Vec::new();
        ChunkEncoder::default().encode(&events, &mut raw);
        let err = decode(&raw, 99).expect_err("count mismatch");
        assert!(err.contains("holds 100 events"), "{err}");

        let one = [LockWait::default()];
        let mut raw = Vec::new();
        ChunkEncoder::default().encode(&one, &mut raw);
        // Layout: n=1, L=1, 8 address bytes, T=1, tid, tgid, then the seven columns.
        let lock_index_at = 1 + 1 + 8 + 1 + 1 + 1 + 1 + 1;
        raw[lock_index_at] = 5;
        let err = decode(&raw, 1).expect_err("index outside the dictionary");
        assert!(err.contains("lock index 5"), "{err}");
    }

    #[test]
    fn leftover_bytes_are_an_error() {
        let mut raw = Vec::new();
        ChunkEncoder::default().encode(&sample(), &mut raw);
        raw.push(0);
        let err = decode(&raw, 100).expect_err("trailing byte");
        assert!(err.contains("1 bytes left over"), "{err}");
    }
}
