//! The IDX format of (Fashion-)MNIST: big-endian magic (0x0803 images,
//! 0x0801 labels), then the dims as u32, then u8 values; optionally gzipped.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

fn data_err<T>(path: &Path, msg: impl Into<String>) -> Result<T> {
    Err(Error::Data { path: path.display().to_string(), msg: msg.into() })
}

/// The bytes of `path`, gunzipped when they start with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).or_else(|e| data_err(path, format!("cannot read: {e}")))?;
    decompress_if_gz(path, raw)
}

/// Gunzip `raw` when it is gzip data; `path` names it in errors.
pub fn decompress_if_gz(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).or_else(|e| data_err(path, format!("corrupt or truncated gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Images of an IDX3 file: (count, rows, cols, pixels).
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    if bytes.len() < 16 {
        return data_err(path, format!("truncated: {} bytes, an IDX image header has 16", bytes.len()));
    }
    let magic = be_u32(bytes, 0);
    if magic != 0x0803 {
        return data_err(path, format!("wrong magic number 0x{magic:08x}, expected 0x00000803 (IDX images)"));
    }
    let (n, rows, cols) = (be_u32(bytes, 4) as usize, be_u32(bytes, 8) as usize, be_u32(bytes, 12) as usize);
    let want = n * rows * cols;
    if bytes.len() - 16 < want {
        return data_err(path, format!("truncated: header says {n} images of {rows}×{cols} ({want} bytes), file has {}", bytes.len() - 16));
    }
    Ok((n, rows, cols, bytes[16..16 + want].to_vec()))
}

/// Labels of an IDX1 file.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.len() < 8 {
        return data_err(path, format!("truncated: {} bytes, an IDX label header has 8", bytes.len()));
    }
    let magic = be_u32(bytes, 0);
    if magic != 0x0801 {
        return data_err(path, format!("wrong magic number 0x{magic:08x}, expected 0x00000801 (IDX labels)"));
    }
    let n = be_u32(bytes, 4) as usize;
    if bytes.len() - 8 < n {
        return data_err(path, format!("truncated: header says {n} labels, file has {}", bytes.len() - 8));
    }
    Ok(bytes[8..8 + n].to_vec())
}
