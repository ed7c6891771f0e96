//! CUDA launch of kernels/embedding.cu: the sinusoidal timestep embedding,
//! and the Gaussian Fourier features, one thread per output element, in the
//! CPU twins' f32 order of operations.

use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;

const THREADS: u32 = 256;

/// [N] timesteps → [N, dim] embeddings (arguments checked by the caller:
/// dim/2 > 0 and dim/2 − freq_shift ≠ 0).
pub fn timestep_embedding(t: &CudaBuffer, dim: usize, flip_sin_to_cos: bool, freq_shift: f32, max_period: f32) -> Result<CudaBuffer> {
    let backend = t.backend();
    let rows = t.len();
    let n = rows * dim;
    elems("timestep_embedding", n)?; // the kernel indexes [N, dim] with int
    let out = backend.alloc(n)?;
    if n == 0 {
        return Ok(out);
    }
    let half = dim / 2;
    let args = [
        out.arg(),
        t.arg(),
        Arg::I32(rows as i32),
        Arg::I32(dim as i32),
        Arg::I32(half as i32),
        Arg::I32(flip_sin_to_cos as i32),
        Arg::F32(super::neg_log_period(max_period)),
        Arg::F32(half as f32 - freq_shift),
    ];
    backend.launch("timestep_embedding_f32", LaunchConfig::for_elems(n, THREADS), &args)?;
    Ok(out)
}

/// [N] noise levels and [D] weights → [N, 2D] Gaussian Fourier features.
pub fn fourier_embedding(sigma: &CudaBuffer, weight: &CudaBuffer, flip_sin_to_cos: bool) -> Result<CudaBuffer> {
    let backend = sigma.backend();
    let (rows, dim) = (sigma.len(), weight.len());
    let n = elems("fourier_embedding", rows * 2 * dim)?;
    let out = backend.alloc(rows * 2 * dim)?;
    if n > 0 {
        let args = [
            out.arg(),
            sigma.arg(),
            weight.arg(),
            Arg::I32(rows as i32),
            Arg::I32(dim as i32),
            Arg::I32(flip_sin_to_cos as i32),
            Arg::F32(super::PI_F32),
        ];
        backend.launch("fourier_embedding_f32", LaunchConfig::for_elems(rows * 2 * dim, THREADS), &args)?;
    }
    Ok(out)
}
