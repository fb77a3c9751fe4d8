//! Chrome Trace Event JSON (the `{"traceEvents": [...]}` form): dm-bufio operations are complete
//! ("X") events on their thread; lock waits are async begin/end pairs ("b"/"e") under the
//! thread's process, one id each, so waits that overlap an operation's edges need not nest;
//! counters ("C") carry each client's ops/s, estimated cached blocks and dirty buffers. Times
//! are microseconds from the trace's first event, as the format wants.

use std::io::Write;

use bufscope_abi::LockFlags;
use serde_json::{Value, json};

use super::{ExportError, Threads, counters};
use crate::{report::op_short, tracedata::TraceData};

/// Counter sampling period, ns.
const COUNTER_PERIOD_NS: u64 = 100_000_000;

pub fn write(trace: &TraceData, out: impl Write) -> Result<u64, ExportError> {
    let mut out = std::io::BufWriter::new(out);
    let origin = trace.span_ns().map_or(0, |(first, _)| first);
    let us = |ns: u64| ns.saturating_sub(origin) as f64 / 1e3;
    let mut first = true;
    let mut emit = |out: &mut std::io::BufWriter<_>, event: Value| -> Result<(), ExportError> {
        out.write_all(if first { b"\n" } else { b",\n" })?;
        first = false;
        serde_json::to_writer(&mut *out, &event)?;
        Ok(())
    };
    out.write_all(b"{\"displayTimeUnit\":\"ns\",\"traceEvents\":[")?;
    let threads = Threads::of(trace);
    for pid in threads.processes() {
        let name = threads.process_name(pid);
        emit(
            &mut out,
            json!({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}),
        )?;
    }
    for (&tid, &pid) in &threads.tgid {
        emit(
            &mut out,
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                   "args": {"name": threads.thread_name(tid)}}),
        )?;
    }
    let mut n = 0u64;
    for o in &trace.ops {
        let device = trace.names.client_device(o.client).unwrap_or("?");
        emit(
            &mut out,
            json!({
                "ph": "X", "cat": "dm-bufio", "name": op_short(o.kind),
                "pid": o.tgid, "tid": o.tid, "ts": us(o.start_ns), "dur": o.duration_ns as f64 / 1e3,
                "args": {"block": o.block, "device": device, "result": format!("{:?}", o.result),
                         "mutex_wait_ns": o.lock_wait_ns, "mutex_hold_ns": o.lock_hold_ns},
            }),
        )?;
        n += 1;
    }
    for (id, w) in trace.waits.iter().enumerate() {
        let name = trace.lock_name(w);
        let mut args = json!({"type": LockFlags(w.flags).type_name(), "wait_ns": w.wait_ns,
                              "tid": w.tid, "lock": format!("{:#x}", w.lock_addr)});
        if let Some(op) = w.op {
            args["inside"] = json!(op.function());
        }
        if let Some(caller) = w.stack_id.and_then(|s| trace.names.caller(s)) {
            args["caller"] = json!(caller);
        }
        let common = json!({"cat": "lock", "name": name, "id": id, "pid": w.tgid, "tid": w.tid});
        let mut begin = common.clone();
        begin["ph"] = json!("b");
        begin["ts"] = json!(us(w.start_ns));
        begin["args"] = args;
        let mut end = common;
        end["ph"] = json!("e");
        end["ts"] = json!(us(w.end_ns()));
        emit(&mut out, begin)?;
        emit(&mut out, end)?;
        n += 1;
    }
    for s in counters(&trace.ops, COUNTER_PERIOD_NS) {
        let device = trace.names.client_device(s.client).unwrap_or("?");
        emit(
            &mut out,
            json!({"ph": "C", "name": format!("dm-bufio {device}"), "pid": 0, "ts": us(s.at_ns),
                   "args": {"ops/s": s.ops_per_s, "blocks cached (est.)": s.blocks_cached,
                            "dirty buffers (est.)": s.dirty}}),
        )?;
    }
    out.write_all(b"\n]}\n")?;
    out.flush()?;
    Ok(n)
}
