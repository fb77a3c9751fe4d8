//! Perfetto's protobuf trace format: a process track per process and a track per thread, with
//! dm-bufio operations and lock waits as slices on it (a wait that does not nest within the
//! thread's slices goes to a "lock waits" track beside the thread's), and counter tracks per
//! dm-bufio client for ops/s, estimated cached blocks and dirty buffers.
//!
//! Only the messages written are declared here, with the field numbers of Perfetto's
//! `protos/perfetto/trace` (TracePacket, TrackDescriptor, TrackEvent, DebugAnnotation, ...);
//! packets are streamed one by one as the `Trace.packet` repeated field.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
};

use bufscope_abi::LockFlags;
use prost::Message;

use super::{ExportError, Threads, counters};
use crate::{report::op_short, tracedata::TraceData};

#[derive(Clone, PartialEq, Message)]
pub struct TracePacket {
    #[prost(uint64, optional, tag = "8")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    pub trusted_packet_sequence_id: Option<u32>,
    #[prost(message, optional, tag = "11")]
    pub track_event: Option<TrackEvent>,
    #[prost(message, optional, tag = "60")]
    pub track_descriptor: Option<TrackDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrackDescriptor {
    #[prost(uint64, optional, tag = "1")]
    pub uuid: Option<u64>,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(message, optional, tag = "3")]
    pub process: Option<ProcessDescriptor>,
    #[prost(message, optional, tag = "4")]
    pub thread: Option<ThreadDescriptor>,
    #[prost(uint64, optional, tag = "5")]
    pub parent_uuid: Option<u64>,
    #[prost(message, optional, tag = "8")]
    pub counter: Option<CounterDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProcessDescriptor {
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    #[prost(string, optional, tag = "6")]
    pub process_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ThreadDescriptor {
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    pub tid: Option<i32>,
    #[prost(string, optional, tag = "5")]
    pub thread_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CounterDescriptor {
    /// 1 ns, 2 count, 3 bytes.
    #[prost(int32, optional, tag = "3")]
    pub unit: Option<i32>,
    #[prost(string, optional, tag = "6")]
    pub unit_name: Option<String>,
}

/// TrackEvent.Type
pub const SLICE_BEGIN: i32 = 1;
pub const SLICE_END: i32 = 2;
pub const COUNTER: i32 = 4;

#[derive(Clone, PartialEq, Message)]
pub struct TrackEvent {
    #[prost(message, repeated, tag = "4")]
    pub debug_annotations: Vec<DebugAnnotation>,
    #[prost(int32, optional, tag = "9")]
    pub r#type: Option<i32>,
    #[prost(uint64, optional, tag = "11")]
    pub track_uuid: Option<u64>,
    #[prost(string, repeated, tag = "22")]
    pub categories: Vec<String>,
    #[prost(string, optional, tag = "23")]
    pub name: Option<String>,
    #[prost(double, optional, tag = "44")]
    pub double_counter_value: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DebugAnnotation {
    #[prost(uint64, optional, tag = "3")]
    pub uint_value: Option<u64>,
    #[prost(string, optional, tag = "6")]
    pub string_value: Option<String>,
    #[prost(string, optional, tag = "10")]
    pub name: Option<String>,
}

fn uint(name: &str, v: u64) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.to_string()),
        uint_value: Some(v),
        ..Default::default()
    }
}

fn text(name: &str, v: impl Into<String>) -> DebugAnnotation {
    DebugAnnotation {
        name: Some(name.to_string()),
        string_value: Some(v.into()),
        ..Default::default()
    }
}

/// All packets come from one writer sequence.
const SEQUENCE: u32 = 0xb5;

/// Streams packets as `Trace.packet` (field 1, length-delimited).
struct Out<W: Write> {
    w: std::io::BufWriter<W>,
    buf: Vec<u8>,
}

impl<W: Write> Out<W> {
    fn packet(&mut self, p: TracePacket) -> std::io::Result<()> {
        self.buf.clear();
        // Field 1, wire type 2.
        self.buf.push(0x0a);
        p.encode_length_delimited(&mut self.buf)
            .expect("a Vec grows as needed");
        self.w.write_all(&self.buf)
    }

    fn descriptor(&mut self, d: TrackDescriptor) -> std::io::Result<()> {
        self.packet(TracePacket {
            track_descriptor: Some(d),
            trusted_packet_sequence_id: Some(SEQUENCE),
            ..Default::default()
        })
    }

    fn event(&mut self, at_ns: u64, e: TrackEvent) -> std::io::Result<()> {
        self.packet(TracePacket {
            timestamp: Some(at_ns),
            trusted_packet_sequence_id: Some(SEQUENCE),
            track_event: Some(e),
            ..Default::default()
        })
    }
}

/// A slice to place: on its thread's track when it nests there, else beside it.
struct Slice {
    start: u64,
    end: u64,
    tid: u32,
    name: String,
    category: &'static str,
    args: Vec<DebugAnnotation>,
}

pub fn write(trace: &TraceData, out: impl Write) -> Result<u64, ExportError> {
    let mut out = Out {
        w: std::io::BufWriter::new(out),
        buf: Vec::new(),
    };
    // Tracks: processes, then threads, then each thread's overflow track on demand.
    let threads = Threads::of(trace);
    let process_uuid = |pid: u32| 1u64 << 40 | u64::from(pid);
    let thread_uuid = |tid: u32| 2u64 << 40 | u64::from(tid);
    let overflow_uuid = |tid: u32| 3u64 << 40 | u64::from(tid);
    for pid in threads.processes() {
        let name = threads.process_name(pid);
        out.descriptor(TrackDescriptor {
            uuid: Some(process_uuid(pid)),
            process: Some(ProcessDescriptor {
                pid: Some(pid as i32),
                process_name: Some(name),
            }),
            ..Default::default()
        })?;
    }
    for (&tid, &pid) in &threads.tgid {
        out.descriptor(TrackDescriptor {
            uuid: Some(thread_uuid(tid)),
            thread: Some(ThreadDescriptor {
                pid: Some(pid as i32),
                tid: Some(tid as i32),
                thread_name: Some(threads.thread_name(tid)),
            }),
            ..Default::default()
        })?;
    }

    let mut slices: Vec<Slice> = Vec::with_capacity(trace.ops.len() + trace.waits.len());
    for o in &trace.ops {
        let mut args = vec![
            uint("block", o.block),
            text("device", trace.names.client_device(o.client).unwrap_or("?")),
            text("result", format!("{:?}", o.result).to_lowercase()),
        ];
        if o.lock_wait_ns > 0 || o.lock_hold_ns > 0 {
            args.push(uint("mutex_wait_ns", o.lock_wait_ns));
            args.push(uint("mutex_hold_ns", o.lock_hold_ns));
        }
        slices.push(Slice {
            start: o.start_ns,
            // A slice ends after it begins, however short.
            end: o.end_ns().max(o.start_ns + 1),
            tid: o.tid,
            name: op_short(o.kind).to_string(),
            category: "dm-bufio",
            args,
        });
    }
    for w in &trace.waits {
        let mut args = vec![
            text("type", LockFlags(w.flags).type_name()),
            text("lock", format!("{:#x}", w.lock_addr)),
        ];
        if let Some(caller) = w.stack_id.and_then(|s| trace.names.caller(s)) {
            args.push(text("caller", caller));
        }
        slices.push(Slice {
            start: w.start_ns,
            end: w.end_ns().max(w.start_ns + 1),
            tid: w.tid,
            name: format!("wait: {}", trace.lock_name(w)),
            category: "lock",
            args,
        });
    }
    // Per thread, outer slices first: an earlier start, or the same start and a later end.
    slices.sort_by(|a, b| {
        (a.tid, a.start)
            .cmp(&(b.tid, b.start))
            .then(b.end.cmp(&a.end))
    });
    // Each track's open slices (their ends), to place and close slices in order. Ends are
    // emitted before anything that starts at or after them.
    let mut open: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut overflow_made: HashSet<u32> = HashSet::new();
    let mut n = 0u64;
    let mut events: Vec<(u64, u8, u64, TrackEvent)> = Vec::new();
    for s in slices {
        let thread = thread_uuid(s.tid);
        let close = |stack: &mut Vec<u64>, at: u64, track: u64, events: &mut Vec<_>| {
            while stack.last().is_some_and(|&end| end <= at) {
                let end = stack.pop().expect("checked");
                events.push((end, 0, track, end_event(track)));
            }
        };
        let stack = open.entry(thread).or_default();
        close(stack, s.start, thread, &mut events);
        let track = if stack.last().is_none_or(|&end| s.end <= end) {
            stack.push(s.end);
            thread
        } else {
            let overflow = overflow_uuid(s.tid);
            if overflow_made.insert(s.tid) {
                out.descriptor(TrackDescriptor {
                    uuid: Some(overflow),
                    name: Some(format!("{} lock waits", threads.thread_name(s.tid))),
                    parent_uuid: Some(process_uuid(threads.tgid[&s.tid])),
                    ..Default::default()
                })?;
            }
            let stack = open.entry(overflow).or_default();
            close(stack, s.start, overflow, &mut events);
            if stack.last().is_some_and(|&end| s.end > end) {
                // Overlaps on the overflow track too (clock skew): clip to the outer slice.
                stack.push(*stack.last().expect("checked"));
            } else {
                stack.push(s.end);
            }
            overflow
        };
        events.push((
            s.start,
            1,
            track,
            TrackEvent {
                r#type: Some(SLICE_BEGIN),
                track_uuid: Some(track),
                name: Some(s.name),
                categories: vec![s.category.to_string()],
                debug_annotations: s.args,
                ..Default::default()
            },
        ));
        n += 1;
    }
    for (&track, stack) in &mut open {
        while let Some(end) = stack.pop() {
            events.push((end, 0, track, end_event(track)));
        }
    }

    // Counters per client.
    let mut counter_tracks: HashMap<(u64, usize), u64> = HashMap::new();
    let samples = counters(&trace.ops, 100_000_000);
    const NAMES: [(&str, i32); 3] = [
        ("ops/s", 0),
        ("blocks cached (est.)", 2),
        ("dirty buffers (est.)", 2),
    ];
    for s in &samples {
        for (i, (name, unit)) in NAMES.iter().enumerate() {
            let next = 4u64 << 40 | (counter_tracks.len() as u64);
            let uuid = *counter_tracks.entry((s.client, i)).or_insert(next);
            if uuid == next {
                let device = trace.names.client_device(s.client).unwrap_or("?");
                out.descriptor(TrackDescriptor {
                    uuid: Some(uuid),
                    name: Some(format!("dm-bufio {device} {name}")),
                    counter: Some(CounterDescriptor {
                        unit: (*unit != 0).then_some(*unit),
                        unit_name: (*unit == 0).then(|| name.to_string()),
                    }),
                    ..Default::default()
                })?;
            }
            let value = match i {
                0 => s.ops_per_s,
                1 => s.blocks_cached as f64,
                _ => s.dirty as f64,
            };
            events.push((
                s.at_ns,
                2,
                uuid,
                TrackEvent {
                    r#type: Some(COUNTER),
                    track_uuid: Some(uuid),
                    double_counter_value: Some(value),
                    ..Default::default()
                },
            ));
        }
    }
    // Time order across tracks; at one instant, ends before begins. The sort is stable, so a
    // track's begins keep their outer-first order.
    events.sort_by_key(|&(at, order, _, _)| (at, order));
    for (at, _, _, e) in events {
        out.event(at, e)?;
    }
    out.w.flush()?;
    Ok(n)
}

fn end_event(track: u64) -> TrackEvent {
    TrackEvent {
        r#type: Some(SLICE_END),
        track_uuid: Some(track),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use bufscope_trace::{BufioOp, LockWait, OpKind};

    use super::*;

    #[derive(Clone, PartialEq, Message)]
    struct Trace {
        #[prost(message, repeated, tag = "1")]
        packet: Vec<TracePacket>,
    }

    #[test]
    fn a_wait_that_does_not_nest_goes_beside_its_thread() {
        let mut t = TraceData::default();
        t.ops.push(BufioOp {
            start_ns: 100,
            duration_ns: 100,
            tid: 5,
            kind: OpKind::Read,
            ..Default::default()
        });
        // Inside the op: nests. Overlapping its end: cannot.
        for (start, wait) in [(120, 30), (180, 50)] {
            t.waits.push(LockWait {
                start_ns: start,
                wait_ns: wait,
                tid: 5,
                flags: LockFlags::MUTEX,
                ..Default::default()
            });
        }
        let mut bytes = Vec::new();
        assert_eq!(write(&t, &mut bytes).unwrap(), 3);
        let trace = Trace::decode(bytes.as_slice()).unwrap();
        let begins: Vec<(u64, u64)> = trace
            .packet
            .iter()
            .filter_map(|p| {
                let e = p.track_event.as_ref()?;
                (e.r#type == Some(SLICE_BEGIN))
                    .then(|| (p.timestamp.unwrap(), e.track_uuid.unwrap()))
            })
            .collect();
        let thread = 2u64 << 40 | 5;
        let overflow = 3u64 << 40 | 5;
        assert_eq!(begins, [(100, thread), (120, thread), (180, overflow)]);
        let ends = |track| {
            trace
                .packet
                .iter()
                .filter(|p| {
                    p.track_event
                        .as_ref()
                        .is_some_and(|e| e.r#type == Some(SLICE_END) && e.track_uuid == Some(track))
                })
                .map(|p| p.timestamp.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(ends(thread), [150, 200]);
        assert_eq!(ends(overflow), [230]);
        let named = trace.packet.iter().any(|p| {
            p.track_descriptor.as_ref().is_some_and(|d| {
                d.uuid == Some(overflow) && d.name.as_deref() == Some("tid 5 (dm-bufio) lock waits")
            })
        });
        assert!(named);
    }
}
