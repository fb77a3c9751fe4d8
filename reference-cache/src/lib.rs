//! Faithful user-space models of the dm-bufio cache designs (the pre-6.4 single-mutex cache, the
//! 6.4+ sharded cache, and designs of our own) with instrumented locks, for replaying recorded
//! access streams. No eBPF and no root: builds and tests with stable Rust anywhere.
//!
//! The models arrive with the reference-cache issue; this crate exists now so that the workspace
//! has its final shape.
