//! The runs report: one self-contained HTML page (no network: charts are
//! inline SVG, sample grids are `data:` URIs, the script is inline).
//!
//! Layout, top to bottom, at fixed positions so that a screenshot can be
//! checked (window 1200 px wide, body margin 0):
//! - a header bar, [`HEADER_H`] px tall;
//! - the curves: three [`CHART_W`]×[`CHART_H`] SVG charts side by side —
//!   loss per batch, learning rate, train (dashed) and eval (solid) loss per
//!   epoch — one colour per run ([`PALETTE`], in the order the runs are given);
//! - the sample grids of all chosen runs side by side at one epoch (slider),
//!   each drawn [`GRID_PX`] px square;
//! - per run, a gallery of its sample grids with an epoch slider;
//! - the runs table (status, steps, final losses, speed, device, code), the
//!   config table with the rows that differ between runs highlighted, other
//!   per-epoch metrics (e.g. FID/KID) and each run's saved git diff.

use super::store::{Artifact, MetricRow, Run, Store};
use super::{base64, iso_time};
use crate::error::Result;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

pub const HEADER_H: u32 = 56;
pub const CHART_W: u32 = 392;
pub const CHART_H: u32 = 280;
pub const GRID_PX: u32 = 256;
/// Run colours: red, blue, orange, purple, teal, olive, brown, navy.
pub const PALETTE: [&str; 8] = ["#e6194b", "#4363d8", "#f58231", "#911eb4", "#008080", "#808000", "#9a6324", "#000075"];
/// Without run ids, the report shows this many of the newest runs.
pub const DEFAULT_RUNS: usize = 8;
/// Points per drawn curve at most (longer series are averaged in buckets).
const MAX_POINTS: usize = 500;

/// One curve.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// HTML-escape text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Round tick values (1, 2 or 5 × 10^k apart) inside [lo, hi].
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label with as many decimals as the tick spacing needs.
fn fmt_tick(v: f64, step: f64) -> String {
    let a = v.abs();
    if v == 0.0 || (step.abs() < 1e-12) {
        return if v == 0.0 { "0".into() } else { fmt_num(v) };
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let decimals = (-(step.abs().log10().floor()) as i32).max(0) as usize;
    format!("{v:.decimals$}")
}

/// Average `points` in at most `max` buckets of consecutive points.
fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points.to_vec();
    }
    let per = points.len().div_ceil(max);
    points
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            (c.iter().map(|p| p.0).sum::<f64>() / n, c.iter().map(|p| p.1).sum::<f64>() / n)
        })
        .collect()
}

/// An SVG line chart (`log_y`: log scale when every value is positive and they span a decade).
pub fn line_chart(title: &str, xlabel: &str, series: &[Series], log_y: bool, w: u32, h: u32) -> String {
    let (ml, mr, mt, mb) = (58.0, 14.0, 30.0, 38.0);
    let (wf, hf) = (w as f64, h as f64);
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let (ymin0, ymax0) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let use_log = log_y && ymin0 > 0.0 && ymax0 / ymin0 > 8.0;
    let ty = |y: f64| if use_log { y.log10() } else { y };
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect x="0.5" y="0.5" width="{}" height="{}" fill="#fff" stroke="#ccc"/><text x="{ml}" y="19" font-size="13" font-weight="bold" fill="#222">{}</text>"##,
        w - 1,
        h - 1,
        esc(title)
    );
    let (px0, px1, py0, py1) = (ml, wf - mr, hf - mb, mt);
    if all.is_empty() {
        let _ = write!(s, r##"<text x="{}" y="{}" font-size="13" fill="#888" text-anchor="middle">no data yet</text></svg>"##, wf / 2.0, hf / 2.0);
        return s;
    }
    let (mut xmin, mut xmax) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut ymin, mut ymax) = (ty(ymin0), ty(ymax0));
    if xmax - xmin < 1e-12 {
        (xmin, xmax) = (xmin - 1.0, xmax + 1.0);
    }
    if ymax - ymin < 1e-12 {
        let d = if ymin.abs() > 1e-12 { ymin.abs() * 0.1 } else { 1.0 };
        (ymin, ymax) = (ymin - d, ymax + d);
    }
    let pad = (ymax - ymin) * 0.05;
    (ymin, ymax) = (ymin - pad, ymax + pad);
    let sx = |x: f64| px0 + (x - xmin) / (xmax - xmin) * (px1 - px0);
    let sy = |y: f64| py0 + (ty(y) - ymin) / (ymax - ymin) * (py1 - py0);
    let yticks: Vec<(f64, f64)> = if use_log {
        let (lo, hi) = (ymin.floor() as i32, ymax.ceil() as i32);
        let mut t = vec![];
        for e in lo..=hi {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powi(e);
                if (ymin..=ymax).contains(&v.log10()) {
                    t.push((v.log10(), v));
                }
            }
        }
        if t.len() > 7 {
            t.retain(|p| (p.1 / 10f64.powf(p.0.floor())).round() == 1.0);
        }
        t
    } else {
        nice_ticks(ymin, ymax).into_iter().map(|v| (v, v)).collect()
    };
    let ystep = if use_log { 0.0 } else { yticks.windows(2).map(|w| w[1].1 - w[0].1).next().unwrap_or(1.0) };
    for &(tv, label) in &yticks {
        let y = py0 + (tv - ymin) / (ymax - ymin) * (py1 - py0);
        let text = if use_log { fmt_num(label) } else { fmt_tick(label, ystep) };
        let _ = write!(
            s,
            r##"<line x1="{px0}" y1="{y:.1}" x2="{px1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="10" fill="#555" text-anchor="end">{text}</text>"##,
            px0 - 4.0,
            y + 3.0,
        );
    }
    let xticks = nice_ticks(xmin, xmax);
    let xstep = xticks.windows(2).map(|w| w[1] - w[0]).next().unwrap_or(1.0);
    for &xv in &xticks {
        let x = sx(xv);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{py0}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" font-size="10" fill="#555" text-anchor="middle">{}</text>"##,
            py0 + 4.0,
            py0 + 15.0,
            fmt_tick(xv, xstep)
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{px0}" y1="{py0}" x2="{px1}" y2="{py0}" stroke="#999"/><line x1="{px0}" y1="{py0}" x2="{px0}" y2="{py1}" stroke="#999"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#555" text-anchor="middle">{}{}</text>"##,
        (px0 + px1) / 2.0,
        hf - 6.0,
        esc(xlabel),
        if use_log { " (log y)" } else { "" }
    );
    for ser in series {
        let pts: Vec<(f64, f64)> = ser.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite() && (!use_log || p.1 > 0.0)).collect();
        let pts = downsample(&pts, MAX_POINTS);
        let dash = if ser.dashed { r#" stroke-dasharray="7 4""# } else { "" };
        let coords: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2.5" stroke-linejoin="round"{dash} points="{}"><title>{}</title></polyline>"#,
            esc(&ser.color),
            coords.join(" "),
            esc(&ser.label)
        );
        if pts.len() <= 40 {
            for &(x, y) in &pts {
                let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#, sx(x), sy(y), esc(&ser.color));
            }
        }
    }
    // legend, on a translucent white box
    let entries = series.iter().map(|s| (&s.label, &s.color, s.dashed)).collect::<BTreeSet<_>>().len().min(6);
    let _ = write!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="148" height="{:.1}" fill="#fff" fill-opacity="0.8"/>"##,
        px1 - 154.0,
        py1 + 3.0,
        14.0 * entries as f64 + 4.0
    );
    let mut seen = BTreeSet::new();
    let mut row = 0;
    for ser in series {
        if !seen.insert((ser.label.clone(), ser.color.clone(), ser.dashed)) || row >= 6 {
            continue;
        }
        let (lx, ly) = (px1 - 150.0, py1 + 12.0 + 14.0 * row as f64);
        let label: String = ser.label.chars().take(22).collect();
        let dash = if ser.dashed { r#" stroke-dasharray="5 3""# } else { "" };
        let _ = write!(
            s,
            r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2.5"{dash}/><text x="{}" y="{}" font-size="10" fill="#333">{}</text>"##,
            lx + 18.0,
            esc(&ser.color),
            lx + 22.0,
            ly + 3.5,
            esc(&label)
        );
        row += 1;
    }
    s.push_str("</svg>");
    s
}

/// What one run contributes to the page.
struct RunData {
    run: Run,
    color: &'static str,
    metrics: BTreeMap<String, Vec<MetricRow>>,
    /// (epoch, step, data URI or None when the file is missing)
    grids: Vec<(i64, i64, Option<String>)>,
    artifacts: Vec<Artifact>,
}

impl RunData {
    fn series(&self, key: &str, by_epoch: bool) -> Vec<(f64, f64)> {
        self.metrics.get(key).map_or_else(Vec::new, |rows| rows.iter().map(|r| (if by_epoch { r.epoch } else { r.step } as f64, r.value)).collect())
    }
    fn last(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).and_then(|r| r.last()).map(|r| r.value)
    }
    fn label(&self) -> String {
        format!("#{} {}", self.run.id, self.run.name)
    }
}

/// How the page is made.
#[derive(Clone, Debug, Default)]
pub struct ReportOptions {
    pub title: String,
    /// Served live: the store's state token at rendering; the page polls `/state` and reloads when it changes.
    pub live_token: Option<String>,
}

/// The runs the page shows: those named (ids or names), else the newest [`DEFAULT_RUNS`].
pub fn select(store: &Store, ids: &[String]) -> Result<Vec<Run>> {
    if ids.is_empty() {
        let all = store.runs()?;
        let skip = all.len().saturating_sub(DEFAULT_RUNS);
        return Ok(all.into_iter().skip(skip).collect());
    }
    ids.iter().map(|id| store.run(id)).collect()
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), match other {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            });
        }
    }
}

fn data_uri(store: &Store, a: &Artifact) -> Option<String> {
    let bytes = std::fs::read(store.resolve(&a.path)).ok()?;
    let mime = if a.path.ends_with(".svg") { "image/svg+xml" } else { "image/png" };
    Some(format!("data:{mime};base64,{}", base64(&bytes)))
}

/// The grid index of `grids` to show at epoch `e`: the last at or before it, else the first.
fn at_epoch(grids: &[(i64, i64, Option<String>)], e: i64) -> Option<usize> {
    grids.iter().rposition(|g| g.0 <= e).or(if grids.is_empty() { None } else { Some(0) })
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font-family:sans-serif;color:#222;background:#fff}
header{height:56px;background:#20232a;color:#fff;padding:8px 16px;overflow:hidden}
header h1{font-size:20px;margin:0;line-height:22px}
header p{font-size:12px;margin:3px 0 0;color:#bbb;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
#curves{display:flex;height:280px;margin:0;padding:0}
#curves svg{display:block;flex:none}
section{padding:6px 16px}
h2{font-size:16px;margin:8px 0 6px}
.row{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;text-align:center;font-size:12px}
figure img,.gallery img{width:256px;height:256px;image-rendering:pixelated;display:block;background:#eee;border:1px solid #ccc;flex:none}
figcaption{max-width:256px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
.gallery{display:flex;gap:16px;align-items:flex-start;margin-bottom:10px}
.gallery .info{font-size:13px;min-width:300px}
input[type=range]{width:300px}
table{border-collapse:collapse;font-size:12px;margin:4px 0 12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;max-width:420px;overflow-wrap:anywhere}
tr.diff td{background:#fff3b0}
.missing{width:256px;height:256px;display:flex;align-items:center;justify-content:center;background:#eee;color:#888}
pre{font-size:11px;max-height:300px;overflow:auto;background:#f6f6f6;padding:6px}
.status-running{color:#0a7}.status-died,.status-failed{color:#c00}.status-interrupted{color:#c60}
"#;

const SCRIPT: &str = r#"
function gridLabel(g){return 'epoch '+g.e+' \u00b7 step '+g.s;}
function setImg(img,g){if(g&&g.src){img.src=g.src;img.style.visibility='visible';}else{img.removeAttribute('src');}}
function showRun(id,i,save){var g=GRIDS[id][i];if(!g)return;setImg(document.getElementById('g'+id),g);
 document.getElementById('gl'+id).textContent=gridLabel(g);if(save){try{sessionStorage.setItem('md-run-'+id,i);}catch(e){}}}
function pick(list,e){var k=-1;for(var i=0;i<list.length;i++){if(list[i].e<=e)k=i;}return k<0&&list.length?0:k;}
function showEpoch(i,save){var e=EPOCHS[i];document.getElementById('cl').textContent='epoch '+e;
 for(var id in GRIDS){var k=pick(GRIDS[id],e);var img=document.getElementById('c'+id);if(!img||k<0)continue;var g=GRIDS[id][k];
  setImg(img,g);document.getElementById('cc'+id).textContent=document.getElementById('cc'+id).dataset.name+' \u00b7 '+gridLabel(g);}
 if(save){try{sessionStorage.setItem('md-epoch',i);}catch(e){}}}
function onlyDiffs(on){var rows=document.querySelectorAll('#config tr.same');for(var i=0;i<rows.length;i++){rows[i].style.display=on?'none':'';}}
(function(){try{for(var id in GRIDS){var v=sessionStorage.getItem('md-run-'+id);var s=document.getElementById('s'+id);
 if(v!==null&&s&&+v<GRIDS[id].length){s.value=v;showRun(id,+v,false);}}
 var e=sessionStorage.getItem('md-epoch');var cs=document.getElementById('cs');if(e!==null&&cs&&+e<EPOCHS.length){cs.value=e;showEpoch(+e,false);}}catch(err){}})();
"#;

/// The whole page for `runs`.
pub fn render(store: &Store, runs: &[Run], opts: &ReportOptions) -> Result<String> {
    let mut data = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let metrics = store.metrics(run.id)?;
        let artifacts = store.artifacts(run.id)?;
        let mut grids: Vec<(i64, i64, Option<String>)> =
            artifacts.iter().filter(|a| a.kind == "sample_grid").map(|a| (a.epoch, a.step, data_uri(store, a))).collect();
        grids.sort_by_key(|g| (g.1, g.0));
        data.push(RunData { run: run.clone(), color: PALETTE[i % PALETTE.len()], metrics, grids, artifacts });
    }
    let mut h = String::with_capacity(1 << 16);
    let title = if opts.title.is_empty() { "minidiffusion runs" } else { &opts.title };
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>",
        esc(title)
    );
    let names: Vec<String> = data.iter().map(|d| d.label()).collect();
    let _ = write!(
        h,
        "<header><h1>{}</h1><p>{} run(s): {} · store {} · generated {}{}</p></header>",
        esc(title),
        data.len(),
        esc(&names.join(", ")),
        esc(&store.path().display().to_string()),
        iso_time(super::now()),
        if opts.live_token.is_some() { " · live: reloads when the store changes" } else { "" }
    );

    // curves
    let mk = |key: &str, by_epoch: bool, dashed: bool, suffix: &str| -> Vec<Series> {
        data.iter()
            .map(|d| Series { label: format!("{}{suffix}", d.label()), color: d.color.into(), points: d.series(key, by_epoch), dashed })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let mut epoch_series = mk("train_loss", true, true, " train");
    epoch_series.extend(mk("eval_loss", true, false, " eval"));
    h.push_str("<div id=\"curves\">");
    h.push_str(&line_chart("loss per batch", "step", &mk("loss", false, false, ""), true, CHART_W, CHART_H));
    h.push_str(&line_chart("learning rate", "step", &mk("lr", false, false, ""), false, CHART_W, CHART_H));
    h.push_str(&line_chart("train (dashed) and eval loss per epoch", "epoch", &epoch_series, false, CHART_W, CHART_H));
    h.push_str("</div>");

    // side by side at one epoch
    let epochs: Vec<i64> = data.iter().flat_map(|d| d.grids.iter().map(|g| g.0)).collect::<BTreeSet<_>>().into_iter().collect();
    h.push_str("<section id=\"compare\"><h2>Samples side by side (16 samples, same seed)</h2>");
    if epochs.is_empty() {
        h.push_str("<p>No sample grids yet.</p>");
    } else {
        let last = *epochs.last().expect("not empty");
        let _ = write!(
            h,
            "<div><input type=\"range\" id=\"cs\" min=\"0\" max=\"{}\" value=\"{}\" oninput=\"showEpoch(+this.value,true)\"> <span id=\"cl\">epoch {last}</span></div><div class=\"row\">",
            epochs.len() - 1,
            epochs.len() - 1
        );
        for d in &data {
            let id = d.run.id;
            let shown = at_epoch(&d.grids, last).map(|k| &d.grids[k]);
            let caption = shown.map_or("no grids".to_string(), |g| format!("{} · epoch {} · step {}", d.label(), g.0, g.1));
            let _ = write!(
                h,
                "<figure>{}<figcaption id=\"cc{id}\" data-name=\"{}\"><span class=\"swatch\" style=\"background:{}\"></span>{}</figcaption></figure>",
                img_tag(&format!("c{id}"), shown.and_then(|g| g.2.as_deref())),
                esc(&d.label()),
                d.color,
                esc(&caption)
            );
        }
        h.push_str("</div>");
    }
    h.push_str("</section>");

    // galleries
    h.push_str("<section id=\"galleries\"><h2>Sample gallery per run</h2>");
    for d in &data {
        let id = d.run.id;
        let _ = write!(h, "<div class=\"gallery\">");
        match d.grids.last() {
            None => {
                let _ = write!(h, "<div class=\"missing\">no sample grids</div>");
            }
            Some(g) => h.push_str(&img_tag(&format!("g{id}"), g.2.as_deref())),
        }
        let _ = write!(
            h,
            "<div class=\"info\"><b><span class=\"swatch\" style=\"background:{}\"></span>{}</b> <span class=\"status-{}\">{}</span><br>",
            d.color,
            esc(&d.label()),
            esc(&d.run.status()),
            esc(&d.run.status())
        );
        if let Some(g) = d.grids.last() {
            let _ = write!(
                h,
                "<input type=\"range\" id=\"s{id}\" min=\"0\" max=\"{}\" value=\"{}\" oninput=\"showRun({id},+this.value,true)\"><br><span id=\"gl{id}\">epoch {} · step {}</span>",
                d.grids.len() - 1,
                d.grids.len() - 1,
                g.0,
                g.1
            );
        }
        h.push_str("</div></div>");
    }
    h.push_str("</section>");

    // runs table
    h.push_str("<section id=\"runs\"><h2>Runs</h2><table><tr><th>run</th><th>status</th><th>started</th><th>duration</th><th>steps</th><th>final loss (mean of last 10)</th><th>eval loss</th><th>images/s</th><th>device</th><th>code</th><th>artifacts</th></tr>");
    for d in &data {
        let r = &d.run;
        let loss = d.metrics.get("loss").map(|rows| {
            let tail = &rows[rows.len().saturating_sub(10)..];
            tail.iter().map(|r| r.value).sum::<f64>() / tail.len().max(1) as f64
        });
        let steps = d.metrics.get("loss").and_then(|rows| rows.last()).map_or(0, |r| r.step);
        let dur = r.ended.unwrap_or(r.heartbeat.max(r.started)) - r.started;
        let code = match (&r.git_commit, r.git_dirty) {
            (Some(c), dirty) => format!("{}{}", &c[..c.len().min(10)], if dirty == Some(true) { " (dirty)" } else { "" }),
            _ => "—".into(),
        };
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &d.artifacts {
            *kinds.entry(a.kind.as_str()).or_default() += 1;
        }
        let arts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = write!(
            h,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td class=\"status-{}\">{}{}</td><td>{}</td><td>{:.1} s</td><td>{steps}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>v{} · {}</td><td>{}</td></tr>",
            d.color,
            esc(&d.label()),
            esc(&r.status()),
            esc(&r.status()),
            r.error.as_deref().map_or(String::new(), |e| format!("<br><small>{}</small>", esc(e))),
            iso_time(r.started),
            dur,
            loss.map_or("—".into(), fmt_num),
            d.last("eval_loss").map_or("—".into(), fmt_num),
            d.last("images_per_s").map_or("—".into(), |v| format!("{v:.1}")),
            esc(&format!("{}{}", r.device.as_deref().unwrap_or("?"), r.gpu.as_deref().map_or(String::new(), |g| format!(" ({g})")))),
            esc(&r.version),
            esc(&code),
            esc(&arts.join(", "))
        );
    }
    h.push_str("</table></section>");

    // config table
    let flat: Vec<BTreeMap<String, String>> = data
        .iter()
        .map(|d| {
            let mut m = BTreeMap::new();
            flatten("", &d.run.config, &mut m);
            m.insert("command".into(), d.run.command.join(" "));
            m
        })
        .collect();
    let keys: BTreeSet<&String> = flat.iter().flat_map(|m| m.keys()).collect();
    h.push_str("<section id=\"config-section\"><h2>Config</h2>");
    if data.len() > 1 {
        h.push_str("<label><input type=\"checkbox\" onchange=\"onlyDiffs(this.checked)\"> only the rows that differ (highlighted)</label>");
    }
    h.push_str("<table id=\"config\"><tr><th>key</th>");
    for d in &data {
        let _ = write!(h, "<th><span class=\"swatch\" style=\"background:{}\"></span>{}</th>", d.color, esc(&d.label()));
    }
    h.push_str("</tr>");
    for k in keys {
        let vals: Vec<&str> = flat.iter().map(|m| m.get(k).map_or("—", String::as_str)).collect();
        let differs = vals.iter().any(|v| *v != vals[0]);
        let _ = write!(h, "<tr class=\"{}\"><td>{}</td>", if differs { "diff" } else { "same" }, esc(k));
        for v in vals {
            let _ = write!(h, "<td>{}</td>", esc(v));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></section>");

    // other per-epoch metrics (fid, kid, …)
    let known = ["loss", "lr", "train_loss", "eval_loss", "images_per_s", "epoch_seconds"];
    let extra: BTreeSet<&String> = data.iter().flat_map(|d| d.metrics.keys()).filter(|k| !known.contains(&k.as_str())).collect();
    let speed = mk("images_per_s", true, false, "");
    if !extra.is_empty() || !speed.is_empty() {
        h.push_str("<section id=\"more\"><h2>More metrics</h2><div class=\"row\">");
        h.push_str(&line_chart("training images/s per epoch", "epoch", &speed, false, CHART_W, CHART_H));
        for k in extra {
            h.push_str(&line_chart(k, "epoch", &mk(k, true, false, ""), false, CHART_W, CHART_H));
        }
        h.push_str("</div></section>");
    }

    // code
    h.push_str("<section id=\"code\"><h2>Code</h2>");
    for d in &data {
        let r = &d.run;
        let diff = r.git_diff.as_deref().unwrap_or("");
        let shown: String = diff.chars().take(200_000).collect();
        let _ = write!(
            h,
            "<details><summary>{}: commit {}{}, {} bytes of diff</summary><pre>{}</pre></details>",
            esc(&d.label()),
            esc(r.git_commit.as_deref().unwrap_or("unknown")),
            if r.git_dirty == Some(true) { " (dirty)" } else { "" },
            diff.len(),
            esc(&shown)
        );
    }
    h.push_str("</section>");

    // script data
    let grids: serde_json::Map<String, Value> = data
        .iter()
        .map(|d| (d.run.id.to_string(), Value::Array(d.grids.iter().map(|g| json!({"e": g.0, "s": g.1, "src": g.2})).collect())))
        .collect();
    let _ = write!(
        h,
        "<script>var GRIDS={};var EPOCHS={};{SCRIPT}",
        script_json(&Value::Object(grids)),
        script_json(&json!(epochs))
    );
    if let Some(token) = &opts.live_token {
        let _ = write!(
            h,
            "(function(){{var tok={},n=0;function poll(){{if(++n>1800)return;fetch('/state',{{cache:'no-store'}}).then(function(r){{return r.text();}}).then(function(t){{if(t!==tok){{location.reload();}}else{{setTimeout(poll,2000);}}}}).catch(function(){{setTimeout(poll,5000);}});}}setTimeout(poll,2000);}})();",
            script_json(&json!(token))
        );
    }
    h.push_str("</script></body></html>");
    Ok(h)
}

/// JSON safe inside a <script> element.
fn script_json(v: &Value) -> String {
    v.to_string().replace("</", "<\\/")
}

fn img_tag(id: &str, src: Option<&str>) -> String {
    match src {
        Some(src) => format!("<img id=\"{id}\" alt=\"sample grid\" src=\"{src}\">"),
        None => format!("<img id=\"{id}\" alt=\"sample grid file missing\">"),
    }
}
