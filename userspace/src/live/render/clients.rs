//! The dm-bufio clients panel: ops/s by kind, hit ratio, estimated dirty buffers and lock waits
//! per client; below them, buffer acquisition time by thread role (the hotspot experiment's
//! answer: how long `bufio_hot` threads take to get a buffer, and how much of it is mutex wait).

use bufscope_trace::OpKind;
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    widgets::{Cell, Paragraph, Row, Table, TableState},
};

use super::panel_block;
use crate::live::{
    model::{BufioStatus, Model, RoleRow},
    ui::{Panel, Ui},
};
use bufscope_analyses::units::{compact, duration_ns, thousands};

pub(super) fn draw_clients(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
    if model.role_rows.is_empty() {
        draw_client_table(frame, area, model, ui);
        return;
    }
    // The clients take what they need (borders and header: 3 lines), up to half; the roles the
    // rest.
    let wanted = model.clients.len() as u16 + 3;
    let [top, bottom] = Layout::vertical([
        Constraint::Length(wanted.min(area.height / 2)),
        Constraint::Min(4),
    ])
    .areas(area);
    draw_client_table(frame, top, model, ui);
    draw_roles(frame, bottom, &model.role_rows);
}

/// Acquisition time (get, read, new) by thread role, slowest mean first.
fn draw_roles(frame: &mut Frame, area: Rect, rows: &[RoleRow]) {
    let block = ratatui::widgets::Block::bordered()
        .title(" Buffer acquisition (get/read/new) by thread role ")
        .border_style(Style::new().fg(Color::DarkGray));
    let header = Row::new([
        "role",
        "threads",
        "acquired",
        "mean",
        "p50",
        "p99",
        "mutex wait",
    ])
    .style(Style::new().fg(Color::Gray));
    let role_width = rows
        .iter()
        .map(|r| r.role.chars().count())
        .max()
        .unwrap_or(0);
    let widths = [
        Constraint::Length(role_width.clamp(8, 24) as u16),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Min(10),
    ];
    let table_rows = rows.iter().map(|r| {
        Row::new([
            Cell::from(r.role.clone()),
            Cell::from(r.threads.to_string()),
            Cell::from(thousands(r.acquisitions)),
            Cell::from(duration_ns(r.mean_ns)),
            Cell::from(duration_ns(r.p50_ns)),
            Cell::from(duration_ns(r.p99_ns)),
            Cell::from(format!("{:.1}%", r.mutex_wait_share * 100.0)),
        ])
    });
    frame.render_widget(
        Table::new(table_rows, widths).header(header).block(block),
        area,
    );
}

fn draw_client_table(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
    let block = panel_block(
        Panel::Clients,
        ui,
        format!(" dm-bufio clients · {} ", model.clients.len()),
    );
    let rows = model.client_rows();
    if rows.is_empty() {
        let text = match &model.header.bufio {
            BufioStatus::Unavailable(_) => "No dm-bufio on this machine.",
            _ => "No dm-bufio operations seen yet.",
        };
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let wide = area.width >= 100;
    let mut header = vec!["device", "ops/s", "get/s", "read/s", "rel/s"];
    let mut widths = vec![
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    if wide {
        header.extend(["new/s", "dirty/s", "block"]);
        widths.extend([
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(6),
        ]);
    }
    header.extend(["hit %", "dirty", "lock waits"]);
    widths.extend([
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Min(10),
    ]);
    let compared = model.comparison.client;
    let table_rows = rows.iter().map(|c| {
        let mut cells = vec![
            Cell::from(format!(
                "{}{}",
                if compared == Some(c.addr) { "◆" } else { " " },
                c.device
            )),
            Cell::from(compact(c.ops_per_sec())),
            Cell::from(compact(c.rate(OpKind::Get))),
            Cell::from(compact(c.rate(OpKind::Read))),
            Cell::from(compact(c.rate(OpKind::Release))),
        ];
        if wide {
            cells.push(Cell::from(compact(c.rate(OpKind::New))));
            cells.push(Cell::from(compact(
                c.rate(OpKind::MarkDirty) + c.rate(OpKind::MarkPartialDirty),
            )));
            cells.push(Cell::from(if c.block_size >= 1024 {
                format!("{}K", c.block_size / 1024)
            } else {
                c.block_size.to_string()
            }));
        }
        cells.push(Cell::from(
            c.hit_ratio()
                .map_or("-".to_string(), |r| format!("{:.1}", r * 100.0)),
        ));
        cells.push(Cell::from(thousands(c.dirty_estimate() as u64)));
        let waits = c.counted_waits();
        cells.push(Cell::from(if waits.is_empty() {
            "0".to_string()
        } else {
            format!(
                "{} p99 {}",
                thousands(waits.count),
                duration_ns(waits.quantile(0.99))
            )
        }));
        Row::new(cells)
    });
    let table = Table::new(table_rows, widths)
        .header(Row::new(header).style(Style::new().fg(Color::Gray)))
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶");
    let mut state = TableState::default().with_selected(Some(ui.selected(Panel::Clients)));
    frame.render_stateful_widget(table, area, &mut state);
}
