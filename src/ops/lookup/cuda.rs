//! CUDA launches of kernels/lookup.cu: the embedding lookup and its table
//! gradient, one thread per output element.

use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;

const THREADS: u32 = 256;

/// [N, dim] rows of the [rows, dim] table named by the N f32 indices.
pub fn lookup(table: &CudaBuffer, indices: &CudaBuffer, rows: usize, dim: usize) -> Result<CudaBuffer> {
    let n = indices.len();
    let total = elems("embedding_lookup", n * dim)?;
    let out = table.backend().alloc(n * dim)?;
    if total > 0 {
        let args = [out.arg(), table.arg(), indices.arg(), Arg::I32(n as i32), Arg::I32(elems("embedding_lookup", rows)?), Arg::I32(dim as i32)];
        table.backend().launch("embedding_lookup_f32", LaunchConfig::for_elems(n * dim, THREADS), &args)?;
    }
    Ok(out)
}

/// The [rows, dim] table gradient from dy [N, dim].
pub fn lookup_backward(dy: &CudaBuffer, indices: &CudaBuffer, rows: usize, dim: usize) -> Result<CudaBuffer> {
    let n = indices.len();
    let total = elems("embedding_lookup_backward", rows * dim)?;
    let out = dy.backend().alloc(rows * dim)?;
    if total > 0 {
        let args = [out.arg(), dy.arg(), indices.arg(), Arg::I32(elems("embedding_lookup_backward", n)?), Arg::I32(rows as i32), Arg::I32(dim as i32)];
        dy.backend().launch("embedding_lookup_backward_f32", LaunchConfig::for_elems(rows * dim, THREADS), &args)?;
    }
    Ok(out)
}
