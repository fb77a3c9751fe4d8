//! The live view: the state behind `bufscope live` and `bufscope replay --tui`, the screens
//! drawn from it, and the figures served to Prometheus.
//!
//! Collectors (the kernel's event stream, a trace file played back, the shadow replay of the
//! designs) write into a [`model::Model`]; [`render::draw`] and [`metrics::render`] only read it.
//! Keys change [`ui::Ui`], the viewer's choices, and may ask the runner for an [`ui::Action`].
//! Nothing here touches a terminal or the kernel, so every screen can be tested on fixed data.

pub mod hist;
pub mod metrics;
pub mod model;
pub mod playback;
pub mod render;
pub mod shadow;
pub mod ui;
