//! The analyses of bufscope trace files: what `info`, `report`, `compare`, `replay`, `export` and
//! `synth` compute, apart from the probes, so this crate builds and tests with stable Rust alone.
//!
//! A trace is read into memory with its names ([`tracedata`], [`naming`]); [`summary`] and
//! [`report`] tabulate its lock waits, [`op_latency`] how long its dm-bufio operations took,
//! [`calibration`] what each of their steps cost on the recording kernel;
//! [`models`] runs its dm-bufio operations through the `reference-cache` designs and turns a
//! design's run back into a trace, so that [`compare`] can measure kernel and designs with the
//! same code and [`plot`] can draw them side by side; [`export`] writes a trace in the formats
//! other tools load; [`synth`] makes traces of dm-bufio operations without a kernel. [`units`]
//! formats the figures (and errors, with their causes, as text).

pub mod calibration;
pub mod compare;
pub mod export;
pub mod models;
pub mod naming;
pub mod op_latency;
pub mod plot;
pub mod replay_check;
pub mod report;
pub mod summary;
pub mod synth;
pub mod tracedata;
pub mod units;
