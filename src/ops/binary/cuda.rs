//! CUDA launches of kernels/elementwise.cu: fill, binary ops with broadcasting, affine.

use super::BinaryOp;
use crate::device::cuda::{Arg, CudaBackend, CudaBuffer, LaunchConfig};
use crate::error::{Result, shape_err};
use crate::tensor::Shape;
use std::sync::Arc;

/// Most dims a strided kernel parameter struct carries (MD_MAX_DIMS).
pub const MAX_DIMS: usize = 6;
const THREADS: u32 = 256;

/// Mirrors `Broadcast2` in kernels/common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Broadcast2 {
    pub rank: i32,
    pub dims: [i32; MAX_DIMS],
    pub a_strides: [i32; MAX_DIMS],
    pub b_strides: [i32; MAX_DIMS],
}

impl Broadcast2 {
    /// Output `dims` read from `a` and `b` with the given element strides.
    pub fn new(op: &'static str, dims: &[usize], a_strides: &[usize], b_strides: &[usize]) -> Result<Broadcast2> {
        if dims.len() > MAX_DIMS {
            return shape_err(op, format!("CUDA kernels take at most {MAX_DIMS} dims, got {}", dims.len()));
        }
        let mut p = Broadcast2 { rank: dims.len() as i32, dims: [1; MAX_DIMS], a_strides: [0; MAX_DIMS], b_strides: [0; MAX_DIMS] };
        for d in 0..dims.len() {
            p.dims[d] = dims[d] as i32;
            p.a_strides[d] = a_strides[d] as i32;
            p.b_strides[d] = b_strides[d] as i32;
        }
        Ok(p)
    }
}

/// Element count as the kernels' int, refusing tensors beyond 2^31 − 1 elements.
pub fn elems(op: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).or_else(|_| shape_err(op, format!("{n} elements exceed the CUDA kernels' 2^31 limit")))
}

/// A buffer of `n` copies of `value`.
pub fn fill(backend: &Arc<CudaBackend>, n: usize, value: f32) -> Result<CudaBuffer> {
    let out = backend.alloc(n)?;
    if n > 0 {
        backend.launch("fill_f32", LaunchConfig::for_elems(n, THREADS), &[out.arg(), Arg::F32(value), Arg::I32(elems("fill", n)?)])?;
    }
    Ok(out)
}

pub fn binary(op: BinaryOp, a: &CudaBuffer, a_shape: &Shape, b: &CudaBuffer, b_shape: &Shape, out_shape: &Shape) -> Result<CudaBuffer> {
    let backend = a.backend();
    let n = out_shape.numel();
    let out = backend.alloc(n)?;
    if n == 0 {
        return Ok(out);
    }
    let count = Arg::I32(elems("binary", n)?);
    let cfg = LaunchConfig::for_elems(n, THREADS);
    if a_shape == b_shape {
        backend.launch("binary_same", cfg, &[out.arg(), a.arg(), b.arg(), Arg::I32(op as i32), count])?;
    } else {
        let p = Broadcast2::new("binary", out_shape.dims(), &a_shape.broadcast_strides(out_shape), &b_shape.broadcast_strides(out_shape))?;
        backend.launch("binary_broadcast", cfg, &[out.arg(), a.arg(), b.arg(), Arg::I32(op as i32), Arg::pod(&p), count])?;
    }
    Ok(out)
}

pub fn affine(x: &CudaBuffer, scale: f32, shift: f32) -> Result<CudaBuffer> {
    let backend = x.backend();
    let n = x.len();
    let out = backend.alloc(n)?;
    if n > 0 {
        let args = [out.arg(), x.arg(), Arg::F32(scale), Arg::F32(shift), Arg::I32(elems("affine", n)?)];
        backend.launch("affine_f32", LaunchConfig::for_elems(n, THREADS), &args)?;
    }
    Ok(out)
}
