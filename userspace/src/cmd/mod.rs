//! One module per subcommand: each turns the library's results into output and an exit code.

pub mod compare;
pub mod doctor;
pub mod export;
pub mod info;
pub mod live;
pub mod plot;
pub mod record;
pub mod replay;
pub mod report;
pub mod stress;
pub mod synth;

/// Sleeps until `deadline`, or forever without one: the duration arm of a command's select loop.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `1234567` → `1,234,567`, for counts people read.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nanoseconds in the unit perf lock contention would pick: ns, us, ms or s.
pub fn duration_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.2} us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_counts_and_durations() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(duration_ns(999), "999 ns");
        assert_eq!(duration_ns(40_150), "40.15 us");
        assert_eq!(duration_ns(123_500_000), "123.50 ms");
        assert_eq!(duration_ns(1_580_000_000), "1.58 s");
    }
}
