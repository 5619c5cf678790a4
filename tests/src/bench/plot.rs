//! PNG line charts: a measured value against the number of Services (log
//! scale), one line per datapath or case. Text is drawn with an embedded
//! DejaVu font, so no system fonts are needed.

use std::{path::Path, sync::Once};

use anyhow::anyhow;
use plotters::prelude::*;

use super::report::{Report, Section, group};

/// One line of a chart: (Services, value) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        // The embedded font is valid TrueType; if registration ever failed,
        // drawing text would report it.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws a chart; nothing is written when there is no point. `log_y` for
/// values spanning orders of magnitude.
pub fn line_chart(path: &Path, title: &str, y_desc: &str, series: &[Series], log_y: bool) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    if points().next().is_none() {
        return Ok(());
    }
    register_font();
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let y_min = points().map(|p| p.1).filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("drawing {}: {e}", path.display()))?;
    let x_range = (0.7f64..x_max * 1.5).log_scale();
    let result = if log_y && y_min.is_finite() {
        draw(&root, title, y_desc, series, x_range, (y_min / 1.5..y_max * 8.0).log_scale(), y_max)
    } else {
        draw(&root, title, y_desc, series, x_range, 0f64..y_max * 1.45, y_max)
    };
    result.and_then(|()| Ok(root.present()?)).map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

/// Distinct colours that stay readable on white.
const PALETTE: [RGBColor; 8] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw<X, Y>(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    series: &[Series],
    x_range: X,
    y_range: Y,
    y_max: f64,
) -> DrawResult
where
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc("Services (log scale)")
            .y_desc(y_desc)
            .x_label_formatter(&|v| group(*v))
            .y_label_formatter(&|v: &f64| {
                if y_max >= 100.0 { group(*v) } else { format!("{v:.1}") }
            })
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()].to_rgba();
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// Median of `metric` per Services, one series per value of `key`.
fn series_by(
    report: &Report,
    section: Section,
    metric: &str,
    filter: impl Fn(&super::report::Row) -> bool,
    key: impl Fn(&super::report::Row) -> String,
) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for r in report.rows.iter().filter(|r| r.section == section && r.metric == metric && filter(r)) {
        let name = key(r);
        let point = (r.services as f64, r.summary.median);
        match out.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => out.push(Series { name, points: vec![point] }),
        }
    }
    for s in &mut out {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// All the charts, written into `dir`. Returns the files written.
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::new();
    let labels: Vec<(String, String)> = report.cases.iter().map(|(_, c)| (c.case.clone(), c.label.clone())).collect();
    let label = |case: &str| labels.iter().find(|(c, _)| c == case).map_or_else(|| case.to_owned(), |(_, l)| l.clone());
    let mut chart = |file: &str, title: &str, y: &str, series: Vec<Series>, log_y: bool| -> anyhow::Result<()> {
        if series.iter().any(|s| !s.points.is_empty()) {
            line_chart(&dir.join(file), title, y, &series, log_y)?;
            written.push(file.to_owned());
        }
        Ok(())
    };
    chart(
        "packet_cost.png",
        "Per-packet cost vs. number of Services (BPF_PROG_TEST_RUN)",
        "ns per packet (median)",
        series_by(report, Section::PacketCost, "ns_per_packet", |_| true, |r| label(&r.case)),
        true,
    )?;
    let cases = [
        ("tcp_connections", "New TCP connections", "connections/s", "connection"),
        ("udp_new_flows", "New UDP flows", "flows/s", "new UDP flow"),
        ("udp_packets", "UDP packets (established flows)", "packets/s", "packet"),
    ];
    for (case, what, unit, per) in cases {
        chart(
            &format!("traffic_{case}_rate.png"),
            &format!("{what} per second vs. number of Services"),
            &format!("{unit} (median)"),
            series_by(report, Section::Traffic, "rate", |r| r.case == case, |r| r.datapath.clone()),
            false,
        )?;
        chart(
            &format!("traffic_{case}_cpu.png"),
            &format!("CPU time per {per} vs. number of Services"),
            "µs of CPU (median)",
            series_by(report, Section::Traffic, "cpu", |r| r.case == case, |r| r.datapath.clone()),
            false,
        )?;
    }
    Ok(written)
}
