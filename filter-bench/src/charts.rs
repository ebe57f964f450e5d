//! Charts for the report: SVG files written beside it (in [`DIR`], relative
//! to the report's directory), linked from the section that measured them.
//! The parts keep their numbers in a [`Chart`] next to their text; nothing
//! is parsed back out of the Markdown.
//!
//! Rendered with `plotters`' SVG backend alone: text goes out as SVG
//! `<text>` elements for the viewer to lay out, so no font file is read.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use plotters::{element::DashedPathElement, prelude::*};

use crate::common::Summary;

/// Where the charts go, relative to the report's directory (and in the
/// report's image links).
pub const DIR: &str = "docs/bench";

/// Line colours, in series order (colour-blind safe, Okabe–Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];
const OURS: RGBColor = RGBColor(0, 114, 178);
const PEER: RGBColor = RGBColor(230, 159, 0);
const CEILING: RGBColor = RGBColor(120, 120, 120);
const FONT: &str = "sans-serif";

/// One chart of a section.
#[derive(Clone, Debug)]
pub struct Chart {
    /// File name inside [`DIR`], e.g. `list-size.svg`.
    pub file: &'static str,
    pub title: String,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// One line per series against a logarithmic x axis.
    Lines {
        x_desc: String,
        y_desc: String,
        series: Vec<Series>,
    },
    /// Horizontal bars, one per configuration, with reference lines.
    Bars {
        x_desc: String,
        bars: Vec<Bar>,
        references: Vec<Reference>,
    },
}

/// A line: `(x, y over the rounds)` points.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, Summary)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Ours,
    Peer,
    Ceiling,
}

#[derive(Clone, Debug)]
pub struct Bar {
    pub label: String,
    pub value: Summary,
    pub kind: BarKind,
}

/// A vertical line across the bars (e.g. a ceiling).
#[derive(Clone, Debug)]
pub struct Reference {
    pub label: String,
    pub value: f64,
}

impl Chart {
    /// The Markdown image link to this chart, relative to the report.
    #[must_use]
    pub fn link(&self) -> String {
        format!("![{}]({DIR}/{})", self.title, self.file)
    }

    /// Renders the chart into `dir`; returns the file written.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(self.file);
        let rendered = match &self.kind {
            Kind::Lines {
                x_desc,
                y_desc,
                series,
            } => lines(&path, &self.title, x_desc, y_desc, series),
            Kind::Bars {
                x_desc,
                bars,
                references,
            } => horizontal_bars(&path, &self.title, x_desc, bars, references),
        };
        rendered.with_context(|| format!("rendering {}", path.display()))?;
        Ok(path)
    }
}

/// Writes every chart into [`DIR`] beside `report` (a file path).
pub fn write_beside<'a>(
    charts: impl IntoIterator<Item = &'a Chart>,
    report: &Path,
) -> Result<Vec<PathBuf>> {
    let dir = report
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        .join(DIR);
    charts.into_iter().map(|chart| chart.write(&dir)).collect()
}

/// plotters' errors borrow the backend's error type; keep their text.
fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

/// An axis value `1234567.0` as `1,234,567` (rounded; negative as 0).
fn thousands(value: f64) -> String {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "axis labels of counts"
    )]
    let count = value.round().max(0.0) as u64;
    filter_ctl::control::drops::thousands(count)
}

fn lines(path: &Path, title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<()> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs.clone().fold(1.0_f64, f64::max);
    let x_min = xs.fold(x_max, f64::min).max(1.0);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1.max))
        .fold(0.0_f64, f64::max);
    // Headroom for the legend (upper left) above the highest point.
    let y_top = if y_max > 0.0 { y_max * 1.35 } else { 1.0 };
    // Powers of ten from the smallest to the largest x.
    let mut ticks = Vec::new();
    let mut tick = 1.0_f64;
    while tick <= x_max * 1.001 {
        if tick >= x_min * 0.999 {
            ticks.push(tick);
        }
        tick *= 10.0;
    }

    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            ((x_min / 2.0)..(x_max * 2.0))
                .log_scale()
                .with_key_points(ticks),
            0.0..y_top,
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| thousands(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|(x, v)| (*x, v.median)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|(x, v)| Circle::new((*x, v.median), 4, color.filled())),
            )
            .map_err(err)?;
        // The spread over the rounds (min–max).
        chart
            .draw_series(s.points.iter().map(|(x, v)| {
                PathElement::new(vec![(*x, v.min), (*x, v.max)], color.stroke_width(1))
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn horizontal_bars(
    path: &Path,
    title: &str,
    x_desc: &str,
    bars: &[Bar],
    references: &[Reference],
) -> Result<()> {
    let n = bars.len();
    let x_max = bars
        .iter()
        .map(|b| b.value.max)
        .chain(references.iter().map(|r| r.value))
        .fold(0.0_f64, f64::max);
    let x_right = if x_max > 0.0 { x_max * 1.15 } else { 1.0 };
    // One segment per bar on the y axis, the first bar at the top: bar i
    // spans row n - 1 - i, from `Exact(row)` to the next row (or `Last`).
    let last = n.saturating_sub(1).max(1);
    let row = |i: usize| n - 1 - i;
    let above = |r: usize| {
        if r < last {
            SegmentValue::Exact(r + 1)
        } else {
            SegmentValue::Last
        }
    };
    let label_width = bars
        .iter()
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(0);
    let label_area = u32::try_from(label_width * 7 + 20).unwrap_or(500);
    // The legend goes under the x axis (inside the chart it would cover
    // bars): one line per kind of bar and per reference.
    let kinds: Vec<(&str, RGBColor)> = [
        (BarKind::Ours, "ours", OURS),
        (BarKind::Peer, "other filters", PEER),
        (BarKind::Ceiling, "bare XDP_DROP", CEILING),
    ]
    .into_iter()
    .filter(|(kind, _, _)| bars.iter().any(|b| b.kind == *kind))
    .map(|(_, label, color)| (label, color))
    .collect();
    let legend_height = u32::try_from((kinds.len() + references.len()) * 20 + 16).unwrap_or(200);
    let chart_height = u32::try_from(n * 38 + 200).unwrap_or(800);

    let root =
        SVGBackend::new(path, (label_area + 640, chart_height + legend_height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (upper, lower) = root.split_vertically(chart_height);
    let mut chart = ChartBuilder::on(&upper)
        .caption(title, (FONT, 20))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(label_area)
        .build_cartesian_2d(0.0..x_right, (0..last).into_segmented())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_labels(n + 1)
        .y_label_formatter(&|y| match y {
            SegmentValue::Exact(r) | SegmentValue::CenterOf(r) if *r < n => {
                bars[row(*r)].label.clone()
            }
            _ => String::new(),
        })
        .x_label_formatter(&|x| format!("{x:.1}"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .disable_y_mesh()
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (i, bar) in bars.iter().enumerate() {
        let r = row(i);
        let color = match bar.kind {
            BarKind::Ours => OURS,
            BarKind::Peer => PEER,
            BarKind::Ceiling => CEILING,
        };
        let mut rectangle = Rectangle::new(
            [(0.0, SegmentValue::Exact(r)), (bar.value.median, above(r))],
            color.mix(0.85).filled(),
        );
        rectangle.set_margin(7, 7, 0, 0);
        chart.draw_series([rectangle]).map_err(err)?;
        // The spread over the rounds (min–max).
        chart
            .draw_series([PathElement::new(
                vec![
                    (bar.value.min, SegmentValue::CenterOf(r)),
                    (bar.value.max, SegmentValue::CenterOf(r)),
                ],
                BLACK.mix(0.7).stroke_width(2),
            )])
            .map_err(err)?;
    }
    // References across every bar.
    let reference_styles: Vec<ShapeStyle> = (0..references.len())
        .map(|i| PALETTE[(i + 1) % PALETTE.len()].stroke_width(2))
        .collect();
    for (reference, style) in references.iter().zip(&reference_styles) {
        chart
            .draw_series(DashedLineSeries::new(
                [
                    (reference.value, SegmentValue::Exact(0)),
                    (reference.value, SegmentValue::Last),
                ],
                8,
                5,
                *style,
            ))
            .map_err(err)?;
    }
    // The legend, under the chart (inside it, it would cover bars), lined
    // up with the plot's left edge.
    let left = i32::try_from(label_area).unwrap_or(0) + 16;
    let font = (FONT, 13).into_font().color(&BLACK);
    let mut y = 8;
    for (label, color) in &kinds {
        lower
            .draw(&Rectangle::new(
                [(left, y + 2), (left + 24, y + 14)],
                color.mix(0.85).filled(),
            ))
            .map_err(err)?;
        lower
            .draw(&Text::new(
                label.to_string(),
                (left + 32, y + 2),
                font.clone(),
            ))
            .map_err(err)?;
        y += 20;
    }
    for (reference, style) in references.iter().zip(&reference_styles) {
        lower
            .draw(&DashedPathElement::new(
                [(left, y + 8), (left + 24, y + 8)],
                6,
                3,
                *style,
            ))
            .map_err(err)?;
        lower
            .draw(&Text::new(
                reference.label.clone(),
                (left + 32, y + 2),
                font.clone(),
            ))
            .map_err(err)?;
        y += 20;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(median: f64) -> Summary {
        Summary::of(&[median * 0.9, median, median * 1.1]).expect("samples")
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("filter-bench-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        dir
    }

    /// The file is one `<svg …>…</svg>` document with balanced tags.
    fn check_svg(text: &str) {
        let start = text.find("<svg").expect("an <svg> element");
        assert!(text.trim_end().ends_with("</svg>"), "ends with </svg>");
        let body = &text[start..];
        let opened = body.matches('<').count();
        let closed = body.matches('>').count();
        assert_eq!(opened, closed, "every tag is closed");
        let open_tags = body.matches("<text").count();
        assert_eq!(
            open_tags,
            body.matches("</text>").count(),
            "text elements close"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1.0), "1");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(999.6), "1,000");
    }

    #[test]
    fn renders_lines_and_bars() {
        let labels = [
            "IPv4 listed",
            "IPv4 not listed",
            "IPv6 listed",
            "IPv6 not listed",
        ];
        let lines = Chart {
            file: "list-size.svg",
            title: "Cost against list size".into(),
            kind: Kind::Lines {
                x_desc: "block-list entries per family (log scale)".into(),
                y_desc: "ns per packet".into(),
                series: labels
                    .iter()
                    .zip([50.0, 110.0, 60.0, 120.0])
                    .map(|(label, base)| Series {
                        label: (*label).to_string(),
                        points: [1.0, 1_000.0, 100_000.0, 1_000_000.0]
                            .iter()
                            .enumerate()
                            .map(|(i, x)| {
                                #[expect(clippy::cast_precision_loss, reason = "tiny")]
                                let step = i as f64;
                                (*x, summary(base + 10.0 * step))
                            })
                            .collect(),
                    })
                    .collect(),
            },
        };
        let bars = Chart {
            file: "flood-mpps.svg",
            title: "Dropped Mpps per configuration".into(),
            kind: Kind::Bars {
                x_desc: "dropped Mpps".into(),
                bars: vec![
                    Bar {
                        label: "iptables raw PREROUTING drop".into(),
                        value: summary(0.8),
                        kind: BarKind::Peer,
                    },
                    Bar {
                        label: "bare XDP_DROP (ceiling)".into(),
                        value: summary(3.0),
                        kind: BarKind::Ceiling,
                    },
                    Bar {
                        label: "ours, source blocked".into(),
                        value: summary(2.5),
                        kind: BarKind::Ours,
                    },
                ],
                references: vec![Reference {
                    label: "ceiling: bare XDP_DROP".into(),
                    value: 3.0,
                }],
            },
        };
        assert_eq!(
            lines.link(),
            "![Cost against list size](docs/bench/list-size.svg)"
        );

        let dir = temp_dir("charts");
        let report = dir.join("BENCHMARKS.md");
        let written = write_beside([&lines, &bars], &report).expect("rendered");
        assert_eq!(
            written,
            vec![
                dir.join("docs/bench/list-size.svg"),
                dir.join("docs/bench/flood-mpps.svg")
            ]
        );
        let text = std::fs::read_to_string(&written[0]).expect("written");
        check_svg(&text);
        for label in labels {
            assert!(text.contains(label), "legend has {label}");
        }
        assert!(text.contains("ns per packet"));
        assert!(text.contains("1,000,000"), "x axis in thousands");
        let text = std::fs::read_to_string(&written[1]).expect("written");
        check_svg(&text);
        for label in [
            "iptables raw PREROUTING drop",
            "bare XDP_DROP (ceiling)",
            "ours, source blocked",
            "ceiling: bare XDP_DROP",
            "dropped Mpps",
        ] {
            assert!(text.contains(label), "chart has {label}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
