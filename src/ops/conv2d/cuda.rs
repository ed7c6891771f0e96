//! CUDA launches of kernels/conv2d.cu: implicit-GEMM convolution (forward,
//! input gradient, weight gradient with split K); the bias gradient through
//! the reduce kernel.
//!
//! Each GEMM kernel computes a 64×64 output tile per 256-thread block, so the
//! grid is (⌈N/64⌉, ⌈M/64⌉, splits) for the GEMM sizes M, N, K of
//! kernels/conv2d.cu.

use super::cpu::ConvGeom;
use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::{Result, shape_err};
use crate::ops::binary::cuda::elems;
use crate::ops::precision::Precision;
use crate::ops::reduce::cuda::sum_keepdim;
use crate::tensor::Shape;

/// Output tile edge of the GEMM kernels (BM = BN in kernels/conv2d.cu).
const TILE: usize = 64;
/// K slice of the GEMM kernels at f32 (BK words of one value; bf16 slices
/// are 32, two values a word: a multiple of this).
const K_SLICE: usize = 16;
/// Threads per GEMM block.
const GEMM_THREADS: u32 = 256;
/// Blocks the weight-gradient grid aims for: about two waves of an H100's 132 SMs.
const TARGET_BLOCKS: usize = 264;
/// Most K splits of the weight gradient (each adds an [OC, C·KH·KW] partial).
const MAX_SPLITS: usize = 64;
/// Fewest K values one split sums (two slices).
const MIN_SPLIT_K: usize = 2 * K_SLICE;

/// Mirrors `conv::Shape` in kernels/conv2d.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ConvShape {
    pub n: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub oc: i32,
    pub kh: i32,
    pub kw: i32,
    pub stride: i32,
    pub pad: i32,
    pub oh: i32,
    pub ow: i32,
}

impl ConvShape {
    /// The kernels' int geometry, refusing tensors whose element counts (the
    /// largest index the kernels form) exceed 2^31 − 1.
    pub fn new(g: &ConvGeom) -> Result<ConvShape> {
        const OP: &str = "conv2d";
        elems(OP, g.n * g.c * g.h * g.w)?;
        elems(OP, g.n * g.oc * g.oh * g.ow)?;
        elems(OP, g.oc * g.k())?;
        let i = |v: usize| elems(OP, v);
        Ok(ConvShape {
            n: i(g.n)?,
            c: i(g.c)?,
            h: i(g.h)?,
            w: i(g.w)?,
            oc: i(g.oc)?,
            kh: i(g.kh)?,
            kw: i(g.kw)?,
            stride: i(g.stride)?,
            pad: i(g.pad)?,
            oh: i(g.oh)?,
            ow: i(g.ow)?,
        })
    }
}

/// Grid of an M×N GEMM with `splits` K splits.
fn gemm_grid(m: usize, n: usize, splits: usize) -> LaunchConfig {
    LaunchConfig::grid([n.div_ceil(TILE), m.div_ceil(TILE), splits], GEMM_THREADS)
}

/// What the forward kernel adds as it stores (each may be absent): bias [OC],
/// sample_bias [N, OC], residual [N, OC, OH, OW].
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a CudaBuffer>,
    pub sample_bias: Option<&'a CudaBuffer>,
    pub residual: Option<&'a CudaBuffer>,
}

/// The three GEMM kernels at compute precision `prec`: (forward, input
/// gradient, weight gradient).
fn kernels(prec: Precision) -> (&'static str, &'static str, &'static str) {
    match prec {
        Precision::F32 => ("conv2d_forward_f32", "conv2d_backward_input_f32", "conv2d_backward_weight_f32"),
        Precision::Bf16 => ("conv2d_forward_bf16", "conv2d_backward_input_bf16", "conv2d_backward_weight_bf16"),
    }
}

/// y [N, OC, OH, OW] = conv(x [N, C, H, W], weight [OC, C, KH, KW]) + the
/// epilogue, the product at precision `prec`.
pub fn forward(x: &CudaBuffer, weight: &CudaBuffer, epi: &Epilogue, g: &ConvGeom, prec: Precision) -> Result<CudaBuffer> {
    let backend = x.backend();
    let out = backend.alloc(g.n * g.oc * g.p())?;
    if out.is_empty() {
        return Ok(out);
    }
    let s = ConvShape::new(g)?;
    let ptr = |b: Option<&CudaBuffer>| b.map_or(Arg::Ptr(0), |b| b.arg());
    let cfg = gemm_grid(g.oc, g.n * g.p(), 1);
    let args = [out.arg(), x.arg(), weight.arg(), ptr(epi.bias), ptr(epi.sample_bias), ptr(epi.residual), Arg::pod(&s)];
    backend.launch(kernels(prec).0, cfg, &args)?;
    Ok(out)
}

/// dX [N, C, H, W] from dY [N, OC, OH, OW] and the weight, at precision `prec`.
pub fn backward_input(dy: &CudaBuffer, weight: &CudaBuffer, g: &ConvGeom, prec: Precision) -> Result<CudaBuffer> {
    let backend = dy.backend();
    let dx = backend.alloc(g.n * g.c * g.h * g.w)?;
    if dx.is_empty() {
        return Ok(dx);
    }
    let s = ConvShape::new(g)?;
    let cfg = gemm_grid(g.c, g.n * g.h * g.w, 1);
    backend.launch(kernels(prec).1, cfg, &[dx.arg(), dy.arg(), weight.arg(), Arg::pod(&s)])?;
    Ok(dx)
}

/// (splits, K values per split) of the weight-gradient GEMM: enough splits to
/// fill about [`TARGET_BLOCKS`] blocks, each summing at least [`MIN_SPLIT_K`]
/// values, a whole number of K slices, and no split empty.
fn weight_splits(m: usize, n: usize, k: usize) -> (usize, usize) {
    let tiles = m.div_ceil(TILE) * n.div_ceil(TILE);
    let want = TARGET_BLOCKS.div_ceil(tiles.max(1)).clamp(1, MAX_SPLITS).min(k.div_ceil(MIN_SPLIT_K).max(1));
    let chunk = k.div_ceil(want).next_multiple_of(K_SLICE).max(K_SLICE);
    (k.div_ceil(chunk).max(1), chunk)
}

/// dW [OC, C, KH, KW] = Σ over batch and output pixels of dY ⊗ the input
/// patches, as split-K partials summed in split order; the products at precision `prec`.
pub fn backward_weight(dy: &CudaBuffer, x: &CudaBuffer, g: &ConvGeom, prec: Precision) -> Result<CudaBuffer> {
    let backend = dy.backend();
    let (m, n, k) = (g.oc, g.k(), g.n * g.p());
    let len = m * n;
    if len == 0 {
        return backend.alloc(0);
    }
    let s = ConvShape::new(g)?;
    let (splits, chunk) = weight_splits(m, n, k);
    let chunk_arg = Arg::I32(elems("conv2d", chunk)?);
    let cfg = gemm_grid(m, n, splits);
    if splits == 1 {
        let dw = backend.alloc(len)?;
        backend.launch(kernels(prec).2, cfg, &[dw.arg(), dy.arg(), x.arg(), Arg::pod(&s), chunk_arg])?;
        return Ok(dw);
    }
    let total = splits * len;
    if elems("conv2d", total).is_err() {
        return shape_err("conv2d", format!("{splits} weight-gradient partials of {len} elements exceed 2^31"));
    }
    let partials = backend.alloc(total)?;
    backend.launch(kernels(prec).2, cfg, &[partials.arg(), dy.arg(), x.arg(), Arg::pod(&s), chunk_arg])?;
    let dw = backend.alloc(len)?;
    let args = [dw.arg(), partials.arg(), Arg::I32(splits as i32), Arg::I32(elems("conv2d", len)?)];
    backend.launch("conv2d_sum_splits_f32", LaunchConfig::for_elems(len, 256), &args)?;
    Ok(dw)
}

/// dB [OC] = Σ_{n, oy, ox} dY[n, o, oy, ox] (the reduce kernel, f64 accumulation).
pub fn bias_grad(dy: &CudaBuffer, g: &ConvGeom) -> Result<CudaBuffer> {
    sum_keepdim(dy, &Shape::new(vec![g.n, g.oc, g.p()]), &Shape::new(vec![1, g.oc, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_k_with_whole_slices() {
        for &(m, n, k) in &[(17, 45, 126), (64, 576, 131_072), (3, 3, 1), (128, 1152, 2048), (1, 1, 0), (256, 2304, 50)] {
            let (splits, chunk) = weight_splits(m, n, k);
            assert!((1..=MAX_SPLITS).contains(&splits) && chunk % K_SLICE == 0, "{m} {n} {k}: {splits} × {chunk}");
            assert!(splits * chunk >= k && (splits - 1) * chunk < k.max(1), "{m} {n} {k}: {splits} × {chunk}");
        }
        // the small parity shapes do take the split path
        assert!(weight_splits(17, 45, 126).0 > 1);
    }
}
