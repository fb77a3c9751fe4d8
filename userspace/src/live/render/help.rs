//! The help overlay (?): every key and what it does.

use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph},
};

use super::centered;
use crate::live::ui::{Ui, help_lines};

pub(super) fn draw_help(frame: &mut Frame, area: Rect, ui: &Ui) {
    let lines: Vec<Line> = help_lines(ui.replay)
        .into_iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:>9}  "), Style::new().bold().fg(Color::Cyan)),
                Span::raw(what),
            ])
        })
        .collect();
    let rect = centered(area, 64, lines.len() as u16 + 2);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Keys · any key closes ")),
        rect,
    );
}
