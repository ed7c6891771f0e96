//! Files: safetensors state dicts, diffusers model directories, .npy arrays,
//! PNG image grids. Every write goes to a temporary name first and is renamed
//! into place, so a crash never leaves a half-written file.

pub mod model_dir;
pub mod npy;
pub mod png;
pub mod safetensors;

use crate::error::{Error, Result};
use std::path::Path;

/// Write `bytes` to `path` atomically: `path.tmp-<pid>` then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        "{}.tmp-{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), source: e };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
