//! The score-SDE variance-exploding sampler: diffusers' ScoreSdeVeScheduler
//! as ScoreSdeVePipeline drives it (predictor–corrector; Song et al. 2021).
//! The model takes noise levels σ and returns the score ∇ log p(x; σ).
//!
//! With N steps, t_i = linspace(1, ε, N) (torch's f32 arithmetic), the
//! model's σ_i = σ_min·(σ_max/σ_min)^{t_i}, and the discrete levels
//! s_j = exp(linspace(ln σ_min, ln σ_max, N)). From x = σ_max·z, each step i:
//!   corrector (correct_steps times): score = model(x, σ_i), z ~ N(0, I),
//!     ε = 2·(snr·mean_b ‖z_b‖ / mean_b ‖score_b‖)²,  x ← x + ε·score + √(2ε)·z
//!   predictor: score = model(x, σ_i), j = ⌊t_i·(N − 1)⌋, g² = s_j² − s_{j−1}² (s_{−1} = 0),
//!     mean = x + g²·score,  x ← mean + g·z
//! and the result is the last mean clamped to [0, 1].

use super::sampler::Samples;
use crate::error::{Error, Result};
use crate::ops::{self, add, mul_scalar};
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

fn d_steps() -> usize {
    2000
}
fn d_snr() -> f64 {
    0.15
}
fn d_sigma_min() -> f64 {
    0.01
}
fn d_sigma_max() -> f64 {
    1348.0
}
fn d_eps() -> f64 {
    1e-5
}
fn d_one() -> usize {
    1
}

/// ScoreSdeVeScheduler's config keys and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VeConfig {
    #[serde(default = "d_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_snr")]
    pub snr: f64,
    #[serde(default = "d_sigma_min")]
    pub sigma_min: f64,
    #[serde(default = "d_sigma_max")]
    pub sigma_max: f64,
    #[serde(default = "d_eps")]
    pub sampling_eps: f64,
    #[serde(default = "d_one")]
    pub correct_steps: usize,
}

impl VeConfig {
    /// Refuse values the sampler cannot use, naming the key.
    pub fn validate(&self) -> Result<()> {
        let refuse = |key: &str, value: &dyn std::fmt::Display, why: &str| Err(Error::Argument { op: "ScoreSdeVeScheduler", msg: format!("{key} {value}: {why}") });
        if !(self.sigma_min > 0.0 && self.sigma_min.is_finite()) {
            return refuse("sigma_min", &self.sigma_min, "must be positive");
        }
        if !(self.sigma_max > self.sigma_min && self.sigma_max.is_finite()) {
            return refuse("sigma_max", &self.sigma_max, "must exceed sigma_min");
        }
        if !(self.sampling_eps > 0.0 && self.sampling_eps <= 1.0) {
            return refuse("sampling_eps", &self.sampling_eps, "must be in (0, 1]");
        }
        if !(self.snr > 0.0 && self.snr.is_finite()) {
            return refuse("snr", &self.snr, "must be positive");
        }
        Ok(())
    }
}

/// torch.linspace(start, end, steps) in f32 as PyTorch's CPU kernel computes
/// it: step = (end − start)/(steps − 1) in f32; the first half start + step·i,
/// the rest end − step·(steps − 1 − i), each with one rounding (a fused
/// multiply-add: the values torch 2.x gives, bit for bit; rounding the
/// product first differs in 1 ulp at a quarter of 1000 points, enough to move
/// the predictor's ⌊t·(N − 1)⌋ at the first steps).
pub fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - 1 - i) as f32, end) }).collect()
}

/// The levels of an N-step run.
#[derive(Clone, Debug, PartialEq)]
pub struct VePlan {
    /// t_i, from 1 down to sampling_eps.
    pub timesteps: Vec<f32>,
    /// σ_i, the model's input at step i.
    pub sigmas: Vec<f32>,
    /// s_j, the discrete levels the predictor steps between.
    pub discrete_sigmas: Vec<f32>,
}

impl VePlan {
    pub fn new(config: &VeConfig, steps: usize) -> Result<VePlan> {
        config.validate()?;
        if steps == 0 {
            return Err(Error::Argument { op: "--steps", msg: "the score-SDE sampler needs at least 1 step".into() });
        }
        let timesteps = torch_linspace_f32(1.0, config.sampling_eps as f32, steps);
        // diffusers: torch.tensor([sigma_min * (sigma_max / sigma_min) ** t for t in timesteps]), f32 pow
        let (lo, ratio) = (config.sigma_min as f32, (config.sigma_max / config.sigma_min) as f32);
        let sigmas = timesteps.iter().map(|&t| lo * ratio.powf(t)).collect();
        let logs = torch_linspace_f32(config.sigma_min.ln() as f32, config.sigma_max.ln() as f32, steps);
        let discrete_sigmas = logs.iter().map(|v| v.exp()).collect();
        Ok(VePlan { timesteps, sigmas, discrete_sigmas })
    }

    /// The predictor's g at step i: √(s_j² − s_{j−1}²), j = ⌊t_i·(N − 1)⌋ (f32), s_{−1} = 0.
    pub fn predictor_g(&self, i: usize) -> f32 {
        let j = (self.timesteps[i] * (self.timesteps.len() - 1) as f32) as usize;
        let s = self.discrete_sigmas[j];
        let adjacent = if j == 0 { 0.0 } else { self.discrete_sigmas[j - 1] };
        (s * s - adjacent * adjacent).sqrt()
    }
}

/// Per sample ‖v_b‖ of [B, …] (on the host, in f64).
fn norms(v: &Tensor) -> Result<Vec<f64>> {
    let b = v.dims()[0];
    let flat = ops::reshape(v, [b, v.numel() / b.max(1)])?;
    let squares = ops::sum(&ops::mul(&flat, &flat)?, &[1], false)?;
    Ok(squares.try_to_vec()?.iter().map(|&s| (s as f64).sqrt()).collect())
}

/// The corrector's Langevin step: ε = 2·(snr·mean‖z‖/mean‖score‖)², x + ε·score + √(2ε)·z.
pub fn correct(x: &Tensor, score: &Tensor, z: &Tensor, snr: f64) -> Result<Tensor> {
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (grad_norm, noise_norm) = (mean(norms(score)?), mean(norms(z)?));
    let step = 2.0 * (snr * noise_norm / grad_norm).powi(2);
    add(&add(x, &mul_scalar(score, step as f32)?)?, &mul_scalar(z, (2.0 * step).sqrt() as f32)?)
}

/// The predictor's reverse-SDE step with diffusion g: (mean = x + g²·score, mean + g·z).
pub fn predict(x: &Tensor, score: &Tensor, z: &Tensor, g: f32) -> Result<(Tensor, Tensor)> {
    let mean = add(x, &mul_scalar(score, g * g)?)?;
    let next = add(&mean, &mul_scalar(z, g)?)?;
    Ok((next, mean))
}

/// Run the sampler from unit noise `x_unit` (samples `first..` of the run;
/// scaled by σ_max here, as the pipeline's init_noise_sigma): `model(x, σ)`
/// takes [B] noise levels. The k-th noise draw of the run (corrector and
/// predictor draws in order) is Philox stream (seed, 1 + k) from the
/// run's element `first·C·H·W`, as the DDPM/DDIM samplers draw theirs.
/// Returns the last predictor mean ([`to_images`] clamps it as the pipeline).
pub fn sample(
    mut model: impl FnMut(&Tensor, &Tensor) -> Result<Tensor>,
    x_unit: Tensor,
    first: usize,
    config: &VeConfig,
    steps: usize,
    seed: u64,
) -> Result<Samples> {
    let plan = VePlan::new(config, steps)?;
    let batch = x_unit.dims()[0];
    let device = x_unit.device();
    let start = (first * (x_unit.numel() / batch.max(1))) as u64;
    let mut draws = 0u64;
    let mut noise = |shape: &[usize]| {
        draws += 1;
        ops::random::randn_at(shape.to_vec(), seed, draws, start, device)
    };
    let mut x = mul_scalar(&x_unit, config.sigma_max as f32)?;
    let mut mean = x.clone();
    let mut evals = 0;
    for (i, &sigma) in plan.sigmas.iter().enumerate() {
        let _nvtx = crate::device::nvtx::range("sampler step");
        let sigmas = Tensor::full_on(sigma, [batch], device)?;
        for _ in 0..config.correct_steps {
            let score = model(&x, &sigmas)?;
            x = correct(&x, &score, &noise(x.dims())?, config.snr)?;
            evals += 1;
        }
        let score = model(&x, &sigmas)?;
        (x, mean) = predict(&x, &score, &noise(x.dims())?, plan.predictor_g(i))?;
        evals += 1;
    }
    Ok(Samples { x0: mean, model_evals: evals, x0_history: vec![] })
}

/// The pipeline's images from a run: the samples clamped to [0, 1].
pub fn to_images(mut s: Samples) -> Result<Samples> {
    let device = s.x0.device();
    let values: Vec<f32> = s.x0.try_to_vec()?.into_iter().map(|v| v.clamp(0.0, 1.0)).collect();
    s.x0 = Tensor::from_vec_on(values, s.x0.dims().to_vec(), device)?;
    Ok(s)
}
