//! The screens, drawn from a [`Model`] and the viewer's [`Ui`] and nothing else.
//!
//! Below 140×40 one panel fills the body (Tab switches); from 140×40 on all four share it: locks
//! and clients on the left, the comparison and the charts on the right.

use bufscope_trace::OpKind;
use ratatui::{
    Frame,
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    symbols::Marker,
    text::{Line, Span},
    widgets::{
        Axis, Block, Cell, Chart, Clear, Dataset, GraphType, Paragraph, Row, Table, TableState,
        Wrap,
    },
};

use super::{
    hist::Log2Hist,
    model::{BufioStatus, CompareSource, LockSort, Model, Source},
    ui::{Overlay, Panel, Ui, help_lines},
};
use bufscope_analyses::{
    report::bucket_floor,
    units::{compact, duration_ns, thousands},
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
        Constraint::Length(3),
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

fn draw_header(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
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
    let second = match &h.bufio {
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
    frame.render_widget(
        Paragraph::new(vec![Line::from(first), second, Line::from(tabs)]),
        area,
    );
}

fn draw_footer(frame: &mut Frame, area: Rect, ui: &Ui) {
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

fn sorted_header(label: &'static str, sort: LockSort, key: LockSort) -> Cell<'static> {
    if sort == key {
        Cell::from(format!("{label}▼")).style(Style::new().bold().underlined())
    } else {
        Cell::from(label)
    }
}

fn draw_locks(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
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

fn draw_lock_detail(frame: &mut Frame, area: Rect, model: &Model, row: &super::model::LockRow) {
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
        && let Some((first, last)) = stats.hist.span()
    {
        lines.push(Line::from(vec![
            Span::styled("waits  ", dim),
            Span::raw(format!("{} ", duration_ns(bucket_floor(first)))),
            Span::styled(
                hist_text(&stats.hist, first, last),
                Style::new().fg(Color::Cyan),
            ),
            Span::raw(format!(" {}", duration_ns(bucket_floor(last + 1)))),
        ]));
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
    lines.push(Line::styled("Enter: every stack of this lock", dim));
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
}

fn draw_clients(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
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
        cells.push(Cell::from(if c.waits.is_empty() {
            "0".to_string()
        } else {
            format!(
                "{} p99 {}",
                thousands(c.waits.count),
                duration_ns(c.waits.quantile(0.99))
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

fn draw_compare(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
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
            "{}'s dm-bufio lock waits; designs replay each window as recorded, one behind{}",
            c.device,
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

fn bounds(points: &[&[(f64, f64)]]) -> ([f64; 2], [f64; 2]) {
    let mut x = [f64::MAX, f64::MIN];
    let mut y_max: f64 = 0.0;
    for series in points {
        for &(t, v) in *series {
            x[0] = x[0].min(t);
            x[1] = x[1].max(t);
            y_max = y_max.max(v);
        }
    }
    if x[0] > x[1] {
        x = [0.0, 1.0];
    }
    if x[1] - x[0] < 1.0 {
        x[1] = x[0] + 1.0;
    }
    (
        [x[0], x[1]],
        [0.0, if y_max > 0.0 { y_max * 1.1 } else { 1.0 }],
    )
}

fn chart<'a>(
    title: String,
    datasets: Vec<Dataset<'a>>,
    all: &[&[(f64, f64)]],
    label: fn(f64) -> String,
) -> Chart<'a> {
    let (x, y) = bounds(all);
    Chart::new(datasets)
        .block(Block::new().title(title))
        .x_axis(
            Axis::default()
                .bounds(x)
                .labels([format!("{:.0}s", x[0]), format!("{:.0}s", x[1])])
                .style(Style::new().fg(Color::DarkGray)),
        )
        .y_axis(
            Axis::default()
                .bounds(y)
                .labels(["0".to_string(), label(y[1] / 2.0), label(y[1])])
                .style(Style::new().fg(Color::DarkGray)),
        )
        .legend_position(Some(ratatui::widgets::LegendPosition::TopLeft))
}

fn draw_charts(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
    let block = panel_block(Panel::Charts, ui, " Over time ".to_string());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let s = &model.series;
    let [top, bottom] = if inner.width >= 120 {
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner)
    } else {
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner)
    };
    let rates = vec![
        Dataset::default()
            .name("dm-bufio ops/s")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(KERNEL_COLOR))
            .data(&s.ops_per_sec),
        Dataset::default()
            .name("lock waits/s")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Red))
            .data(&s.waits_per_sec),
    ];
    frame.render_widget(
        chart(
            "kernel, per second".to_string(),
            rates,
            &[&s.ops_per_sec, &s.waits_per_sec],
            compact,
        ),
        top,
    );
    let mut p99 = vec![
        Dataset::default()
            .name("kernel")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(KERNEL_COLOR))
            .data(&s.kernel_p99_us),
    ];
    let mut all: Vec<&[(f64, f64)]> = vec![&s.kernel_p99_us];
    for (i, (name, points)) in s.designs_p99_us.iter().enumerate() {
        p99.push(
            Dataset::default()
                .name(name.name())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(DESIGN_COLORS[i % 4]))
                .data(points),
        );
        all.push(points);
    }
    frame.render_widget(
        chart(
            format!(
                "p99 dm-bufio lock wait per window, {}",
                model.comparison.device
            ),
            p99,
            &all,
            |us| duration_ns((us * 1e3) as u64),
        ),
        bottom,
    );
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

fn draw_help(frame: &mut Frame, area: Rect, ui: &Ui) {
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

fn draw_stacks(
    frame: &mut Frame,
    area: Rect,
    model: &Model,
    lock: super::model::LockKey,
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

fn draw_designs(frame: &mut Frame, area: Rect, cursor: usize, chosen: &[bool]) {
    let lines: Vec<Line> = reference_cache::Design::ALL
        .iter()
        .zip(chosen)
        .enumerate()
        .map(|(i, (d, on))| {
            let text = format!(
                "{} [{}] {d:<9} {}",
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
    let rect = centered(area, 56, lines.len() as u16 + 2);
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

#[cfg(test)]
pub(crate) mod tests {
    use bufscope_abi::LockFlags;
    use bufscope_trace::{BufioOp, ClientLocks, LockWait, Metadata, OpKind, OpResult, Symbol};
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::live::{
        model::{BufioStatus, CompareSource, Header, Model, Source},
        shadow::DesignResult,
        ui::{Overlay, Panel, Ui},
    };
    use reference_cache::Design;

    const CLIENT: u64 = 0xffff_8880_0100_0000;
    const OTHER: u64 = 0xffff_8880_0200_0000;
    const MUTEX: u64 = CLIENT + 0x40;
    const STATIC_LOCK: u64 = 0xffff_ffff_8300_1000;
    const ANON_SPIN: u64 = 0xffff_8880_0300_0080;

    fn wait(lock_addr: u64, flags: u32, wait_ns: u64, stack: u32, op: Option<OpKind>) -> LockWait {
        LockWait {
            start_ns: 1_000,
            wait_ns,
            lock_addr,
            tid: 100,
            tgid: 100,
            cpu: 0,
            flags,
            ret: 0,
            stack_id: Some(stack),
            op,
            op_client: if op.is_some() { CLIENT } else { 0 },
        }
    }

    fn op(client: u64, kind: OpKind, block: u64, result: OpResult) -> BufioOp {
        BufioOp {
            start_ns: 1_000 + block,
            duration_ns: 2_000,
            client,
            block,
            tid: 100 + (block % 4) as u32,
            tgid: 100,
            cpu: 0,
            kind,
            result,
            arg0: 0,
            arg1: 0,
            lock_wait_ns: 0,
            lock_hold_ns: 0,
        }
    }

    fn hist(samples: &[(u64, u64)]) -> Log2Hist {
        let mut h = Log2Hist::default();
        for &(ns, n) in samples {
            for _ in 0..n {
                h.add(ns);
            }
        }
        h
    }

    /// A 6.1-like machine: one dm-thin metadata client whose mutex is hot, a second quiet
    /// client, a static lock and an anonymous spinlock; two seconds in; one window compared.
    pub(crate) fn fixture() -> Model {
        let designs = vec![Design::Classic, Design::Sharded];
        let mut m = Model::new(
            Header {
                kernel: "6.1.0-40-amd64".into(),
                source: Source::Live {
                    attach: "tp_btf".into(),
                },
                bufio: BufioStatus::Probed {
                    attached: 10,
                    points: 11,
                    design: Some("classic (one client mutex)".into()),
                    missing: vec![(
                        "dm_bufio_forget_buffers".into(),
                        "not in this kernel".into(),
                    )],
                },
                events_per_sec: 0.0,
                lost: 3,
                overhead: Some(0.0042),
                recording: None,
                status: None,
            },
            CompareSource::Tables,
            &designs,
        );
        for (addr, device) in [(CLIENT, "253:2"), (OTHER, "253:5")] {
            m.add_metadata(&Metadata::Client {
                addr,
                device: device.into(),
                block_size: 4096,
                locks: Some(ClientLocks {
                    mutex: addr + 0x40,
                    trees: 0,
                    first_tree: 0,
                    tree_stride: 0,
                }),
                seen_ns: 0,
                destroyed_ns: None,
            });
        }
        m.add_metadata(&Metadata::Stack {
            id: 1,
            frames: vec![0x10, 0x20, 0x30, 0x40],
        });
        m.add_metadata(&Metadata::Stack {
            id: 2,
            frames: vec![0x10, 0x20, 0x50, 0x60],
        });
        let sym = |addr, name: &str, module: Option<&str>, lock_text| Symbol {
            addr,
            name: name.into(),
            module: module.map(Into::into),
            lock_text,
        };
        m.add_metadata(&Metadata::Symbols {
            symbols: vec![
                sym(0x10, "__mutex_lock.constprop.0", None, true),
                sym(0x20, "mutex_lock", None, true),
                sym(0x30, "dm_bufio_get", Some("dm_bufio"), false),
                sym(0x40, "dm_tm_read_lock", Some("dm_persistent_data"), false),
                sym(0x50, "dm_bufio_release", Some("dm_bufio"), false),
                sym(0x60, "dm_tm_unlock", Some("dm_persistent_data"), false),
                sym(STATIC_LOCK, "rcu_state", None, false),
            ],
        });
        for i in 0..300u64 {
            m.add_wait(&wait(
                MUTEX,
                LockFlags::MUTEX,
                20_000 + i * 100,
                1,
                Some(OpKind::Get),
            ));
        }
        for i in 0..120u64 {
            m.add_wait(&wait(
                MUTEX,
                LockFlags::MUTEX,
                60_000 + i * 500,
                2,
                Some(OpKind::Release),
            ));
        }
        for _ in 0..40 {
            m.add_wait(&wait(STATIC_LOCK, LockFlags::SPIN, 3_000, 1, None));
        }
        m.add_wait(&wait(ANON_SPIN, LockFlags::SPIN, 900, 2, None));
        for block in 0..2_000u64 {
            let result = if block % 10 == 0 {
                OpResult::Miss
            } else {
                OpResult::Hit
            };
            m.add_op(&op(CLIENT, OpKind::Get, block % 64, result));
            m.add_op(&op(CLIENT, OpKind::Release, block % 64, OpResult::None));
        }
        for block in 0..40u64 {
            m.add_op(&op(CLIENT, OpKind::MarkDirty, block, OpResult::None));
            m.add_op(&op(OTHER, OpKind::Read, block, OpResult::Miss));
        }
        let window = m
            .tick(1.0, LockSort::Total, "")
            .expect("a window to compare");
        assert_eq!(window.client, CLIENT);
        m.design_result(DesignResult {
            window: window.id,
            design: 0,
            waits: hist(&[(30_000, 350), (90_000, 60)]),
            steps: 4_040,
            mismatched: 2,
            error: None,
        });
        m.design_result(DesignResult {
            window: window.id,
            design: 1,
            waits: hist(&[(1_500, 12)]),
            steps: 4_040,
            mismatched: 2,
            error: None,
        });
        for i in 0..50u64 {
            m.add_wait(&wait(
                MUTEX,
                LockFlags::MUTEX,
                25_000 + i,
                1,
                Some(OpKind::Get),
            ));
            m.add_op(&op(CLIENT, OpKind::Get, i, OpResult::Hit));
            m.add_op(&op(CLIENT, OpKind::Release, i, OpResult::None));
        }
        m.tick(1.0, LockSort::Total, "");
        m
    }

    fn render(model: &Model, ui: &Ui, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, model, ui)).unwrap();
        terminal.backend().to_string()
    }

    fn ui() -> Ui {
        Ui::new(&[Design::Classic, Design::Sharded], false)
    }

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
