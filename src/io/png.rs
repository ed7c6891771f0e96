//! Sample grids as PNG: images mapped from the data range to 0–255 and tiled.

use crate::error::{Error, Result};
use std::path::Path;

/// Tile `n` images (values N×C×H×W, C = 1 or 3, in [lo, hi]) into a grid of
/// `cols` columns with a 2-pixel border, clamped and mapped to 0–255.
pub fn grid_png_bytes(values: &[f32], dims: &[usize], lo: f32, hi: f32, cols: usize) -> Result<Vec<u8>> {
    let [n, c, h, w] = dims else {
        return Err(Error::Shape { op: "png grid", msg: format!("images must be N×C×H×W, got {dims:?}") });
    };
    let (n, c, h, w) = (*n, *c, *h, *w);
    if c != 1 && c != 3 {
        return Err(Error::Shape { op: "png grid", msg: format!("images need 1 or 3 channels, got {c}") });
    }
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols).max(1);
    let pad = 2;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut img = image::RgbImage::new(gw as u32, gh as u32);
    let to_byte = |v: f32| (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * 255.0).round() as u8;
    for i in 0..n {
        let (gx, gy) = (pad + (i % cols) * (w + pad), pad + (i / cols) * (h + pad));
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| values[((i * c + ch) * h + y) * w + x];
                let px = if c == 1 { [to_byte(at(0)); 3] } else { [to_byte(at(0)), to_byte(at(1)), to_byte(at(2))] };
                img.put_pixel((gx + x) as u32, (gy + y) as u32, image::Rgb(px));
            }
        }
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::Argument { op: "png grid", msg: e.to_string() })?;
    Ok(bytes)
}

/// Write a grid PNG atomically.
pub fn write_grid(path: &Path, values: &[f32], dims: &[usize], lo: f32, hi: f32, cols: usize) -> Result<()> {
    super::write_atomic(path, &grid_png_bytes(values, dims, lo, hi, cols)?)
}

/// A small line chart (one series, y from 0) as PNG: axes in grey, the curve in blue, points marked.
pub fn write_line_plot(path: &Path, xs: &[f64], ys: &[f64]) -> Result<()> {
    let (w, h, margin) = (640u32, 400u32, 40u32);
    let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let (xmin, xmax) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let ymax = ys.iter().fold(0f64, |m, &y| if y.is_finite() { m.max(y) } else { m }).max(1e-9) * 1.05;
    let px = |x: f64| margin as f64 + (x - xmin) / (xmax - xmin).max(1e-9) * (w - 2 * margin) as f64;
    let py = |y: f64| (h - margin) as f64 - y / ymax * (h - 2 * margin) as f64;
    for x in margin..w - margin {
        img.put_pixel(x, h - margin, image::Rgb([120, 120, 120]));
    }
    for y in margin..h - margin {
        img.put_pixel(margin, y, image::Rgb([120, 120, 120]));
    }
    let mut dot = |x: f64, y: f64, r: i64| {
        for dy in -r..=r {
            for dx in -r..=r {
                let (a, b) = (x as i64 + dx, y as i64 + dy);
                if a >= 0 && b >= 0 && (a as u32) < w && (b as u32) < h {
                    img.put_pixel(a as u32, b as u32, image::Rgb([30, 90, 200]));
                }
            }
        }
    };
    for i in 0..xs.len() {
        dot(px(xs[i]), py(ys[i]), 3);
        if i + 1 < xs.len() {
            for s in 0..=100 {
                let f = s as f64 / 100.0;
                dot(px(xs[i]) * (1.0 - f) + px(xs[i + 1]) * f, py(ys[i]) * (1.0 - f) + py(ys[i + 1]) * f, 1);
            }
        }
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(|e| Error::Argument { op: "plot", msg: e.to_string() })?;
    super::write_atomic(path, &bytes)
}
