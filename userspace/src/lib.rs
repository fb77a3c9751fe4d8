//! bufscope: sees lock contention in the Linux dm-bufio buffer cache.
//!
//! This library is the `bufscope` binary's machinery: the eBPF loader and event stream
//! ([`probe`]), what the kernel offers ([`doctor`], [`system`]), and trace summaries
//! ([`summary`]). Trace files themselves are the `bufscope-trace` crate.

pub mod bufio;
pub mod doctor;
pub mod kretprobe;
pub mod naming;
pub mod probe;
pub mod summary;
pub mod symbols;
pub mod system;
pub mod tracepoint_format;
