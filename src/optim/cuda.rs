//! CUDA launch of kernels/optim.cu: the AdamW steps of many parameters in place
//! on device buffers, one launch, after the gradients' global norm and
//! clipping factor (two small launches).

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

/// Elements a block of `adamw_step_multi_f32` updates (ADAMW_CHUNK).
const CHUNK: usize = 2048;

/// Mirrors `AdamWSegment` in kernels/optim.cu: one parameter of a multi-tensor step.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamWSegment {
    param: u64,
    grad: u64,
    exp_avg: u64,
    exp_avg_sq: u64,
    s: AdamWScalars,
    first_block: i32,
    pad: i32,
}

/// The AdamW steps of many parameters on one device, gathered for one launch.
#[derive(Default)]
pub struct AdamWBatch {
    segments: Vec<AdamWSegment>,
    backend: Option<std::sync::Arc<crate::device::cuda::CudaBackend>>,
    blocks: usize,
}

impl AdamWBatch {
    /// Adds one parameter's step `t` (1-based); its buffers must stay alive
    /// until [`AdamWBatch::launch`] has queued the kernel.
    pub fn push(&mut self, param: &CudaBuffer, grad: &CudaBuffer, exp_avg: &CudaBuffer, exp_avg_sq: &CudaBuffer, t: u64, h: AdamWHyper) -> Result<()> {
        let n = param.len();
        if grad.len() != n || exp_avg.len() != n || exp_avg_sq.len() != n {
            return shape_err("adamw", format!("buffers of {n}, {}, {}, {} elements", grad.len(), exp_avg.len(), exp_avg_sq.len()));
        }
        if n == 0 {
            return Ok(());
        }
        let first_block = elems("adamw", self.blocks)?;
        self.segments.push(AdamWSegment {
            param: param.ptr(),
            grad: grad.ptr(),
            exp_avg: exp_avg.ptr(),
            exp_avg_sq: exp_avg_sq.ptr(),
            s: AdamWScalars::new(h, t, elems("adamw", n)?),
            first_block,
            pad: 0,
        });
        self.blocks += n.div_ceil(CHUNK);
        self.backend.get_or_insert_with(|| param.backend().clone());
        Ok(())
    }

    /// The gradients' global L2 norm and clipping factor (`max_norm` ≤ 0: no
    /// clipping), then one launch of `adamw_step_multi_f32` for every
    /// parameter pushed (the segment table uploaded first, in stream order).
    /// Returns the device's [clip factor, ‖g‖], or None when nothing was pushed.
    pub fn launch(self, max_norm: f32) -> Result<Option<CudaBuffer>> {
        let Some(backend) = self.backend else { return Ok(None) };
        let table = backend.upload(bytemuck::cast_slice(&self.segments))?;
        let (blocks, count) = (elems("adamw", self.blocks)?, Arg::I32(elems("adamw", self.segments.len())?));
        let grid = LaunchConfig::blocks(blocks as usize, THREADS);
        let partials = crate::metrics::cuda::alloc_f64(&backend, self.blocks)?;
        backend.launch("grad_sumsq_multi_f32", grid, &[table.arg(), count.clone(), partials.arg()])?;
        let clip = backend.alloc(2)?;
        backend.launch("grad_clip_factor", LaunchConfig::blocks(1, THREADS), &[partials.arg(), Arg::I32(blocks), Arg::F32(max_norm), clip.arg()])?;
        backend.launch("adamw_step_multi_f32", grid, &[table.arg(), count, clip.arg()])?;
        Ok(Some(clip))
    }
}
