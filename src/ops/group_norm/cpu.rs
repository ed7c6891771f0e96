//! Group normalisation (CPU reference). `x` is [N, C, S] contiguous (S = the
//! flattened spatial dims); group (n, g) is the contiguous run of
//! M = (C/G)·S values x[n, g·C/G .. (g+1)·C/G, :]. One rayon task per (n, g);
//! statistics and reductions accumulate in f64.

use crate::ops::activation::Activation;
use rayon::prelude::*;

/// Sizes of a group-norm problem.
#[derive(Clone, Copy, Debug)]
pub struct GroupNormDims {
    pub n: usize,
    pub c: usize,
    /// Product of the spatial dims (1 for a rank-2 input).
    pub s: usize,
    pub groups: usize,
}

impl GroupNormDims {
    /// Channels per group.
    pub fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Elements per group.
    pub fn m(&self) -> usize {
        self.cg() * self.s
    }
}

/// Mean and 1/√(var + eps) of `v` (biased variance), two passes in f64 (vectorised lanes).
pub fn mean_rstd(v: &[f32], eps: f32) -> (f32, f32) {
    use crate::ops::fast_math::{sum_f64, sum_sq_dev_f64};
    let m = v.len() as f64;
    let mean = sum_f64(v) / m;
    let var = sum_sq_dev_f64(v, mean) / m;
    (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// Forward: returns (y, mean, rstd), mean and rstd of length N·G, indexed n·G + g.
///
///   μ = Σx/M,  σ² = Σ(x−μ)²/M,  rstd = 1/√(σ²+eps)
///   y = (x−μ)·rstd·γ_c + β_c      (γ = 1, β = 0 when absent)
pub fn forward(
    x: &[f32],
    d: GroupNormDims,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    forward_act(x, d, weight, bias, eps, false)
}

/// Group norm followed by SiLU in one pass over each group:
///   u = (x−μ)·rstd·γ_c + β_c,   y = silu(u) = u·σ(u).
/// Returns (y, mean, rstd) as [`forward`] does.
pub fn forward_silu(
    x: &[f32],
    d: GroupNormDims,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    forward_act(x, d, weight, bias, eps, true)
}

/// [`forward`] (silu false) or [`forward_silu`] (silu true).
fn forward_act(
    x: &[f32],
    d: GroupNormDims,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
    silu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (cg, m, s) = (d.cg(), d.m(), d.s);
    let mut y = crate::ops::zeros(x.len());
    let mut mean = vec![0.0f32; d.n * d.groups];
    let mut rstd = vec![0.0f32; d.n * d.groups];
    if m == 0 {
        return (y, mean, rstd);
    }
    y.par_chunks_mut(m).zip(x.par_chunks(m)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).enumerate().for_each(
        |(ng, ((yg, xg), (mu_out, rs_out)))| {
            let g = ng % d.groups;
            let (mu, rs) = mean_rstd(xg, eps);
            *mu_out = mu;
            *rs_out = rs;
            for ci in 0..cg {
                let ch = g * cg + ci;
                let scale = rs * weight.map_or(1.0, |w| w[ch]);
                let shift = bias.map_or(0.0, |b| b[ch]);
                let (yc, xc) = (&mut yg[ci * s..(ci + 1) * s], &xg[ci * s..(ci + 1) * s]);
                if silu {
                    crate::ops::fast_math::map(yc, xc, |xv| Activation::Silu.apply((xv - mu) * scale + shift));
                } else {
                    crate::ops::fast_math::map(yc, xc, |xv| (xv - mu) * scale + shift);
                }
            }
        },
    );
    (y, mean, rstd)
}

/// Gradients of group norm: (dx if `need_dx`, dγ, dβ), dγ and dβ of length C
/// (computed whether or not the op had a weight/bias; the caller drops them).
///
/// Per group (n, g), with x̂ = (x−μ)·rstd and g_i = dy_i·γ_c over its M elements:
///   dx_i = rstd·(g_i − mean(g) − x̂_i·mean(g·x̂))
/// since y depends on x_i directly and through μ and rstd:
///   ∂x̂_j/∂x_i = rstd·(δ_ij − 1/M − x̂_i·x̂_j/M).
/// The per-(n, c) sums A_nc = Σ_s dy, B_nc = Σ_s dy·x̂ give both the group
/// means (mean(g) = Σ_c γ_c·A_nc / M, mean(g·x̂) = Σ_c γ_c·B_nc / M) and
///   dβ_c = Σ_n A_nc,   dγ_c = Σ_n B_nc.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    weight: Option<&[f32]>,
    d: GroupNormDims,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (cg, m, s, c) = (d.cg(), d.m(), d.s, d.c);
    if m == 0 {
        return (need_dx.then(|| vec![0.0; x.len()]), vec![0.0; c], vec![0.0; c]);
    }
    // Pass 1: A_nc, B_nc, one task per group.
    let mut sums = vec![(0.0f64, 0.0f64); d.n * c];
    sums.par_chunks_mut(cg).zip(dy.par_chunks(m).zip(x.par_chunks(m))).enumerate().for_each(|(ng, (sg, (dyg, xg)))| {
        let (mu, rs) = (mean[ng], rstd[ng]);
        for (ci, acc) in sg.iter_mut().enumerate() {
            let range = ci * s..(ci + 1) * s;
            *acc = crate::ops::fast_math::sum_and_dot_centred_f64(&dyg[range.clone()], &xg[range], mu, rs);
        }
    });
    // Pass 2: dx, one task per group.
    let dx = need_dx.then(|| {
        let mut dx = crate::ops::zeros(x.len());
        dx.par_chunks_mut(m).zip(dy.par_chunks(m).zip(x.par_chunks(m))).enumerate().for_each(
            |(ng, (dxg, (dyg, xg)))| {
                let (n, g) = (ng / d.groups, ng % d.groups);
                let (mu, rs) = (mean[ng], rstd[ng]);
                let gamma = |ci: usize| weight.map_or(1.0, |w| w[g * cg + ci]) as f64;
                let row = &sums[n * c + g * cg..n * c + (g + 1) * cg];
                let mean_g = (0..cg).map(|ci| gamma(ci) * row[ci].0).sum::<f64>() / m as f64;
                let mean_gx = (0..cg).map(|ci| gamma(ci) * row[ci].1).sum::<f64>() / m as f64;
                let (mean_g, mean_gx) = (mean_g as f32, mean_gx as f32);
                for ci in 0..cg {
                    let gm = gamma(ci) as f32;
                    let range = ci * s..(ci + 1) * s;
                    crate::ops::fast_math::map2(&mut dxg[range.clone()], &dyg[range.clone()], &xg[range], |dv, xv| {
                        let xhat = (xv - mu) * rs;
                        rs * (dv * gm - mean_g - xhat * mean_gx)
                    });
                }
            },
        );
        dx
    });
    // dγ, dβ: sum the per-(n, c) partials over n.
    let (mut dw, mut db) = (vec![0.0f64; c], vec![0.0f64; c]);
    for row in sums.chunks(c) {
        for (ch, &(a, b)) in row.iter().enumerate() {
            db[ch] += a;
            dw[ch] += b;
        }
    }
    (dx, dw.into_iter().map(|v| v as f32).collect(), db.into_iter().map(|v| v as f32).collect())
}

/// The gradient reaching u = x̂·γ + β in the fused group norm + SiLU:
///   dz = dy·silu'(u),  silu'(u) = σ(u)·(1 + u·(1 − σ(u))),
/// with u recomputed from x and the saved statistics. [`backward`] applied to
/// dz then gives dx, dγ and dβ of the fused op.
pub fn silu_grad(
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    d: GroupNormDims,
) -> Vec<f32> {
    let (cg, m, s) = (d.cg(), d.m(), d.s);
    let mut dz = crate::ops::zeros(x.len());
    if m == 0 {
        return dz;
    }
    dz.par_chunks_mut(m).zip(dy.par_chunks(m).zip(x.par_chunks(m))).enumerate().for_each(|(ng, (dzg, (dyg, xg)))| {
        let g = ng % d.groups;
        let (mu, rs) = (mean[ng], rstd[ng]);
        for ci in 0..cg {
            let ch = g * cg + ci;
            let (gm, bt) = (weight.map_or(1.0, |w| w[ch]), bias.map_or(0.0, |b| b[ch]));
            let range = ci * s..(ci + 1) * s;
            crate::ops::fast_math::map2(&mut dzg[range.clone()], &dyg[range.clone()], &xg[range], |dv, xv| {
                dv * Activation::Silu.derivative((xv - mu) * rs * gm + bt)
            });
        }
    });
    dz
}
