//! CUDA launches of kernels/reduce.cu (sums) and the broadcast gather.

use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;
use crate::ops::layout::cuda::{Strided1, strided_copy};
use crate::tensor::Shape;

/// Mirrors `ReduceParams` in kernels/reduce.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ReduceParams {
    pub kept: Strided1,
    pub reduced: Strided1,
    pub reduce_count: i32,
}

/// Sum `x` (shape `in_shape`) into `keep_shape` (same rank, dims equal or 1).
pub fn sum_keepdim(x: &CudaBuffer, in_shape: &Shape, keep_shape: &Shape) -> Result<CudaBuffer> {
    let strides = in_shape.strides();
    let (mut kept_dims, mut kept_strides, mut red_dims, mut red_strides) = (vec![], vec![], vec![], vec![]);
    for d in 0..in_shape.rank() {
        if keep_shape.dims()[d] == in_shape.dims()[d] {
            kept_dims.push(in_shape.dims()[d]);
            kept_strides.push(strides[d]);
        } else {
            red_dims.push(in_shape.dims()[d]);
            red_strides.push(strides[d]);
        }
    }
    let out_count = keep_shape.numel();
    let reduce_count: usize = red_dims.iter().product();
    let out = x.backend().alloc(out_count)?;
    if out_count == 0 {
        return Ok(out);
    }
    let p = ReduceParams {
        kept: Strided1::new("sum", &kept_dims, &kept_strides)?,
        reduced: Strided1::new("sum", &red_dims, &red_strides)?,
        reduce_count: elems("sum", reduce_count)?,
    };
    let cfg = LaunchConfig::blocks(out_count.min(65_535), 256);
    x.backend().launch("reduce_sum", cfg, &[out.arg(), x.arg(), Arg::pod(&p), Arg::I32(elems("sum", out_count)?)])?;
    Ok(out)
}

/// Repeat `x` (shape `from`, same rank as `to`, dims equal or 1) to `to`.
pub fn broadcast(x: &CudaBuffer, from: &Shape, to: &Shape) -> Result<CudaBuffer> {
    strided_copy("broadcast_to", x, to.dims(), &from.broadcast_strides(to))
}
