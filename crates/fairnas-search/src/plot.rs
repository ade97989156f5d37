//! Small self-contained SVG scatter plots (one-shot vs stand-alone accuracy, Pareto fronts):
//! no plotting dependency, readable in any browser, diffable as text.

use std::fmt::Write;

/// One set of points drawn the same way.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// CSS colour.
    pub color: String,
    pub radius: f64,
    /// Join the points (sorted by x) with a line, e.g. a Pareto front.
    pub line: bool,
    pub points: Vec<(f64, f64)>,
}

/// A labelled point drawn on top (e.g. FairNAS-A's position).
#[derive(Debug, Clone)]
pub struct Marker {
    pub label: String,
    pub x: f64,
    pub y: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Scatter {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Text made safe inside SVG/HTML elements and attributes.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Tick positions: about five round numbers covering `[lo, hi]`.
///
/// The span is floored relative to the values' magnitude, and the count is capped: a flat
/// series at 2.8e9 (a hypervolume that did not change) once gave a step below the values' ulp,
/// so `t += step` never moved and the loop filled memory until the OOM killer ended `fairnas nas`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(lo.abs().max(hi.abs()).max(1.0) * 1e-9);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(raw);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < MAX_TICKS {
        out.push(t);
        t += step;
    }
    out
}

/// More ticks than an axis ever needs (about five are drawn).
const MAX_TICKS: usize = 50;

/// Margin around a data range: 5% of it, or, when the range is flat, a small fraction of the
/// values' magnitude (a fixed 1e-9 vanishes below the ulp of large values).
fn margin(lo: f64, hi: f64) -> f64 {
    ((hi - lo) * 0.05).max(lo.abs().max(hi.abs()).max(1.0) * 1e-3)
}

fn label(v: f64) -> String {
    let a = v.abs();
    if a < 1e-9 {
        return "0".into();
    }
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Scatter {
    /// The plot as an SVG document.
    pub fn to_svg(&self) -> String {
        let all = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .chain(self.markers.iter().map(|m| (m.x, m.y)))
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in all {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        let (px, py) = (margin(x0, x1), margin(y0, y1));
        let (x0, x1, y0, y1) = (x0 - px, x1 + px, y0 - py, y1 + py);
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT);
        let sy = |y: f64| HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="28" text-anchor="middle" font-size="15">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.title)
        );
        let (bx0, bx1, by0, by1) = (sx(x0), sx(x1), sy(y0), sy(y1));
        let _ = writeln!(
            svg,
            r##"<rect x="{bx0:.1}" y="{by1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
            bx1 - bx0,
            by0 - by1
        );
        for t in ticks(x0, x1) {
            let x = sx(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{by0:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                by0 + 5.0,
                by0 + 18.0,
                label(t)
            );
        }
        for t in ticks(y0, y1) {
            let y = sy(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{bx0:.1}" y2="{y:.1}" stroke="#444"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                bx0 - 5.0,
                bx0 - 8.0,
                y + 4.0,
                label(t)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (bx0 + bx1) / 2.0,
            HEIGHT - 15.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            svg,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (by0 + by1) / 2.0,
            escape(&self.y_label)
        );
        for (i, s) in self.series.iter().enumerate() {
            let _ = writeln!(svg, r#"<g fill="{}" fill-opacity="0.6">"#, escape(&s.color));
            if s.line && s.points.len() > 1 {
                let mut pts = s.points.clone();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                let path: Vec<String> =
                    pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                    path.join(" "),
                    escape(&s.color)
                );
            }
            for &(x, y) in s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
                let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="{}"/>"#, sx(x), sy(y), s.radius);
            }
            let _ = writeln!(svg, "</g>");
            let ly = TOP + 8.0 + 16.0 * i as f64;
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{ly:.1}" r="4" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                bx0 + 12.0,
                escape(&s.color),
                bx0 + 20.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
        for m in &self.markers {
            let (x, y) = (sx(m.x), sy(m.y));
            let _ = writeln!(
                svg,
                r##"<path d="M{:.1},{:.1} l6,6 l-6,6 l-6,-6 z" fill="#d62728" stroke="black"/><text x="{:.1}" y="{:.1}">{}</text>"##,
                x,
                y - 6.0,
                x + 8.0,
                y - 8.0,
                escape(&m.label)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_series_of_large_values_gets_finite_ticks() {
        let flat = |y: f64| Scatter {
            title: "hypervolume".into(),
            x_label: "generation".into(),
            y_label: "hv".into(),
            series: vec![Series {
                name: "hv".into(),
                color: "black".into(),
                radius: 3.0,
                line: true,
                points: vec![(0.0, y), (1.0, y)],
            }],
            markers: Vec::new(),
        };
        for y in [2.768633e9, 0.0, -5.0, 1e300] {
            let svg = flat(y).to_svg();
            assert!(svg.ends_with("</svg>\n"), "{y}");
            assert!(svg.matches("<line").count() < 2 * MAX_TICKS + 10, "{y}");
        }
        for (lo, hi) in [(2.768633e9, 2.768633e9), (1.0, 1.0), (0.0, 1e-12)] {
            let t = ticks(lo - margin(lo, hi), hi + margin(lo, hi));
            assert!(!t.is_empty() && t.len() <= MAX_TICKS, "{lo} {hi}: {t:?}");
        }
    }

    #[test]
    fn draws_every_point_and_escapes_text() {
        let plot = Scatter {
            title: "tau <0.5> & more".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "a".into(),
                color: "steelblue".into(),
                radius: 2.0,
                line: true,
                points: vec![(1.0, 2.0), (3.0, 1.0), (2.0, 5.0)],
            }],
            markers: vec![Marker { label: "A".into(), x: 2.0, y: 2.0 }],
        };
        let svg = plot.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 3 + 1); // points + legend
        assert!(svg.contains("tau &lt;0.5&gt; &amp; more"));
        assert!(svg.contains("<polyline"));
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
    }
}
