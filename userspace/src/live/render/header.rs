//! The header (kernel, probes, events/s, losses, the probes' CPU share, recording, the dm-bufio
//! status wrapped to the screen's width, status) and the footer of keys.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    text::{Line, Span},
    widgets::{Paragraph, Wrap},
};

use crate::live::{
    model::{BufioStatus, CompareSource, Model, Source},
    ui::{Overlay, Panel, Ui},
};
use bufscope_analyses::units::{compact, thousands};

/// Rows the header needs on `screen`: the title and the tabs, and the dm-bufio status wrapped to
/// the width, at most a third of the screen so that the panels keep the rest.
pub(super) fn header_height(model: &Model, screen: Rect) -> u16 {
    let status = bufio_status(model).line_count(screen.width).max(1);
    let most = (screen.height / 3).max(1);
    2 + u16::try_from(status).unwrap_or(u16::MAX).min(most)
}

pub(super) fn draw_header(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
    let h = &model.header;
    let mut first = vec![Span::styled(
        "bufscope ",
        Style::new().bold().fg(Color::Cyan),
    )];
    match &h.source {
        Source::Live { attach } => {
            first.push(Span::raw(format!("live · {} · {attach}", h.kernel)));
        }
        Source::Replay {
            file,
            span_ns,
            position_ns,
            speed,
            playing,
        } => {
            // The play state first: a long path must not push it off a narrow screen.
            let name = std::path::Path::new(file)
                .file_name()
                .map_or(file.clone(), |n| n.to_string_lossy().into_owned());
            first.push(Span::styled(
                format!(
                    "{} {speed}x {:.1}/{:.1} s",
                    if *playing { "▶" } else { "⏸" },
                    *position_ns as f64 / 1e9,
                    *span_ns as f64 / 1e9
                ),
                Style::new().bold(),
            ));
            first.push(Span::raw(format!(" · replay {name} · {}", h.kernel)));
        }
    }
    first.push(Span::raw(format!(
        " · {} ev/s · lost {}",
        compact(h.events_per_sec),
        thousands(h.lost)
    )));
    if let Some(o) = h.overhead {
        first.push(Span::raw(format!(" · probes {:.2}% CPU", o * 100.0)));
    }
    if let Some(r) = &h.recording {
        first.push(Span::styled(
            format!(
                " · ● REC {} ({} waits, {} ops)",
                r.path,
                thousands(r.waits),
                thousands(r.ops)
            ),
            Style::new().fg(Color::Red).bold(),
        ));
    }
    if ui.paused && matches!(h.source, Source::Live { .. }) {
        first.push(Span::styled(
            " · PAUSED",
            Style::new().fg(Color::Yellow).bold(),
        ));
    }
    let mut tabs: Vec<Span> = Vec::new();
    for (i, panel) in Panel::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, panel.title());
        tabs.push(if *panel == ui.focus {
            Span::styled(label, Style::new().bg(Color::Cyan).fg(Color::Black).bold())
        } else {
            Span::styled(label, Style::new().fg(Color::Gray))
        });
    }
    if let Some(status) = &h.status {
        tabs.push(Span::styled(
            format!("  {status}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    let [title, bufio, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(Line::from(first)), title);
    frame.render_widget(bufio_status(model), bufio);
    frame.render_widget(Paragraph::new(Line::from(tabs)), keys);
}

/// What the probes see of dm-bufio (or why they see nothing), wrapped: the reason can be long,
/// and cut at the screen's edge it would lose what to do about it.
fn bufio_status(model: &Model) -> Paragraph<'static> {
    let line = match &model.header.bufio {
        BufioStatus::Probed {
            attached,
            points,
            design,
            missing,
        } => {
            let mut s = format!(
                "dm-bufio: {attached}/{points} probes, {}",
                design.as_deref().unwrap_or("design unknown")
            );
            if !missing.is_empty() {
                let list: Vec<String> = missing
                    .iter()
                    .map(|(f, why)| format!("{f}: {why}"))
                    .collect();
                s.push_str(&format!("; missing {}", list.join("; ")));
            }
            Line::raw(s)
        }
        BufioStatus::Unavailable(why) => Line::from(vec![
            Span::styled("no dm-bufio here", Style::new().fg(Color::Yellow).bold()),
            Span::raw(format!(
                " ({why}): kernel-wide lock contention{}",
                match &model.comparison.source {
                    CompareSource::Sample(name) => {
                        format!("; the comparison replays the bundled sample {name}")
                    }
                    CompareSource::Tables => String::new(),
                }
            )),
        ]),
        BufioStatus::Recorded { design } => Line::raw(format!(
            "dm-bufio as recorded: {}",
            design.as_deref().unwrap_or("design unknown")
        )),
    };
    Paragraph::new(line).wrap(Wrap { trim: true })
}

pub(super) fn draw_footer(frame: &mut Frame, area: Rect, ui: &Ui) {
    let line = match &ui.overlay {
        Overlay::Filter(text) => Line::from(vec![
            Span::styled("filter: ", Style::new().bold()),
            Span::raw(format!("{text}▏")),
            Span::styled(
                "  Enter apply · Esc cancel",
                Style::new().fg(Color::DarkGray),
            ),
        ]),
        _ => {
            let keys: &[(&str, &str)] = if ui.replay {
                &[
                    ("?", "help"),
                    ("Tab", "panel"),
                    ("Enter", "detail"),
                    ("s", "sort"),
                    ("f", "filter"),
                    ("p", "play/pause"),
                    ("←→", "seek"),
                    ("+-", "speed"),
                    ("d", "designs"),
                    ("q", "quit"),
                ]
            } else {
                &[
                    ("?", "help"),
                    ("Tab", "panel"),
                    ("Enter", "detail"),
                    ("s", "sort"),
                    ("f", "filter"),
                    ("p", "pause"),
                    ("r", "record"),
                    ("d", "designs"),
                    ("q", "quit"),
                ]
            };
            let mut spans = Vec::new();
            for (k, what) in keys {
                spans.push(Span::styled(*k, Style::new().bold().fg(Color::Cyan)));
                spans.push(Span::raw(format!(" {what}  ")));
            }
            Line::from(spans)
        }
    };
    frame.render_widget(Paragraph::new(line), area);
}
