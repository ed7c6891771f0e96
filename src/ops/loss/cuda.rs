//! CUDA launches of kernels/loss.cu: cross-entropy forward (per-row
//! log-sum-exp, then a deterministic mean) and backward.

use crate::device::cuda::{Arg, CudaBackend, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;
use std::sync::Arc;

/// Rows per 256-thread block (one warp each), as in kernels/loss.cu.
const ROWS_PER_BLOCK: usize = 8;
const THREADS: u32 = 256;

/// Class labels as an int32 device buffer (the f32 buffer's 4-byte slots hold the i32 bits).
pub fn upload_labels(backend: &Arc<CudaBackend>, labels: &[usize]) -> Result<CudaBuffer> {
    let ints = labels.iter().map(|&y| elems("cross_entropy", y)).collect::<Result<Vec<i32>>>()?;
    backend.upload(bytemuck::cast_slice(&ints))
}

/// Cross-entropy of `logits` [n, k] against `labels` (from [`upload_labels`]):
/// returns (the mean loss as a 1-element buffer, softmax(logits) for backward).
pub fn forward(logits: &CudaBuffer, labels: &CudaBuffer, n: usize, k: usize) -> Result<(CudaBuffer, CudaBuffer)> {
    let backend = logits.backend();
    let probs = backend.alloc(n * k)?;
    let row_loss = backend.alloc(n)?;
    let loss = backend.alloc(1)?;
    let (rows, cols) = (Arg::I32(elems("cross_entropy", n)?), Arg::I32(elems("cross_entropy", k)?));
    if n > 0 {
        let cfg = LaunchConfig::blocks(n.div_ceil(ROWS_PER_BLOCK), THREADS);
        backend.launch("cross_entropy_rows", cfg, &[row_loss.arg(), probs.arg(), logits.arg(), labels.arg(), rows.clone(), cols])?;
    }
    backend.launch("cross_entropy_mean", LaunchConfig::blocks(1, THREADS), &[loss.arg(), row_loss.arg(), rows])?;
    Ok((loss, probs))
}

/// dz = g·(probs − onehot(labels))/n, with g the 1-element incoming gradient on the device.
pub fn backward(probs: &CudaBuffer, labels: &CudaBuffer, g: &CudaBuffer, n: usize, k: usize) -> Result<CudaBuffer> {
    let backend = probs.backend();
    let dz = backend.alloc(n * k)?;
    if n * k > 0 {
        let args = [
            dz.arg(),
            probs.arg(),
            labels.arg(),
            g.arg(),
            Arg::F32(1.0 / n as f32),
            Arg::I32(elems("cross_entropy", n)?),
            Arg::I32(elems("cross_entropy", k)?),
        ];
        backend.launch("cross_entropy_backward", LaunchConfig::for_elems(n * k, THREADS), &args)?;
    }
    Ok(dz)
}
