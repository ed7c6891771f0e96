//! 2-D convolution on the host (CPU reference): im2col + gemm, and the
//! direct kernels where the CPU has them (`direct.rs`, the forward on AVX-512
//! or AVX2; on AVX-512 `channel_lanes.rs`, the small maps' forward, and
//! `direct_weight_grad.rs`, the 3×3 same convs' weight gradient).
//!
//! Notation (one image n): x_n [C, H, W], weight W [OC, K] with K = C·KH·KW
//! (PyTorch's [OC, C, KH, KW] read as a matrix), y_n [OC, P] with P = OH·OW.
//! The im2col matrix col_n [K, P] holds, in row r = (c·KH + ki)·KW + kj and
//! column p = oy·OW + ox, the input pixel that kernel tap (c, ki, kj) sees
//! for output pixel (oy, ox):
//!   col_n[r, p] = x_n[c, oy·s − pad + ki, ox·s − pad + kj]   (0 outside the image)
//! so that
//!   forward:  y_n  = W · col_n + b·1ᵀ
//!   backward: dX_n = col2im(Wᵀ · dY_n)        (col2im = adjoint of im2col: scatter-add)
//!             dW   = Σ_n dY_n · col_nᵀ
//!             dB   = Σ_n dY_n · 1             (sum over batch and pixels)
//! A 1×1 kernel with stride 1 and no padding has col_n = x_n, so no copy is made.

use crate::ops::matmul::cpu::{MatRef, gemm};
use crate::ops::PARALLEL_THRESHOLD;
use rayon::prelude::*;

/// Shapes of one convolution (validated by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub oc: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    /// Rows of the im2col matrix: C·KH·KW.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output pixels per image: OH·OW.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
    /// True when col_n = x_n (1×1 kernel, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    fn x_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn y_len(&self) -> usize {
        self.oc * self.p()
    }
    /// The output columns ox whose input column ox·s − pad + kj lies in [0, W).
    fn valid_ox(&self, kj: usize) -> (usize, usize) {
        valid_range(self.ow, self.w, self.stride, self.pad, kj)
    }
    fn valid_oy(&self, ki: usize) -> (usize, usize) {
        valid_range(self.oh, self.h, self.stride, self.pad, ki)
    }
}

/// [lo, hi): the o in 0..out with 0 ≤ o·s + k − pad < len.
fn valid_range(out: usize, len: usize, s: usize, pad: usize, k: usize) -> (usize, usize) {
    // o·s + k ≥ pad  ⇔  o ≥ ceil((pad − k)/s)
    let lo = if k >= pad { 0 } else { (pad - k).div_ceil(s) };
    // o·s + k − pad ≤ len − 1  ⇔  o ≤ (len − 1 + pad − k)/s
    let hi = if len + pad > k { ((len - 1 + pad - k) / s + 1).min(out) } else { 0 };
    (lo.min(hi), hi)
}

/// col [K, P] from one image x_n [C, H, W]; out-of-image taps are 0.
pub fn im2col(x: &[f32], g: &ConvGeom, col: &mut [f32]) {
    let p = g.p();
    for (r, row) in col[..g.k() * p].chunks_mut(p.max(1)).enumerate() {
        im2col_row(x, g, r, row);
    }
}

/// Row r = (c·KH + ki)·KW + kj of col [K, P]: the P input pixels tap (c, ki, kj) sees.
pub fn im2col_row(x: &[f32], g: &ConvGeom, r: usize, row: &mut [f32]) {
    let (c, tap) = (r / (g.kh * g.kw), r % (g.kh * g.kw));
    let (ki, kj) = (tap / g.kw, tap % g.kw);
    let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
    let (y0, y1) = g.valid_oy(ki);
    let (x0, x1) = g.valid_ox(kj);
    for (oy, dst) in row[..g.p()].chunks_mut(g.ow.max(1)).enumerate() {
        if oy < y0 || oy >= y1 || x0 >= x1 {
            dst.fill(0.0);
            continue;
        }
        let src = &plane[(oy * g.stride + ki - g.pad) * g.w..][..g.w];
        dst[..x0].fill(0.0);
        dst[x1..].fill(0.0);
        // input column of ox is ox·s + kj − pad (≥ 0 for ox ≥ x0)
        let ix0 = x0 * g.stride + kj - g.pad;
        if g.stride == 1 {
            dst[x0..x1].copy_from_slice(&src[ix0..ix0 + (x1 - x0)]);
        } else {
            for (d, ox) in dst[x0..x1].iter_mut().zip(0..) {
                *d = src[ix0 + ox * g.stride];
            }
        }
    }
}

/// dx_n [C, H, W] += col2im(dcol [K, P]): each col entry is added back to the
/// input pixel im2col read it from (the adjoint of [`im2col`]).
pub fn col2im(dcol: &[f32], g: &ConvGeom, dx: &mut [f32]) {
    let p = g.p();
    let mut r = 0;
    for c in 0..g.c {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..g.kh {
            let (y0, y1) = g.valid_oy(ki);
            for kj in 0..g.kw {
                let (x0, x1) = g.valid_ox(kj);
                let row = &dcol[r * p..(r + 1) * p];
                r += 1;
                if x0 >= x1 {
                    continue;
                }
                let ix0 = x0 * g.stride + kj - g.pad;
                for oy in y0..y1 {
                    let src = &row[oy * g.ow + x0..oy * g.ow + x1];
                    let dst = &mut plane[(oy * g.stride + ki - g.pad) * g.w..][..g.w];
                    for (&v, ox) in src.iter().zip(0..) {
                        dst[ix0 + ox * g.stride] += v;
                    }
                }
            }
        }
    }
}

/// Runs `f(image index, image output chunk, col scratch)` for every image:
/// across rayon tasks (each with its own scratch, gemm single-threaded) when
/// N > 1, else once with gemm allowed to use threads. Returns nothing; `f`
/// receives the `parallel` flag to pass on to gemm.
fn per_image(out: &mut [f32], chunk: usize, n: usize, scratch: usize, f: impl Fn(usize, &mut [f32], &mut Vec<f32>, bool) + Sync) {
    if chunk == 0 {
        return;
    }
    if n > 1 {
        out.par_chunks_mut(chunk).enumerate().for_each_init(|| vec![0.0; scratch], |col, (i, o)| f(i, o, col, false));
    } else {
        let mut col = vec![0.0; scratch];
        for (i, o) in out.chunks_mut(chunk).enumerate() {
            f(i, o, &mut col, true);
        }
    }
}

/// What the forward convolution adds to W·col_n as it writes y: a bias per
/// output channel, a bias per (image, channel) (the UNet's time embedding)
/// and a tensor shaped like y (a residual), each optional.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// [OC]
    pub bias: Option<&'a [f32]>,
    /// [N, OC]
    pub sample_bias: Option<&'a [f32]>,
    /// [N, OC, OH, OW]
    pub residual: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    /// bias[o] + sample_bias[i, o] for every output channel o of image i.
    pub fn row_add(&self, i: usize, oc: usize) -> Vec<f32> {
        let mut add = self.bias.map_or_else(|| vec![0.0; oc], |b| b[..oc].to_vec());
        if let Some(sb) = self.sample_bias {
            add.iter_mut().zip(&sb[i * oc..(i + 1) * oc]).for_each(|(a, s)| *a += s);
        }
        add
    }

    fn is_empty(&self) -> bool {
        self.bias.is_none() && self.sample_bias.is_none() && self.residual.is_none()
    }
}

/// y [N, OC, OH, OW] = conv(x [N, C, H, W], weight [OC, C, KH, KW]) + bias [OC].
pub fn conv2d_forward(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &ConvGeom) -> Vec<f32> {
    conv2d_forward_fused(x, weight, &Epilogue { bias, ..Epilogue::default() }, g)
}

/// y = conv(x, weight) + epilogue: the direct kernel where the CPU has
/// AVX-512 or AVX2 ([`super::direct`]), else im2col + gemm.
pub fn conv2d_forward_fused(x: &[f32], weight: &[f32], epi: &Epilogue, g: &ConvGeom) -> Vec<f32> {
    if super::direct::available() {
        super::direct::forward(x, weight, epi, g)
    } else {
        conv2d_forward_gemm(x, weight, epi, g)
    }
}

/// y = conv(x, weight) + epilogue by im2col + gemm per image (the reference
/// the direct kernel is tested against).
pub fn conv2d_forward_gemm(x: &[f32], weight: &[f32], epi: &Epilogue, g: &ConvGeom) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let mut out = crate::ops::zeros(g.n * g.y_len());
    let scratch = if g.is_pointwise() { 0 } else { k * p };
    let w_mat = MatRef::rows(weight, g.oc, k);
    per_image(&mut out, g.y_len(), g.n, scratch, |i, y, col, parallel| {
        let x_n = &x[i * g.x_len()..(i + 1) * g.x_len()];
        let col: &[f32] = if g.is_pointwise() {
            x_n
        } else {
            im2col(x_n, g, col);
            col
        };
        // y_n = the epilogue, then y_n += W · col_n
        if !epi.is_empty() {
            let row_add = epi.row_add(i, g.oc);
            for (o, row) in y.chunks_mut(p).enumerate() {
                match epi.residual {
                    Some(r) => {
                        let r = &r[(i * g.oc + o) * p..][..p];
                        row.iter_mut().zip(r).for_each(|(d, &v)| *d = v + row_add[o]);
                    }
                    None => row.fill(row_add[o]),
                }
            }
        }
        gemm(w_mat, MatRef::rows(col, k, p), y, p, !epi.is_empty(), parallel);
    });
    out
}

/// dX [N, C, H, W]: dX_n = col2im(Wᵀ · dY_n), or for a stride-1 square
/// kernel the forward convolution that equals it (see [`input_grad_as_conv`]).
pub fn conv2d_backward_input(dy: &[f32], weight: &[f32], g: &ConvGeom) -> Vec<f32> {
    if g.stride == 1 && g.kh == g.kw && g.kh > 1 && g.pad < g.kh && g.oh > 0 && g.ow > 0 {
        return input_grad_as_conv(dy, weight, g);
    }
    let (k, p) = (g.k(), g.p());
    let mut dx = crate::ops::zeros(g.n * g.x_len());
    let scratch = if g.is_pointwise() { 0 } else { k * p };
    // Wᵀ [K, OC] as a strided view of W [OC, K]
    let wt = MatRef::rows(weight, g.oc, k).t();
    per_image(&mut dx, g.x_len(), g.n, scratch, |i, dx_n, dcol, parallel| {
        let dy_n = MatRef::rows(&dy[i * g.y_len()..(i + 1) * g.y_len()], g.oc, p);
        if g.is_pointwise() {
            // col2im is the identity here: dX_n = Wᵀ · dY_n directly
            gemm(wt, dy_n, dx_n, p, false, parallel);
        } else {
            gemm(wt, dy_n, dcol, p, false, parallel);
            col2im(dcol, g, dx_n);
        }
    });
    dx
}

/// Stride 1: dx[c, iy, ix] = Σ_{oc, kh, kw} W[oc, c, kh, kw]·dy[oc, iy + p − kh, ix + p − kw],
/// which with kh' = KH − 1 − kh is a forward convolution of dy with
///   W'[c, oc, kh', kw'] = W[oc, c, KH − 1 − kh', KW − 1 − kw'],  padding KH − 1 − p,
/// whose output is H × W again. im2col gathers where col2im would scatter-add.
fn input_grad_as_conv(dy: &[f32], weight: &[f32], g: &ConvGeom) -> Vec<f32> {
    use super::channel_lanes;
    let gt = channel_lanes::input_grad_geom(g);
    if channel_lanes::takes(&gt) {
        // W' packed straight from W
        return channel_lanes::forward_packed(dy, &channel_lanes::Packed::for_input_grad(weight, g), &Epilogue::default(), &gt);
    }
    let kk = g.kh * g.kw;
    let mut flipped = vec![0.0; weight.len()];
    // written in order, an input channel a task
    flipped.par_chunks_mut(g.oc * kk).enumerate().for_each(|(c, dst_c)| {
        for (oc, dst) in dst_c.chunks_mut(kk).enumerate() {
            let src = &weight[(oc * g.c + c) * kk..][..kk];
            for (d, &w) in dst.iter_mut().zip(src.iter().rev()) {
                *d = w;
            }
        }
    });
    let pad = g.kh - 1 - g.pad;
    let gt = ConvGeom { n: g.n, c: g.oc, h: g.oh, w: g.ow, oc: g.c, kh: g.kh, kw: g.kw, stride: 1, pad, oh: g.h, ow: g.w };
    debug_assert_eq!(g.oh + 2 * pad + 1 - g.kh, g.h);
    conv2d_forward(dy, &flipped, None, &gt)
}

/// dW [OC, C, KH, KW] = Σ_n dY_n [OC, P] · col_nᵀ [P, K]: the AVX-512
/// direct kernel where it takes the conv (`direct_weight_grad`: stride-1 3×3
/// same convs), else [`conv2d_backward_weight_gemm`].
pub fn conv2d_backward_weight(dy: &[f32], x: &[f32], g: &ConvGeom) -> Vec<f32> {
    if super::direct_weight_grad::takes(g) {
        return super::direct_weight_grad::backward_weight(dy, x, g);
    }
    conv2d_backward_weight_gemm(dy, x, g)
}

/// [`conv2d_backward_weight`] by im2col + gemm.
///
/// The batch is cut into one contiguous run of images per rayon thread; each
/// run sums into its own partial dW (with its own col buffer), and the
/// partials are added in run order, so the result depends only on the
/// thread count, not on scheduling.
pub fn conv2d_backward_weight_gemm(dy: &[f32], x: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let run = |images: std::ops::Range<usize>, parallel: bool| -> Vec<f32> {
        let mut dw = vec![0.0; g.oc * k];
        let mut col = vec![0.0; if g.is_pointwise() { 0 } else { k * p }];
        for i in images {
            let x_n = &x[i * g.x_len()..(i + 1) * g.x_len()];
            let col_n: &[f32] = if g.is_pointwise() {
                x_n
            } else {
                im2col(x_n, g, &mut col);
                &col
            };
            let dy_n = MatRef::rows(&dy[i * g.y_len()..(i + 1) * g.y_len()], g.oc, p);
            // dW += dY_n · col_nᵀ (col_nᵀ as a strided view)
            gemm(dy_n, MatRef::rows(col_n, k, p).t(), &mut dw, k, true, parallel);
        }
        dw
    };
    if g.n <= 1 {
        return run(0..g.n, true);
    }
    let per_run = g.n.div_ceil(rayon::current_num_threads().clamp(1, g.n));
    let partials: Vec<Vec<f32>> =
        (0..g.n.div_ceil(per_run)).into_par_iter().map(|r| run(r * per_run..((r + 1) * per_run).min(g.n), false)).collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![0.0; g.oc * k]);
    for part in partials {
        dw.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
    dw
}

/// dB [OC]: dB[o] = Σ_{n, oy, ox} dY[n, o, oy, ox].
pub fn bias_grad(dy: &[f32], n: usize, oc: usize, p: usize) -> Vec<f32> {
    let channel = |o: usize| -> f32 { (0..n).map(|i| dy[(i * oc + o) * p..(i * oc + o + 1) * p].iter().sum::<f32>()).sum() };
    if dy.len() >= PARALLEL_THRESHOLD {
        (0..oc).into_par_iter().map(channel).collect()
    } else {
        (0..oc).map(channel).collect()
    }
}
