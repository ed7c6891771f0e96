//! CUDA launches of kernels/conv2d.cu: implicit-GEMM convolution (forward,
//! input gradient, weight gradient with split K); the same convs of
//! kernels/conv2d_same.cu; a 1×1 conv's weight gradient as one GEMM over the
//! pixels that also sums its bias gradient (kernels/conv2d_1x1.cu); other
//! bias gradients through the reduce kernel.
//!
//! Each GEMM kernel computes a 64×64 output tile per 256-thread block, so the
//! grid is (⌈N/64⌉, ⌈M/64⌉, splits) for the GEMM sizes M, N, K of
//! kernels/conv2d.cu.

use super::cpu::ConvGeom;
use super::wg_layout::{self, WgLayout};
use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::{Error, Result, shape_err};
use crate::ops::ab_switch::{switch, with_switch};
use crate::ops::binary::cuda::elems;
use crate::ops::precision::Precision;
use crate::ops::reduce::cuda::sum_keepdim;
use crate::tensor::{DType, Shape};
use std::cell::Cell;
use std::sync::OnceLock;

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
    /// The geometry it was made from.
    fn geom(&self) -> ConvGeom {
        let u = |v: i32| v as usize;
        ConvGeom { n: u(self.n), c: u(self.c), h: u(self.h), w: u(self.w), oc: u(self.oc), kh: u(self.kh), kw: u(self.kw), stride: u(self.stride), pad: u(self.pad), oh: u(self.oh), ow: u(self.ow) }
    }

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
    /// Some: y stored in bf16, scaled as it says, where the kernel can
    /// (`bf16_output_kernel`), else in f32 (not scaled): the output buffer's
    /// dtype says which. None: y in f32.
    pub bf16_out: Option<super::Bf16Store>,
}

/// The three GEMM kernels at compute precision `prec`: (forward, input
/// gradient, weight gradient).
fn kernels(prec: Precision) -> (&'static str, &'static str, &'static str) {
    match prec {
        Precision::F32 => ("conv2d_forward_f32", "conv2d_backward_input_f32", "conv2d_backward_weight_f32"),
        Precision::Bf16 => ("conv2d_forward_bf16", "conv2d_backward_input_bf16", "conv2d_backward_weight_bf16"),
    }
}

/// Pixels per block of the same-conv kernels (BN in kernels/conv2d_same.cu).
const SAME_TILE_PIXELS: usize = 128;
/// Patch pixels a same-conv block can stage (PATCH_MAX).
const SAME_PATCH_MAX: usize = 288;
/// Packed weight rows are padded to this (M_ALIGN); channels to whole chunks.
const SAME_M_ALIGN: usize = 64;
/// Words per patch pixel and chunk (CHUNK_WORDS): 8 channels at f32, 16 at bf16.
const SAME_CHUNK_WORDS: usize = 8;

/// Pixels per block of the wide forward (WIDE_BN).
const WIDE_TILE_PIXELS: usize = 256;
/// Patch pixels a wide-forward block can stage (WIDE_PATCH_MAX).
const WIDE_PATCH_MAX: usize = 352;

/// The weight gradient's BM 32 blocks stage twice the channels: smaller
/// patches (wg_patch_max).
const SAME_WG_PATCH_MAX_M32: usize = 256;
/// Weight-gradient blocks per launch the split over pixel tiles aims for.
const SAME_WG_TARGET_BLOCKS: usize = 264;

/// The patch pixels of a 128-pixel tile of kernels/conv2d_same.cu for this
/// convolution, when it is one those kernels take: stride 1, a square 1×1 or
/// 3×3 kernel with "same" padding, tiles that are whole output rows of one
/// image or whole images, and a patch that fits.
fn same_patch_pixels(g: &ConvGeom) -> Option<usize> {
    patch_pixels(g, SAME_TILE_PIXELS, SAME_PATCH_MAX)
}

/// The patch pixels of a `tile`-pixel tile of a stride-1 same conv, when the
/// tiles are whole output rows or images and the patch has at most `max`.
fn patch_pixels(g: &ConvGeom, tile: usize, max: usize) -> Option<usize> {
    let p = g.p();
    let square = g.kh == g.kw && (g.kh == 1 || g.kh == 3) && g.pad == (g.kh - 1) / 2;
    if g.stride != 1 || !square || p == 0 {
        return None;
    }
    let (rows, segments) = tile_rows(g, tile)?;
    Some(segments * (rows + 2 * g.pad) * (g.ow + 2 * g.pad)).filter(|&px| px <= max)
}

/// A `tile`-pixel tile's output rows a segment and its segments: whole rows
/// of one image (OH·OW a multiple of the tile, OW dividing it) or whole
/// images (OH·OW dividing the tile).
fn tile_rows(g: &ConvGeom, tile: usize) -> Option<(usize, usize)> {
    let p = g.p();
    let rows = if p >= tile {
        (p.is_multiple_of(tile) && tile.is_multiple_of(g.ow)).then_some(tile / g.ow)?
    } else {
        tile.is_multiple_of(p).then_some(g.oh)?
    };
    Some((rows, tile / (rows * g.ow)))
}

fn same_conv_fits(g: &ConvGeom) -> bool {
    same_kernels_enabled() && same_patch_pixels(g).is_some()
}

/// Patch pixels a stride-2 same-conv block can stage (DOWN_PATCH_MAX).
const SAME_DOWN_PATCH_MAX: usize = 648;

/// The patch pixels of a 128-pixel tile of the stride-2 forward
/// (kernels/conv2d_same.cu's DOWN), when it takes `g`: a 3×3 kernel, stride
/// 2, padding 1, H and W even (OH = H/2, OW = W/2), tiles of whole output
/// rows or images, S output rows reading 2S + 1 input rows of 2·OW + 1.
fn down_patch_pixels(g: &ConvGeom) -> Option<usize> {
    let p = g.p();
    let shape = g.kh == 3 && g.kw == 3 && g.stride == 2 && g.pad == 1 && g.h.is_multiple_of(2) && g.w.is_multiple_of(2);
    if !shape || p == 0 || g.oh * 2 != g.h || g.ow * 2 != g.w {
        return None;
    }
    let (rows, segments) = tile_rows(g, SAME_TILE_PIXELS)?;
    Some(segments * (2 * rows + 1) * (2 * g.ow + 1)).filter(|&px| px <= SAME_DOWN_PATCH_MAX)
}

/// Whether the forward of `g` runs the stride-2 same-conv kernel (the UNet's
/// downsamplers), from an f32 input.
fn down_conv_fits(g: &ConvGeom) -> bool {
    same_kernels_enabled() && strided_same_conv() && down_patch_pixels(g).is_some()
}

thread_local! {
    static STRIDED_SAME: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether 3×3 stride-2 forwards run the same-conv kernel (the default) or
/// the generic implicit GEMM (`MINIDIFFUSION_CONV_DOWN=generic`, the A/B).
pub fn strided_same_conv() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&STRIDED_SAME, &ENV, || std::env::var("MINIDIFFUSION_CONV_DOWN").map_or(true, |v| v != "generic"))
}

/// Run `f` with the stride-2 same-conv kernel on or off on this thread (tests, A/B).
pub fn with_strided_same_conv<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&STRIDED_SAME, on, f)
}

/// Whether the forward of `g` reads packed weights (a same conv, stride 1 or 2).
pub fn forward_reads_packed(g: &ConvGeom) -> bool {
    same_conv_fits(g) || down_conv_fits(g)
}

/// Whether the forward of `g` runs the same-conv kernels (which also read
/// bf16-stored inputs at the bf16 precision).
pub fn same_conv_takes(g: &ConvGeom) -> bool {
    same_conv_fits(g)
}

/// `MINIDIFFUSION_CONV=generic` sends every convolution to the generic
/// implicit GEMM (kernels/conv2d.cu): the A/B switch for measuring the
/// same-conv kernels on a GPU (scripts/device-run.sh). Read once.
fn same_kernels_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("MINIDIFFUSION_CONV").map_or(true, |v| v != "generic"))
}

/// The rows of a same-conv block: 32 for at most 32 output rows, else 64.
fn same_block_rows(m: usize) -> usize {
    if m <= 32 { 32 } else { 64 }
}

/// Whether the weight-gradient kernel takes this convolution at `prec`: a
/// same conv with a patch its block fits and, at bf16, pixel pairs that never
/// straddle a row (OW even).
fn same_weight_grad_fits(g: &ConvGeom, prec: Precision) -> bool {
    let bm = same_block_rows(g.oc);
    let max = if bm == 32 { SAME_WG_PATCH_MAX_M32 } else { SAME_PATCH_MAX };
    (prec == Precision::F32 || g.ow.is_multiple_of(2))
        && same_conv_fits(g)
        && same_patch_pixels(g).is_some_and(|px| px <= max)
        && wg_layout::fits(g, bm, pixels_per_word(prec))
}

/// Pixels a weight-gradient word holds: one f32, or a bf16 pair.
fn pixels_per_word(prec: Precision) -> usize {
    match prec {
        Precision::F32 => 1,
        Precision::Bf16 => 2,
    }
}

/// Same-conv kernel names by [variant][block rows 32, 64][K 1, 3]; variants:
/// f32, bf16, bf16 reading a bf16-stored input.
type SameKernels = [[[&'static str; 2]; 2]; 3];

const SAME_FORWARD_KERNELS: SameKernels = [
    [["conv2d_same_f32_m32_k1", "conv2d_same_f32_m32_k3"], ["conv2d_same_f32_m64_k1", "conv2d_same_f32_m64_k3"]],
    [["conv2d_same_bf16_m32_k1", "conv2d_same_bf16_m32_k3"], ["conv2d_same_bf16_m64_k1", "conv2d_same_bf16_m64_k3"]],
    [
        ["conv2d_same_bf16_xbf16_m32_k1", "conv2d_same_bf16_xbf16_m32_k3"],
        ["conv2d_same_bf16_xbf16_m64_k1", "conv2d_same_bf16_xbf16_m64_k3"],
    ],
];

const SAME_WEIGHT_GRAD_KERNELS: SameKernels = [
    [
        ["conv2d_same_weight_grad_f32_m32_k1", "conv2d_same_weight_grad_f32_m32_k3"],
        ["conv2d_same_weight_grad_f32_m64_k1", "conv2d_same_weight_grad_f32_m64_k3"],
    ],
    [
        ["conv2d_same_weight_grad_bf16_m32_k1", "conv2d_same_weight_grad_bf16_m32_k3"],
        ["conv2d_same_weight_grad_bf16_m64_k1", "conv2d_same_weight_grad_bf16_m64_k3"],
    ],
    [
        ["conv2d_same_weight_grad_bf16_xbf16_m32_k1", "conv2d_same_weight_grad_bf16_xbf16_m32_k3"],
        ["conv2d_same_weight_grad_bf16_xbf16_m64_k1", "conv2d_same_weight_grad_bf16_xbf16_m64_k3"],
    ],
];

/// The forward kernels staging their input 4 pixels a load (kernels/conv2d_same.cu:
/// float4s of f32, 8-byte loads of bf16 storage), by the variants of [`SameKernels`].
const SAME_FORWARD_VEC_KERNELS: SameKernels = [
    [["conv2d_same_f32_m32_k1_v", "conv2d_same_f32_m32_k3_v"], ["conv2d_same_f32_m64_k1_v", "conv2d_same_f32_m64_k3_v"]],
    [["conv2d_same_bf16_m32_k1_v", "conv2d_same_bf16_m32_k3_v"], ["conv2d_same_bf16_m64_k1_v", "conv2d_same_bf16_m64_k3_v"]],
    [
        ["conv2d_same_bf16_xbf16_m32_k1_v", "conv2d_same_bf16_xbf16_m32_k3_v"],
        ["conv2d_same_bf16_xbf16_m64_k1_v", "conv2d_same_bf16_xbf16_m64_k3_v"],
    ],
];

/// The same, applying the input's group norm as they stage it.
const SAME_FORWARD_NORM_VEC_KERNELS: [[[&str; 2]; 2]; 2] = [
    [["conv2d_same_f32_gn_m32_k1_v", "conv2d_same_f32_gn_m32_k3_v"], ["conv2d_same_f32_gn_m64_k1_v", "conv2d_same_f32_gn_m64_k3_v"]],
    [["conv2d_same_bf16_gn_m32_k1_v", "conv2d_same_bf16_gn_m32_k3_v"], ["conv2d_same_bf16_gn_m64_k1_v", "conv2d_same_bf16_gn_m64_k3_v"]],
];

/// The bf16 32-row forward kernels, each with its twin compiled for three
/// blocks an SM (`_b3`, the A/B of [`three_blocks_per_sm`]); the 1×1 ones
/// reading bf16 storage run at three already.
const SAME_FORWARD_B3_KERNELS: [(&str, &str); 10] = [
    ("conv2d_same_bf16_m32_k1", "conv2d_same_bf16_m32_k1_b3"),
    ("conv2d_same_bf16_m32_k3", "conv2d_same_bf16_m32_k3_b3"),
    ("conv2d_same_bf16_gn_m32_k1", "conv2d_same_bf16_gn_m32_k1_b3"),
    ("conv2d_same_bf16_gn_m32_k3", "conv2d_same_bf16_gn_m32_k3_b3"),
    ("conv2d_same_bf16_m32_k1_v", "conv2d_same_bf16_m32_k1_v_b3"),
    ("conv2d_same_bf16_m32_k3_v", "conv2d_same_bf16_m32_k3_v_b3"),
    ("conv2d_same_bf16_gn_m32_k1_v", "conv2d_same_bf16_gn_m32_k1_v_b3"),
    ("conv2d_same_bf16_gn_m32_k3_v", "conv2d_same_bf16_gn_m32_k3_v_b3"),
    ("conv2d_same_bf16_xbf16_m32_k3", "conv2d_same_bf16_xbf16_m32_k3_b3"),
    ("conv2d_same_bf16_xbf16_m32_k3_v", "conv2d_same_bf16_xbf16_m32_k3_v_b3"),
];

/// `kernel`, or its three-blocks-an-SM twin when that A/B is on and it has one.
fn with_occupancy(kernel: &'static str) -> &'static str {
    if !three_blocks_per_sm() {
        return kernel;
    }
    SAME_FORWARD_B3_KERNELS.iter().find(|(k, _)| *k == kernel).map_or(kernel, |&(_, b3)| b3)
}

thread_local! {
    static VEC_STAGING: Cell<Option<bool>> = const { Cell::new(None) };
    static NORM_IN_CONV: Cell<Option<bool>> = const { Cell::new(None) };
    static UP_PATH_IN_PLACE: Cell<Option<bool>> = const { Cell::new(None) };
    static BLOCKS3: Cell<Option<bool>> = const { Cell::new(None) };
    static WIDE: Cell<Option<bool>> = const { Cell::new(None) };
    static DIRECT: Cell<Option<bool>> = const { Cell::new(None) };
    static WGMMA: Cell<Option<bool>> = const { Cell::new(None) };
    static ROWS_FIRST: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether a same-conv forward's grid runs the row blocks of one pixel tile
/// as consecutive blocks (the default, a 1-D grid; kernels/conv2d.cuh's
/// `block_tile`): side by side, so the tile's input comes from DRAM once and
/// from the L2 for the others, where a 2-D grid with the tiles along x
/// (`MINIDIFFUSION_CONV_GRID=2d`, the A/B) runs every tile of the map
/// between two row blocks of one tile and reads a map larger than the L2
/// once a row block (the seed UNet at n 2048: its 8×8 maps, 67 MB in f32,
/// two to six times a conv). The same results.
pub fn rows_first_grid() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&ROWS_FIRST, &ENV, || std::env::var("MINIDIFFUSION_CONV_GRID").map_or(true, |v| v != "2d"))
}

/// Run `f` with the rows-first grid on or off on this thread (tests, A/B).
pub fn with_rows_first_grid<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&ROWS_FIRST, on, f)
}

/// The grid of a same-conv forward of `tiles` pixel tiles and `row_blocks`
/// blocks of output rows ([`rows_first_grid`]).
fn forward_grid(tiles: usize, row_blocks: usize) -> LaunchConfig {
    match rows_first_grid() {
        true => LaunchConfig::grid([tiles * row_blocks, 1, 1], GEMM_THREADS),
        false => LaunchConfig::grid([tiles, row_blocks, 1], GEMM_THREADS),
    }
}

/// Whether same-conv forwards stage an f32 input with float4s
/// (`MINIDIFFUSION_CONV_STAGING=float4`; off by default: GPU run 6 timed the
/// plain forwards no faster with it, only the fused-norm ones; the same results).
pub fn vec_staging() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&VEC_STAGING, &ENV, || std::env::var("MINIDIFFUSION_CONV_STAGING").is_ok_and(|v| v == "float4"))
}

/// Run `f` with the float4 staging on or off on this thread (tests, A/B).
pub fn with_vec_staging<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&VEC_STAGING, on, f)
}

/// Whether the bf16 forwards of at most 32 output channels run their twins
/// compiled for three blocks an SM (the default: GPU run 6 measured the 3×3
/// one at batch 512 0.127 ms against 0.148 at two; `MINIDIFFUSION_CONV_BLOCKS=2`
/// for the A/B; the same results).
pub fn three_blocks_per_sm() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&BLOCKS3, &ENV, || std::env::var("MINIDIFFUSION_CONV_BLOCKS").map_or(true, |v| v != "2"))
}

/// Run `f` with the three-blocks-an-SM kernels on or off on this thread (tests, A/B).
pub fn with_three_blocks_per_sm<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&BLOCKS3, on, f)
}

/// Whether the bf16 3×3 same convs of at most 32 output channels from an
/// f32 input (forwards, and input gradients as convs of dY) run over 256-pixel tiles (`conv2d_same_bf16_m32_k3_wide`: each
/// warp 32 rows × 32 pixels, so a fragment read from shared memory feeds
/// twice the mma; `MINIDIFFUSION_CONV_WIDE=on`, the A/B, off until a GPU
/// has timed it) where those tiles fit ([`wide_forward_fits`]). The same bits.
pub fn wide_forward() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&WIDE, &ENV, || std::env::var("MINIDIFFUSION_CONV_WIDE").is_ok_and(|v| v == "on"))
}

/// Run `f` with the wide forward on or off on this thread (tests, A/B).
pub fn with_wide_forward<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&WIDE, on, f)
}

/// The kernel of the wide forward (kernels/conv2d_same.cu's WIDE_BN tiles).
const WIDE_FORWARD_KERNEL: &str = "conv2d_same_bf16_m32_k3_wide";

/// Whether the wide forward takes a same conv of `x` at `prec`: the A/B on,
/// bf16 products of an f32 input, a 3×3 kernel, at most 32 output channels,
/// and 256-pixel tiles of whole rows or images with a patch that fits.
fn wide_forward_fits(x: &CudaBuffer, s: &ConvShape, prec: Precision) -> bool {
    let g = s.geom();
    wide_forward()
        && prec == Precision::Bf16
        && x.dtype() == DType::F32
        && g.kh == 3
        && g.oc <= 32
        && patch_pixels(&g, WIDE_TILE_PIXELS, WIDE_PATCH_MAX).is_some()
}

/// Whether the bf16 3×3 same-conv forwards run on Hopper's warpgroup MMA
/// (kernels/conv2d_wgmma.cu: both operands read by the tensor cores from
/// shared memory, where the mma.sync kernels load every fragment through the
/// load/store pipe GPU run 8 found them waiting on) where it runs
/// ([`CudaBackend::wgmma`](crate::device::cuda::CudaBackend::wgmma)) and the
/// tile fits ([`wgmma_width`]): `MINIDIFFUSION_CONV_WGMMA=on`, the A/B, off
/// until a GPU has timed it. Sums in the same order; not promised bit-equal
/// to the mma.sync kernels on a GPU (another instruction's accumulation).
pub fn wgmma_forward() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&WGMMA, &ENV, || std::env::var("MINIDIFFUSION_CONV_WGMMA").is_ok_and(|v| v == "on"))
}

/// Run `f` with the wgmma forward on or off on this thread (tests, A/B).
pub fn with_wgmma_forward<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&WGMMA, on, f)
}

/// Output channels a block of the wgmma forward (wgmma's M).
const WGMMA_BLOCK_ROWS: usize = 64;

/// The wgmma forwards, by [x f32, bf16 storage, f32 group-normalised as
/// staged, f32 upsampled as staged, bf16 storage storing y in bf16, bf16
/// storage reading a bf16 residual][virtual pixels a warpgroup 72, 128].
const WGMMA_KERNELS: [[&str; 2]; 6] = [
    ["conv2d_same_bf16_wg_n72", "conv2d_same_bf16_wg_n128"],
    ["conv2d_same_bf16_xbf16_wg_n72", "conv2d_same_bf16_xbf16_wg_n128"],
    ["conv2d_same_bf16_gn_wg_n72", "conv2d_same_bf16_gn_wg_n128"],
    ["conv2d_same_bf16_up_wg_n72", "conv2d_same_bf16_up_wg_n128"],
    ["conv2d_same_bf16_xbf16_ybf16_wg_n72", "conv2d_same_bf16_xbf16_ybf16_wg_n128"],
    ["conv2d_same_bf16_xbf16_rbf16_wg_n72", "conv2d_same_bf16_xbf16_rbf16_wg_n128"],
];
/// The row of [`WGMMA_KERNELS`] whose kernels store y in bf16.
const WGMMA_BF16_OUT: usize = 4;
/// The row of [`WGMMA_KERNELS`] whose kernels read a bf16 residual.
const WGMMA_BF16_RESIDUAL: usize = 5;
/// Patch pixels a plane of the wgmma forward holds (its PLANE), and the
/// staging items its 256 threads take (ITEMS each).
const WGMMA_PLANE: usize = 320;
const WGMMA_ITEMS: usize = 512;

/// The virtual pixels a warpgroup of the wgmma forward computes for a conv of
/// `g` (72 or 128; kernels/conv2d_wgmma.cu's geometry), when it takes `g`: a
/// stride-1 3×3 same conv over the same conv's 128-pixel tiles, OW a
/// multiple of 4 (4-pixel staging), and every staged pixel and every read
/// of a tap's B inside the patch's plane.
pub fn wgmma_width(g: &ConvGeom) -> Option<usize> {
    let same3 = g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.oh == g.h && g.ow == g.w;
    if !same3 || !g.ow.is_multiple_of(4) || g.p() == 0 {
        return None;
    }
    let (rows, segs) = tile_rows(g, SAME_TILE_PIXELS)?;
    let pw = g.ow + 1;
    let virtual_pixels = ((segs - 1) * (rows + 1) + rows - 1) * pw + g.ow;
    let n = match virtual_pixels {
        0..=144 => 72,
        145..=256 => 128,
        _ => return None,
    };
    let patch_rows = segs * (rows + 1) + 1;
    let read_end = 2 * n + 2 * pw + 2;
    let staged_end = (patch_rows - 1) * pw + g.ow + 1;
    let items = patch_rows * (g.ow / 4) * 8;
    (read_end <= WGMMA_PLANE && staged_end <= WGMMA_PLANE && items <= WGMMA_ITEMS).then_some(n)
}

/// The wgmma forward's kernel for a same conv of `x` at `prec` read as
/// `read` says (as it is, normalised or upsampled as staged; see
/// [`wgmma_forward`]): bf16 products, x f32 (16-byte aligned) or, read as it
/// is, bf16 storage (8-byte aligned).
fn wgmma_kernel(x: &CudaBuffer, s: &ConvShape, prec: Precision, read: &Read, bf16_out: bool, residual_bf16: bool) -> Option<&'static str> {
    if !(wgmma_forward() && prec == Precision::Bf16 && x.backend().wgmma()) {
        return None;
    }
    let variant = match (x.dtype(), read, bf16_out, residual_bf16) {
        (DType::F32, Read::AsIs, _, false) if x.ptr().is_multiple_of(16) => 0,
        (DType::BF16, Read::AsIs, false, false) if x.ptr().is_multiple_of(8) => 1,
        (DType::BF16, Read::AsIs, true, false) if x.ptr().is_multiple_of(8) => WGMMA_BF16_OUT,
        (DType::BF16, Read::AsIs, false, true) if x.ptr().is_multiple_of(8) => WGMMA_BF16_RESIDUAL,
        (DType::F32, Read::Normed(_), _, false) if x.ptr().is_multiple_of(16) => 2,
        (DType::F32, Read::Upsampled, _, false) if x.ptr().is_multiple_of(16) => 3,
        _ => return None,
    };
    let n = wgmma_width(&s.geom())?;
    Some(WGMMA_KERNELS[variant][usize::from(n == 128)])
}

/// Whether an inference group norm (+ SiLU) before a same conv is applied
/// by the conv as it stages its input (`MINIDIFFUSION_NORM_IN_CONV=on`, the
/// A/B) rather than written out by the group norm and read back (the
/// default: a 3×3 conv stages each input word up to nine times, and GPU run
/// 6 sampled 27 % faster with the norm apart; the same results, bit for bit).
pub fn norm_in_conv() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&NORM_IN_CONV, &ENV, || std::env::var("MINIDIFFUSION_NORM_IN_CONV").is_ok_and(|v| v == "on"))
}

/// Run `f` with the norm applied in the conv or not on this thread (tests, A/B).
pub fn with_norm_in_conv<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&NORM_IN_CONV, on, f)
}

/// Whether at inference the UNet's up path reads its skip concatenations
/// and upsampled maps where they lie (the default: `ops::conv2d_concat`,
/// `ops::group_norm::group_norm_concat_stored`, `ops::conv2d_after_upsample`)
/// or writes them and reads them back (`MINIDIFFUSION_UP_PATH=written`, the
/// A/B). ε̂ is the same but for one more f32 rounding in a shortcut whose
/// first part is not a multiple of 32 channels (`ops::conv2d_concat`).
pub fn up_path_in_place() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&UP_PATH_IN_PLACE, &ENV, || std::env::var("MINIDIFFUSION_UP_PATH").map_or(true, |v| v != "written"))
}

/// Run `f` with the up path read in place or written on this thread (tests, A/B).
pub fn with_up_path_in_place<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&UP_PATH_IN_PLACE, on, f)
}

/// Whether a same conv of `x` stages it 4 pixels a load: W a multiple of 4,
/// a patch of at most the items its kernel holds (two per thread for 3×3,
/// three for 1×1), and either f32 storage, 16-byte aligned, with
/// [`vec_staging`] on, or bf16 storage, 8-byte aligned (always: its element
/// staging loads 2 bytes at a time, GPU run 8 timed it −3 % against f32) —
/// except a 1×1 of bf16 storage that the 1×1 forward takes.
fn vec_staging_fits(x: &CudaBuffer, s: &ConvShape) -> bool {
    let g = s.geom();
    let per_thread = if s.kh == 3 { 2 } else { 3 };
    let fits = same_patch_pixels(&g).is_some_and(|px| SAME_CHUNK_WORDS * (px / (g.ow + 2 * g.pad)) * (g.w / 4) <= GEMM_THREADS as usize * per_thread);
    let storage = match x.dtype() {
        DType::F32 => vec_staging() && x.ptr().is_multiple_of(16),
        DType::BF16 => x.ptr().is_multiple_of(8) && !one_by_one_fits(x, s),
        _ => false,
    };
    storage && g.w.is_multiple_of(4) && fits
}

/// The forward kernels that apply the input's group norm as they stage it, by
/// [precision f32, bf16][block rows 32, 64][K 1, 3].
const SAME_FORWARD_NORM_KERNELS: [[[&str; 2]; 2]; 2] = [
    [["conv2d_same_f32_gn_m32_k1", "conv2d_same_f32_gn_m32_k3"], ["conv2d_same_f32_gn_m64_k1", "conv2d_same_f32_gn_m64_k3"]],
    [["conv2d_same_bf16_gn_m32_k1", "conv2d_same_bf16_gn_m32_k3"], ["conv2d_same_bf16_gn_m64_k1", "conv2d_same_bf16_gn_m64_k3"]],
];

/// A group norm (+ SiLU) a same conv applies to its input as it stages it,
/// per (image, channel) nc = n·C + c: u = (x − mean)·scale + shift with
/// (mean, scale, shift, 0) = affine[nc] ([N·C, 4], from
/// `ops::group_norm::cuda::affine`), then silu(u) when `silu`.
pub struct InputNorm<'a> {
    pub affine: &'a CudaBuffer,
    pub silu: bool,
}

impl InputNorm<'_> {
    /// The kernels' `conv::Prologue` argument for x of `nc` images × channels,
    /// refusing an x that is not f32 or an affine that is not nc aligned quadruples.
    fn prologue(&self, x: &CudaBuffer, nc: usize) -> Result<Arg> {
        if x.dtype() != DType::F32 {
            return Err(Error::DType { op: "conv2d (group norm applied by the conv)", dtype: x.dtype() });
        }
        let a = self.affine;
        if a.len() != 4 * nc || a.dtype() != DType::F32 || !a.ptr().is_multiple_of(16) {
            return shape_err("conv2d", format!("the input's group norm needs {nc} 16-byte aligned (mean, scale, shift, 0) f32 quadruples"));
        }
        Ok(Arg::pod(&Prologue { affine: a.ptr(), silu: self.silu as i32, pad: 0 }))
    }
}

/// Mirrors `conv::Prologue` in kernels/conv2d.cuh.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Prologue {
    affine: u64,
    silu: i32,
    pad: i32,
}

/// The kernel of `names` for precision `prec`, an input stored as `x_dtype`,
/// `bm` block rows and a K×K kernel (K 1 or 3). A bf16-stored input is read
/// as it is only at the bf16 precision.
fn same_kernel(names: &SameKernels, prec: Precision, x_dtype: DType, bm: usize, k: usize) -> Result<&'static str> {
    Ok(names[same_variant(prec, x_dtype)?][usize::from(bm != 32)][usize::from(k != 1)])
}

/// The kernel variant of a same conv: 0 f32, 1 bf16, 2 bf16 reading bf16 storage.
fn same_variant(prec: Precision, x_dtype: DType) -> Result<usize> {
    match (prec, x_dtype) {
        (Precision::F32, DType::F32) => Ok(0),
        (Precision::Bf16, DType::F32) => Ok(1),
        (Precision::Bf16, DType::BF16) => Ok(2),
        (_, dtype) => Err(Error::DType { op: "conv2d (same-conv kernel)", dtype }),
    }
}

/// dW of a same conv (kernels/conv2d_same.cu) at `prec`: split over 128-pixel
/// tiles into partial slabs, summed in split order. `target_blocks`: the
/// blocks the split aims for ([`SAME_WG_TARGET_BLOCKS`]); `layout`: the
/// staged patch's strides (None: [`wg_layout::layout`]'s for the shape).
fn same_weight_grad(
    dy: &CudaBuffer,
    x: &CudaBuffer,
    g: &ConvGeom,
    s: &ConvShape,
    target_blocks: usize,
    prec: Precision,
    layout: Option<WgLayout>,
) -> Result<CudaBuffer> {
    let backend = dy.backend();
    debug_assert!(prec == Precision::F32 || dy.ptr().is_multiple_of(8), "bf16 pairs of dY are 8-byte loads");
    let bm = same_block_rows(g.oc);
    let layout = layout.unwrap_or_else(|| wg_layout::layout(g, bm, pixels_per_word(prec)));
    let ct = if bm == 64 { 16 } else { 32 };
    let tiles = (g.n * g.p()).div_ceil(SAME_TILE_PIXELS);
    let blocks = g.c.div_ceil(ct) * g.oc.div_ceil(bm);
    let want = target_blocks.div_ceil(blocks).clamp(1, tiles);
    let per_split = tiles.div_ceil(want);
    let splits = tiles.div_ceil(per_split);
    let len = g.oc * g.k();
    let total = splits * len;
    elems("conv2d", total)?;
    let partials = backend.alloc(total)?;
    let kernel = same_kernel(&SAME_WEIGHT_GRAD_KERNELS, prec, x.dtype(), bm, g.kh)?;
    let cfg = LaunchConfig::grid([g.c.div_ceil(ct), g.oc.div_ceil(bm), splits], GEMM_THREADS);
    let args = [partials.arg(), dy.arg(), x.arg(), Arg::pod(s), Arg::pod(&layout), Arg::I32(elems("conv2d", per_split)?)];
    backend.launch(kernel, cfg, &args)?;
    if splits == 1 {
        return Ok(partials);
    }
    let dw = backend.alloc(len)?;
    let args = [dw.arg(), partials.arg(), Arg::I32(splits as i32), Arg::I32(elems("conv2d", len)?)];
    backend.launch("conv2d_sum_splits_f32", LaunchConfig::for_elems(len, 256), &args)?;
    Ok(dw)
}

/// Blocks the 1×1 weight gradient's split over pixels aims for (two waves of
/// an H100's 132 SMs at two blocks an SM).
const WG_1X1_TARGET_BLOCKS: usize = 528;
/// Fewest 32-word slices a split of the 1×1 weight gradient sums: its
/// [OC, C] partial is written and read back once per split.
const WG_1X1_MIN_SLICES: usize = 4;
/// Output and input channels of a 1×1 weight-gradient block (BM = BN).
const WG_1X1_TILE: usize = 64;

thread_local! {
    static WG_1X1: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether 1×1 weight gradients run kernels/conv2d_1x1.cu's GEMM over pixels
/// (default) or the same-conv kernel (`MINIDIFFUSION_WG_1X1=same`, the A/B).
pub fn wg_1x1() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&WG_1X1, &ENV, || std::env::var("MINIDIFFUSION_WG_1X1").map_or(true, |v| v != "same"))
}

/// Run `f` with the 1×1 weight-gradient kernel on or off on this thread (tests, A/B).
pub fn with_wg_1x1<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&WG_1X1, on, f)
}

/// Whether [`weight_grad_1x1`] takes this weight gradient: a 1×1, stride-1,
/// unpadded conv of an f32 input (or a bf16-stored one at bf16), OH·OW a
/// multiple of 4 (4 pixels loaded together never straddle two images) and
/// both operands 16-byte aligned.
fn weight_grad_1x1_fits(dy: &CudaBuffer, x: &CudaBuffer, g: &ConvGeom, prec: Precision) -> bool {
    let one = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0;
    one && g.p().is_multiple_of(4)
        && g.p() > 0
        && (x.dtype() == DType::F32 || (x.dtype() == DType::BF16 && prec == Precision::Bf16))
        && dy.ptr().is_multiple_of(16)
        && x.ptr().is_multiple_of(16)
        && same_kernels_enabled()
        && wg_1x1()
}

/// dW [OC, C] (and with `bias`, dB [OC]) of a 1×1 conv: kernels/conv2d_1x1.cu,
/// split over the pixels into [`WG_1X1_TARGET_BLOCKS`]-ish blocks, the
/// partials added in split order (one launch for both gradients).
fn weight_grad_1x1(dy: &CudaBuffer, x: &CudaBuffer, g: &ConvGeom, prec: Precision, bias: bool) -> Result<(CudaBuffer, Option<CudaBuffer>)> {
    let backend = dy.backend();
    let s = ConvShape::new(g)?;
    let slice_pixels = 32 * pixels_per_word(prec);
    let slices = (g.n * g.p()).div_ceil(slice_pixels);
    let tiles = g.c.div_ceil(WG_1X1_TILE) * g.oc.div_ceil(WG_1X1_TILE);
    let want = WG_1X1_TARGET_BLOCKS.div_ceil(tiles).clamp(1, slices.div_ceil(WG_1X1_MIN_SLICES).max(1));
    let per_split = slices.div_ceil(want);
    let splits = slices.div_ceil(per_split);
    let (len_w, len_b) = (g.oc * g.c, g.oc);
    elems("conv2d", splits * len_w)?;
    let dw_part = backend.alloc(splits * len_w)?;
    let db_part = if bias { Some(backend.alloc(splits * len_b)?) } else { None };
    let kernel = match (prec, x.dtype()) {
        (Precision::F32, _) => "conv2d_weight_grad_1x1_f32",
        (Precision::Bf16, DType::BF16) => "conv2d_weight_grad_1x1_bf16_xbf16",
        (Precision::Bf16, _) => "conv2d_weight_grad_1x1_bf16",
    };
    let cfg = LaunchConfig::grid([g.c.div_ceil(WG_1X1_TILE), g.oc.div_ceil(WG_1X1_TILE), splits], GEMM_THREADS);
    let db_arg = db_part.as_ref().map_or(Arg::Ptr(0), |b| b.arg());
    backend.launch(kernel, cfg, &[dw_part.arg(), db_arg, dy.arg(), x.arg(), Arg::pod(&s), Arg::I32(elems("conv2d", per_split)?)])?;
    if splits == 1 {
        return Ok((dw_part, db_part));
    }
    let dw = backend.alloc(len_w)?;
    let db = if bias { Some(backend.alloc(len_b)?) } else { None };
    let (db_out, db_in) = match (&db, &db_part) {
        (Some(out), Some(part)) => (out.arg(), part.arg()),
        _ => (Arg::Ptr(0), Arg::Ptr(0)),
    };
    let len = len_w + if bias { len_b } else { 0 };
    let args = [dw.arg(), dw_part.arg(), Arg::I32(elems("conv2d", len_w)?), db_out, db_in, Arg::I32(len_b as i32), Arg::I32(splits as i32)];
    backend.launch("conv2d_sum_splits_pair_f32", LaunchConfig::blocks(len.div_ceil(32), 256), &args)?;
    Ok((dw, db))
}

/// A same conv's weights as its kernels read them (kernels/conv2d_same.cu's
/// `conv2d_pack_same_*`): for one precision, orientation and shape.
pub struct PackedWeights {
    buf: CudaBuffer,
    prec: Precision,
    flip: bool,
    /// (rows M, channels, K) of the packed matrix: the conv's (OC, C, K), or
    /// (C, OC, K) flipped.
    dims: (usize, usize, usize),
}

/// Where [`pack_same`] allocates: the thread's current source (a graph's
/// pool while one is warmed up or captured), or the general cache for
/// weights kept with their tensor across graphs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PackTarget {
    Current,
    OutsidePools,
}

/// Packs `weight` [OC, C, K, K] of a same conv `g` for its kernels at `prec`
/// (transposed and flipped when `flip`, for an input gradient): one launch.
pub fn pack_same(weight: &CudaBuffer, g: &ConvGeom, flip: bool, prec: Precision, target: PackTarget) -> Result<PackedWeights> {
    pack_same_part(weight, g, flip, prec, target, (0, g.c))
}

/// Whether the input gradient of `g` runs as a same conv (stride 1, the
/// transposed conv fits the kernels too): then it reads the flipped packing.
pub fn input_gradient_is_same_conv(g: &ConvGeom) -> bool {
    same_conv_fits(g) && same_conv_fits(&transposed(g))
}

/// Both orientations of `weight` for a same conv `g` at `prec` in one launch:
/// the forward's packing and the input gradient's (flipped), as two
/// [`pack_same`] calls make them (a training step's forward and backward).
pub fn pack_same_pair(weight: &CudaBuffer, g: &ConvGeom, prec: Precision) -> Result<(PackedWeights, PackedWeights)> {
    let backend = weight.backend();
    let ks = g.kh;
    let per_word = if prec == Precision::Bf16 { 2 } else { 1 };
    let len = |m: usize, cg: usize| cg.div_ceil(SAME_CHUNK_WORDS * per_word) * m.div_ceil(SAME_M_ALIGN) * SAME_M_ALIGN * ks * ks * SAME_CHUNK_WORDS;
    let (fwd_len, flip_len) = (len(g.oc, g.c), len(g.c, g.oc));
    let (fwd, flip) = (backend.alloc(fwd_len)?, backend.alloc(flip_len)?);
    let pack = if prec == Precision::Bf16 { "conv2d_pack_same_pair_bf16" } else { "conv2d_pack_same_pair_f32" };
    let i = |v: usize| elems("conv2d", v).map(Arg::I32);
    let args = [fwd.arg(), flip.arg(), weight.arg(), i(g.oc)?, i(g.c)?, i(ks)?];
    let blocks = fwd_len.max(flip_len).div_ceil(256);
    backend.launch(pack, LaunchConfig::grid([blocks, 2, 1], 256), &args)?;
    Ok((
        PackedWeights { buf: fwd, prec, flip: false, dims: (g.oc, g.c, ks) },
        PackedWeights { buf: flip, prec, flip: true, dims: (g.c, g.oc, ks) },
    ))
}

/// [`pack_same`] for a conv `g` of input channels `first .. first + g.c`
/// of `weight` [OC, total, K, K], `(first, total)` = `part`: the conv of one
/// part of a concatenated input (`ops::conv2d_concat`).
pub fn pack_same_part(
    weight: &CudaBuffer,
    g: &ConvGeom,
    flip: bool,
    prec: Precision,
    target: PackTarget,
    (first, total): (usize, usize),
) -> Result<PackedWeights> {
    let backend = weight.backend();
    let taps = g.kh * g.kw;
    if first + g.c > total || weight.len() != g.oc * total * taps {
        return shape_err("conv2d", format!("input channels {first}..{} of a [{}, {total}, {}, {}] weight", first + g.c, g.oc, g.kh, g.kw));
    }
    let (m, cg, ks) = if flip { (g.c, g.oc, g.kh) } else { (g.oc, g.c, g.kh) };
    let per_word = if prec == Precision::Bf16 { 2 } else { 1 };
    let chunks = cg.div_ceil(SAME_CHUNK_WORDS * per_word);
    let packed_len = chunks * m.div_ceil(SAME_M_ALIGN) * SAME_M_ALIGN * ks * ks * SAME_CHUNK_WORDS;
    let buf = match target {
        PackTarget::Current => backend.alloc(packed_len)?,
        PackTarget::OutsidePools => backend.alloc_outside_pools(packed_len)?,
    };
    let pack = if prec == Precision::Bf16 { "conv2d_pack_same_bf16" } else { "conv2d_pack_same_f32" };
    let i = |v: usize| elems("conv2d", v).map(Arg::I32);
    let w_at = Arg::Ptr(weight.ptr() + (first * taps * std::mem::size_of::<f32>()) as u64);
    let args = [buf.arg(), w_at, i(m)?, i(cg)?, i(ks)?, Arg::I32(flip as i32), i(total)?];
    backend.launch(pack, LaunchConfig::for_elems(packed_len, 256), &args)?;
    Ok(PackedWeights { buf, prec, flip, dims: (m, cg, ks) })
}

/// The weights a forward of `g` takes: [`CudaBuffer`] as they are, or
/// packed beforehand ([`pack_same`], same conv only).
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    Plain(&'a CudaBuffer),
    Packed(&'a PackedWeights),
}

/// `f` of the packed weights a same-conv forward of `g` reads: `weight`
/// itself when packed (unflipped), else packed now for this call.
fn with_forward_pack<R>(weight: Weights, g: &ConvGeom, prec: Precision, f: impl FnOnce(&PackedWeights) -> Result<R>) -> Result<R> {
    match weight {
        Weights::Packed(p) if !p.flip => f(p),
        Weights::Packed(_) => shape_err("conv2d", "a forward needs weights packed unflipped"),
        Weights::Plain(w) => f(&pack_same(w, g, false, prec, PackTarget::Current)?),
    }
}

/// The 1×1 forwards (kernels/conv2d_same.cu's `forward_1x1`: no patch, the
/// pixels loaded as float4s), by [variant f32, bf16, bf16 reading bf16
/// storage][block rows 32, 64]: the same bits as the `_k1` same convs.
const ONE_BY_ONE_KERNELS: [[&str; 2]; 3] = [
    ["conv2d_1x1_f32_m32", "conv2d_1x1_f32_m64"],
    ["conv2d_1x1_bf16_m32", "conv2d_1x1_bf16_m64"],
    ["conv2d_1x1_bf16_xbf16_m32", "conv2d_1x1_bf16_xbf16_m64"],
];

/// The 1×1 forwards applying the input's group norm as they stage it
/// (`Read::Normed` where `forward_1x1` takes the conv), by [precision f32,
/// bf16][block rows 32, 64]: the bits of the norm written out and the 1×1 after it.
const ONE_BY_ONE_NORM_KERNELS: [[&str; 2]; 2] = [["conv2d_1x1_f32_gn_m32", "conv2d_1x1_f32_gn_m64"], ["conv2d_1x1_bf16_gn_m32", "conv2d_1x1_bf16_gn_m64"]];

thread_local! {
    static CONV_1X1: Cell<Option<bool>> = const { Cell::new(None) };
    static NORM_IN_1X1: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether an inference group norm before 1×1 convs only (the attention
/// block's q, k, v) is applied by the 1×1 forward as it stages its input
/// (the default: each value is staged once, so normalised once; the map is
/// neither written nor read back) or written out first
/// (`MINIDIFFUSION_NORM_IN_1X1=off`, the A/B). The same bits.
pub fn norm_in_1x1() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&NORM_IN_1X1, &ENV, || std::env::var("MINIDIFFUSION_NORM_IN_1X1").map_or(true, |v| v != "off"))
}

/// Run `f` with the norm applied by the 1×1 forward or not on this thread (tests, A/B).
pub fn with_norm_in_1x1<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&NORM_IN_1X1, on, f)
}

/// Whether `forward_1x1` takes the conv `g` (its input 16-byte aligned,
/// which the launch checks again): a stride-1 unpadded 1×1 with OH·OW a multiple of 4.
pub fn one_by_one_takes(g: &ConvGeom) -> bool {
    conv_1x1() && g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0 && (g.oh * g.ow).is_multiple_of(4) && same_conv_fits(g)
}

/// Whether stride-1 1×1 forwards (and the input gradients that are 1×1
/// convs) run `forward_1x1` (default) or the same-conv kernel
/// (`MINIDIFFUSION_CONV_1X1=same`, the A/B; the same bits).
pub fn conv_1x1() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&CONV_1X1, &ENV, || std::env::var("MINIDIFFUSION_CONV_1X1").map_or(true, |v| v != "same"))
}

/// Run `f` with the 1×1 forward kernel on or off on this thread (tests, A/B).
pub fn with_conv_1x1<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&CONV_1X1, on, f)
}

/// Whether `forward_1x1` takes a 1×1 same conv of `x`: OH·OW a multiple
/// of 4 (4 pixels loaded together lie in one image) and x 16-byte aligned.
fn one_by_one_fits(x: &CudaBuffer, s: &ConvShape) -> bool {
    one_by_one_takes(&s.geom()) && x.ptr().is_multiple_of(16)
}

/// The bf16 1×1 forwards storing y in bf16, by [x as it is, normalised as
/// staged][block rows 32, 64]: the bits of the f32-output kernels, rounded
/// to bf16 as a bf16 product rounds its operand.
const ONE_BY_ONE_BF16_OUT_KERNELS: [[&str; 2]; 2] =
    [["conv2d_1x1_bf16_ybf16_m32", "conv2d_1x1_bf16_ybf16_m64"], ["conv2d_1x1_bf16_gn_ybf16_m32", "conv2d_1x1_bf16_gn_ybf16_m64"]];

/// The bf16 3×3 forwards of bf16 storage reading a bf16 residual (4-pixel
/// staging), by block rows 32, 64: the up resnets' conv2 with bf16
/// activations, whose skip is stored in bf16.
const SAME_RBF16_KERNELS: [&str; 2] = ["conv2d_same_bf16_xbf16_rbf16_m32_k3_v_b3", "conv2d_same_bf16_xbf16_rbf16_m64_k3_v"];

/// Whether the epilogue's residual is bf16 storage.
fn residual_is_bf16(epi: &Epilogue) -> bool {
    epi.residual.is_some_and(|r| r.dtype() == DType::BF16)
}

/// Whether a mma.sync forward reads a bf16 residual as it is: a bf16 3×3
/// of bf16 storage staged 4 pixels a load, storing f32.
fn reads_bf16_residual_as_is(x: &CudaBuffer, s: &ConvShape, prec: Precision, read: &Read, bf16_out: bool) -> bool {
    prec == Precision::Bf16 && x.dtype() == DType::BF16 && s.kh == 3 && matches!(read, Read::AsIs) && !bf16_out && vec_staging_fits(x, s)
}

/// Whether [`forward`] of bf16 storage `x` reads a bf16 residual as it is
/// (else the caller widens it): a stride-1 3×3 same conv at bf16, storing
/// f32, that a wgmma forward or the 4-pixel staging takes.
pub fn reads_bf16_residual(x: &CudaBuffer, g: &ConvGeom, prec: Precision) -> bool {
    if !(same_conv_fits(g) && !direct_takes(g) && g.kh == 3 && g.stride == 1) {
        return false;
    }
    let Ok(s) = ConvShape::new(g) else { return false };
    wgmma_kernel(x, &s, prec, &Read::AsIs, false, true).is_some() || reads_bf16_residual_as_is(x, &s, prec, &Read::AsIs, false)
}

/// The bf16 3×3 forwards of bf16 storage storing y in bf16 (4-pixel
/// staging), by block rows 32, 64: the resnets' conv1 with bf16 activations.
const SAME_BF16_IO_KERNELS: [&str; 2] = ["conv2d_same_bf16_xbf16_ybf16_m32_k3_v_b3", "conv2d_same_bf16_xbf16_ybf16_m64_k3_v"];

/// The kernel that stores the output of a forward of `x` in bf16 when its
/// epilogue asks (`Epilogue::bf16_out`), if one takes it: with bf16
/// products, a stride-1 1×1 conv `forward_1x1` takes of an f32 input (as it
/// is or group-normalised as it is staged: the attention block's
/// projections), or a 3×3 same conv of bf16 storage staged 4 pixels a load
/// (the resnets' conv1 with bf16 activations). `b`: 64-row blocks.
fn bf16_output_kernel(x: &CudaBuffer, s: &ConvShape, prec: Precision, read: &Read, b: usize) -> Option<&'static str> {
    if prec != Precision::Bf16 {
        return None;
    }
    match (x.dtype(), read) {
        (DType::F32, Read::AsIs) if one_by_one_fits(x, s) => Some(ONE_BY_ONE_BF16_OUT_KERNELS[0][b]),
        (DType::F32, Read::Normed(_)) if one_by_one_fits(x, s) => Some(ONE_BY_ONE_BF16_OUT_KERNELS[1][b]),
        (DType::BF16, Read::AsIs) if s.kh == 3 && vec_staging_fits(x, s) => Some(SAME_BF16_IO_KERNELS[b]),
        _ => None,
    }
}

/// The 1×1 forwards of a concatenation read where its parts lie
/// (`forward_1x1`'s CAT), by [precision f32, bf16][block rows 32, 64].
const ONE_BY_ONE_CAT_KERNELS: [[&str; 2]; 2] =
    [["conv2d_1x1_f32_cat_m32", "conv2d_1x1_f32_cat_m64"], ["conv2d_1x1_bf16_cat_m32", "conv2d_1x1_bf16_cat_m64"]];

/// The bf16 1×1 forwards of a concatenation storing y in bf16, by block
/// rows 32, 64: the up resnets' shortcut with bf16 activations.
const ONE_BY_ONE_CAT_BF16_OUT_KERNELS: [&str; 2] = ["conv2d_1x1_bf16_cat_ybf16_m32", "conv2d_1x1_bf16_cat_ybf16_m64"];

/// y = conv1x1(x ⧺ x2) + the epilogue for the 1×1 conv `g` over the
/// concatenation along the channels of f32 x [N, c1, H, W] and x2 [N, C − c1,
/// H, W], which is never written: one launch reading each part where it
/// lies, the bits of the conv over the written concatenation (stored in
/// bf16, rounded, where `epi.bf16_out` asks at bf16). `packed` is
/// the whole weight packed for `g`. None where the kernel does not take it
/// (`forward_1x1` not taking `g`, c1 not a multiple of its 32-channel
/// slices, a part not f32 or not 16-byte aligned).
pub fn forward_1x1_concat(x: &CudaBuffer, x2: &CudaBuffer, c1: usize, packed: &PackedWeights, epi: &Epilogue, g: &ConvGeom, prec: Precision) -> Result<Option<CudaBuffer>> {
    let takes = one_by_one_takes(g)
        && c1 > 0
        && c1 < g.c
        && c1.is_multiple_of(32)
        && [x, x2].iter().all(|b| b.dtype() == DType::F32 && b.ptr().is_multiple_of(16))
        && x.len() == g.n * c1 * g.h * g.w
        && x2.len() == g.n * (g.c - c1) * g.h * g.w;
    if !takes || g.n * g.oc * g.p() == 0 {
        return Ok(None);
    }
    let s = ConvShape::new(g)?;
    let m = g.oc;
    if packed.prec != prec || packed.flip || packed.dims != (m, g.c, 1) {
        return shape_err("conv2d", "packed weights of another precision or shape than the convolution's");
    }
    let backend = x.backend();
    // y in bf16 where the epilogue asks, at bf16 (the output's dtype says)
    let bf16_out = epi.bf16_out.filter(|_| prec == Precision::Bf16);
    let out = backend.alloc_as(g.n * m * g.p(), if bf16_out.is_some() { DType::BF16 } else { DType::F32 })?;
    let bm = same_block_rows(m);
    let ptr = |b: Option<&CudaBuffer>| b.map_or(Arg::Ptr(0), |b| b.arg());
    let mut args = vec![out.arg(), x.arg(), packed.buf.arg(), ptr(epi.bias), ptr(epi.sample_bias), ptr(epi.residual), Arg::pod(&s), x2.arg(), Arg::I32(c1 as i32)];
    let cfg = forward_grid((g.n * g.p()).div_ceil(SAME_TILE_PIXELS), m.div_ceil(bm));
    let b = usize::from(bm != 32);
    let kernel = match bf16_out {
        Some(store) => {
            args.extend([Arg::F32(store.times), Arg::I32(store.scaled_channels.min(m) as i32)]);
            ONE_BY_ONE_CAT_BF16_OUT_KERNELS[b]
        }
        None => ONE_BY_ONE_CAT_KERNELS[usize::from(prec == Precision::Bf16)][b],
    };
    backend.launch(kernel, cfg, &args)?;
    Ok(Some(out))
}

/// How a same conv's kernel reads its input.
#[derive(Clone, Copy)]
enum Read<'a> {
    /// x as it is.
    AsIs,
    /// x group-normalised (+ SiLU) as it is staged.
    Normed(&'a InputNorm<'a>),
    /// x [N, C, H/2, W/2]'s nearest 2× upsampling, the conv's H × W input.
    Upsampled,
    /// x at stride 2 (a 3×3 conv with padding 1 to H/2 × W/2), f32.
    Strided,
}

/// The stride-2 3×3 forwards (`Read::Strided`, 32-row blocks), by precision f32, bf16.
const SAME_FORWARD_DOWN_KERNELS: [&str; 2] = ["conv2d_same_f32_down_m32_k3", "conv2d_same_bf16_down_m32_k3"];

/// The 3×3 forwards of an upsampled f32 input (`Read::Upsampled`), by
/// [precision f32, bf16][block rows 32, 64].
const SAME_FORWARD_UP_KERNELS: [[&str; 2]; 2] =
    [["conv2d_same_f32_up_m32_k3", "conv2d_same_f32_up_m64_k3"], ["conv2d_same_bf16_up_m32_k3", "conv2d_same_bf16_up_m64_k3"]];

/// A same conv (kernels/conv2d_same.cu) of `x` [N, s.c, s.h, s.w] into
/// [N, s.oc, s.oh, s.ow] at precision `prec` with `packed` weights (packed
/// for this orientation, shape and precision): one launch.
fn same_conv(x: &CudaBuffer, packed: &PackedWeights, epi: &Epilogue, s: &ConvShape, prec: Precision, read: Read) -> Result<CudaBuffer> {
    let backend = x.backend();
    let (m, ks) = (s.oc as usize, s.kh as usize);
    if packed.prec != prec || packed.dims != (m, s.c as usize, ks) {
        return shape_err("conv2d", "packed weights of another precision or shape than the convolution's");
    }
    let packed = &packed.buf;
    let bm = if matches!(read, Read::Strided) { 32 } else { same_block_rows(m) };
    let (p, b, k) = (usize::from(prec == Precision::Bf16), usize::from(bm != 32), usize::from(ks != 1));
    let bf16_asked = epi.bf16_out.is_some();
    let wgmma = if ks == 3 { wgmma_kernel(x, s, prec, &read, bf16_asked, residual_is_bf16(epi)) } else { None };
    // the kernel storing y in bf16 where one takes the conv (the output's dtype says)
    let bf16_out = match wgmma {
        Some(kernel) => WGMMA_KERNELS[WGMMA_BF16_OUT].contains(&kernel).then_some(kernel),
        None if bf16_asked && !residual_is_bf16(epi) => bf16_output_kernel(x, s, prec, &read, b),
        None => None,
    };
    // a bf16 residual: the kernels that read one, where the caller has checked one takes the conv
    let bf16_residual = match wgmma {
        _ if !residual_is_bf16(epi) => None,
        Some(kernel) if WGMMA_KERNELS[WGMMA_BF16_RESIDUAL].contains(&kernel) => Some(kernel),
        None if reads_bf16_residual_as_is(x, s, prec, &read, bf16_asked) => Some(SAME_RBF16_KERNELS[b]),
        _ => return shape_err("conv2d", "a bf16 residual is read by the bf16 3×3 forwards of bf16 storage only (reads_bf16_residual)"),
    };
    let out = backend.alloc_as(s.n as usize * m * (s.oh * s.ow) as usize, if bf16_out.is_some() { DType::BF16 } else { DType::F32 })?;
    let pixels = s.n as usize * (s.oh * s.ow) as usize;
    let ptr = |b: Option<&CudaBuffer>| b.map_or(Arg::Ptr(0), |b| b.arg());
    let mut args = vec![out.arg(), x.arg(), packed.arg(), ptr(epi.bias), ptr(epi.sample_bias), ptr(epi.residual), Arg::pod(s)];
    let vec = vec_staging_fits(x, s);
    let wide = matches!(read, Read::AsIs) && !vec && wgmma.is_none() && wide_forward_fits(x, s, prec);
    let tile = if wide { WIDE_TILE_PIXELS } else { SAME_TILE_PIXELS };
    let bm = if wgmma.is_some() { WGMMA_BLOCK_ROWS } else { bm };
    let cfg = forward_grid(pixels.div_ceil(tile), m.div_ceil(bm));
    let kernel = match read {
        Read::AsIs => {
            if let Some(kernel) = wgmma.or(bf16_out).or(bf16_residual) {
                kernel
            } else if vec {
                same_kernel(&SAME_FORWARD_VEC_KERNELS, prec, x.dtype(), bm, ks)?
            } else if wide {
                WIDE_FORWARD_KERNEL
            } else if one_by_one_fits(x, s) {
                ONE_BY_ONE_KERNELS[same_variant(prec, x.dtype())?][b]
            } else {
                same_kernel(&SAME_FORWARD_KERNELS, prec, x.dtype(), bm, ks)?
            }
        }
        Read::Upsampled => {
            let source = s.n as usize * s.c as usize * (s.h as usize / 2) * (s.w as usize / 2);
            if x.dtype() != DType::F32 || ks != 3 || s.h % 2 != 0 || s.w % 2 != 0 || x.len() != source {
                return shape_err("conv2d", "an upsampled input is read in place by the 3×3 same convs, from f32 x [N, C, H/2, W/2]");
            }
            wgmma.unwrap_or(SAME_FORWARD_UP_KERNELS[p][b])
        }
        Read::Strided => {
            if x.dtype() != DType::F32 || ks != 3 || s.stride != 2 || s.h != 2 * s.oh || s.w != 2 * s.ow {
                return shape_err("conv2d", "the stride-2 same convs read an f32 x [N, C, 2·OH, 2·OW] with a 3×3 kernel");
            }
            SAME_FORWARD_DOWN_KERNELS[p]
        }
        Read::Normed(n) => {
            args.push(n.prologue(x, s.n as usize * s.c as usize)?);
            if let Some(kernel) = wgmma.or(bf16_out) {
                kernel
            } else if vec {
                SAME_FORWARD_NORM_VEC_KERNELS[p][b][k]
            } else if one_by_one_fits(x, s) {
                ONE_BY_ONE_NORM_KERNELS[p][b]
            } else {
                SAME_FORWARD_NORM_KERNELS[p][b][k]
            }
        }
    };
    if let (Some(_), Some(store)) = (bf16_out, epi.bf16_out) {
        args.extend([Arg::F32(store.times), Arg::I32(store.scaled_channels.min(m) as i32)]);
    }
    backend.launch(with_occupancy(kernel), cfg, &args)?;
    Ok(out)
}

/// y [N, OC, OH, OW] = conv(x [N, C, H, W], weight [OC, C, KH, KW]) + the
/// epilogue, the product at precision `prec` (stride-1 1×1 and 3×3 same
/// convs take kernels/conv2d_same.cu).
pub fn forward(x: &CudaBuffer, weight: Weights, epi: &Epilogue, g: &ConvGeom, prec: Precision) -> Result<CudaBuffer> {
    let backend = x.backend();
    if g.n * g.oc * g.p() == 0 {
        return backend.alloc(0);
    }
    let s = ConvShape::new(g)?;
    if same_conv_fits(g) {
        return with_forward_pack(weight, g, prec, |p| same_conv(x, p, epi, &s, prec, Read::AsIs));
    }
    if down_conv_fits(g) && x.dtype() == DType::F32 {
        return with_forward_pack(weight, g, prec, |p| same_conv(x, p, epi, &s, prec, Read::Strided));
    }
    let Weights::Plain(weight) = weight else {
        return shape_err("conv2d", "packed weights are for same convs only");
    };
    if x.dtype() != DType::F32 {
        return Err(Error::DType { op: "conv2d (generic kernel)", dtype: x.dtype() });
    }
    let out = backend.alloc(g.n * g.oc * g.p())?;
    let ptr = |b: Option<&CudaBuffer>| b.map_or(Arg::Ptr(0), |b| b.arg());
    let cfg = gemm_grid(g.oc, g.n * g.p(), 1);
    let args = [out.arg(), x.arg(), weight.arg(), ptr(epi.bias), ptr(epi.sample_bias), ptr(epi.residual), Arg::pod(&s)];
    backend.launch(kernels(prec).0, cfg, &args)?;
    Ok(out)
}

/// [`forward`] of `g`, a stride-1 3×3 same conv whose input is the nearest
/// 2× upsampling of `x` [N, C, H/2, W/2] (f32), read in place: the upsampled
/// map is never written. None where the kernels do not take `g`.
pub fn forward_upsampled(x: &CudaBuffer, weight: Weights, epi: &Epilogue, g: &ConvGeom, prec: Precision) -> Result<Option<CudaBuffer>> {
    let takes = same_conv_fits(g) && g.kh == 3 && g.kw == 3 && g.h.is_multiple_of(2) && g.w.is_multiple_of(2) && x.dtype() == DType::F32;
    if !takes || g.n * g.oc * g.p() == 0 {
        return Ok(None);
    }
    let s = ConvShape::new(g)?;
    with_forward_pack(weight, g, prec, |p| same_conv(x, p, epi, &s, prec, Read::Upsampled)).map(Some)
}

/// [`forward`] of a same conv (requires [`same_conv_takes`]) whose input is
/// group-normalised (+ SiLU) by `norm` as it is read: the normalised map is
/// never written. `x` is f32.
pub fn forward_normed(x: &CudaBuffer, norm: &InputNorm, weight: Weights, epi: &Epilogue, g: &ConvGeom, prec: Precision) -> Result<CudaBuffer> {
    if g.n * g.oc * g.p() == 0 {
        return x.backend().alloc(0);
    }
    if !same_conv_fits(g) {
        return shape_err("conv2d", "a group norm applied by the conv needs a stride-1 1×1 or 3×3 same conv");
    }
    let s = ConvShape::new(g)?;
    with_forward_pack(weight, g, prec, |p| same_conv(x, p, epi, &s, prec, Read::Normed(norm)))
}

/// The direct 3×3 forwards (kernels/conv2d_direct.cu), by [variant f32,
/// bf16, bf16 reading bf16 storage][output channels a block 4, 32].
const DIRECT_KERNELS: [[&str; 2]; 3] = [
    ["conv2d_direct_f32_o4", "conv2d_direct_f32_o32"],
    ["conv2d_direct_bf16_o4", "conv2d_direct_bf16_o32"],
    ["conv2d_direct_bf16_xbf16_o4", "conv2d_direct_bf16_xbf16_o32"],
];

/// The same, applying the input's group norm as they stage it, by [precision f32, bf16][4, 32].
const DIRECT_NORM_KERNELS: [[&str; 2]; 2] = [["conv2d_direct_f32_gn_o4", "conv2d_direct_f32_gn_o32"], ["conv2d_direct_bf16_gn_o4", "conv2d_direct_bf16_gn_o32"]];

/// Channels on the few side of a direct conv: its output channels a block (the `_o4` kernels).
const DIRECT_FEW: usize = 4;

/// Whether stride-1 3×3 same convs with at most [`DIRECT_FEW`] output or
/// input channels (the UNet's conv_out and conv_in) run the direct forward
/// (`MINIDIFFUSION_CONV_DIRECT=off` sends them to the tensor-core same conv,
/// whose 32-row and 16-channel tiles they fill 1/32 and 1/16 of).
pub fn direct_conv() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    switch(&DIRECT, &ENV, || std::env::var("MINIDIFFUSION_CONV_DIRECT").map_or(true, |v| v != "off"))
}

/// Run `f` with the direct forward on or off on this thread (tests, A/B).
pub fn with_direct_conv<R>(on: bool, f: impl FnOnce() -> R) -> R {
    with_switch(&DIRECT, on, f)
}

/// Whether the direct forward takes a conv of `g` (see [`direct_conv`]).
pub fn direct_takes(g: &ConvGeom) -> bool {
    let same = g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.oh == g.h && g.ow == g.w;
    direct_conv() && same && (g.oc <= DIRECT_FEW || g.c <= DIRECT_FEW)
}

/// y = conv3x3(x, weight) + the epilogue by the direct forward (a conv
/// [`direct_takes`]): `weight` [OC, C, 3, 3] as it is, x f32 or (at bf16)
/// bf16 storage, the input's group norm applied as x is staged when `norm`
/// is given (f32 x). y in f32 (`epi.bf16_out` is not taken).
pub fn forward_direct(x: &CudaBuffer, norm: Option<&InputNorm>, weight: &CudaBuffer, epi: &Epilogue, g: &ConvGeom, prec: Precision) -> Result<CudaBuffer> {
    let backend = x.backend();
    if !direct_takes(g) {
        return shape_err("conv2d", "the direct forward takes stride-1 3×3 same convs with at most 4 output or input channels");
    }
    let s = ConvShape::new(g)?;
    let out = backend.alloc(g.n * g.oc * g.p())?;
    if g.n * g.oc * g.p() == 0 {
        return Ok(out);
    }
    let ptr = |b: Option<&CudaBuffer>| b.map_or(Arg::Ptr(0), |b| b.arg());
    let mut args = vec![out.arg(), x.arg(), weight.arg(), ptr(epi.bias), ptr(epi.sample_bias), ptr(epi.residual), Arg::pod(&s)];
    let wide = usize::from(g.oc > DIRECT_FEW);
    let kernel = match norm {
        None => DIRECT_KERNELS[same_variant(prec, x.dtype())?][wide],
        Some(n) => {
            args.push(n.prologue(x, g.n * g.c)?);
            DIRECT_NORM_KERNELS[usize::from(prec == Precision::Bf16)][wide]
        }
    };
    // a block: a 16 × 16 tile of one image, a thread two of its pixels (kernels/conv2d_direct.cu's TILE, THREADS)
    const TILE: usize = 16;
    const THREADS: u32 = 128;
    let blocks = g.n * g.h.div_ceil(TILE) * g.w.div_ceil(TILE);
    let per_block = if wide == 1 { 32 } else { DIRECT_FEW };
    elems("conv2d", blocks)?;
    backend.launch(kernel, LaunchConfig::grid([blocks, g.oc.div_ceil(per_block), 1], THREADS), &args)?;
    Ok(out)
}

/// dX [N, C, H, W] from dY [N, OC, OH, OW] and the weight, at precision `prec`
/// (the input gradient of a stride-1 same conv is the same conv of dY with
/// the weight transposed and flipped: kernels/conv2d_same.cu), plus `add`
/// (f32, dX's shape) where the kernel sums it as it writes: the bool says
/// whether it did (the same convs do; the generic kernel does not).
pub fn backward_input(
    dy: &CudaBuffer,
    weight: &CudaBuffer,
    g: &ConvGeom,
    prec: Precision,
    add: Option<&CudaBuffer>,
    flipped: Option<&PackedWeights>,
) -> Result<(CudaBuffer, bool)> {
    let backend = dy.backend();
    if g.n * g.c * g.h * g.w == 0 {
        return Ok((backend.alloc(0)?, true));
    }
    let s = ConvShape::new(g)?;
    // `add` as the same conv's residual: dX + add as it is written
    let epilogue = Epilogue { residual: add, ..Epilogue::default() };
    if input_gradient_is_same_conv(g) {
        // packed by the forward with its own (pack_same_pair), else now
        let packed_now;
        let packed = match flipped {
            Some(p) if p.flip && p.prec == prec && p.dims == (g.c, g.oc, g.kh) => p,
            _ => {
                packed_now = pack_same(weight, g, true, prec, PackTarget::Current)?;
                &packed_now
            }
        };
        return Ok((same_conv(dy, packed, &epilogue, &ConvShape::new(&transposed(g))?, prec, Read::AsIs)?, true));
    }
    if let Some(same) = stride2_as_same(g) {
        // dY with zeros between its pixels, through the same conv's input gradient
        let planes = g.n * g.oc;
        elems("conv2d", planes * g.h * g.w)?;
        let up = backend.alloc(planes * g.h * g.w)?;
        let args = [up.arg(), dy.arg(), Arg::I32(elems("conv2d", planes)?), Arg::I32(g.oh as i32), Arg::I32(g.ow as i32)];
        backend.launch("conv2d_zero_upsample2x_f32", LaunchConfig::for_elems(planes * g.oh * g.ow, 256), &args)?;
        let packed = pack_same(weight, &same, true, prec, PackTarget::Current)?;
        return Ok((same_conv(&up, &packed, &epilogue, &ConvShape::new(&transposed(&same))?, prec, Read::AsIs)?, true));
    }
    let dx = backend.alloc(g.n * g.c * g.h * g.w)?;
    let cfg = gemm_grid(g.c, g.n * g.h * g.w, 1);
    backend.launch(kernels(prec).1, cfg, &[dx.arg(), dy.arg(), weight.arg(), Arg::pod(&s)])?;
    Ok((dx, add.is_none()))
}

/// The same conv (stride 1) whose input gradient over dY with zeros between
/// its pixels is `g`'s (kernels/conv2d.cu, `conv2d_zero_upsample2x_f32`): for
/// a 3×3, stride-2, pad-1 conv over an even H × W map (the UNet's
/// downsamplers) when the same-conv kernels take it. Four times the
/// products, on the tensor-core same convs instead of the generic strided
/// gather (GPU run 7: 0.74 ms a call at batch 512, 3.5 % of a training step).
fn stride2_as_same(g: &ConvGeom) -> Option<ConvGeom> {
    let fits = g.stride == 2 && g.kh == 3 && g.kw == 3 && g.pad == 1 && g.h == 2 * g.oh && g.w == 2 * g.ow;
    let same = ConvGeom { stride: 1, oh: g.h, ow: g.w, ..*g };
    (fits && same_conv_fits(&same) && same_conv_fits(&transposed(&same))).then_some(same)
}

/// The conv from dY [N, OC, OH, OW] to dX [N, C, H, W] that a stride-1 same
/// conv's input gradient is (the weight transposed and flipped).
fn transposed(g: &ConvGeom) -> ConvGeom {
    ConvGeom { c: g.oc, h: g.oh, w: g.ow, oc: g.c, oh: g.h, ow: g.w, ..*g }
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
/// patches, as split-K partials summed in split order; the products at
/// precision `prec` (same convs take kernels/conv2d_same.cu).
pub fn backward_weight(dy: &CudaBuffer, x: &CudaBuffer, g: &ConvGeom, prec: Precision) -> Result<CudaBuffer> {
    Ok(backward_weight_and_bias(dy, x, g, prec, false)?.0)
}

/// [`backward_weight`], and with `bias` the bias gradient too where the
/// weight gradient's kernel sums it as it reads dY (a 1×1 conv:
/// [`weight_grad_1x1`]); None where the caller sums it ([`bias_grad`]).
pub fn backward_weight_and_bias(dy: &CudaBuffer, x: &CudaBuffer, g: &ConvGeom, prec: Precision, bias: bool) -> Result<(CudaBuffer, Option<CudaBuffer>)> {
    if weight_grad_1x1_fits(dy, x, g, prec) {
        return weight_grad_1x1(dy, x, g, prec, bias);
    }
    Ok((backward_weight_gemm(dy, x, g, prec)?, None))
}

/// The weight gradient by the same-conv kernel or the generic implicit GEMM.
fn backward_weight_gemm(dy: &CudaBuffer, x: &CudaBuffer, g: &ConvGeom, prec: Precision) -> Result<CudaBuffer> {
    let backend = dy.backend();
    let (m, n, k) = (g.oc, g.k(), g.n * g.p());
    let len = m * n;
    if len == 0 {
        return backend.alloc(0);
    }
    let s = ConvShape::new(g)?;
    let bf16_input = x.dtype() == DType::BF16;
    // (at bf16 the kernel loads dY's pixel pairs 8 bytes at a time)
    let dy_aligned = prec == Precision::F32 || dy.ptr().is_multiple_of(8);
    if same_weight_grad_fits(g, prec) && (!bf16_input || prec == Precision::Bf16) && dy_aligned {
        return same_weight_grad(dy, x, g, &s, SAME_WG_TARGET_BLOCKS, prec, None);
    }
    // the generic kernels read f32: widen a bf16-stored x (exact)
    let widened;
    let x = if bf16_input {
        widened = crate::ops::cast::cuda::cast(x, DType::F32)?;
        &widened
    } else {
        x
    };
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

    fn geom(n: usize, c: usize, hw: (usize, usize), oc: usize, k: usize, stride: usize, pad: usize) -> ConvGeom {
        let (oh, ow) = ((hw.0 + 2 * pad - k) / stride + 1, (hw.1 + 2 * pad - k) / stride + 1);
        ConvGeom { n, c, h: hw.0, w: hw.1, oc, kh: k, kw: k, stride, pad, oh, ow }
    }

    #[test]
    fn same_conv_takes_the_unet_shapes() {
        // the seed UNet's maps, and the shapes of tests/parity_conv2d.rs's same-conv parity
        for &(n, c, hw, oc, k) in &[
            (512, 32, (32, 32), 32, 3),
            (512, 64, (16, 16), 64, 3),
            (512, 128, (8, 8), 128, 3),
            (512, 256, (4, 4), 256, 3),
            (512, 128, (8, 8), 384, 1),
            (2, 20, (16, 16), 40, 3),
            (1, 16, (32, 32), 32, 3),
            (2, 5, (8, 16), 6, 3),
            (3, 17, (4, 4), 8, 3),
            (3, 33, (8, 8), 70, 1),
        ] {
            let g = geom(n, c, hw, oc, k, 1, (k - 1) / 2);
            assert!(same_conv_fits(&g), "{g:?}");
        }
        // strided, unpadded, 5×5, rows that do not tile 128 pixels, maps too small for the patch
        for g in [
            geom(2, 8, (8, 8), 8, 3, 2, 1),
            geom(2, 8, (8, 8), 8, 3, 1, 0),
            geom(2, 8, (8, 8), 8, 5, 1, 2),
            geom(2, 8, (7, 9), 8, 3, 1, 1),
            geom(2, 8, (12, 12), 8, 3, 1, 1),
            geom(64, 8, (2, 2), 8, 3, 1, 1),
            geom(2, 8, (1, 256), 8, 3, 1, 1),
        ] {
            assert!(!same_conv_fits(&g), "{g:?}");
        }
    }

    #[test]
    fn the_stride2_kernel_takes_the_unet_downsamplers() {
        // the seed UNet's three downsamplers (32×32 → 16×16 at 32 channels, then 64 and 128), at any batch
        for (n, c, hw) in [(512, 32, (32, 32)), (2048, 64, (16, 16)), (1, 128, (8, 8)), (3, 32, (64, 64))] {
            let g = geom(n, c, hw, c, 3, 2, 1);
            assert!(down_conv_fits(&g) && !same_conv_fits(&g) && forward_reads_packed(&g), "{g:?}");
        }
        // odd maps, no padding, 1×1, stride 1, 2×2 outputs (32 images a tile: 800 patch pixels)
        for g in [geom(2, 8, (7, 9), 8, 3, 2, 1), geom(2, 8, (8, 8), 8, 3, 2, 0), geom(2, 8, (8, 8), 8, 1, 2, 0), geom(2, 8, (8, 8), 8, 3, 1, 1), geom(64, 8, (4, 4), 8, 3, 2, 1)] {
            assert!(!down_conv_fits(&g), "{g:?}");
        }
    }

    /// The same-conv weight gradient summing all its pixel tiles in one split
    /// (one block looping over 6 tiles) and in one split per tile agree, at
    /// f32 with the CPU's dW and at bf16 within bf16's distance of it
    /// (emulation of CUDA; the parity tests compare with the CPU twins).
    #[test]
    fn same_weight_grad_splits_agree() {
        use crate::device::{CudaDevice, cuda::backend};
        let b = backend(CudaDevice { ordinal: 0, emulated: true }).unwrap();
        let g = geom(3, 5, (16, 16), 6, 3, 1, 1);
        let s = ConvShape::new(&g).unwrap();
        let (dy_host, x_host) = (crate::testing::randn(&[3, 6, 16, 16], 5), crate::testing::randn(&[3, 5, 16, 16], 6));
        let (dy, x) = (b.upload(&dy_host).unwrap(), b.upload(&x_host).unwrap());
        let cpu = super::super::cpu::conv2d_backward_weight(&dy_host, &x_host, &g);
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        for prec in [Precision::F32, Precision::Bf16] {
            assert!(same_weight_grad_fits(&g, prec));
            let one = same_weight_grad(&dy, &x, &g, &s, 1, prec, None).unwrap().download().unwrap();
            let many = same_weight_grad(&dy, &x, &g, &s, SAME_WG_TARGET_BLOCKS, prec, None).unwrap().download().unwrap();
            // sums of 768 products, scale ~74, each mma's rounding toward zero
            // drifting by up to an ulp of the sum (96 steps in one split; 2.2e-4
            // on the emulator, which rounds so): f32 to that drift, bf16 at its
            // distance (not a wrong tap or tile)
            let drift = 2e-5 * scale;
            assert!(max_diff(&one, &many) < drift, "{prec}: {} of scale {scale}", max_diff(&one, &many));
            let d = max_diff(&one, &cpu);
            match prec {
                Precision::F32 => assert!(d < drift, "f32 vs cpu weight gradient: {d} of scale {scale}"),
                Precision::Bf16 => assert!(d > 1e-4 * scale && d < 2e-2 * scale, "bf16 vs f32 weight gradient: {d} of scale {scale}"),
            }
        }
    }

    /// The weight gradient with each patch stride padded (rows, segments,
    /// channels, the odd-pair plane) agrees with the CPU's dW, as with the
    /// searched layout: a stride the kernel ignored or misapplied would read
    /// another pixel's word. Multi-image tiles (4×4, 4×8 maps) and one image's
    /// rows (16×16), 3×3 and 1×1, both block heights (emulation of CUDA).
    #[test]
    fn weight_grad_honours_every_layout_stride() {
        use crate::device::{CudaDevice, cuda::backend};
        let b = backend(CudaDevice { ordinal: 0, emulated: true }).unwrap();
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        for &(n, c, hw, oc, k) in &[(9, 5, (4, 4), 40, 3), (3, 19, (4, 8), 6, 3), (2, 7, (16, 16), 3, 1), (10, 3, (4, 4), 70, 1)] {
            let g = geom(n, c, hw, oc, k, 1, (k - 1) / 2);
            let s = ConvShape::new(&g).unwrap();
            let (dy_host, x_host) = (crate::testing::randn(&[n, oc, hw.0, hw.1], 7), crate::testing::randn(&[n, c, hw.0, hw.1], 8));
            let (dy, x) = (b.upload(&dy_host).unwrap(), b.upload(&x_host).unwrap());
            let cpu = super::super::cpu::conv2d_backward_weight(&dy_host, &x_host, &g);
            let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
            for prec in [Precision::F32, Precision::Bf16] {
                assert!(same_weight_grad_fits(&g, prec), "{g:?}");
                let per_word = pixels_per_word(prec);
                let searched = wg_layout::layout(&g, same_block_rows(oc), per_word);
                let bm = same_block_rows(oc);
                // the largest of these pads that fits (4×4 maps at bf16 fit only a segment pad)
                let odd = [[3, 5, 7, 3], [1, 1, 3, 3], [0, 1, 1, 3]].into_iter().find_map(|pads| wg_layout::padded(&g, bm, per_word, pads));
                let odd = odd.unwrap_or_else(|| panic!("no padded layout fits {g:?} {prec}"));
                for layout in [searched, odd] {
                    let dw = same_weight_grad(&dy, &x, &g, &s, 4, prec, Some(layout)).unwrap().download().unwrap();
                    let d = max_diff(&dw, &cpu);
                    // f32: the tensor cores' rounding drift; bf16: its operands' rounding
                    let bar = if prec == Precision::F32 { 2e-5 } else { 2e-2 } * scale;
                    assert!(d < bar, "{g:?} {prec} {layout:?}: {d} of scale {scale}");
                }
            }
        }
    }

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
