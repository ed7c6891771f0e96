//! CUDA launches of kernels/reduce.cu (sums) and the broadcast gather.

use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;
use crate::ops::layout::cuda::{Strided1, strided_copy};
use crate::tensor::{DType, Shape};

/// Mirrors `ReduceParams` in kernels/reduce.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ReduceParams {
    pub kept: Strided1,
    pub reduced: Strided1,
    pub reduce_count: i32,
}

/// Sum `x` (shape `in_shape`) into `keep_shape` (same rank, dims equal or 1).
/// When the last axes are summed, their contiguous runs are summed first
/// (`reduce_sum_rows`, at memory speed) and what is left of the reduction
/// runs on those row sums.
pub fn sum_keepdim(x: &CudaBuffer, in_shape: &Shape, keep_shape: &Shape) -> Result<CudaBuffer> {
    let (dims, keep) = (in_shape.dims(), keep_shape.dims());
    // the trailing axes that are summed (or of size 1): one contiguous run each row
    let mut tail = dims.len();
    while tail > 0 && (keep[tail - 1] != dims[tail - 1] || dims[tail - 1] == 1) {
        tail -= 1;
    }
    let run: usize = dims[tail..].iter().product();
    let rows = in_shape.numel().checked_div(run).unwrap_or(0);
    // a warp per row: worth it for many rows or short ones (few long sums
    // keep the split path, which spreads each over many blocks)
    if run >= 2 && rows > 0 && (rows >= ROWS_MIN || run <= ROWS_SHORT_RUN) {
        let sums = x.backend().alloc(rows)?;
        let cfg = LaunchConfig::blocks(rows.div_ceil(8), 256);
        x.backend().launch("reduce_sum_rows", cfg, &[sums.arg(), x.arg(), Arg::I32(elems("sum", rows)?), Arg::I32(elems("sum", run)?)])?;
        let (head, head_keep) = (Shape::new(dims[..tail].to_vec()), Shape::new(keep[..tail].to_vec()));
        return if head == head_keep { Ok(sums) } else { sum_generic(&sums, &head, &head_keep) };
    }
    sum_generic(x, in_shape, keep_shape)
}

/// Rows (warps) from which `reduce_sum_rows` sums trailing runs of any length.
const ROWS_MIN: usize = 256;
/// Runs short enough for one warp, however few rows.
const ROWS_SHORT_RUN: usize = 4096;

/// [`sum_keepdim`] by the strided kernels: one block (or several, split) per output.
fn sum_generic(x: &CudaBuffer, in_shape: &Shape, keep_shape: &Shape) -> Result<CudaBuffer> {
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
    let (splits, chunk) = sum_splits(out_count, reduce_count);
    let backend = x.backend();
    if splits == 1 {
        let cfg = LaunchConfig::blocks(out_count.min(65_535), 256);
        backend.launch("reduce_sum", cfg, &[out.arg(), x.arg(), Arg::pod(&p), Arg::I32(elems("sum", out_count)?)])?;
        return Ok(out);
    }
    // partial sums in f64 (two f32 slots each), then their ordered sum
    let part = backend.alloc(2 * out_count * splits)?;
    let (n, s) = (elems("sum", out_count)?, elems("sum", splits)?);
    let cfg = LaunchConfig::blocks((out_count * splits).min(65_535), 256);
    backend.launch("reduce_sum_split", cfg, &[part.arg(), x.arg(), Arg::pod(&p), Arg::I32(n), Arg::I32(s), Arg::I32(elems("sum", chunk)?)])?;
    backend.launch("reduce_sum_finish", LaunchConfig::for_elems(out_count, 256), &[out.arg(), part.arg(), Arg::I32(n), Arg::I32(s)])?;
    Ok(out)
}

/// Split each of `out_count` sums of `reduce_count` terms into chunks when
/// the outputs alone would give fewer blocks than [`SPLIT_TARGET_BLOCKS`] and
/// every chunk keeps ≥ [`SPLIT_MIN_CHUNK`] terms: (splits, chunk), (1, count)
/// when not split. Fixed numbers: the same result on every GPU.
pub fn sum_splits(out_count: usize, reduce_count: usize) -> (usize, usize) {
    const SPLIT_TARGET_BLOCKS: usize = 528;
    const SPLIT_MIN_CHUNK: usize = 4096;
    if out_count >= SPLIT_TARGET_BLOCKS || reduce_count < 2 * SPLIT_MIN_CHUNK {
        return (1, reduce_count);
    }
    let want = SPLIT_TARGET_BLOCKS.div_ceil(out_count).min(reduce_count / SPLIT_MIN_CHUNK).max(1);
    let chunk = reduce_count.div_ceil(want);
    (reduce_count.div_ceil(chunk), chunk)
}

/// Repeat `x` (shape `from`, same rank as `to`, dims equal or 1) to `to`.
pub fn broadcast(x: &CudaBuffer, from: &Shape, to: &Shape) -> Result<CudaBuffer> {
    let n = to.numel();
    if x.len() == 1 && x.dtype() == DType::F32 && n > 0 {
        // one value (a sum's or a mean's gradient): a fill from the device value
        let out = x.backend().alloc(n)?;
        let vec4 = out.ptr().is_multiple_of(16);
        let cfg = LaunchConfig::for_elems(if vec4 { n.div_ceil(4) } else { n }, 256);
        let args = [out.arg(), x.arg(), Arg::I32(elems("broadcast_to", n)?), Arg::I32(i32::from(vec4))];
        x.backend().launch("broadcast_value_f32", cfg, &args)?;
        return Ok(out);
    }
    strided_copy("broadcast_to", x, to.dims(), &from.broadcast_strides(to))
}
