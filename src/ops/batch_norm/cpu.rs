//! Batch normalisation (CPU reference). `x` is [N, C, S] contiguous (S = the
//! flattened spatial dims, 1 for a rank-2 input); channel c owns the N runs
//! x[n, c, :] of S values, M = N·S values in all. Statistics and reductions
//! run one rayon task per channel and accumulate in f64; the elementwise
//! passes run one task per (n, c) row.

use rayon::prelude::*;

/// Sizes of a batch-norm problem.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormDims {
    pub n: usize,
    pub c: usize,
    /// Product of the spatial dims (1 for a rank-2 input).
    pub s: usize,
}

impl BatchNormDims {
    /// Values per channel.
    pub fn m(&self) -> usize {
        self.n * self.s
    }
    /// The S values of row (n, ch) in a [N, C, S] buffer.
    fn row<'a>(&self, v: &'a [f32], n: usize, ch: usize) -> &'a [f32] {
        let start = (n * self.c + ch) * self.s;
        &v[start..start + self.s]
    }
}

/// Rows per rayon task in the elementwise passes: about 4096 values.
fn min_rows(s: usize) -> usize {
    (4096 / s.max(1)).max(1)
}

/// Per-channel batch mean and biased variance Σ(x−μ)²/M (two passes in f64).
/// Returned in f64 so the caller can form rstd and the unbiased variance exactly.
pub fn channel_stats(x: &[f32], d: BatchNormDims) -> (Vec<f64>, Vec<f64>) {
    let m = d.m() as f64;
    (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let rows = || (0..d.n).flat_map(move |n| d.row(x, n, ch).iter().map(|&v| v as f64));
            let mean = rows().sum::<f64>() / m;
            let var = rows().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
            (mean, var)
        })
        .unzip()
}

/// Forward with given per-channel statistics (batch statistics in training,
/// running statistics in evaluation):
///   y = (x − mean_c)·rstd_c·γ_c + β_c      (γ = 1, β = 0 when absent)
pub fn forward(
    x: &[f32],
    d: BatchNormDims,
    mean: &[f32],
    rstd: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    if d.s == 0 {
        return y;
    }
    y.par_chunks_mut(d.s).zip(x.par_chunks(d.s)).with_min_len(min_rows(d.s)).enumerate().for_each(|(row, (yr, xr))| {
        let ch = row % d.c;
        let mu = mean[ch];
        let scale = rstd[ch] * weight.map_or(1.0, |w| w[ch]);
        let shift = bias.map_or(0.0, |b| b[ch]);
        for (yv, &xv) in yr.iter_mut().zip(xr) {
            *yv = (xv - mu) * scale + shift;
        }
    });
    y
}

/// Gradients of batch norm: (dx if `need_dx`, dγ, dβ), dγ and dβ of length C.
///
/// With x̂ = (x − mean_c)·rstd_c and sums over the M values of channel c:
///   dβ_c = Σ dy,   dγ_c = Σ dy·x̂.
/// Training (mean, rstd are the batch statistics, so they depend on x):
///   dx = γ_c·rstd_c·(dy − Σdy/M − x̂·Σ(dy·x̂)/M)
/// Evaluation (running statistics are constants, y is affine in x):
///   dx = γ_c·rstd_c·dy
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dy: &[f32],
    x: &[f32],
    d: BatchNormDims,
    mean: &[f32],
    rstd: &[f32],
    weight: Option<&[f32]>,
    train: bool,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    // Per-channel Σdy and Σdy·x̂, one task per channel.
    let (sum_dy, sum_dy_xhat): (Vec<f64>, Vec<f64>) = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            let (mu, rs) = (mean[ch], rstd[ch]);
            let (mut a, mut b) = (0.0f64, 0.0f64);
            for n in 0..d.n {
                for (&dv, &xv) in d.row(dy, n, ch).iter().zip(d.row(x, n, ch)) {
                    a += dv as f64;
                    b += dv as f64 * ((xv - mu) * rs) as f64;
                }
            }
            (a, b)
        })
        .unzip();
    let dx = need_dx.then(|| {
        let mut dx = vec![0.0f32; x.len()];
        if d.s == 0 {
            return dx;
        }
        let m = d.m() as f64;
        dx.par_chunks_mut(d.s)
            .zip(dy.par_chunks(d.s).zip(x.par_chunks(d.s)))
            .with_min_len(min_rows(d.s))
            .enumerate()
            .for_each(|(row, (dxr, (dyr, xr)))| {
                let ch = row % d.c;
                let (mu, rs) = (mean[ch], rstd[ch]);
                let scale = rs * weight.map_or(1.0, |w| w[ch]);
                if train {
                    let mean_dy = (sum_dy[ch] / m) as f32;
                    let mean_dy_xhat = (sum_dy_xhat[ch] / m) as f32;
                    for ((o, &dv), &xv) in dxr.iter_mut().zip(dyr).zip(xr) {
                        let xhat = (xv - mu) * rs;
                        *o = scale * (dv - mean_dy - xhat * mean_dy_xhat);
                    }
                } else {
                    for (o, &dv) in dxr.iter_mut().zip(dyr) {
                        *o = scale * dv;
                    }
                }
            });
        dx
    });
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
    (dx, to_f32(sum_dy_xhat), to_f32(sum_dy))
}
