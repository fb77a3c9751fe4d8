//! Numbers as people read them in tables: counts with thousands separators, durations in the
//! unit perf lock contention would pick, rates in a few characters; and errors with their causes
//! as one line of text.

use std::error::Error;

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

/// Bytes in the largest binary unit that keeps a whole number in front: `65536` → `64 KiB`,
/// `314572800` → `300 MiB`, `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A rate or count in at most six characters: `987`, `12.3k`, `4.56M`.
pub fn compact(x: f64) -> String {
    let x = x.max(0.0);
    if x < 1_000.0 {
        format!("{x:.0}")
    } else if x < 1e6 {
        format!("{:.1}k", x / 1e3)
    } else if x < 1e9 {
        format!("{:.2}M", x / 1e6)
    } else {
        format!("{:.2}G", x / 1e9)
    }
}

/// An error and its sources, `: `-separated as anyhow's `{:#}` prints them, for where an error is
/// kept or shown as text: an error's message leaves out the cause it keeps as its source, so
/// `to_string` alone would lose it.
pub fn error_chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_counts_durations_and_rates() {
        assert_eq!(
            [0, 1023, 1536, 64 << 10, 300 << 20, 5 << 40].map(bytes),
            ["0 B", "1023 B", "1.5 KiB", "64 KiB", "300 MiB", "5 TiB"]
        );
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(duration_ns(999), "999 ns");
        assert_eq!(duration_ns(40_150), "40.15 us");
        assert_eq!(duration_ns(123_500_000), "123.50 ms");
        assert_eq!(duration_ns(1_580_000_000), "1.58 s");
        assert_eq!(compact(987.4), "987");
        assert_eq!(compact(12_345.0), "12.3k");
        assert_eq!(compact(4_560_000.0), "4.56M");
    }
}
