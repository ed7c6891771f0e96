//! CUDA launch of kernels/optim.cu: the AdamW step in place on device buffers.

use super::adamw_math::AdamWHyper;
use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::{Result, shape_err};
use crate::ops::binary::cuda::elems;

const THREADS: u32 = 256;

/// Mirrors `AdamWScalars` in kernels/optim.cu: the step's scalar factors,
/// computed in f64 and rounded to f32 exactly as `adamw_math::adamw_step` does.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamWScalars {
    pub decay: f32,
    pub weight: f32,
    pub b2: f32,
    pub c2: f32,
    pub bc2_sqrt: f32,
    pub neg_step: f32,
    pub eps: f32,
    pub n: i32,
}

impl AdamWScalars {
    /// The factors of step `t` (1-based) over `n` elements; the same host
    /// arithmetic, in the same order, as `adamw_math::adamw_step`.
    pub fn new(h: AdamWHyper, t: u64, n: i32) -> AdamWScalars {
        let lr = h.lr as f64;
        let beta1 = h.beta1 as f64;
        let beta2 = h.beta2 as f64;
        let step = t as f64;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let step_size = lr / bias_correction1;
        AdamWScalars {
            decay: (1.0 - lr * h.weight_decay as f64) as f32,
            weight: (1.0 - beta1) as f32,
            b2: h.beta2,
            c2: (1.0 - beta2) as f32,
            bc2_sqrt: bias_correction2.sqrt() as f32,
            neg_step: (-step_size) as f32,
            eps: h.eps,
            n,
        }
    }
}

/// One AdamW step (`t` 1-based) of `param` in place, with moments `exp_avg`,
/// `exp_avg_sq` updated in place, all on one device.
pub fn adamw_step(param: &CudaBuffer, grad: &CudaBuffer, exp_avg: &CudaBuffer, exp_avg_sq: &CudaBuffer, t: u64, h: AdamWHyper) -> Result<()> {
    let n = param.len();
    if grad.len() != n || exp_avg.len() != n || exp_avg_sq.len() != n {
        return shape_err("adamw", format!("buffers of {n}, {}, {}, {} elements", grad.len(), exp_avg.len(), exp_avg_sq.len()));
    }
    if n == 0 {
        return Ok(());
    }
    let scalars = AdamWScalars::new(h, t, elems("adamw", n)?);
    let args = [param.arg(), grad.arg(), exp_avg.arg(), exp_avg_sq.arg(), Arg::pod(&scalars)];
    param.backend().launch("adamw_step_f32", LaunchConfig::for_elems(n, THREADS), &args)
}
