//! The ring buffer's events, decoded: lock waits, dm-bufio operations and clients, in batches as
//! they become available.

use std::io;

use aya::maps::{MapData, RingBuf};
use bufscope_abi::{BufioOpEvent, ClientEvent, EventKind, LockWaitEvent, owner};
use bufscope_trace::{BufioOp, LockOwner, LockWait, OpKind, OpResult, Owner};
use tokio::io::{Interest, unix::AsyncFd};

use super::LockProbes;
use crate::kernel::bufio;

impl LockProbes {
    /// The event ring buffer, as an async stream; available once.
    pub fn event_stream(&mut self) -> io::Result<EventStream> {
        let ring = self
            .events
            .take()
            .ok_or_else(|| io::Error::other("the event stream was already taken"))?;
        EventStream::new(ring)
    }
}

/// A dm-bufio client, as the probes saw it appear or go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSighting {
    pub addr: u64,
    /// "major:minor" of the client's block device.
    pub device: String,
    pub block_size: u32,
    /// Tree locks (6.4+), 0 before.
    pub num_locks: u32,
    /// Created with DM_BUFIO_CLIENT_NO_SLEEP: its locks are a spinlock and rwlocks.
    pub no_sleep: bool,
    pub how: ClientHow,
    pub at_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHow {
    Created,
    /// Already there when bufscope started; seen in its first operation.
    Seen,
    Destroyed,
}

/// One event from the ring buffer.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    LockWait(LockWait),
    Op(BufioOp),
    Client(ClientSighting),
}

/// The most records one [`EventStream::next_batch`] reads: about a millisecond of decoding.
pub const MAX_BATCH: usize = 16 * 1024;

/// How often the ring is read when the probes have not woken the reader: the longest an event
/// waits before the live view or the recorder sees it. Under a storm the ring wakes the reader
/// itself long before (a quarter of the default 16 MiB is about 44k events).
pub const READ_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Events from the ring buffer, in batches as they become available.
pub struct EventStream {
    ring: AsyncFd<RingBuf<MapData>>,
    malformed: u64,
    /// The last read stopped at [`MAX_BATCH`] with records left: the next one reads at once.
    more: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("malformed", &self.malformed)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its fd, which stays open as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self {
            ring,
            malformed: 0,
            more: false,
        })
    }

    /// Waits until the probes wake the reader or [`READ_EVERY`] passes, then appends up to
    /// [`MAX_BATCH`] events to `out` (none, when none came).
    ///
    /// The probes wake the reader only when a quarter of the ring is waiting (see the eBPF
    /// object's `submit_flags`: a wakeup per event costs the workload an IPI and a context
    /// switch), hence the timer.
    ///
    /// Bounded so that a flood the reader cannot keep up with does not hold the caller's loop:
    /// with the kernel writing as fast as it is read, "everything there is" never ends, and keys,
    /// ticks and frames would wait for it. What is left is read by the next call, without
    /// waiting. Cancel-safe: events are taken from the ring only after the last await.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        // Lets the runtime turn its drivers first. A stream that is always ready (events come
        // faster than the caller takes them) would otherwise keep a current-thread runtime from
        // firing timers and delivering signals for as long as it lasts: the live view drew no
        // frame and record did not see Ctrl-C for minutes under a pipe storm in a debug build.
        tokio::task::yield_now().await;
        if !self.more {
            // Woken, or the timer's turn: either way the ring is read below.
            if let Ok(guard) = tokio::time::timeout(READ_EVERY, self.ring.readable_mut()).await {
                guard?.clear_ready();
            }
        }
        let (malformed, more) = drain(self.ring.get_mut(), out, MAX_BATCH);
        self.malformed += malformed;
        self.more = more;
        Ok(())
    }

    /// Appends whatever events are in the ring buffer now, without waiting (once the probes are
    /// detached: nothing adds to it while it drains).
    pub fn drain_now(&mut self, out: &mut Vec<Event>) {
        self.malformed += drain(self.ring.get_mut(), out, usize::MAX).0;
    }

    /// Records with an unknown kind or size (a mismatched eBPF object would cause them).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

/// Reads up to `max` records into `out`; returns how many were malformed and whether `max` was
/// reached (records may be left).
fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Event>, max: usize) -> (u64, bool) {
    let mut malformed = 0;
    for _ in 0..max {
        let Some(item) = ring.next() else {
            return (malformed, false);
        };
        match decode(&item) {
            Some(event) => out.push(event),
            None => malformed += 1,
        }
    }
    (malformed, true)
}

/// Reads a `T` from the start of a record of at least its size.
fn read_record<T: Copy>(record: &[u8]) -> Option<T> {
    if record.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked; T is one of the ABI's plain-data types, valid for any
    // bytes, and the ring buffer gives no alignment promise, hence the unaligned read.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) })
}

/// Turns one ring-buffer record into an event.
fn decode(record: &[u8]) -> Option<Event> {
    match EventKind::of_record(record)? {
        EventKind::LockWait => {
            let e: LockWaitEvent = read_record(record)?;
            let op = OpKind::from_u8(u8::try_from(e.op).ok()?);
            Some(Event::LockWait(LockWait {
                start_ns: e.start_ns,
                wait_ns: e.wait_ns,
                lock_addr: e.lock_addr,
                tid: e.tid,
                tgid: e.tgid,
                cpu: e.cpu,
                flags: e.flags,
                ret: e.ret,
                stack_id: u32::try_from(e.stack_id).ok(),
                op,
                op_client: if op.is_some() { e.op_client } else { 0 },
                owner: match e.owner_state {
                    owner::FREE => LockOwner::Free,
                    owner::READERS => LockOwner::Readers,
                    owner::THREAD => LockOwner::Thread(Owner {
                        tid: e.owner_tid,
                        tgid: e.owner_tgid,
                        op: u8::try_from(e.owner_op).ok().and_then(OpKind::from_u8),
                        stack_id: (e.owner_stack != 0).then_some(e.owner_stack),
                    }),
                    _ => LockOwner::Unknown,
                },
            }))
        }
        EventKind::BufioOp => {
            let e: BufioOpEvent = read_record(record)?;
            Some(Event::Op(BufioOp {
                start_ns: e.start_ns,
                duration_ns: e.duration_ns,
                client: e.client,
                block: e.block,
                tid: e.tid,
                tgid: e.tgid,
                cpu: e.cpu,
                kind: OpKind::from_u8(u8::try_from(e.op).ok()?)?,
                result: OpResult::from_u8(u8::try_from(e.result).ok()?)?,
                arg0: e.arg0,
                arg1: e.arg1,
                lock_wait_ns: e.lock_wait_ns,
                lock_hold_ns: e.lock_hold_ns,
                lock_attempt_ns: e.lock_attempt_ns,
                lock_release_ns: e.lock_release_ns,
            }))
        }
        EventKind::Client => {
            let e: ClientEvent = read_record(record)?;
            Some(Event::Client(ClientSighting {
                addr: e.client,
                device: bufio::device_name(&e),
                block_size: e.block_size,
                num_locks: e.num_locks,
                no_sleep: e.no_sleep != 0,
                how: match e.how {
                    ClientEvent::CREATED => ClientHow::Created,
                    ClientEvent::DESTROYED => ClientHow::Destroyed,
                    _ => ClientHow::Seen,
                },
                at_ns: e.at_ns,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(e: &T) -> Vec<u8> {
        // SAFETY: only used with the ABI's #[repr(C)] types, which have no padding.
        unsafe { std::slice::from_raw_parts((e as *const T).cast::<u8>(), size_of_val(e)) }.to_vec()
    }

    #[test]
    fn decodes_lock_wait_records_and_rejects_others() {
        let event = LockWaitEvent {
            kind: EventKind::LockWait as u32,
            flags: 0x20,
            tid: 7,
            tgid: 5,
            cpu: 1,
            ret: -4,
            start_ns: 100,
            wait_ns: 25,
            lock_addr: 0xffff_8880_0000_1000,
            op_client: 0xffff_8881_0000_0000,
            stack_id: 3,
            op: bufscope_abi::op::READ,
            owner_state: owner::THREAD,
            owner_tid: 8,
            owner_tgid: 5,
            owner_op: bufscope_abi::op::WRITE_DIRTY,
            owner_stack: 0x8000_0042,
            _pad: 0,
        };
        let bytes = bytes_of(&event);
        let Some(Event::LockWait(decoded)) = decode(&bytes) else {
            panic!("decodes as a lock wait");
        };
        assert_eq!(
            (decoded.tid, decoded.tgid, decoded.cpu, decoded.ret),
            (7, 5, 1, -4)
        );
        assert_eq!(decoded.end_ns(), 125);
        assert_eq!(decoded.lock_addr, 0xffff_8880_0000_1000);
        assert_eq!(decoded.stack_id, Some(3));
        assert_eq!(decoded.op, Some(OpKind::Read));
        assert_eq!(decoded.op_client, 0xffff_8881_0000_0000);
        assert_eq!(
            decoded.owner,
            LockOwner::Thread(Owner {
                tid: 8,
                tgid: 5,
                op: Some(OpKind::WriteDirty),
                stack_id: Some(0x8000_0042),
            })
        );
        assert_eq!(decode(&bytes[..40]), None, "short record");
        let mut other = bytes.clone();
        other[0] = 99;
        assert_eq!(decode(&other), None, "unknown kind");

        let no_stack_no_op = LockWaitEvent {
            stack_id: -17,
            owner_stack: 0,
            op: 0,
            owner_state: owner::READERS,
            ..event
        };
        let Some(Event::LockWait(decoded)) = decode(&bytes_of(&no_stack_no_op)) else {
            panic!("decodes");
        };
        assert_eq!(
            (
                decoded.stack_id,
                decoded.op,
                decoded.op_client,
                decoded.owner
            ),
            (None, None, 0, LockOwner::Readers)
        );
    }

    #[test]
    fn decodes_operations_and_clients() {
        let op = BufioOpEvent {
            kind: EventKind::BufioOp as u32,
            op: bufscope_abi::op::READ,
            tid: 9,
            tgid: 9,
            cpu: 0,
            result: bufscope_abi::result::MISS,
            start_ns: 1_000,
            duration_ns: 500,
            client: 0xffff_8881_0000_0000,
            block: 77,
            arg0: 0,
            arg1: 0,
            lock_wait_ns: 120,
            lock_hold_ns: 30,
            lock_attempt_ns: 1_010,
            lock_release_ns: 1_160,
        };
        let Some(Event::Op(decoded)) = decode(&bytes_of(&op)) else {
            panic!("decodes as an operation");
        };
        assert_eq!(
            (decoded.kind, decoded.result),
            (OpKind::Read, OpResult::Miss)
        );
        assert_eq!(
            (decoded.block, decoded.lock_wait_ns, decoded.lock_hold_ns),
            (77, 120, 30)
        );
        assert_eq!(
            (decoded.lock_attempt_ns, decoded.lock_release_ns),
            (1_010, 1_160)
        );
        let bad = BufioOpEvent { op: 99, ..op };
        assert_eq!(decode(&bytes_of(&bad)), None, "unknown operation kind");

        let client = ClientEvent {
            kind: EventKind::Client as u32,
            how: ClientEvent::CREATED,
            dev: (253 << 20) | 2,
            block_size: 4096,
            num_locks: 64,
            no_sleep: 1,
            client: 0xffff_8881_0000_0000,
            at_ns: 5,
        };
        let Some(Event::Client(seen)) = decode(&bytes_of(&client)) else {
            panic!("decodes as a client");
        };
        assert_eq!(seen.device, "253:2");
        assert_eq!(
            (seen.how, seen.block_size, seen.num_locks, seen.no_sleep),
            (ClientHow::Created, 4096, 64, true)
        );
    }

    #[test]
    fn abi_operation_numbers_match_the_trace_format() {
        use bufscope_abi::{op, result};
        let pairs = [
            (op::GET, OpKind::Get),
            (op::READ, OpKind::Read),
            (op::NEW, OpKind::New),
            (op::PREFETCH, OpKind::Prefetch),
            (op::RELEASE, OpKind::Release),
            (op::MARK_DIRTY, OpKind::MarkDirty),
            (op::MARK_PARTIAL_DIRTY, OpKind::MarkPartialDirty),
            (op::WRITE_DIRTY_ASYNC, OpKind::WriteDirtyAsync),
            (op::WRITE_DIRTY, OpKind::WriteDirty),
            (op::FORGET, OpKind::Forget),
            (op::FORGET_BUFFERS, OpKind::ForgetBuffers),
            (op::CLIENT_CREATE, OpKind::ClientCreate),
            (op::CLIENT_DESTROY, OpKind::ClientDestroy),
            (op::GLOBAL_CLEANUP, OpKind::GlobalCleanup),
            (op::SHRINK_WORK, OpKind::ShrinkWork),
            (op::AGE_CLEANUP, OpKind::AgeCleanup),
        ];
        assert_eq!(pairs.len(), OpKind::ALL.len());
        for (number, kind) in pairs {
            assert_eq!(number, kind as u32, "{kind:?}");
        }
        for (number, r) in [
            (result::NONE, OpResult::None),
            (result::HIT, OpResult::Hit),
            (result::MISS, OpResult::Miss),
            (result::ERROR, OpResult::Error),
        ] {
            assert_eq!(number, r as u32, "{r:?}");
        }
    }
}
