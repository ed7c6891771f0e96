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
    let mut mean = vec![0.0f32; d.n * d.groups];
    let mut rstd = vec![0.0f32; d.n * d.groups];
    if m == 0 {
        return (vec![0.0; x.len()], mean, rstd);
    }
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    let y_out = &mut y.spare_capacity_mut()[..x.len()];
    y_out.par_chunks_mut(m).zip(x.par_chunks(m)).zip(mean.par_iter_mut().zip(rstd.par_iter_mut())).enumerate().for_each(
        |(ng, ((yg, xg), (mu_out, rs_out)))| {
            let (g, yg) = (ng % d.groups, crate::ops::zeroed(yg));
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
    // SAFETY: the groups cover x.len() values, each written by `zeroed`
    unsafe { y.set_len(x.len()) };
    (y, mean, rstd)
}

/// Gradients of group norm, or of group norm + SiLU when `silu`: (dx if
/// `need_dx`, with `add` — x's gradient from its other uses — summed in as
/// it is written; dγ, dβ), dγ and dβ of length C (computed whether or not
/// the op had a weight/bias; the caller drops them).
///
/// With SiLU the gradient reaching u = x̂·γ + β is
///   dz = dy·silu'(u),  silu'(u) = σ(u)·(1 + u·(1 − σ(u))),
/// u recomputed from x and the saved statistics; the norm's formulas below
/// then apply to dz in place of dy.
///
/// Per group (n, g), with x̂ = (x−μ)·rstd and g_i = dy_i·γ_c over its M elements:
///   dx_i = rstd·(g_i − mean(g) − x̂_i·mean(g·x̂))
/// since y depends on x_i directly and through μ and rstd:
///   ∂x̂_j/∂x_i = rstd·(δ_ij − 1/M − x̂_i·x̂_j/M).
/// The per-(n, c) sums A_nc = Σ_s dy, B_nc = Σ_s dy·x̂ give both the group
/// means (mean(g) = Σ_c γ_c·A_nc / M, mean(g·x̂) = Σ_c γ_c·B_nc / M) and
///   dβ_c = Σ_n A_nc,   dγ_c = Σ_n B_nc.
/// A group's means need only its own sums, so one task a group does it all:
/// dz into a scratch that stays in cache, the sums, dx — dy and x read from
/// memory once and dx written once, where dz, the sums and dx as passes of
/// their own (and `add` after) went over memory five to seven times.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dy: &[f32],
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    silu: bool,
    d: GroupNormDims,
    need_dx: bool,
    add: Option<&[f32]>,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    use crate::ops::fast_math::{map2, sum_and_dot_centred_f64};
    let (cg, m, s, c) = (d.cg(), d.m(), d.s, d.c);
    assert!(dy.len() == x.len() && add.is_none_or(|a| a.len() == x.len()));
    if m == 0 {
        return (need_dx.then(|| vec![0.0; x.len()]), vec![0.0; c], vec![0.0; c]);
    }
    let mut sums = vec![(0.0f64, 0.0f64); d.n * c];
    let group = |dz: &mut Vec<f32>, ng: usize, sg: &mut [(f64, f64)], dxg: Option<&mut [std::mem::MaybeUninit<f32>]>| {
        let (g, at) = (ng % d.groups, ng * m);
        let (mu, rs) = (mean[ng], rstd[ng]);
        let (dyg, xg) = (&dy[at..at + m], &x[at..at + m]);
        let gamma = |ci: usize| weight.map_or(1.0, |w| w[g * cg + ci]);
        let channel = |ci: usize| ci * s..(ci + 1) * s;
        let dzg = if silu {
            dz.resize(m, 0.0);
            for ci in 0..cg {
                let (gm, bt) = (gamma(ci), bias.map_or(0.0, |b| b[g * cg + ci]));
                map2(&mut dz[channel(ci)], &dyg[channel(ci)], &xg[channel(ci)], |dv, xv| {
                    dv * Activation::Silu.derivative((xv - mu) * rs * gm + bt)
                });
            }
            &dz[..m]
        } else {
            dyg
        };
        for (ci, acc) in sg.iter_mut().enumerate() {
            *acc = sum_and_dot_centred_f64(&dzg[channel(ci)], &xg[channel(ci)], mu, rs);
        }
        let Some(dxg) = dxg else { return };
        let dxg = crate::ops::zeroed(dxg);
        let mean_g = (0..cg).map(|ci| gamma(ci) as f64 * sg[ci].0).sum::<f64>() / m as f64;
        let mean_gx = (0..cg).map(|ci| gamma(ci) as f64 * sg[ci].1).sum::<f64>() / m as f64;
        let (mean_g, mean_gx) = (mean_g as f32, mean_gx as f32);
        for ci in 0..cg {
            let gm = gamma(ci);
            map2(&mut dxg[channel(ci)], &dzg[channel(ci)], &xg[channel(ci)], |dv, xv| {
                let xhat = (xv - mu) * rs;
                rs * (dv * gm - mean_g - xhat * mean_gx)
            });
        }
        if let Some(add) = add {
            for (v, &a) in dxg.iter_mut().zip(&add[at..at + m]) {
                *v += a;
            }
        }
    };
    let dx = if need_dx {
        let mut dx: Vec<f32> = Vec::with_capacity(x.len());
        dx.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(m)
            .zip(sums.par_chunks_mut(cg))
            .enumerate()
            .for_each_init(Vec::new, |dz, (ng, (dxg, sg))| group(dz, ng, sg, Some(dxg)));
        // SAFETY: the groups cover x.len() values, each written by `zeroed`
        unsafe { dx.set_len(x.len()) };
        Some(dx)
    } else {
        sums.par_chunks_mut(cg).enumerate().for_each_init(Vec::new, |dz, (ng, sg)| group(dz, ng, sg, None));
        None
    };
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
