//! What the running kernel offers bufscope, read before anything is attached: system facts and
//! tracefs ([`system`]), tracepoint field layouts ([`tracepoint_format`]), dm-bufio's probe
//! points, struct offsets and client locks ([`bufio`]), kretprobes through tracefs
//! ([`kretprobe`]), kernel symbols ([`symbols`]), and the `doctor` report of all of them
//! ([`doctor`], which also makes a trial attach through [`crate::probes`]).

pub mod bufio;
pub mod doctor;
pub mod kretprobe;
pub mod lock_classes;
pub mod symbols;
pub mod system;
pub mod tracepoint_format;
pub mod zones;
