//! The live figures in the OpenMetrics text format (which Prometheus scrapes), for `live
//! --metrics ADDR`. The names, documented in the README:
//!
//! - `bufscope_lock_wait_seconds{lock,type}`: histogram of contended kernel lock waits, per lock
//!   (the [`TOP_LOCKS`] with the most total wait). Buckets are the log2 buckets' upper bounds,
//!   every fourfold from 256 ns to 17 s.
//! - `bufscope_bufio_operations_total{device,op}`: dm-bufio operations by client and kind.
//! - `bufscope_bufio_lookups_total{device,result}`: gets/reads/news that hit or missed.
//! - `bufscope_bufio_dirty_buffers{device}`: buffers marked dirty and not yet written (estimate).
//! - `bufscope_compare_lock_wait_seconds{device,source}`: the comparison's dm-bufio lock waits,
//!   `source` being "kernel" or a design, over the same replayed windows.
//! - `bufscope_events_total{kind}`, `bufscope_events_lost_total`, `bufscope_probe_cpu_ratio`.

use std::fmt::Write;

use bufscope_abi::LockFlags;
use bufscope_trace::OpKind;

use super::{hist::Log2Hist, model::Model};
use bufscope_analyses::report::op_short;

/// Locks exported, by total wait (bounds the series a scrape carries).
pub const TOP_LOCKS: usize = 50;

/// The content type to serve the text with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label values are quoted; backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Log2Hist) {
    let mut cumulative = 0;
    let mut bucket = 0;
    for exp in (8..=34).step_by(2) {
        while bucket <= exp {
            cumulative += h.buckets[bucket];
            bucket += 1;
        }
        let le = (1u64 << exp) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le:e}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {:e}", h.total_ns as f64 / 1e9);
}

fn family(out: &mut String, name: &str, kind: &str, unit: Option<&str>, help: &str) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    if let Some(unit) = unit {
        let _ = writeln!(out, "# UNIT {name} {unit}");
    }
    let _ = writeln!(out, "# HELP {name} {help}");
}

/// The model's figures as one OpenMetrics exposition (ending in `# EOF`).
pub fn render(model: &Model) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "bufscope_lock_wait_seconds",
        "histogram",
        Some("seconds"),
        "Contended kernel lock waits, per lock.",
    );
    let mut locks: Vec<_> = model.locks.iter().collect();
    locks.sort_by(|a, b| b.1.hist.total_ns.cmp(&a.1.hist.total_ns).then(a.0.cmp(b.0)));
    for (key, stats) in locks.into_iter().take(TOP_LOCKS) {
        let labels = format!(
            "lock=\"{}\",type=\"{}\"",
            label(&model.names.lock_name(key.addr, key.flags)),
            LockFlags(key.flags).type_name()
        );
        histogram(&mut out, "bufscope_lock_wait_seconds", &labels, &stats.hist);
    }
    family(
        &mut out,
        "bufscope_bufio_operations",
        "counter",
        None,
        "dm-bufio operations, by client device and operation.",
    );
    for c in model.clients.values() {
        for kind in OpKind::ALL {
            let n = c.ops[kind as usize - 1];
            if n > 0 {
                let _ = writeln!(
                    out,
                    "bufscope_bufio_operations_total{{device=\"{}\",op=\"{}\"}} {n}",
                    label(&c.device),
                    op_short(kind)
                );
            }
        }
    }
    family(
        &mut out,
        "bufscope_bufio_lookups",
        "counter",
        None,
        "dm-bufio gets, reads and news that found the block cached (hit) or not (miss).",
    );
    for c in model.clients.values() {
        for (result, n) in [("hit", c.hits), ("miss", c.misses)] {
            let _ = writeln!(
                out,
                "bufscope_bufio_lookups_total{{device=\"{}\",result=\"{result}\"}} {n}",
                label(&c.device)
            );
        }
    }
    family(
        &mut out,
        "bufscope_bufio_dirty_buffers",
        "gauge",
        None,
        "Buffers marked dirty and not yet written, estimated from operations.",
    );
    for c in model.clients.values() {
        let _ = writeln!(
            out,
            "bufscope_bufio_dirty_buffers{{device=\"{}\"}} {}",
            label(&c.device),
            c.dirty_estimate()
        );
    }
    family(
        &mut out,
        "bufscope_compare_lock_wait_seconds",
        "histogram",
        Some("seconds"),
        "dm-bufio lock waits of the compared client, kernel and each reference design, over the same replayed windows.",
    );
    let cmp = &model.comparison;
    if cmp.windows > 0 {
        let device = label(&cmp.device);
        histogram(
            &mut out,
            "bufscope_compare_lock_wait_seconds",
            &format!("device=\"{device}\",source=\"kernel\""),
            &cmp.kernel,
        );
        for d in &cmp.designs {
            histogram(
                &mut out,
                "bufscope_compare_lock_wait_seconds",
                &format!("device=\"{device}\",source=\"{}\"", label(d.design.name())),
                &d.hist,
            );
        }
    }
    family(
        &mut out,
        "bufscope_events",
        "counter",
        None,
        "Events taken in: lock waits and dm-bufio operations.",
    );
    let _ = writeln!(
        out,
        "bufscope_events_total{{kind=\"lock_wait\"}} {}",
        model.waits
    );
    let _ = writeln!(
        out,
        "bufscope_events_total{{kind=\"bufio_op\"}} {}",
        model.ops
    );
    family(
        &mut out,
        "bufscope_events_lost",
        "counter",
        None,
        "Events lost (ring buffer or maps full, returns missed).",
    );
    let _ = writeln!(out, "bufscope_events_lost_total {}", model.header.lost);
    if let Some(o) = model.header.overhead {
        family(
            &mut out,
            "bufscope_probe_cpu_ratio",
            "gauge",
            None,
            "CPU time of bufscope's probes over the last interval, as a share of one CPU.",
        );
        let _ = writeln!(out, "bufscope_probe_cpu_ratio {o}");
    }
    out.push_str("# EOF\n");
    out
}
