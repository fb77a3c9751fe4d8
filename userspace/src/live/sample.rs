//! The recording the comparison replays when this kernel has no dm-bufio: a 6.1 thin-pool run
//! from the VM test bed, built into the binary so the designs always have something to show.

/// The bundled sample the comparison replays when this kernel has no dm-bufio.
pub const SAMPLE_NAME: &str = "6.1-thin-hotspot";
pub const SAMPLE: &[u8] = include_bytes!("../../../samples/6.1-thin-hotspot.bftrace");
