//! Sinusoidal timestep embedding as diffusers' `get_timestep_embedding`
//! (forward only: timesteps carry no gradient).
//!
//!   half = dim/2;  f_i = exp(−ln(max_period)·i / (half − freq_shift)),  i < half
//!   emb = [sin(t·f), cos(t·f)]  (or [cos, sin] with flip_sin_to_cos); odd dim: one zero pad.
//!
//! And diffusers' `GaussianFourierProjection` (log=True), the "fourier" time
//! embedding of score-SDE UNets whose timesteps are noise levels σ:
//!
//!   p_j = ln(σ)·W_j·2·π  (in that f32 order, π rounded to f32);  emb = [sin p, cos p] (or [cos, sin]).

pub mod cuda;

use crate::device::Device;
use crate::error::{Result, arg_err, shape_err};
use crate::tensor::{Shape, Storage, Tensor, cpu_f32_storage};

/// [N] timesteps → [N, dim] embeddings, computed in f32 in diffusers' order of operations.
pub fn timestep_embedding(t: &Tensor, dim: usize, flip_sin_to_cos: bool, freq_shift: f32, max_period: f32) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("timestep_embedding");
    if t.rank() != 1 {
        return shape_err("timestep_embedding", format!("timesteps must be 1-D, got {}", t.shape()));
    }
    let half = dim / 2;
    if half == 0 || half as f32 - freq_shift == 0.0 {
        return arg_err("timestep_embedding", format!("dim {dim} with freq_shift {freq_shift} leaves no frequencies"));
    }
    let storage = match t.device() {
        Device::Cpu => cpu_f32_storage(cpu_embedding(t.storage().cpu_f32("timestep_embedding")?, dim, flip_sin_to_cos, freq_shift, max_period)),
        Device::Cuda(_) => Storage::Cuda(cuda::timestep_embedding(
            t.storage().cuda("timestep_embedding")?,
            dim,
            flip_sin_to_cos,
            freq_shift,
            max_period,
        )?),
    };
    Ok(Tensor::from_storage(storage, Shape::new(vec![t.numel(), dim])))
}

/// [N] noise levels σ (> 0) and the projection's [D] weights → [N, 2D]
/// Gaussian Fourier features (no gradient: diffusers keeps W fixed).
pub fn fourier_embedding(sigma: &Tensor, weight: &Tensor, flip_sin_to_cos: bool) -> Result<Tensor> {
    const OP: &str = "fourier_embedding";
    let _nvtx = crate::device::nvtx::range(OP);
    if sigma.rank() != 1 || weight.rank() != 1 {
        return shape_err(OP, format!("noise levels {} and weights {} must be 1-D", sigma.shape(), weight.shape()));
    }
    let dim = weight.numel();
    let storage = match Tensor::common_device(OP, &[sigma, weight])? {
        Device::Cpu => cpu_f32_storage(cpu_fourier(sigma.storage().cpu_f32(OP)?, weight.storage().cpu_f32(OP)?, flip_sin_to_cos)),
        Device::Cuda(_) => Storage::Cuda(cuda::fourier_embedding(sigma.storage().cuda(OP)?, weight.storage().cuda(OP)?, flip_sin_to_cos)?),
    };
    Ok(Tensor::from_storage(storage, Shape::new(vec![sigma.numel(), 2 * dim])))
}

/// π as the f32 that PyTorch multiplies by.
pub(crate) const PI_F32: f32 = std::f32::consts::PI;

fn cpu_fourier(sigma: &[f32], weight: &[f32], flip: bool) -> Vec<f32> {
    let dim = weight.len();
    let mut out = vec![0.0; sigma.len() * 2 * dim];
    for (row, &s) in out.chunks_mut(2 * dim).zip(sigma) {
        let log_s = s.ln();
        for (j, &w) in weight.iter().enumerate() {
            let p = log_s * w * 2.0 * PI_F32;
            let (sin_slot, cos_slot) = if flip { (dim + j, j) } else { (j, dim + j) };
            row[sin_slot] = p.sin();
            row[cos_slot] = p.cos();
        }
    }
    out
}

/// `−ln(max_period)` computed in f64 and rounded to f32 (shared with the CUDA launch).
pub(crate) fn neg_log_period(max_period: f32) -> f32 {
    -(max_period as f64).ln() as f32
}

fn cpu_embedding(t: &[f32], dim: usize, flip: bool, freq_shift: f32, max_period: f32) -> Vec<f32> {
    let half = dim / 2;
    let neg_log_period = neg_log_period(max_period);
    let freqs: Vec<f32> = (0..half).map(|i| (neg_log_period * i as f32 / (half as f32 - freq_shift)).exp()).collect();
    let mut out = vec![0.0; t.len() * dim];
    for (row, &tv) in out.chunks_mut(dim).zip(t) {
        for (i, &f) in freqs.iter().enumerate() {
            let arg = tv * f;
            let (sin_slot, cos_slot) = if flip { (half + i, i) } else { (i, half + i) };
            row[sin_slot] = arg.sin();
            row[cos_slot] = arg.cos();
        }
    }
    out
}
