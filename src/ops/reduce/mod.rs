//! sum / mean over axes, and the pair sum_to ↔ broadcast_to that broadcasting
//! ops use in their backward.
//!
//! Backward: sum → broadcast g back over the summed axes; broadcast_to → sum g
//! over the broadcast axes; mean = sum · 1/count.

pub mod cpu;
pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, arg_err, shape_err};
use crate::ops::binary::mul_scalar;
use crate::ops::layout::reshape;
use crate::tensor::{Shape, Storage, Tensor, cpu_f32_storage};

/// `shape` with the dims of `axes` set to 1 (axes validated).
fn keepdim_shape(op: &'static str, shape: &Shape, axes: &[usize]) -> Result<Shape> {
    let mut dims = shape.dims().to_vec();
    for &a in axes {
        if a >= dims.len() {
            return arg_err(op, format!("axis {a} out of range for shape {shape}"));
        }
        dims[a] = 1;
    }
    Ok(Shape::new(dims))
}

/// Sum into `keep`, a shape of the same rank whose dims equal x's or are 1.
fn sum_keepdim(x: &Tensor, keep: Shape) -> Result<Tensor> {
    let storage = match x.device() {
        Device::Cpu => cpu_f32_storage(cpu::sum_keepdim(x.storage().cpu_f32("sum")?, x.shape(), &keep)),
        Device::Cuda(_) => Storage::Cuda(cuda::sum_keepdim(x.storage().cuda("sum")?, x.shape(), &keep)?),
    };
    Ok(Tensor::from_op(storage, keep, |_| {
        let in_shape = x.shape().clone();
        Node::new("sum", vec![x.clone()], move |g| Ok(vec![Some(broadcast_to(g, &in_shape)?)]))
    }))
}

/// Sum over `axes`; with `keepdim` the summed dims stay as 1.
pub fn sum(x: &Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("sum");
    let keep = keepdim_shape("sum", x.shape(), axes)?;
    let summed = sum_keepdim(x, keep)?;
    if keepdim {
        return Ok(summed);
    }
    let dims: Vec<usize> = (0..x.rank()).filter(|d| !axes.contains(d)).map(|d| x.dims()[d]).collect();
    reshape(&summed, dims)
}

/// Mean over `axes`.
pub fn mean(x: &Tensor, axes: &[usize], keepdim: bool) -> Result<Tensor> {
    let count: usize = axes.iter().filter(|&&a| a < x.rank()).map(|&a| x.dims()[a]).product();
    mul_scalar(&sum(x, axes, keepdim)?, 1.0 / count.max(1) as f32)
}

/// Sum of all elements, as a scalar (shape []).
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    let axes: Vec<usize> = (0..x.rank()).collect();
    sum(x, &axes, false)
}

/// Mean of all elements, as a scalar.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    mul_scalar(&sum_all(x)?, 1.0 / x.numel().max(1) as f32)
}

/// Sum `x` down to `target`, a shape `x` is a broadcast of.
pub fn sum_to(x: &Tensor, target: &Shape) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("sum_to");
    if x.shape() == target {
        return Ok(x.clone());
    }
    if x.shape().rank() < target.rank() || target.broadcast(x.shape()).as_ref() != Some(x.shape()) {
        return shape_err("sum_to", format!("{} is not a broadcast of {}", x.shape(), target));
    }
    let extra = x.rank() - target.rank();
    let mut keep = vec![1; extra];
    keep.extend_from_slice(target.dims());
    let summed = sum_keepdim(x, Shape::new(keep))?;
    reshape(&summed, target.dims().to_vec())
}

/// Repeat `x` along broadcast axes to `target`.
pub fn broadcast_to(x: &Tensor, target: &Shape) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("broadcast_to");
    if x.shape() == target {
        return Ok(x.clone());
    }
    if x.shape().broadcast(target).as_ref() != Some(target) {
        return shape_err("broadcast_to", format!("{} does not broadcast to {}", x.shape(), target));
    }
    let extra = target.rank() - x.rank();
    let mut from = vec![1; extra];
    from.extend_from_slice(x.dims());
    let from = Shape::new(from);
    let storage = match x.device() {
        Device::Cpu => cpu_f32_storage(cpu::broadcast(x.storage().cpu_f32("broadcast_to")?, &from, target)),
        Device::Cuda(_) => Storage::Cuda(cuda::broadcast(x.storage().cuda("broadcast_to")?, &from, target)?),
    };
    Ok(Tensor::from_op(storage, target.clone(), |_| {
        let in_shape = x.shape().clone();
        Node::new("broadcast_to", vec![x.clone()], move |g| Ok(vec![Some(sum_to(g, &in_shape)?)]))
    }))
}
