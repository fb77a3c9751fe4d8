//! bufscope: sees lock contention in the Linux dm-bufio buffer cache.
//!
//! This library is the `bufscope` binary's machinery: the eBPF loader and event stream
//! ([`probe`]), what the kernel offers ([`doctor`], [`system`]), and trace summaries
//! ([`summary`]), traces held in memory for analysis ([`tracedata`]) and the reference designs
//! run on them ([`models`]), and the live view's state and screens ([`live`]). Trace files themselves are the `bufscope-trace` crate.

pub mod bufio;
pub mod compare;
pub mod doctor;
pub mod export;
pub mod kretprobe;
pub mod live;
pub mod models;
pub mod naming;
pub mod probe;
pub mod report;
pub mod summary;
pub mod symbols;
pub mod system;
pub mod tracedata;
pub mod tracepoint_format;
pub mod units;
