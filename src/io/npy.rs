//! NumPy .npy arrays (format 1.0/2.0/3.0): read little-endian f32/f64/i32/i64
//! (C order) as f32; write f32.

use crate::error::{Error, Result};
use std::path::Path;

/// (shape, values) of a numeric .npy file, as f32.
pub fn read(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::Data { path: path.display().to_string(), msg: format!("cannot read: {e}") })?;
    parse(path, &bytes)
}

pub fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    let err = |msg: String| Error::Data { path: path.display().to_string(), msg };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(err(format!("unsupported .npy version {v}"))),
    };
    let header = std::str::from_utf8(bytes.get(start..start + header_len).ok_or_else(|| err("truncated header".into()))?)
        .map_err(|_| err("header is not text".into()))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[at..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr").ok_or_else(|| err("no descr in header".into()))?;
    let kind = ["'<f4'", "'<f8'", "'<i4'", "'<i8'"].iter().position(|k| descr.starts_with(k)).ok_or_else(|| {
        err(format!("dtype {} is not supported (little-endian float32/64 or int32/64)", descr.split(',').next().unwrap_or(descr)))
    })?;
    let width = [4, 8, 4, 8][kind];
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(err("Fortran-order arrays are not supported (save with C order)".into()));
    }
    let shape_text = field("shape").ok_or_else(|| err("no shape in header".into()))?;
    let inner = shape_text.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or_else(|| err("malformed shape".into()))?;
    let shape: Vec<usize> =
        inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse::<usize>()).collect::<std::result::Result<_, _>>().map_err(|_| err("malformed shape".into()))?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + header_len..];
    if data.len() < n * width {
        return Err(err(format!("truncated: shape {shape:?} needs {} bytes of data, file has {}", n * width, data.len())));
    }
    let chunks = data[..n * width].chunks_exact(width);
    let values = match kind {
        0 => chunks.map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        1 => chunks.map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        2 => chunks.map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        _ => chunks.map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
    };
    Ok((shape, values))
}

/// The bytes of a float32 .npy file (version 1.0, C order).
pub fn serialize(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // pad so that data starts at a multiple of 64, header ends with \n
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// Write a float32 .npy atomically.
pub fn write(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    super::write_atomic(path, &serialize(shape, values))
}
