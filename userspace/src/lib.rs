//! bufscope: sees lock contention in the Linux dm-bufio buffer cache.
//!
//! This library is the `bufscope` binary's machinery, laid out by stage of the data flow:
//! [`kernel`] (what the running kernel offers: BTF offsets, tracefs, dm-bufio's probe points,
//! symbols, the doctor report) → [`probes`] (the eBPF programs attached, their maps, the event
//! stream) → the stream's consumers: [`record`] (trace files) and [`live`] (the live view, its
//! shadow replay through the reference designs, the metrics it serves), both bounded by a
//! [`watched`] command's lifetime when given one, keeping the waits a [`wait_filter`] wants.
//! The analyses of trace
//! files are the `bufscope-analyses` crate, the file format the `bufscope-trace` crate; [`stress`]
//! is the VM test bed's workload driver; [`cli_docs`] makes the man pages and shell completions.

pub mod cli_docs;
pub mod kernel;
pub mod live;
pub mod probes;
pub mod record;
pub mod stop;
pub mod stress;
pub mod wait_filter;
pub mod watched;

/// For a unit test that needs root or a kernel feature this machine lacks: prints why it skips,
/// or fails under `cargo xtask test` (`BUFSCOPE_REQUIRE_ALL_TESTS=1`), where a skip is no pass.
#[cfg(test)]
pub(crate) fn skip_or_fail(why: &str) {
    if std::env::var("BUFSCOPE_REQUIRE_ALL_TESTS").as_deref() == Ok("1") {
        panic!("cannot run: {why}; under `cargo xtask test` a skip is a failure");
    }
    eprintln!("skipped: {why}");
}
