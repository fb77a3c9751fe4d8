//! The live figures as text for Prometheus, for `live --metrics ADDR`: OpenMetrics for scrapers
//! that ask for it (Prometheus does), Prometheus's classic text format (0.0.4) for the rest (curl,
//! `promtool check metrics`, which lints only the classic format). The names, documented in the
//! README:
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

/// The two text formats: the same samples, with different metadata lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0: a counter family is named without `_total`, units are declared, and the
    /// text ends in `# EOF`.
    OpenMetrics,
    /// Prometheus text format 0.0.4: a counter family is named as its samples are.
    Classic,
}

impl Format {
    /// The content type to serve the text with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format a request's `Accept` header prefers: OpenMetrics when it is listed with a
    /// quality no lower than the classic format's (Prometheus sends it first, at q=1).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let accept = accept.unwrap_or("");
        let quality = |media: &str| {
            accept
                .split(',')
                .filter_map(|entry| {
                    let mut params = entry.split(';');
                    let name = params.next()?.trim();
                    name.eq_ignore_ascii_case(media).then(|| {
                        params
                            .find_map(|p| p.trim().strip_prefix("q=")?.parse::<f64>().ok())
                            .unwrap_or(1.0)
                    })
                })
                .fold(0.0, f64::max)
        };
        let openmetrics = quality("application/openmetrics-text");
        if openmetrics > 0.0 && openmetrics >= quality("text/plain") {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }
}

/// One interval's figures in both formats, rendered together so every scraper sees the same
/// interval.
#[derive(Clone, Debug)]
pub struct Exposition {
    openmetrics: String,
    classic: String,
}

impl Default for Exposition {
    /// No figures yet (before the first interval ends): valid and empty in both formats.
    fn default() -> Self {
        Self {
            openmetrics: "# EOF\n".to_string(),
            classic: String::new(),
        }
    }
}

impl Exposition {
    pub fn new(model: &Model) -> Self {
        Self {
            openmetrics: render(model, Format::OpenMetrics),
            classic: render(model, Format::Classic),
        }
    }

    pub fn text(&self, format: Format) -> &str {
        match format {
            Format::OpenMetrics => &self.openmetrics,
            Format::Classic => &self.classic,
        }
    }
}

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

/// A family's metadata lines. `name` is the OpenMetrics family name; the classic format names a
/// counter after its samples (`…_total`) and has no unit line.
fn family(
    out: &mut String,
    format: Format,
    name: &str,
    kind: &str,
    unit: Option<&str>,
    help: &str,
) {
    match format {
        Format::OpenMetrics => {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            if let Some(unit) = unit {
                let _ = writeln!(out, "# UNIT {name} {unit}");
            }
            let _ = writeln!(out, "# HELP {name} {help}");
        }
        Format::Classic => {
            let suffix = if kind == "counter" { "_total" } else { "" };
            let _ = writeln!(out, "# HELP {name}{suffix} {help}");
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
        }
    }
}

/// The model's figures as one exposition in `format`.
pub fn render(model: &Model, format: Format) -> String {
    let mut out = String::new();
    family(
        &mut out,
        format,
        "bufscope_lock_wait_seconds",
        "histogram",
        Some("seconds"),
        "Contended kernel lock waits, per lock.",
    );
    let mut locks: Vec<_> = model.locks.iter().collect();
    locks.sort_by(|a, b| {
        (b.1.counted().total_ns)
            .cmp(&a.1.counted().total_ns)
            .then(a.0.cmp(b.0))
    });
    for (key, stats) in locks.into_iter().take(TOP_LOCKS) {
        let labels = format!(
            "lock=\"{}\",type=\"{}\"",
            label(&model.names.lock_name(key.addr, key.flags)),
            LockFlags(key.flags).type_name()
        );
        histogram(
            &mut out,
            "bufscope_lock_wait_seconds",
            &labels,
            stats.counted(),
        );
    }
    family(
        &mut out,
        format,
        "bufscope_bufio_operations",
        "counter",
        None,
        "dm-bufio operations, by client device and operation.",
    );
    for c in model.clients.values() {
        let counted = c.counted();
        for kind in OpKind::ALL {
            let n = counted.ops[kind as usize - 1];
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
        format,
        "bufscope_bufio_lookups",
        "counter",
        None,
        "dm-bufio gets, reads and news that found the block cached (hit) or not (miss).",
    );
    for c in model.clients.values() {
        let counted = c.counted();
        for (result, n) in [("hit", counted.hits), ("miss", counted.misses)] {
            let _ = writeln!(
                out,
                "bufscope_bufio_lookups_total{{device=\"{}\",result=\"{result}\"}} {n}",
                label(&c.device)
            );
        }
    }
    family(
        &mut out,
        format,
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
        format,
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
        format,
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
        format,
        "bufscope_events_lost",
        "counter",
        None,
        "Events lost (ring buffer or maps full, returns missed).",
    );
    let _ = writeln!(out, "bufscope_events_lost_total {}", model.header.lost);
    if let Some(o) = model.header.overhead {
        family(
            &mut out,
            format,
            "bufscope_probe_cpu_ratio",
            "gauge",
            None,
            "CPU time of bufscope's probes over the last interval, as a share of one CPU.",
        );
        let _ = writeln!(out, "bufscope_probe_cpu_ratio {o}");
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use bufscope_abi::LockFlags;
    use bufscope_trace::{BufioOp, LockWait, OpKind, OpResult};

    use super::*;
    use crate::live::model::{BufioStatus, CompareSource, Header, LockSort, Source};

    /// A live model with mutex waits, a client's operations and the probes' cost.
    fn model() -> Model {
        let mut m = Model::new(
            Header::new(
                "6.1".into(),
                Source::Live {
                    attach: "tp_btf".into(),
                },
                BufioStatus::Unavailable(String::new()),
            ),
            CompareSource::Tables,
            &[],
        );
        for wait_ns in [1_000, 3_000, 70_000] {
            m.add_wait(&LockWait {
                lock_addr: 0xffff_8881_2301_56c0,
                flags: LockFlags::MUTEX,
                wait_ns,
                ..LockWait::default()
            });
        }
        for (kind, result) in [
            (OpKind::Read, OpResult::Hit),
            (OpKind::Read, OpResult::Miss),
        ] {
            m.add_op(&BufioOp {
                client: 7,
                kind,
                result,
                ..BufioOp::default()
            });
        }
        m.header.overhead = Some(0.0125);
        m.tick(1.0, LockSort::Total, "");
        m
    }

    /// The sample lines (no metadata), in order.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn prometheus_is_served_openmetrics_and_everyone_else_the_classic_format() {
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic, "curl");
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain, application/openmetrics-text;q=0.5")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Classic
        );
    }

    #[test]
    fn both_formats_carry_the_same_samples_under_the_family_names_each_expects() {
        let m = model();
        let e = Exposition::new(&m);
        let (open, classic) = (e.text(Format::OpenMetrics), e.text(Format::Classic));
        assert_eq!(samples(open), samples(classic));
        assert!(
            samples(open).contains(&"bufscope_lock_wait_seconds_count{lock=\"mutex 0xffff8881230156c0\",type=\"mutex\"} 3"),
            "{open}"
        );
        assert!(
            samples(open).contains(&"bufscope_events_total{kind=\"bufio_op\"} 2"),
            "{open}"
        );
        assert!(
            samples(open).contains(&"bufscope_probe_cpu_ratio 0.0125"),
            "{open}"
        );
        // OpenMetrics names a counter family without `_total`, declares units, ends in # EOF.
        assert!(open.contains("# TYPE bufscope_events counter\n"), "{open}");
        assert!(open.contains("# UNIT bufscope_lock_wait_seconds seconds\n"));
        assert!(open.ends_with("# EOF\n"));
        // The classic format names it as its samples, and has neither.
        assert!(
            classic.contains("# TYPE bufscope_events_total counter\n"),
            "{classic}"
        );
        assert!(classic.contains("# HELP bufscope_events_lost_total "));
        assert!(!classic.contains("# UNIT") && !classic.contains("# EOF"));
        // A histogram's buckets are cumulative and end in the count.
        let buckets: Vec<u64> = samples(open)
            .iter()
            .filter(|l| l.starts_with("bufscope_lock_wait_seconds_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(buckets.is_sorted(), "{buckets:?}");
        assert_eq!(buckets.last(), Some(&3));
        assert_eq!(
            buckets.iter().filter(|&&n| n == 0).count(),
            1,
            "{buckets:?}"
        );
    }
}
