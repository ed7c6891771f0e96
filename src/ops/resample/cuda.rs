//! CUDA launches of kernels/resample.cu: nearest 2× upsampling and 2×2
//! ceil-mode average pooling, forward and backward, on `planes` = N·C images
//! of H×W (the H, W of the op's input).

use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;
use crate::tensor::DType;

const THREADS: u32 = 256;

/// Launches `kernel(out, input, planes, h, w)` with one thread per element of
/// an output of `out_len` elements.
fn launch(kernel: &'static str, op: &'static str, input: &CudaBuffer, out_len: usize, planes: usize, h: usize, w: usize) -> Result<CudaBuffer> {
    launch_as(kernel, op, input, out_len, planes, h, w, DType::F32)
}

/// `launch` with the output stored as `store`.
#[allow(clippy::too_many_arguments)]
fn launch_as(kernel: &'static str, op: &'static str, input: &CudaBuffer, out_len: usize, planes: usize, h: usize, w: usize, store: DType) -> Result<CudaBuffer> {
    let out = input.backend().alloc_as(out_len, store)?;
    launch_into(out, |_| (kernel, out_len), op, input, planes, h, w)
}

/// Launches into `out` the kernel `pick(&out)` names, with a thread for each
/// of the work items it counts: `kernel(out, input, planes, h, w)`.
fn launch_into(
    out: CudaBuffer,
    pick: impl FnOnce(&CudaBuffer) -> (&'static str, usize),
    op: &'static str,
    input: &CudaBuffer,
    planes: usize,
    h: usize,
    w: usize,
) -> Result<CudaBuffer> {
    if out.is_empty() {
        return Ok(out);
    }
    // the largest index a kernel forms is below max(input, output) length
    elems(op, input.len().max(out.len()))?;
    let (kernel, items) = pick(&out);
    let args = [out.arg(), input.arg(), Arg::I32(elems(op, planes)?), Arg::I32(elems(op, h)?), Arg::I32(elems(op, w)?)];
    input.backend().launch(kernel, LaunchConfig::for_elems(items, THREADS), &args)?;
    Ok(out)
}

/// y [planes, 2H, 2W]: y[2i + a, 2j + b] = x[i, j]. At f32 with W even
/// (and x, y aligned) a thread writes the 2×4 block of a pair of x's values.
pub fn upsample_nearest2x(x: &CudaBuffer, planes: usize, h: usize, w: usize, store: DType) -> Result<CudaBuffer> {
    let len = planes * 4 * h * w;
    let pick = |y: &CudaBuffer| match store {
        DType::F32 if w.is_multiple_of(2) && x.ptr().is_multiple_of(8) && y.ptr().is_multiple_of(16) => ("upsample_nearest2x_pairs_f32", len / 8),
        DType::F32 => ("upsample_nearest2x_f32", len),
        _ => ("upsample_nearest2x_bf16", len),
    };
    launch_into(x.backend().alloc_as(len, store)?, pick, "upsample_nearest2x", x, planes, h, w)
}

/// dX [planes, H, W] = the sum of each 2×2 block of dY [planes, 2H, 2W].
pub fn upsample_nearest2x_backward(dy: &CudaBuffer, planes: usize, h: usize, w: usize) -> Result<CudaBuffer> {
    launch("upsample_nearest2x_backward_f32", "upsample_nearest2x", dy, planes * h * w, planes, h, w)
}

/// y [planes, ⌈H/2⌉, ⌈W/2⌉]: the mean of each window's in-bounds elements.
pub fn avg_pool2x2(x: &CudaBuffer, planes: usize, h: usize, w: usize) -> Result<CudaBuffer> {
    launch("avg_pool2x2_f32", "avg_pool2x2", x, planes * h.div_ceil(2) * w.div_ceil(2), planes, h, w)
}

/// dX [planes, H, W]: each pixel gets its window's dY divided by the window's count.
pub fn avg_pool2x2_backward(dy: &CudaBuffer, planes: usize, h: usize, w: usize) -> Result<CudaBuffer> {
    launch("avg_pool2x2_backward_f32", "avg_pool2x2", dy, planes * h * w, planes, h, w)
}

/// FIR 2× resampling (`up`) or its backward (`backward`) on [planes, H, W]
/// inputs of the forward: kernels `fir2x_f32` / `fir2x_backward_f32`.
pub fn fir2x(input: &CudaBuffer, planes: usize, h: usize, w: usize, up: bool, backward: bool) -> Result<CudaBuffer> {
    const OP: &str = "fir2x";
    let (oh, ow) = (super::cpu::fir2x_len(h, up), super::cpu::fir2x_len(w, up));
    let out_len = planes * if backward { h * w } else { oh * ow };
    let out = input.backend().alloc(out_len)?;
    if out_len == 0 {
        return Ok(out);
    }
    elems(OP, input.len().max(out_len))?;
    let kernel = if backward { "fir2x_backward_f32" } else { "fir2x_f32" };
    let args = [out.arg(), input.arg(), Arg::I32(elems(OP, planes)?), Arg::I32(elems(OP, h)?), Arg::I32(elems(OP, w)?), Arg::I32(up as i32)];
    input.backend().launch(kernel, LaunchConfig::for_elems(out_len, THREADS), &args)?;
    Ok(out)
}
