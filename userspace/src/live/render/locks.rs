//! The lock table: waits/s, total, p50, p99, max, type and name per lock, sorted and filtered,
//! with the selected lock's histogram, top callers, holders and waiters' cgroups under it when
//! there is room.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Table, TableState, Wrap},
};

use super::{hist_text, panel_block};
use crate::live::{
    model::{LockSort, Model},
    ui::{Panel, Ui},
};
use bufscope_analyses::{
    report::bucket_floor,
    units::{compact, duration_ns, thousands},
};

fn sorted_header(label: &'static str, sort: LockSort, key: LockSort) -> Cell<'static> {
    if sort == key {
        Cell::from(format!("{label}▼")).style(Style::new().bold().underlined())
    } else {
        Cell::from(label)
    }
}

pub(super) fn draw_locks(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
    let mut title = format!(
        " Locks · {} · by {} ",
        thousands(model.lock_rows.len() as u64),
        ui.sort.label()
    );
    if !ui.filter.is_empty() {
        title.push_str(&format!("· filter \"{}\" ", ui.filter));
    }
    let block = panel_block(Panel::Locks, ui, title);
    if model.lock_rows.is_empty() {
        let text = if ui.filter.is_empty() {
            "No lock contention seen yet."
        } else {
            "No lock matches the filter (f to change it)."
        };
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let wide = area.width >= 110;
    let callers = area.width >= 130;
    let mut header = vec![
        sorted_header("waits/s", ui.sort, LockSort::Rate),
        sorted_header("total", ui.sort, LockSort::Total),
    ];
    let mut widths = vec![Constraint::Length(7), Constraint::Length(9)];
    if wide {
        header.push(sorted_header("waits", ui.sort, LockSort::Waits));
        header.push(Cell::from("p50"));
        widths.push(Constraint::Length(9));
        widths.push(Constraint::Length(9));
    }
    header.push(sorted_header("p99", ui.sort, LockSort::P99));
    header.push(sorted_header("max", ui.sort, LockSort::Max));
    header.push(Cell::from("type"));
    header.push(Cell::from("lock"));
    widths.extend([
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Min(20),
    ]);
    if callers {
        header.push(Cell::from("top caller"));
        widths.push(Constraint::Percentage(30));
    }
    let rows = model.lock_rows.iter().map(|r| {
        let mut cells = vec![
            Cell::from(compact(r.waits_per_sec)),
            Cell::from(duration_ns(r.total_ns)),
        ];
        if wide {
            cells.push(Cell::from(thousands(r.waits)));
            cells.push(Cell::from(duration_ns(r.p50_ns)));
        }
        cells.push(Cell::from(duration_ns(r.p99_ns)));
        cells.push(Cell::from(duration_ns(r.max_ns)));
        cells.push(Cell::from(r.type_name));
        let name_style = if r.name.starts_with("dm-bufio") {
            Style::new().fg(Color::Cyan)
        } else {
            Style::new()
        };
        cells.push(Cell::from(r.name.clone()).style(name_style));
        if callers {
            cells.push(Cell::from(
                r.callers.first().map_or(String::new(), |(c, _)| c.clone()),
            ));
        }
        Row::new(cells)
    });
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().fg(Color::Gray)))
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // Room to spare below the rows: the selected lock's callers and histogram.
    let selected = model.lock_rows.get(ui.selected(Panel::Locks));
    let table_height = (model.lock_rows.len() as u16 + 1).min(inner.height);
    let (table_area, detail_area) = if inner.height >= table_height + LOCK_DETAIL_LINES {
        let [t, d] =
            Layout::vertical([Constraint::Length(table_height), Constraint::Min(0)]).areas(inner);
        (t, Some(d))
    } else {
        (inner, None)
    };
    let mut state = TableState::default().with_selected(Some(ui.selected(Panel::Locks)));
    frame.render_stateful_widget(table, table_area, &mut state);
    if let (Some(area), Some(row)) = (detail_area, selected) {
        draw_lock_detail(frame, area, model, row);
    }
}

/// Lines the selected lock's detail needs (it is left out when they do not fit).
const LOCK_DETAIL_LINES: u16 = 6;

pub(super) fn draw_lock_detail(
    frame: &mut Frame,
    area: Rect,
    model: &Model,
    row: &crate::live::model::LockRow,
) {
    let dim = Style::new().fg(Color::DarkGray);
    let mut lines = vec![
        Line::styled("─".repeat(area.width as usize), dim),
        Line::from(vec![
            Span::styled(row.name.clone(), Style::new().bold()),
            Span::raw(format!(
                " ({}): {} waits, {} in all, mean {}, p50 {}, p99 {}, max {}",
                row.type_name,
                thousands(row.waits),
                duration_ns(row.total_ns),
                duration_ns(row.mean_ns),
                duration_ns(row.p50_ns),
                duration_ns(row.p99_ns),
                duration_ns(row.max_ns)
            )),
        ]),
    ];
    if let Some(stats) = model.locks.get(&row.key)
        && let Some((first, last)) = stats.counted().span()
    {
        lines.push(Line::from(vec![
            Span::styled("waits  ", dim),
            Span::raw(format!("{} ", duration_ns(bucket_floor(first)))),
            Span::styled(
                hist_text(stats.counted(), first, last),
                Style::new().fg(Color::Cyan),
            ),
            Span::raw(format!(" {}", duration_ns(bucket_floor(last + 1)))),
        ]));
    }
    if row.streamed < row.waits {
        lines.push(Line::styled(
            format!(
                "callers, holders, cgroups: of the {} waits the view read ({} lost on the way)",
                thousands(row.streamed),
                thousands(row.waits - row.streamed)
            ),
            dim,
        ));
    }
    if row.callers.is_empty() {
        lines.push(Line::styled("no stacks: callers unknown", dim));
    }
    for (caller, waits) in &row.callers {
        lines.push(Line::from(vec![
            Span::styled("caller ", dim),
            Span::raw(format!("{caller}  ")),
            Span::styled(format!("{} waits", thousands(*waits)), dim),
        ]));
    }
    for (holder, waits) in &row.holders {
        lines.push(Line::from(vec![
            Span::styled("holder ", dim),
            Span::raw(format!("{holder}  ")),
            Span::styled(format!("{} waits", thousands(*waits)), dim),
        ]));
    }
    for (cgroup, waits) in &row.cgroups {
        lines.push(Line::from(vec![
            Span::styled("cgroup ", dim),
            Span::raw(format!("{cgroup}  ")),
            Span::styled(format!("{} waits", thousands(*waits)), dim),
        ]));
    }
    lines.push(Line::styled("Enter: every stack of this lock", dim));
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
}
