//! The live view: the state behind `bufscope live` and `bufscope replay --tui`, the screens
//! drawn from it, and the figures served to Prometheus.
//!
//! Collectors (the kernel's event stream, a trace file played back, the shadow replay of the
//! designs) write into a [`model::Model`]; [`render::draw`] and [`metrics::render`] only read it.
//! Keys change [`ui::Ui`], the viewer's choices, and may ask the runner for an [`ui::Action`].
//! Those parts touch neither a terminal nor the kernel, so every screen can be tested on fixed
//! data. The runners do: [`session`] (the full-screen loops of `live` and `replay --tui`, on a
//! [`screen::Screen`]), [`headless`] (`live --no-tui`), [`ingest`] (the kernel's events into the
//! model), [`serve`] (`--metrics` over HTTP) and [`sample`] (the recording shown when this kernel
//! has no dm-bufio).

pub mod headless;
pub mod hist;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod playback;
pub mod render;
pub mod sample;
pub mod screen;
pub mod serve;
pub mod session;
pub mod shadow;
pub mod ui;
