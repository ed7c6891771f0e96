//! 2× resampling of NCHW images: nearest-neighbour upsampling and 2×2 average
//! pooling (PyTorch's `AvgPool2d(2, ceil_mode=True)`).
//!
//!   upsample: y[n, c, 2i + a, 2j + b] = x[n, c, i, j]        backward: dX[i, j] = Σ_{a,b} g[2i + a, 2j + b]
//!   avg_pool: y[i, j] = (1/|w_ij|) Σ_{(r,s) ∈ w_ij} x[r, s]    backward: dX[r, s] = g[r/2, s/2] / |w_{r/2, s/2}|
//! where w_ij is the in-bounds part of rows 2i..2i+2, cols 2j..2j+2 (so an odd
//! H or W gives edge windows of 2 and a corner window of 1 element).
//! And diffusers' FIR 2× resampling with the kernel (1, 3, 3, 1) (the
//! score-SDE Skip blocks'; per axis, zeros outside):
//!   fir down: y[o] = Σ_a k_a/8·x[2o + a − 1]                 fir up: y[o] = Σ_a k_a/4·x[(o + a − 2)/2], o + a even
//! each backward the adjoint (each input gathers the outputs that read it).

pub mod cpu;
pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, shape_err};
use crate::tensor::{CpuStorage, DType, Shape, Storage, Tensor, cpu_f32_storage};

/// (N·C, H, W) of a rank-4 input.
fn planes(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize)> {
    match *x.dims() {
        [n, c, h, w] => Ok((n * c, h, w)),
        _ => shape_err(op, format!("input must be [N, C, H, W], got {}", x.shape())),
    }
}

/// [N, C, H, W] → [N, C, 2H, 2W], each pixel repeated over a 2×2 block.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    upsample_nearest2x_stored(x, DType::F32)
}

/// `upsample_nearest2x` with the output stored as `store`: F32, or BF16 (the
/// values rounded) when only a bf16 convolution reads it — the UNet's
/// upsampler (`ops::precision::conv_input_storage`). The backward is the
/// same (it sums the incoming gradient).
pub fn upsample_nearest2x_stored(x: &Tensor, store: DType) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("upsample_nearest2x");
    const OP: &str = "upsample_nearest2x";
    let (pl, h, w) = planes(OP, x)?;
    let storage = match (x.device(), store) {
        (_, DType::F16) => return shape_err(OP, "f16 storage is not supported (f32 or bf16)".to_string()),
        (Device::Cpu, DType::F32) => cpu_f32_storage(cpu::upsample_nearest2x(x.storage().cpu_f32(OP)?, pl, h, w)),
        (Device::Cpu, _) => {
            let y = cpu::upsample_nearest2x(x.storage().cpu_f32(OP)?, pl, h, w);
            Storage::Cpu(CpuStorage::BF16(y.into_iter().map(half::bf16::from_f32).collect()))
        }
        (Device::Cuda(_), _) => Storage::Cuda(cuda::upsample_nearest2x(x.storage().cuda(OP)?, pl, h, w, store)?),
    };
    let d = x.dims();
    let out_shape = Shape::new(vec![d[0], d[1], 2 * h, 2 * w]);
    Ok(Tensor::from_op(storage, out_shape, |_| {
        let in_shape = x.shape().clone();
        Node::new(OP, vec![x.clone()], move |g| {
            let storage = match g.device() {
                Device::Cpu => cpu_f32_storage(cpu::upsample_nearest2x_backward(g.storage().cpu_f32(OP)?, pl, h, w)),
                Device::Cuda(_) => Storage::Cuda(cuda::upsample_nearest2x_backward(g.storage().cuda(OP)?, pl, h, w)?),
            };
            Ok(vec![Some(Tensor::from_storage(storage, in_shape.clone()))])
        })
    }))
}

/// [N, C, H, W] → [N, C, ceil(H/2), ceil(W/2)], the mean of each 2×2 window's
/// in-bounds elements.
pub fn avg_pool2x2(x: &Tensor) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("avg_pool2x2");
    const OP: &str = "avg_pool2x2";
    let (pl, h, w) = planes(OP, x)?;
    let storage = match x.device() {
        Device::Cpu => cpu_f32_storage(cpu::avg_pool2x2(x.storage().cpu_f32(OP)?, pl, h, w)),
        Device::Cuda(_) => Storage::Cuda(cuda::avg_pool2x2(x.storage().cuda(OP)?, pl, h, w)?),
    };
    let d = x.dims();
    let out_shape = Shape::new(vec![d[0], d[1], cpu::pooled(h), cpu::pooled(w)]);
    Ok(Tensor::from_op(storage, out_shape, |_| {
        let in_shape = x.shape().clone();
        Node::new(OP, vec![x.clone()], move |g| {
            let storage = match g.device() {
                Device::Cpu => cpu_f32_storage(cpu::avg_pool2x2_backward(g.storage().cpu_f32(OP)?, pl, h, w)),
                Device::Cuda(_) => Storage::Cuda(cuda::avg_pool2x2_backward(g.storage().cuda(OP)?, pl, h, w)?),
            };
            Ok(vec![Some(Tensor::from_storage(storage, in_shape.clone()))])
        })
    }))
}

/// diffusers' `downsample_2d(x, kernel=(1, 3, 3, 1))`: [N, C, H, W] →
/// [N, C, (H − 2)/2 + 1, (W − 2)/2 + 1] (H, W ≥ 2).
pub fn fir_downsample2x(x: &Tensor) -> Result<Tensor> {
    fir2x(x, false)
}

/// diffusers' `upsample_2d(x, kernel=(1, 3, 3, 1))`: [N, C, H, W] → [N, C, 2H, 2W].
pub fn fir_upsample2x(x: &Tensor) -> Result<Tensor> {
    fir2x(x, true)
}

fn fir2x(x: &Tensor, up: bool) -> Result<Tensor> {
    let op: &'static str = if up { "fir_upsample2x" } else { "fir_downsample2x" };
    let _nvtx = crate::device::nvtx::range(op);
    let (pl, h, w) = planes(op, x)?;
    if !up && (h < 2 || w < 2) {
        return shape_err(op, format!("a FIR 2× downsampling needs H and W of at least 2, got {}", x.shape()));
    }
    let storage = match x.device() {
        Device::Cpu => cpu_f32_storage(cpu::fir2x(x.storage().cpu_f32(op)?, pl, h, w, up)),
        Device::Cuda(_) => Storage::Cuda(cuda::fir2x(x.storage().cuda(op)?, pl, h, w, up, false)?),
    };
    let d = x.dims();
    let out_shape = Shape::new(vec![d[0], d[1], cpu::fir2x_len(h, up), cpu::fir2x_len(w, up)]);
    Ok(Tensor::from_op(storage, out_shape, |_| {
        let in_shape = x.shape().clone();
        Node::new(op, vec![x.clone()], move |g| {
            let storage = match g.device() {
                Device::Cpu => cpu_f32_storage(cpu::fir2x_backward(g.storage().cpu_f32(op)?, pl, h, w, up)),
                Device::Cuda(_) => Storage::Cuda(cuda::fir2x(g.storage().cuda(op)?, pl, h, w, up, true)?),
            };
            Ok(vec![Some(Tensor::from_storage(storage, in_shape.clone()))])
        })
    }))
}
