//! Every event of a trace as one row of one schema, written as CSV, JSON Lines or Parquet.
//!
//! The schema ([`COLUMNS`], also in the README) is the same in all three, so a fleet's traces
//! can be loaded into one table by DuckDB, DataFusion, Spark or pandas and queried together:
//! `source`, `host` and `kernel` say where each row came from. Columns that do not apply to a
//! row's kind are empty (CSV), null (JSON) or null (Parquet).

use std::{collections::HashSet, io::Write, sync::Arc};

use bufscope_abi::LockFlags;
use bufscope_trace::{LockOwner, OpResult};
use parquet::{
    basic::{Compression, ZstdLevel},
    data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::parser::parse_message_type,
};
use serde::Serialize;

use super::ExportError;
use crate::tracedata::TraceData;

/// A column: name, Parquet type, and what it holds.
#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub parquet: &'static str,
    pub doc: &'static str,
}

/// The export schema, in column order.
pub const COLUMNS: &[Column] = &[
    col(
        "source",
        "BYTE_ARRAY (UTF8)",
        "\"kernel\", or the reference design that ran the trace",
    ),
    col(
        "host",
        "BYTE_ARRAY (UTF8)",
        "host name of the recording machine",
    ),
    col(
        "kernel",
        "BYTE_ARRAY (UTF8)",
        "kernel release of the recording machine",
    ),
    col("kind", "BYTE_ARRAY (UTF8)", "\"lock_wait\" or \"bufio_op\""),
    col(
        "start_ns",
        "INT64 (UINT_64)",
        "start on the recording's clock (CLOCK_MONOTONIC), ns",
    ),
    col(
        "duration_ns",
        "INT64 (UINT_64)",
        "wait time (lock_wait) or run time (bufio_op), ns",
    ),
    col("tid", "INT32 (UINT_32)", "thread id"),
    col("tgid", "INT32 (UINT_32)", "process id"),
    col("cpu", "INT32 (UINT_32)", "CPU the event ended on"),
    col(
        "lock_addr",
        "INT64 (UINT_64), null",
        "lock_wait: the lock's kernel address",
    ),
    col(
        "lock_name",
        "BYTE_ARRAY (UTF8), null",
        "lock_wait: e.g. \"dm-bufio 7:0 client mutex\"",
    ),
    col(
        "lock_type",
        "BYTE_ARRAY (UTF8), null",
        "lock_wait: perf lock contention's type (mutex, rwsem:R, spinlock, ...)",
    ),
    col(
        "lock_class",
        "BYTE_ARRAY (UTF8), null",
        "lock_wait: client mutex, tree lock (read), tree lock (write) or other locks",
    ),
    col(
        "caller",
        "BYTE_ARRAY (UTF8), null",
        "lock_wait: the function that took the lock, from its stack",
    ),
    col(
        "stack_id",
        "INT32 (UINT_32), null",
        "lock_wait: the stack's id in the trace",
    ),
    col(
        "op",
        "BYTE_ARRAY (UTF8), null",
        "bufio_op: its dm-bufio function; lock_wait: the one it waited inside",
    ),
    col(
        "client",
        "INT64 (UINT_64), null",
        "the dm-bufio client's address",
    ),
    col(
        "device",
        "BYTE_ARRAY (UTF8), null",
        "the client's device, major:minor",
    ),
    col("block", "INT64 (UINT_64), null", "bufio_op: the block"),
    col(
        "result",
        "BYTE_ARRAY (UTF8), null",
        "bufio_op: hit, miss, error, or null",
    ),
    col(
        "arg0",
        "INT32 (UINT_32), null",
        "bufio_op: prefetch/forget_buffers block count, mark_partial start",
    ),
    col(
        "arg1",
        "INT32 (UINT_32), null",
        "bufio_op: mark_partial end",
    ),
    col(
        "mutex_wait_ns",
        "INT64 (UINT_64), null",
        "bufio_op: time waiting for the client mutex inside it",
    ),
    col(
        "mutex_hold_ns",
        "INT64 (UINT_64), null",
        "bufio_op: time holding the client mutex inside it",
    ),
    col(
        "mutex_attempt_ns",
        "INT64 (UINT_64), null",
        "bufio_op: when it first tried for the client mutex (event clock; format 1.5 on)",
    ),
    col(
        "mutex_release_ns",
        "INT64 (UINT_64), null",
        "bufio_op: when it last let the client mutex go (event clock; format 1.5 on)",
    ),
    col(
        "owner_state",
        "BYTE_ARRAY (UTF8), null",
        "lock_wait (mutex, rwsem): \"thread\" (the owner_ columns say which), \"free\" (let go \
         as the wait began) or \"readers\"; null where not known",
    ),
    col(
        "owner_tid",
        "INT32 (UINT_32), null",
        "lock_wait: the thread holding the lock when the wait began (mutex, rwsem writer)",
    ),
    col(
        "owner_tgid",
        "INT32 (UINT_32), null",
        "lock_wait: that holder's process id",
    ),
    col(
        "owner_comm",
        "BYTE_ARRAY (UTF8), null",
        "lock_wait: that holder's thread name, where the trace has it",
    ),
    col(
        "owner_op",
        "BYTE_ARRAY (UTF8), null",
        "lock_wait: the dm-bufio function that holder was inside",
    ),
];

const fn col(name: &'static str, parquet: &'static str, doc: &'static str) -> Column {
    Column { name, parquet, doc }
}

/// One event as a row.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EventRow {
    pub source: Arc<str>,
    pub host: Arc<str>,
    pub kernel: Arc<str>,
    pub kind: &'static str,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub cpu: u32,
    pub lock_addr: Option<u64>,
    pub lock_name: Option<String>,
    pub lock_type: Option<&'static str>,
    pub lock_class: Option<&'static str>,
    pub caller: Option<String>,
    pub stack_id: Option<u32>,
    pub op: Option<&'static str>,
    pub client: Option<u64>,
    pub device: Option<String>,
    pub block: Option<u64>,
    pub result: Option<&'static str>,
    pub arg0: Option<u32>,
    pub arg1: Option<u32>,
    pub mutex_wait_ns: Option<u64>,
    pub mutex_hold_ns: Option<u64>,
    pub mutex_attempt_ns: Option<u64>,
    pub mutex_release_ns: Option<u64>,
    pub owner_state: Option<&'static str>,
    pub owner_tid: Option<u32>,
    pub owner_tgid: Option<u32>,
    pub owner_comm: Option<String>,
    pub owner_op: Option<&'static str>,
}

/// The trace's rows: lock waits, then operations (each in file order).
pub fn rows(trace: &TraceData) -> impl Iterator<Item = EventRow> + '_ {
    let source: Arc<str> = trace.design.as_deref().unwrap_or("kernel").into();
    let host: Arc<str> = trace.header.host.as_str().into();
    let kernel: Arc<str> = trace.header.kernel_release.as_str().into();
    let base = EventRow {
        source,
        host,
        kernel,
        ..Default::default()
    };
    let device = |client: u64| trace.names.client_device(client).map(str::to_string);
    let waits = trace.waits.iter().map({
        let base = base.clone();
        move |w| EventRow {
            kind: "lock_wait",
            start_ns: w.start_ns,
            duration_ns: w.wait_ns,
            tid: w.tid,
            tgid: w.tgid,
            cpu: w.cpu,
            lock_addr: Some(w.lock_addr),
            lock_name: Some(trace.lock_name(w)),
            lock_type: Some(LockFlags(w.flags).type_name()),
            lock_class: Some(trace.wait_class(w).name()),
            caller: w.stack_id.and_then(|id| trace.names.caller(id)),
            stack_id: w.stack_id,
            op: w.op.map(|k| k.function()),
            client: (w.op.is_some() && w.op_client != 0).then_some(w.op_client),
            device: (w.op.is_some() && w.op_client != 0)
                .then(|| device(w.op_client))
                .flatten(),
            owner_state: match w.owner {
                LockOwner::Unknown => None,
                LockOwner::Free => Some("free"),
                LockOwner::Readers => Some("readers"),
                LockOwner::Thread(_) => Some("thread"),
            },
            owner_tid: w.owner.thread().map(|o| o.tid),
            owner_tgid: w.owner.thread().map(|o| o.tgid),
            owner_comm: w
                .owner
                .thread()
                .and_then(|o| trace.thread_name(o.tid))
                .map(str::to_string),
            owner_op: w.owner.thread().and_then(|o| o.op).map(|k| k.function()),
            ..base.clone()
        }
    });
    let ops = trace.ops.iter().map(move |o| EventRow {
        kind: "bufio_op",
        start_ns: o.start_ns,
        duration_ns: o.duration_ns,
        tid: o.tid,
        tgid: o.tgid,
        cpu: o.cpu,
        op: Some(o.kind.function()),
        client: Some(o.client),
        device: device(o.client),
        block: Some(o.block),
        result: match o.result {
            OpResult::None => None,
            OpResult::Hit => Some("hit"),
            OpResult::Miss => Some("miss"),
            OpResult::Error => Some("error"),
        },
        arg0: Some(o.arg0),
        arg1: Some(o.arg1),
        mutex_wait_ns: Some(o.lock_wait_ns),
        mutex_hold_ns: Some(o.lock_hold_ns),
        mutex_attempt_ns: (o.lock_attempt_ns != 0).then_some(o.lock_attempt_ns),
        mutex_release_ns: (o.lock_release_ns != 0).then_some(o.lock_release_ns),
        ..base.clone()
    });
    waits.chain(ops)
}

pub fn write_csv(trace: &TraceData, out: impl Write) -> Result<u64, ExportError> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(out);
    w.write_record(COLUMNS.iter().map(|c| c.name))?;
    let mut n = 0;
    for row in rows(trace) {
        w.serialize(&row)?;
        n += 1;
    }
    w.flush()?;
    Ok(n)
}

/// JSON Lines: one object per line, every column present (null where it does not apply).
pub fn write_json(trace: &TraceData, out: impl Write) -> Result<u64, ExportError> {
    let mut out = std::io::BufWriter::new(out);
    let mut n = 0;
    for row in rows(trace) {
        serde_json::to_writer(&mut out, &row)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// Rows per Parquet row group.
const ROW_GROUP: usize = 256 * 1024;

fn parquet_schema() -> String {
    let mut fields = String::new();
    for c in COLUMNS {
        let optional = if c.parquet.ends_with(", null") {
            "optional"
        } else {
            "required"
        };
        let physical = match c.parquet.split(' ').next() {
            Some("INT64") => "INT64",
            Some("INT32") => "INT32",
            _ => "BYTE_ARRAY",
        };
        let logical = if c.parquet.contains("UINT_64") {
            "(INTEGER(64,false))"
        } else if c.parquet.contains("UINT_32") {
            "(INTEGER(32,false))"
        } else {
            "(STRING)"
        };
        fields.push_str(&format!("  {optional} {physical} {} {logical};\n", c.name));
    }
    format!("message bufscope_event {{\n{fields}}}")
}

/// One column's values for a row group, with definition levels for optional columns.
enum Values {
    Text(Vec<Option<ByteArray>>),
    U64(Vec<Option<u64>>),
    U32(Vec<Option<u32>>),
}

fn column_values(name: &str, rows: &[EventRow]) -> Values {
    let text = |f: &dyn Fn(&EventRow) -> Option<&str>| {
        Values::Text(rows.iter().map(|r| f(r).map(ByteArray::from)).collect())
    };
    let u64s = |f: &dyn Fn(&EventRow) -> Option<u64>| Values::U64(rows.iter().map(f).collect());
    let u32s = |f: &dyn Fn(&EventRow) -> Option<u32>| Values::U32(rows.iter().map(f).collect());
    match name {
        "source" => text(&|r| Some(&r.source)),
        "host" => text(&|r| Some(&r.host)),
        "kernel" => text(&|r| Some(&r.kernel)),
        "kind" => text(&|r| Some(r.kind)),
        "start_ns" => u64s(&|r| Some(r.start_ns)),
        "duration_ns" => u64s(&|r| Some(r.duration_ns)),
        "tid" => u32s(&|r| Some(r.tid)),
        "tgid" => u32s(&|r| Some(r.tgid)),
        "cpu" => u32s(&|r| Some(r.cpu)),
        "lock_addr" => u64s(&|r| r.lock_addr),
        "lock_name" => text(&|r| r.lock_name.as_deref()),
        "lock_type" => text(&|r| r.lock_type),
        "lock_class" => text(&|r| r.lock_class),
        "caller" => text(&|r| r.caller.as_deref()),
        "stack_id" => u32s(&|r| r.stack_id),
        "op" => text(&|r| r.op),
        "client" => u64s(&|r| r.client),
        "device" => text(&|r| r.device.as_deref()),
        "block" => u64s(&|r| r.block),
        "result" => text(&|r| r.result),
        "arg0" => u32s(&|r| r.arg0),
        "arg1" => u32s(&|r| r.arg1),
        "mutex_wait_ns" => u64s(&|r| r.mutex_wait_ns),
        "mutex_hold_ns" => u64s(&|r| r.mutex_hold_ns),
        "mutex_attempt_ns" => u64s(&|r| r.mutex_attempt_ns),
        "mutex_release_ns" => u64s(&|r| r.mutex_release_ns),
        "owner_state" => text(&|r| r.owner_state),
        "owner_tid" => u32s(&|r| r.owner_tid),
        "owner_tgid" => u32s(&|r| r.owner_tgid),
        "owner_comm" => text(&|r| r.owner_comm.as_deref()),
        "owner_op" => text(&|r| r.owner_op),
        other => unreachable!("column {other} has no values"),
    }
}

/// Splits optional values into the present ones and definition levels (1 present, 0 null).
fn levels<T: Clone>(values: &[Option<T>]) -> (Vec<T>, Vec<i16>) {
    let present = values.iter().flatten().cloned().collect();
    let defs = values.iter().map(|v| i16::from(v.is_some())).collect();
    (present, defs)
}

/// Parquet, zstd-compressed, in row groups of 256 Ki rows; the schema is [`COLUMNS`].
pub fn write_parquet<W: Write + Send>(trace: &TraceData, out: W) -> Result<u64, ExportError> {
    let schema = Arc::new(parse_message_type(&parquet_schema())?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_created_by(format!("bufscope {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let mut writer = SerializedFileWriter::new(out, schema, props)?;
    let optional: HashSet<&str> = COLUMNS
        .iter()
        .filter(|c| c.parquet.ends_with(", null"))
        .map(|c| c.name)
        .collect();
    let mut n = 0u64;
    let mut all = rows(trace).peekable();
    while all.peek().is_some() {
        let group: Vec<EventRow> = all.by_ref().take(ROW_GROUP).collect();
        n += group.len() as u64;
        let mut rg = writer.next_row_group()?;
        for c in COLUMNS {
            let mut column = rg.next_column()?.expect("one writer per schema column");
            let defs_for = |d: Vec<i16>| optional.contains(c.name).then_some(d);
            match column_values(c.name, &group) {
                Values::Text(v) => {
                    let (present, defs) = levels(&v);
                    column.typed::<ByteArrayType>().write_batch(
                        &present,
                        defs_for(defs).as_deref(),
                        None,
                    )?;
                }
                Values::U64(v) => {
                    let (present, defs) = levels(&v);
                    // Parquet stores unsigned 64-bit integers in INT64, bit for bit.
                    let present: Vec<i64> = present.into_iter().map(|x| x as i64).collect();
                    column.typed::<Int64Type>().write_batch(
                        &present,
                        defs_for(defs).as_deref(),
                        None,
                    )?;
                }
                Values::U32(v) => {
                    let (present, defs) = levels(&v);
                    let present: Vec<i32> = present.into_iter().map(|x| x as i32).collect();
                    column.typed::<Int32Type>().write_batch(
                        &present,
                        defs_for(defs).as_deref(),
                        None,
                    )?;
                }
            }
            column.close()?;
        }
        rg.close()?;
    }
    writer.close()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parquet_schema_parses_and_lists_every_column() {
        let schema = parse_message_type(&parquet_schema()).unwrap();
        let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
        let expected: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn rows_serialise_with_every_column_in_schema_order() {
        let row = EventRow::default();
        let json = serde_json::to_value(&row).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(sorted, expected);
    }
}
