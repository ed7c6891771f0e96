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
