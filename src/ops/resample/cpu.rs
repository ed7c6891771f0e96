//! 2× nearest upsampling and 2×2 average pooling on the host (CPU reference).
//! Each works plane by plane: a plane is one (n, c) image of H×W values.

use crate::ops::PARALLEL_THRESHOLD;
use rayon::prelude::*;

/// Runs `f(plane index, output plane)` over `out` cut into planes of `len`,
/// in parallel when the output is large.
fn per_plane(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if len == 0 {
        return;
    }
    if out.len() >= PARALLEL_THRESHOLD {
        out.par_chunks_mut(len).enumerate().for_each(|(i, o)| f(i, o));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(i, o)| f(i, o));
    }
}

/// y [planes, 2H, 2W]: y[2i + a, 2j + b] = x[i, j] for a, b ∈ {0, 1}.
pub fn upsample_nearest2x(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let mut y = crate::ops::zeros(planes * 4 * h * w);
    per_plane(&mut y, 4 * h * w, |pl, y| {
        let x = &x[pl * h * w..(pl + 1) * h * w];
        for i in 0..h {
            let (top, bottom) = y[4 * i * w..4 * (i + 1) * w].split_at_mut(2 * w);
            for j in 0..w {
                top[2 * j] = x[i * w + j];
                top[2 * j + 1] = x[i * w + j];
            }
            bottom.copy_from_slice(top);
        }
    });
    y
}

/// dX [planes, H, W] from dY [planes, 2H, 2W]: dX[i, j] = Σ_{a, b ∈ {0,1}} dY[2i + a, 2j + b].
pub fn upsample_nearest2x_backward(dy: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let mut dx = crate::ops::zeros(planes * h * w);
    per_plane(&mut dx, h * w, |pl, dx| {
        let dy = &dy[pl * 4 * h * w..(pl + 1) * 4 * h * w];
        for i in 0..h {
            let (r0, r1) = (&dy[2 * i * 2 * w..][..2 * w], &dy[(2 * i + 1) * 2 * w..][..2 * w]);
            for j in 0..w {
                dx[i * w + j] = r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
            }
        }
    });
    dx
}

/// Output size of a 2×2 pool with ceil mode: ceil(H/2).
pub fn pooled(len: usize) -> usize {
    len.div_ceil(2)
}

/// The in-bounds rows (or columns) of window `i` along a dim of length `len`: [2i, min(2i + 2, len)).
#[inline]
fn window(i: usize, len: usize) -> std::ops::Range<usize> {
    2 * i..(2 * i + 2).min(len)
}

/// y [planes, ceil(H/2), ceil(W/2)]: y[i, j] = mean of x over the in-bounds part
/// of the window rows 2i..2i+2, cols 2j..2j+2 (divisor = its element count:
/// 4 inside, 2 on an odd edge, 1 in an odd corner), as PyTorch's
/// AvgPool2d(2, ceil_mode=True).
pub fn avg_pool2x2(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = (pooled(h), pooled(w));
    let mut y = crate::ops::zeros(planes * oh * ow);
    per_plane(&mut y, oh * ow, |pl, y| {
        let x = &x[pl * h * w..(pl + 1) * h * w];
        for i in 0..oh {
            for j in 0..ow {
                let (rows, cols) = (window(i, h), window(j, w));
                let count = (rows.len() * cols.len()) as f32;
                let sum: f32 = rows.flat_map(|r| cols.clone().map(move |c| x[r * w + c])).sum();
                y[i * ow + j] = sum / count;
            }
        }
    });
    y
}

/// dX [planes, H, W] from dY [planes, ceil(H/2), ceil(W/2)]: each input pixel
/// gets dY of its window divided by that window's element count.
pub fn avg_pool2x2_backward(dy: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let (oh, ow) = (pooled(h), pooled(w));
    let mut dx = crate::ops::zeros(planes * h * w);
    per_plane(&mut dx, h * w, |pl, dx| {
        let dy = &dy[pl * oh * ow..(pl + 1) * oh * ow];
        for r in 0..h {
            for c in 0..w {
                let (i, j) = (r / 2, c / 2);
                let count = (window(i, h).len() * window(j, w).len()) as f32;
                dx[r * w + c] = dy[i * ow + j] / count;
            }
        }
    });
    dx
}

/// Output length of a FIR 2× resampling along an axis of `len` inputs:
/// 2·len up, (len − 2)/2 + 1 down (len ≥ 2).
pub fn fir2x_len(len: usize, up: bool) -> usize {
    if up { 2 * len } else { (len - 2) / 2 + 1 }
}

/// The input index output `o` reads with tap `a` (kernels/resample.cu's
/// `fir::source`): 2o + a − 1 down, (o + a − 2)/2 up when o + a is even.
fn fir_source(o: usize, a: usize, len: usize, up: bool) -> Option<usize> {
    let i = if up {
        if (o + a) % 2 == 1 || o + a < 2 {
            return None;
        }
        (o + a - 2) / 2
    } else {
        (2 * o + a).checked_sub(1)?
    };
    (i < len).then_some(i)
}

/// The output whose tap `a` reads input `i` (the adjoint of `fir_source`).
fn fir_reader(i: usize, a: usize, out_len: usize, up: bool) -> Option<usize> {
    let o = if up {
        (2 * i + 2).checked_sub(a)?
    } else {
        let twice = (i + 1).checked_sub(a)?;
        if twice % 2 == 1 {
            return None;
        }
        twice / 2
    };
    (o < out_len).then_some(o)
}

/// The 2-D weight of taps (a, b): k_a·k_b/64 down, /16 up, k = (1, 3, 3, 1).
fn fir_weight(a: usize, b: usize, up: bool) -> f32 {
    const K: [f32; 4] = [1.0, 3.0, 3.0, 1.0];
    K[a] * K[b] * if up { 1.0 / 16.0 } else { 1.0 / 64.0 }
}

/// diffusers' `upsample_2d` (`up`) or `downsample_2d` with the FIR kernel
/// (1, 3, 3, 1) on [planes, H, W]: the sums over a (rows) then b (columns),
/// one fused multiply-add each, as the CUDA kernel.
pub fn fir2x(x: &[f32], planes: usize, h: usize, w: usize, up: bool) -> Vec<f32> {
    let (oh, ow) = (fir2x_len(h, up), fir2x_len(w, up));
    let mut y = crate::ops::zeros(planes * oh * ow);
    per_plane(&mut y, oh * ow, |pl, y| {
        let x = &x[pl * h * w..(pl + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut sum = 0f32;
                for a in 0..4 {
                    let Some(iy) = fir_source(oy, a, h, up) else { continue };
                    for b in 0..4 {
                        if let Some(ix) = fir_source(ox, b, w, up) {
                            sum = fir_weight(a, b, up).mul_add(x[iy * w + ix], sum);
                        }
                    }
                }
                y[oy * ow + ox] = sum;
            }
        }
    });
    y
}

/// dX [planes, H, W] of `fir2x` from dY: each input gathers w_ab·dY over the
/// outputs whose taps (a, b) read it.
pub fn fir2x_backward(dy: &[f32], planes: usize, h: usize, w: usize, up: bool) -> Vec<f32> {
    let (oh, ow) = (fir2x_len(h, up), fir2x_len(w, up));
    let mut dx = crate::ops::zeros(planes * h * w);
    per_plane(&mut dx, h * w, |pl, dx| {
        let dy = &dy[pl * oh * ow..(pl + 1) * oh * ow];
        for i in 0..h {
            for j in 0..w {
                let mut sum = 0f32;
                for a in 0..4 {
                    let Some(o) = fir_reader(i, a, oh, up) else { continue };
                    for b in 0..4 {
                        if let Some(p) = fir_reader(j, b, ow, up) {
                            sum = fir_weight(a, b, up).mul_add(dy[o * ow + p], sum);
                        }
                    }
                }
                dx[i * w + j] = sum;
            }
        }
    });
    dx
}
