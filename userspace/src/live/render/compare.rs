//! Kernel vs designs: the compared client's dm-bufio lock waits beside each design's on the same
//! windows, with a log2 histogram per row on a shared axis.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row, Table, Wrap},
};

use super::{DESIGN_COLORS, KERNEL_COLOR, hist_text, panel_block};
use crate::live::{
    hist::Log2Hist,
    model::{CompareSource, Model},
    ui::{Panel, Ui},
};
use bufscope_analyses::{
    report::bucket_floor,
    units::{duration_ns, thousands},
};

pub(super) fn draw_compare(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
    let c = &model.comparison;
    let title = match c.client {
        Some(_) => format!(
            " Kernel vs designs · {} · {} windows · {} ops ",
            c.device,
            thousands(c.windows),
            thousands(c.ops)
        ),
        None => " Kernel vs designs ".to_string(),
    };
    let block = panel_block(Panel::Compare, ui, title);
    if c.designs.is_empty() {
        frame.render_widget(
            Paragraph::new("No designs chosen: press d to choose some.").block(block),
            area,
        );
        return;
    }
    if c.windows == 0 {
        let text = if c.client.is_none() {
            "Waiting for dm-bufio operations to replay through the designs…".to_string()
        } else {
            format!(
                "Replaying the first window of {} through {}…",
                c.device,
                c.designs
                    .iter()
                    .map(|d| d.design.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        frame.render_widget(
            Paragraph::new(text).wrap(Wrap { trim: true }).block(block),
            area,
        );
        return;
    }
    let sources: Vec<(&str, &Log2Hist, Color)> =
        std::iter::once(("kernel", &c.kernel, KERNEL_COLOR))
            .chain(
                c.designs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (d.design.name(), &d.hist, DESIGN_COLORS[i % 4])),
            )
            .collect();
    let span = sources.iter().filter_map(|(_, h, _)| h.span()).fold(
        None,
        |acc: Option<(usize, usize)>, (a, b)| {
            Some(acc.map_or((a, b), |(x, y)| (x.min(a), y.max(b))))
        },
    );
    let kernel_p99 = c.kernel.quantile(0.99);
    let show_hist = area.width >= 70 && span.is_some();
    let mut header = vec!["", "waits", "/1k ops", "p50", "p99", "max", "p99 ×k"];
    let mut widths = vec![
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(7),
    ];
    if show_hist {
        header.push("histogram");
        widths.push(Constraint::Min(8));
    }
    let rows = sources.iter().map(|(name, h, color)| {
        let ratio = if std::ptr::eq(*h, &c.kernel) {
            "1".to_string()
        } else if kernel_p99 == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", h.quantile(0.99) as f64 / kernel_p99 as f64)
        };
        let mut cells = vec![
            Cell::from(*name).style(Style::new().fg(*color).bold()),
            Cell::from(thousands(h.count)),
            Cell::from(format!(
                "{:.1}",
                h.count as f64 * 1000.0 / c.ops.max(1) as f64
            )),
            Cell::from(duration_ns(h.quantile(0.5))),
            Cell::from(duration_ns(h.quantile(0.99))),
            Cell::from(duration_ns(h.max_ns)),
            Cell::from(ratio),
        ];
        if show_hist && let Some((first, last)) = span {
            cells.push(Cell::from(hist_text(h, first, last)).style(Style::new().fg(*color)));
        }
        Row::new(cells)
    });
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [table_area, notes_area] = Layout::vertical([
        Constraint::Length(sources.len() as u16 + 1),
        Constraint::Min(0),
    ])
    .areas(inner);
    frame.render_widget(
        Table::new(rows, widths).header(Row::new(header).style(Style::new().fg(Color::Gray))),
        table_area,
    );
    let mut notes = Vec::new();
    if show_hist && let Some((first, last)) = span {
        notes.push(Line::styled(
            format!(
                "histogram buckets {} … {} (one per doubling)",
                duration_ns(bucket_floor(first)),
                duration_ns(bucket_floor(last + 1))
            ),
            Style::new().fg(Color::DarkGray),
        ));
    }
    notes.push(Line::styled(
        format!(
            "{}'s dm-bufio lock waits; designs replay each window as recorded, one behind{}{}",
            c.device,
            if c.simulate_calibrated {
                ", in virtual time at the costs it measured"
            } else {
                ""
            },
            if c.skipped > 0 {
                format!("; {} windows skipped (designs busy)", thousands(c.skipped))
            } else {
                String::new()
            }
        ),
        Style::new().fg(Color::DarkGray),
    ));
    if let CompareSource::Sample(name) = &c.source {
        notes.push(Line::styled(
            format!("source: bundled sample {name}, looped"),
            Style::new().fg(Color::Yellow),
        ));
    }
    for d in &c.designs {
        if let Some(e) = &d.error {
            notes.push(Line::styled(
                format!("{}: {e}", d.design),
                Style::new().fg(Color::Red),
            ));
        }
    }
    frame.render_widget(Paragraph::new(notes).wrap(Wrap { trim: true }), notes_area);
}
