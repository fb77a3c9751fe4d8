//! One module per subcommand: each parses its arguments, calls the library and turns its results
//! into output and an exit code. No subcommand imports another; arguments several share are in
//! [`crate::args`].

pub mod compare;
pub mod completions;
pub mod doctor;
pub mod export;
pub mod info;
pub mod live;
pub mod man;
pub mod record;
pub mod replay;
pub mod report;
pub mod stress;
pub mod synth;
