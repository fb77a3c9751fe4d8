//! The design picker overlay (d): which reference designs replay the operations.

use ratatui::{
    Frame,
    layout::{Alignment, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Clear, Paragraph},
};

use super::centered;

pub(super) fn draw_designs(frame: &mut Frame, area: Rect, cursor: usize, chosen: &[bool]) {
    let lines: Vec<Line> = reference_cache::Design::ALL
        .iter()
        .zip(chosen)
        .enumerate()
        .map(|(i, (d, on))| {
            let text = format!(
                "{} [{}] {d:<16}{}",
                if i == cursor { "▶" } else { " " },
                if *on { "x" } else { " " },
                d.description()
            );
            if i == cursor {
                Line::styled(text, Style::new().add_modifier(Modifier::REVERSED))
            } else {
                Line::raw(text)
            }
        })
        .collect();
    let rect = centered(area, 72, lines.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered().title(" Designs compared ").title_bottom(
                Line::from(" space toggle · Enter apply ").alignment(Alignment::Right),
            ),
        ),
        rect,
    );
}
