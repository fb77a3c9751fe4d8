//! The stacks overlay (Enter on a lock): its waits' kernel stacks, most frequent first.

use ratatui::{
    Frame,
    layout::{Alignment, Rect},
    style::{Color, Style},
    text::Line,
    widgets::{Block, Clear, Paragraph},
};

use super::centered;
use crate::live::model::Model;
use bufscope_analyses::units::{duration_ns, thousands};

pub(super) fn draw_stacks(
    frame: &mut Frame,
    area: Rect,
    model: &Model,
    lock: crate::live::model::LockKey,
    scroll: usize,
) {
    let name = model.names.lock_name(lock.addr, lock.flags);
    let stacks = model.stacks_of(lock);
    let mut lines: Vec<Line> = Vec::new();
    if stacks.is_empty() {
        lines.push(Line::raw(
            "No stacks for this lock (recorded without stacks, or none read yet).",
        ));
    }
    for (count, frames) in &stacks {
        lines.push(Line::styled(
            format!(
                "{} waits, {} total",
                thousands(count.waits),
                duration_ns(count.total_ns)
            ),
            Style::new().bold().fg(Color::Yellow),
        ));
        for f in frames {
            lines.push(Line::raw(format!("  {f}")));
        }
        lines.push(Line::raw(""));
    }
    let rect = centered(
        area,
        area.width.saturating_sub(4).max(20),
        area.height.saturating_sub(2).max(5),
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines)
            .scroll((scroll.min(u16::MAX as usize) as u16, 0))
            .block(
                Block::bordered()
                    .title(format!(" Stacks of {name} · {} ", stacks.len()))
                    .title_bottom(
                        Line::from(" j/k scroll · Esc close ").alignment(Alignment::Right),
                    ),
            ),
        rect,
    );
}
