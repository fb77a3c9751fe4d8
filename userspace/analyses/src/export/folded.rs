//! Folded stacks: one line per distinct stack, `outermost;...;innermost;lock weight`, weighted
//! by total wait in ns (or by count), the input of flamegraph.pl, inferno and speedscope. The
//! lock's name is the leaf, so a flame graph shows where the time went and on which lock; waits
//! without a stack are `[no stack]` under the dm-bufio operation they were inside, if any.

use std::{collections::BTreeMap, io::Write};

use super::ExportError;
use crate::tracedata::TraceData;

/// What a line's number counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Weight {
    /// Total wait, ns.
    Wait,
    /// Number of waits.
    Count,
}

/// Frames as folded-stack text allows them: no `;` (the separator) and no line breaks, and
/// without the `+0x..` offset, so that calls from one function merge into one flame.
fn clean(frame: &str) -> String {
    let without_offset = match frame.split_once("+0x") {
        Some((name, rest)) => match rest.split_once(' ') {
            Some((_, module)) => format!("{name} {module}"),
            None => name.to_string(),
        },
        None => frame.to_string(),
    };
    without_offset.replace([';', '\n'], "_")
}

pub fn write(trace: &TraceData, weight: Weight, mut out: impl Write) -> Result<u64, ExportError> {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0;
    for w in &trace.waits {
        let mut frames: Vec<String> = match w.stack_id.and_then(|id| trace.names.lock_stack(id)) {
            Some(stack) => stack.iter().rev().map(|f| clean(f)).collect(),
            None => match w.op {
                Some(op) => vec![op.function().to_string(), "[no stack]".to_string()],
                None => vec!["[no stack]".to_string()],
            },
        };
        frames.push(clean(&trace.lock_name(w)));
        *lines.entry(frames.join(";")).or_default() += match weight {
            Weight::Wait => w.wait_ns,
            Weight::Count => 1,
        };
        n += 1;
    }
    for (stack, value) in &lines {
        writeln!(out, "{stack} {value}")?;
    }
    out.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_lose_offsets_and_separators_but_keep_modules() {
        assert_eq!(clean("pipe_write+0x4c"), "pipe_write");
        assert_eq!(
            clean("dm_bufio_get+0x1a [dm_bufio]"),
            "dm_bufio_get [dm_bufio]"
        );
        assert_eq!(clean("a;b"), "a_b");
        assert_eq!(
            clean("dm-bufio 7:0 client mutex"),
            "dm-bufio 7:0 client mutex"
        );
    }
}
