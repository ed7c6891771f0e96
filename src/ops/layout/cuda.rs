//! CUDA launches of kernels/layout.cu: strided gathers and slab copies.

use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::{Result, shape_err};
use crate::ops::binary::cuda::{MAX_DIMS, elems};
use crate::tensor::Shape;

const THREADS: u32 = 256;
/// Most outer slabs a `slab_copy` grid spans in y (each block row copies
/// ⌈outer / SLAB_ROWS⌉ of them).
const SLAB_ROWS: usize = 1024;

/// Mirrors `Strided1` in kernels/common.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Strided1 {
    pub rank: i32,
    pub dims: [i32; MAX_DIMS],
    pub strides: [i32; MAX_DIMS],
}

impl Strided1 {
    pub fn new(op: &'static str, dims: &[usize], strides: &[usize]) -> Result<Strided1> {
        if dims.len() > MAX_DIMS {
            return shape_err(op, format!("CUDA kernels take at most {MAX_DIMS} dims, got {}", dims.len()));
        }
        let mut p = Strided1 { rank: dims.len() as i32, dims: [1; MAX_DIMS], strides: [0; MAX_DIMS] };
        for d in 0..dims.len() {
            p.dims[d] = dims[d] as i32;
            p.strides[d] = strides[d] as i32;
        }
        Ok(p)
    }
}

/// out (row-major over `dims`) = x read with `strides`.
pub fn strided_copy(op: &'static str, x: &CudaBuffer, dims: &[usize], strides: &[usize]) -> Result<CudaBuffer> {
    let n: usize = dims.iter().product();
    let out = x.backend().alloc(n)?;
    if n > 0 {
        let p = Strided1::new(op, dims, strides)?;
        x.backend().launch("strided_copy", LaunchConfig::for_elems(n, THREADS), &[out.arg(), x.arg(), Arg::pod(&p), Arg::I32(elems(op, n)?)])?;
    }
    Ok(out)
}

pub fn permute(x: &CudaBuffer, shape: &Shape, perm: &[usize]) -> Result<CudaBuffer> {
    let strides = shape.strides();
    let dims: Vec<usize> = perm.iter().map(|&p| shape.dims()[p]).collect();
    let read: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    strided_copy("permute", x, &dims, &read)
}

/// Tensors as [outer, axis, inner]: copy `len` axis entries from `in_start` of
/// `x` (axis length `in_axis`) to `out_start` of `out` (axis length `out_axis`):
/// per outer index one contiguous run of len·inner values (kernels/layout.cu).
#[allow(clippy::too_many_arguments)]
pub fn slab_copy(out: &CudaBuffer, x: &CudaBuffer, outer: usize, len: usize, inner: usize, in_axis: usize, in_start: usize, out_axis: usize, out_start: usize) -> Result<()> {
    let run = len * inner;
    if outer * run == 0 {
        return Ok(());
    }
    elems("slab_copy", outer * in_axis * inner)?;
    elems("slab_copy", outer * out_axis * inner)?;
    let (in_base, in_step, out_base, out_step) = (in_start * inner, in_axis * inner, out_start * inner, out_axis * inner);
    let vec4 = [run, in_base, in_step, out_base, out_step].iter().all(|v| v % 4 == 0) && x.ptr().is_multiple_of(16) && out.ptr().is_multiple_of(16);
    let per_thread = if vec4 { 4 } else { 1 };
    // a run's threads in x, the outer index in y (past SLAB_ROWS a block
    // takes several, as the kernel's grid-stride loops do)
    let blocks_x = run.div_ceil(per_thread * THREADS as usize).min(1 << 16);
    let cfg = LaunchConfig::grid([blocks_x, outer.min(SLAB_ROWS), 1], THREADS);
    let i = |v: usize| Ok::<Arg, crate::Error>(Arg::I32(elems("slab_copy", v)?));
    let args = [out.arg(), x.arg(), i(outer)?, i(run)?, i(in_base)?, i(in_step)?, i(out_base)?, i(out_step)?, Arg::I32(vec4 as i32)];
    x.backend().launch("slab_copy", cfg, &args)
}

pub fn concat(parts: &[&CudaBuffer], lens: &[usize], outer: usize, inner: usize) -> Result<CudaBuffer> {
    let total: usize = lens.iter().sum();
    let out = parts[0].backend().alloc(outer * total * inner)?;
    let mut start = 0;
    for (part, &len) in parts.iter().zip(lens) {
        slab_copy(&out, part, outer, len, inner, len, 0, total, start)?;
        start += len;
    }
    Ok(out)
}

pub fn narrow(x: &CudaBuffer, outer: usize, axis_len: usize, inner: usize, start: usize, len: usize) -> Result<CudaBuffer> {
    let out = x.backend().alloc(outer * len * inner)?;
    slab_copy(&out, x, outer, len, inner, axis_len, start, len, 0)?;
    Ok(out)
}

/// out[r] = x[rows[r]] for rows of `row_len` elements.
pub fn gather_rows(x: &CudaBuffer, rows: &[usize], row_len: usize) -> Result<CudaBuffer> {
    let backend = x.backend();
    let n = rows.len() * row_len;
    let out = backend.alloc(n)?;
    if n > 0 {
        let as_i32: Vec<f32> = rows.iter().map(|&r| f32::from_bits(r as u32)).collect();
        let idx = backend.upload(&as_i32)?;
        let args = [out.arg(), x.arg(), idx.arg(), Arg::I32(elems("gather_rows", row_len)?), Arg::I32(elems("gather_rows", n)?)];
        backend.launch("gather_rows", LaunchConfig::for_elems(n, THREADS), &args)?;
    }
    Ok(out)
}
