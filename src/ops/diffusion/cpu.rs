//! The fused diffusion updates on the host (reference for kernels/diffusion.cu).
//! Noise element i of a call is normal number `start + i` of the Philox stream
//! (seed, offset), so a batch drawn in pieces equals the batch drawn at once.

use crate::rng::PhiloxStream;
use rayon::prelude::*;

const CHUNK: usize = 4096;

/// x_t = a_s·x0 + b_s·ε and ε for every element, s = i / per_sample,
/// with a_s = √ᾱ_{t_s}, b_s = √(1 − ᾱ_{t_s}).
pub fn noisify(x0: &[f32], a: &[f32], b: &[f32], per_sample: usize, seed: u64, offset: u64, start: u64) -> (Vec<f32>, Vec<f32>) {
    let mut eps = vec![0.0; x0.len()];
    let stream = PhiloxStream::new(seed, offset);
    eps.par_chunks_mut(CHUNK).enumerate().for_each(|(c, e)| stream.fill_normal(start + (c * CHUNK) as u64, e));
    let xt = x0.iter().zip(&eps).enumerate().map(|(i, (&x, &e))| a[i / per_sample] * x + b[i / per_sample] * e).collect();
    (xt, eps)
}

/// Scalar coefficients of one sampler step (computed on the host in f64).
/// Mirrors `StepCoefs` in kernels/diffusion.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepCoefs {
    /// x̂0 = (x_t − eps_scale·ε̂) · inv_sqrt_abar
    pub eps_scale: f32,
    pub inv_sqrt_abar: f32,
    /// clip x̂0 to [−clip, clip] when clip > 0
    pub clip: f32,
    /// x_prev = c_x0·x̂0 + c_xt·x_t + c_eps·ε̂ + sigma·z
    pub c_x0: f32,
    pub c_xt: f32,
    pub c_eps: f32,
    pub sigma: f32,
}

/// A noise level per element from the model's variance output (DDPM's
/// variance_type "learned" / "learned_range"), in place of the scalar σ:
/// σ_i = sigma·s_i, s_i = √var_i (mode 0) or exp(a + b·var_i) (mode 1).
/// Mirrors `LearnedSigma` in kernels/diffusion.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LearnedSigma {
    pub mode: i32,
    pub a: f32,
    pub b: f32,
}

impl LearnedSigma {
    /// s_i for a variance output value.
    pub fn scale(&self, var: f32) -> f32 {
        if self.mode == 0 { var.sqrt() } else { (self.a + self.b * var).exp() }
    }
}

/// One sampler step (DDPM and DDIM are both this with different coefficients).
/// Returns x_prev and, when asked, x̂0. z is drawn only when sigma > 0; with
/// `learned` the noise of element i is sigma·s_i·z_i.
#[allow(clippy::too_many_arguments)]
pub fn step(
    xt: &[f32],
    eps: &[f32],
    k: StepCoefs,
    learned: Option<(&[f32], LearnedSigma)>,
    seed: u64,
    offset: u64,
    start: u64,
    want_x0: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let mut z = vec![0.0; if k.sigma > 0.0 { xt.len() } else { 0 }];
    let stream = PhiloxStream::new(seed, offset);
    z.par_chunks_mut(CHUNK).enumerate().for_each(|(c, zc)| stream.fill_normal(start + (c * CHUNK) as u64, zc));
    let x0_of = |i: usize| {
        let x0 = (xt[i] - k.eps_scale * eps[i]) * k.inv_sqrt_abar;
        if k.clip > 0.0 { x0.clamp(-k.clip, k.clip) } else { x0 }
    };
    let prev = (0..xt.len())
        .map(|i| {
            let mut v = k.c_x0 * x0_of(i) + k.c_xt * xt[i] + k.c_eps * eps[i];
            if k.sigma > 0.0 {
                let sigma = learned.map_or(k.sigma, |(var, ls)| k.sigma * ls.scale(var[i]));
                v += sigma * z[i];
            }
            v
        })
        .collect();
    (prev, want_x0.then(|| (0..xt.len()).map(x0_of).collect()))
}

/// Dynamic thresholding of x̂0 (diffusers' `_threshold_sample`), each sample of
/// `per` values in place: s = the `ratio` quantile of |x̂0| (linear
/// interpolation, as torch.quantile), clamped to [1, max]; x̂0 ← clamp(x̂0, −s, s)/s.
pub fn threshold(x0: &mut [f32], per: usize, ratio: f32, max: f32) {
    if per == 0 {
        return;
    }
    let mut sorted = vec![0f32; per];
    for sample in x0.chunks_mut(per) {
        for (a, v) in sorted.iter_mut().zip(sample.iter()) {
            *a = v.abs();
        }
        sorted.sort_unstable_by(f32::total_cmp);
        // torch.quantile: rank = q·(n − 1) in f32, lerp between its neighbours
        let rank = ratio * (per - 1) as f32;
        let (lo, frac) = (rank.floor() as usize, rank - rank.floor());
        let (a, b) = (sorted[lo], sorted[(lo + 1).min(per - 1)]);
        let q = if frac < 0.5 { a + frac * (b - a) } else { b - (b - a) * (1.0 - frac) };
        // torch.clamp(s, min=1, max): the max wins when max < 1
        let s = q.max(1.0).min(max);
        for v in sample.iter_mut() {
            *v = v.clamp(-s, s) / s;
        }
    }
}
