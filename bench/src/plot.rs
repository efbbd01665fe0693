//! Line charts as standalone SVG, for the scaling curves: a person looks at the curve instead of
//! reading the JSON beside it. Log-scaled x axis (the curves span 10 to 1M), linear y from 0.

use std::fmt::Write;

/// One line of a chart: a name for the legend and its (x, y) points, x > 0.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A chart of `series` against a log10 x axis.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let data_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let step = nice_step(data_max / 5.0);
    let ymax = (data_max * 1.05 / step).ceil() * step;
    let (lx0, lx1) = (xmin.max(1e-9).log10(), xmax.max(1e-9).log10());
    let span = if lx1 > lx0 { lx1 - lx0 } else { 1.0 };
    let px = |x: f64| LEFT + (x.max(1e-9).log10() - lx0) / span * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / ymax * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Axes, y grid with 5 ticks, x ticks at the decades and at every point.
    let (x0, y0) = (LEFT, H - BOTTOM);
    let _ = writeln!(
        s,
        r#"<path d="M{x0} {TOP} V{y0} H{}" stroke="black" fill="none"/>"#,
        W - RIGHT
    );
    let ticks = (ymax / step).round() as u32;
    for i in 0..=ticks {
        let v = step * f64::from(i);
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<path d="M{x0} {y:.1} H{}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            x0 - 6.0,
            y + 4.0,
            tick(v)
        );
    }
    let mut decade = 10f64.powf(lx0.floor());
    while decade <= xmax * 1.0001 {
        if decade >= xmin * 0.9999 {
            let x = px(decade);
            let _ = writeln!(
                s,
                r#"<path d="M{x:.1} {y0} v5" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                y0 + 18.0,
                tick(decade)
            );
        }
        decade *= 10.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 18.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        (TOP + y0) / 2.0,
        (TOP + y0) / 2.0,
        escape(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = ser
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" stroke="{c}" stroke-width="2" fill="none"/>"#,
            path.join(" ")
        );
        for &(x, y) in &ser.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{c}"><title>{}: {} → {:.1}</title></circle>"#,
                px(x),
                py(y),
                escape(&ser.name),
                tick(x),
                y
            );
        }
        let ly = TOP + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<path d="M{} {ly} h18" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            ly + 4.0,
            escape(&ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The smallest of 1, 2, 5 times a power of ten that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * 0.999)
        .unwrap_or(10.0 * mag)
}

/// 1000 → "1k", 1e6 → "1M", small values with one decimal.
fn tick(v: f64) -> String {
    if v >= 1e6 && (v / 1e6).fract() == 0.0 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 && (v / 1e3).fract() == 0.0 {
        format!("{}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_polyline_and_a_point_per_value() {
        let svg = line_chart(
            "t",
            "services",
            "ns",
            &[Series {
                name: "established".into(),
                points: vec![(10.0, 50.0), (1000.0, 60.0), (100_000.0, 90.0)],
            }],
        );
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains(">100k<"), "a decade tick: {svg}");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn ticks_read_like_people_write_them() {
        assert_eq!(tick(10.0), "10");
        assert_eq!(tick(1000.0), "1k");
        assert_eq!(tick(1_000_000.0), "1M");
        assert_eq!(tick(12.25), "12.2");
    }

    #[test]
    fn y_steps_are_round() {
        assert_eq!(nice_step(407.7), 500.0);
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(nice_step(0.9), 1.0);
        assert_eq!(nice_step(20.0), 20.0);
    }
}
