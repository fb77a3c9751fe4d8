//! The screens, drawn from a [`Model`] and the viewer's [`Ui`] and nothing else.
//!
//! Below 140×40 one panel fills the body (Tab switches); from 140×40 on all four share it: locks
//! and clients on the left, the comparison and the charts on the right.

mod charts;
mod clients;
mod compare;
mod designs;
#[cfg(test)]
pub(crate) mod fixture;
mod header;
mod help;
mod locks;
mod stacks;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    text::Span,
    widgets::Block,
};

use self::{
    charts::draw_charts,
    clients::draw_clients,
    compare::draw_compare,
    designs::draw_designs,
    header::{draw_footer, draw_header, header_height},
    help::draw_help,
    locks::draw_locks,
    stacks::draw_stacks,
};
use super::{
    hist::Log2Hist,
    model::Model,
    ui::{Overlay, Panel, Ui},
};

/// From this size on, all panels at once.
const GRID_WIDTH: u16 = 140;
const GRID_HEIGHT: u16 = 40;

const DESIGN_COLORS: [Color; 4] = [Color::Yellow, Color::Green, Color::Magenta, Color::Blue];
const KERNEL_COLOR: Color = Color::Cyan;

/// Draws everything.
pub fn draw(frame: &mut Frame, model: &Model, ui: &Ui) {
    let area = frame.area();
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(header_height(model, area)),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, model, ui);
    if area.width >= GRID_WIDTH && area.height >= GRID_HEIGHT {
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)])
                .areas(body);
        let [locks, clients] =
            Layout::vertical([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(left);
        let [compare, charts] =
            Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(right);
        draw_panel(frame, locks, Panel::Locks, model, ui);
        draw_panel(frame, clients, Panel::Clients, model, ui);
        draw_panel(frame, compare, Panel::Compare, model, ui);
        draw_panel(frame, charts, Panel::Charts, model, ui);
    } else {
        draw_panel(frame, body, ui.focus, model, ui);
    }
    draw_footer(frame, footer, ui);
    match &ui.overlay {
        Overlay::None | Overlay::Filter(_) => {}
        Overlay::Help => draw_help(frame, area, ui),
        Overlay::Stacks { lock, scroll } => draw_stacks(frame, area, model, *lock, *scroll),
        Overlay::Designs { cursor, chosen } => draw_designs(frame, area, *cursor, chosen),
    }
}

fn draw_panel(frame: &mut Frame, area: Rect, panel: Panel, model: &Model, ui: &Ui) {
    match panel {
        Panel::Locks => draw_locks(frame, area, model, ui),
        Panel::Clients => draw_clients(frame, area, model, ui),
        Panel::Compare => draw_compare(frame, area, model, ui),
        Panel::Charts => draw_charts(frame, area, model, ui),
    }
}

fn panel_block(panel: Panel, ui: &Ui, title: String) -> Block<'static> {
    let focused = ui.focus == panel;
    let style = if focused {
        Style::new().fg(Color::Cyan)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    Block::bordered().border_style(style).title(Span::styled(
        title,
        if focused {
            Style::new().bold()
        } else {
            Style::new()
        },
    ))
}

/// A histogram as one character per log2 bucket over `first..=last`, heights relative to its
/// own fullest bucket.
fn hist_text(h: &Log2Hist, first: usize, last: usize) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let peak = h.buckets[first..=last].iter().copied().max().unwrap_or(0);
    h.buckets[first..=last]
        .iter()
        .map(|&n| {
            if n == 0 || peak == 0 {
                '·'
            } else {
                LEVELS[((n as f64 / peak as f64) * 7.0).round() as usize]
            }
        })
        .collect()
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

#[cfg(test)]
mod tests {
    use bufscope_trace::OpKind;

    use super::fixture::*;
    use crate::live::{
        model::{BufioStatus, CompareSource, LockSort},
        ui::{Overlay, Panel},
    };

    #[test]
    fn small_terminal_shows_one_panel_at_a_time() {
        let m = fixture();
        let mut ui = ui();
        insta::assert_snapshot!("locks_80x24", render(&m, &ui, 80, 24));
        ui.focus = Panel::Clients;
        insta::assert_snapshot!("clients_80x24", render(&m, &ui, 80, 24));
        ui.focus = Panel::Compare;
        insta::assert_snapshot!("compare_80x24", render(&m, &ui, 80, 24));
        ui.focus = Panel::Charts;
        insta::assert_snapshot!("charts_80x24", render(&m, &ui, 80, 24));
    }

    #[test]
    fn large_terminal_shows_every_panel() {
        let m = fixture();
        insta::assert_snapshot!("grid_160x48", render(&m, &ui(), 160, 48));
    }

    #[test]
    fn overlays_draw_over_the_panels() {
        let m = fixture();
        let mut ui = ui();
        ui.overlay = Overlay::Help;
        insta::assert_snapshot!("help_80x24", render(&m, &ui, 80, 24));
        ui.overlay = Overlay::Stacks {
            lock: m.lock_rows[0].key,
            scroll: 0,
        };
        insta::assert_snapshot!("stacks_80x24", render(&m, &ui, 80, 24));
        ui.overlay = Overlay::Designs {
            cursor: 1,
            chosen: vec![true, true, false],
        };
        insta::assert_snapshot!("designs_80x24", render(&m, &ui, 80, 24));
    }

    /// The live view on a machine without dm-bufio: the reason and what to do about it wrap to
    /// the screen's width, whole, with the tabs below them.
    #[test]
    fn the_reason_for_no_dm_bufio_wraps_on_a_narrow_screen() {
        let mut m = fixture();
        let why = "dm-bufio is not loaded (no dm_bufio functions in /proc/kallsyms); it loads \
                   with dm-thin-pool, dm-cache, dm-verity or dm-integrity, or `modprobe dm_bufio`";
        m.header.bufio = BufioStatus::Unavailable(why.into());
        m.comparison.source = CompareSource::Sample("6.1-thin-hotspot.bftrace".into());
        let text = render(&m, &ui(), 60, 24);
        insta::assert_snapshot!("no_bufio_60x24", text);
        let rows: Vec<&str> = text
            .lines()
            .map(|l| l.trim_matches('"').trim_end())
            .collect();
        let tabs = rows
            .iter()
            .position(|r| r.starts_with(" 1 Locks"))
            .unwrap_or_else(|| panic!("no tabs:\n{text}"));
        assert!(
            tabs > 2,
            "the reason takes more than one row at 60 columns:\n{text}"
        );
        assert_eq!(
            rows[1..tabs].join(" "),
            format!(
                "no dm-bufio here ({why}): kernel-wide lock contention; the comparison replays \
                 the bundled sample 6.1-thin-hotspot.bftrace"
            ),
            "{text}"
        );
        assert!(rows.iter().all(|r| r.chars().count() <= 60));
    }

    #[test]
    fn fixture_figures_are_the_events_fed() {
        let m = fixture();
        let top = &m.lock_rows[0];
        assert_eq!(top.name, "dm-bufio 253:2 client mutex");
        assert_eq!(top.waits, 470);
        assert_eq!(top.waits_per_sec, 50.0, "the second interval had 50");
        assert_eq!(top.callers[0], ("dm_bufio_get [dm_bufio]".to_string(), 350));
        assert_eq!(m.lock_rows[1].name, "rcu_state");
        let client = &m.clients[&CLIENT];
        assert_eq!(client.hits, 1_850);
        assert_eq!(client.misses, 200);
        assert_eq!(client.dirty_estimate(), 40);
        let c = &m.comparison;
        assert_eq!((c.windows, c.ops, c.kernel.count), (1, 4_040, 420));
        assert_eq!(c.designs[0].hist.count, 410);
        assert_eq!(m.series.kernel_p99_us.len(), 1);
        assert_eq!(m.series.ops_per_sec, vec![(1.0, 4_080.0), (2.0, 100.0)]);
        assert_eq!(client.rate(OpKind::Get), 50.0);
        let text = render(&m, &ui(), 80, 24);
        assert!(text.contains("dm-bufio 253:2 client mutex"), "{text}");
    }

    #[test]
    fn filter_keeps_matching_names_and_callers() {
        let mut m = fixture();
        m.refresh_rows(LockSort::Waits, "RCU");
        assert_eq!(m.lock_rows.len(), 1);
        m.refresh_rows(LockSort::Waits, "dm_bufio_release");
        assert_eq!(
            m.lock_rows
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>(),
            ["dm-bufio 253:2 client mutex", "spinlock 0xffff888003000080"]
        );
    }
}
