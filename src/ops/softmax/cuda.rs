//! CUDA launches of the row softmax in kernels/attention.cu (one warp per row).

use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;

/// Rows per 256-thread block (one warp each), as in kernels/attention.cu.
const ROWS_PER_BLOCK: usize = 8;
const THREADS: u32 = 256;

fn config(rows: usize) -> LaunchConfig {
    LaunchConfig::blocks(rows.div_ceil(ROWS_PER_BLOCK), THREADS)
}

/// y = softmax(x) over rows of length `cols`, written into `y` (which may be `x` itself).
pub fn forward_into(y: &CudaBuffer, x: &CudaBuffer, cols: usize) -> Result<()> {
    let n = x.len();
    if n == 0 || cols == 0 {
        return Ok(());
    }
    let rows = n / cols;
    let args = [y.arg(), x.arg(), Arg::I32(elems("softmax", rows)?), Arg::I32(elems("softmax", cols)?)];
    x.backend().launch("softmax_rows_forward", config(rows), &args)
}

/// y = exp(x − max) / Σ exp(x − max) for each row of length `cols`.
pub fn forward(x: &CudaBuffer, cols: usize) -> Result<CudaBuffer> {
    let y = x.backend().alloc(x.len())?;
    forward_into(&y, x, cols)?;
    Ok(y)
}

/// dx = scale·y ⊙ (dy − Σ_j dy_j·y_j), row-wise (scale = 1 for softmax itself).
pub fn backward_scaled(y: &CudaBuffer, dy: &CudaBuffer, cols: usize, scale: f32) -> Result<CudaBuffer> {
    let n = y.len();
    let dx = y.backend().alloc(n)?;
    if n == 0 || cols == 0 {
        return Ok(dx);
    }
    let rows = n / cols;
    let args = [dx.arg(), y.arg(), dy.arg(), Arg::F32(scale), Arg::I32(elems("softmax", rows)?), Arg::I32(elems("softmax", cols)?)];
    y.backend().launch("softmax_rows_backward", config(rows), &args)?;
    Ok(dx)
}

/// dx = y ⊙ (dy − Σ dy⊙y), row-wise.
pub fn backward(y: &CudaBuffer, dy: &CudaBuffer, cols: usize) -> Result<CudaBuffer> {
    backward_scaled(y, dy, cols, 1.0)
}
