//! Charts of ops/s, waits/s and p99 per window, kernel against the designs.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    symbols::Marker,
    widgets::{Axis, Block, Chart, Dataset, GraphType},
};

use super::{DESIGN_COLORS, KERNEL_COLOR, panel_block};
use crate::live::{
    model::Model,
    ui::{Panel, Ui},
};
use bufscope_analyses::units::{compact, duration_ns};

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

pub(super) fn draw_charts(frame: &mut Frame, area: Rect, model: &Model, ui: &Ui) {
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
