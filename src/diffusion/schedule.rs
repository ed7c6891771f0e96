//! Noise schedules over T discrete steps: β_t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s,
//! σ_t = √β_t. Computed in f64.

use crate::error::{Error, Result};
use std::f64::consts::FRAC_PI_2;

/// How the betas are made.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleKind {
    /// β_t = linspace(β_min, β_max, T) (the lesson uses β_max = 0.01).
    Linear { beta_min: f64, beta_max: f64 },
    /// The lesson's cosine: ᾱ(t) = cos²(t/T·π/2), α_t = ᾱ(t)/ᾱ(t−1) with ᾱ(−1)
    /// taken as 1, so α_0 = ᾱ(0) = 1 (the lesson divides by ᾱ(−1) < 1 and gets
    /// α_0 > 1, a NaN σ_0; here β_0 = 0).
    Cosine,
    /// diffusers' "scaled_linear": β_t = linspace(√β_min, √β_max, T)².
    ScaledLinear { beta_min: f64, beta_max: f64 },
    /// diffusers' "squaredcos_cap_v2" (Nichol & Dhariwal): ᾱ(s) = cos²((s+0.008)/1.008·π/2),
    /// β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), 0.999).
    SquaredCosCapV2,
    /// diffusers' "sigmoid" (DDPMScheduler): β_t = σ(linspace(−6, 6, T))·(β_max − β_min) + β_min.
    Sigmoid { beta_min: f64, beta_max: f64 },
    /// Betas given explicitly (diffusers' `trained_betas`).
    Explicit(Vec<f64>),
}

/// A schedule of T steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub sigmas: Vec<f64>,
}

/// torch.linspace's values (f64): start + i·step for the first half, end − (n−1−i)·step after.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n).map(|i| if i < n / 2 { start + step * i as f64 } else { end - step * (n - 1 - i) as f64 }).collect()
}

/// The lesson's ᾱ of the cosine schedule at step t of T.
fn cosine_abar(t: f64, steps: usize) -> f64 {
    (t / steps as f64 * FRAC_PI_2).cos().powi(2)
}

impl Schedule {
    pub fn new(kind: ScheduleKind, steps: usize) -> Result<Schedule> {
        let arg = |msg: String| Err(Error::Argument { op: "schedule", msg });
        if steps == 0 {
            return arg("needs at least 1 step".into());
        }
        let betas = match &kind {
            &ScheduleKind::Linear { beta_min, beta_max }
            | &ScheduleKind::ScaledLinear { beta_min, beta_max }
            | &ScheduleKind::Sigmoid { beta_min, beta_max } => {
                if !(0.0..1.0).contains(&beta_min) || !(0.0..1.0).contains(&beta_max) || beta_min > beta_max {
                    return arg(format!("need 0 ≤ beta_min ≤ beta_max < 1, got {beta_min} and {beta_max}"));
                }
                match kind {
                    ScheduleKind::Linear { .. } => linspace(beta_min, beta_max, steps),
                    ScheduleKind::ScaledLinear { .. } => linspace(beta_min.sqrt(), beta_max.sqrt(), steps).into_iter().map(|b| b * b).collect(),
                    _ => linspace(-6.0, 6.0, steps).into_iter().map(|x| 1.0 / (1.0 + (-x).exp()) * (beta_max - beta_min) + beta_min).collect(),
                }
            }
            ScheduleKind::Cosine => (0..steps)
                .map(|t| {
                    let previous = if t == 0 { 1.0 } else { cosine_abar(t as f64 - 1.0, steps) };
                    let alpha = (cosine_abar(t as f64, steps) / previous).min(1.0);
                    1.0 - alpha
                })
                .collect(),
            ScheduleKind::SquaredCosCapV2 => {
                let abar = |s: f64| ((s + 0.008) / 1.008 * FRAC_PI_2).cos().powi(2);
                (0..steps).map(|t| (1.0 - abar((t + 1) as f64 / steps as f64) / abar(t as f64 / steps as f64)).min(0.999)).collect()
            }
            ScheduleKind::Explicit(b) => {
                if b.len() != steps {
                    return arg(format!("{} trained betas for {steps} steps", b.len()));
                }
                // β = 1 (ᾱ = 0 from there on) only at the last step: a zero-terminal-SNR schedule
                let (last, rest) = b.split_last().expect("steps ≥ 1");
                if let Some(bad) = rest.iter().find(|&&x| !(0.0..1.0).contains(&x)) {
                    return arg(format!("beta {bad} is outside [0, 1)"));
                }
                if !(0.0..=1.0).contains(last) {
                    return arg(format!("beta {last} is outside [0, 1] (the last may be 1)"));
                }
                b.clone()
            }
        };
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        let sigmas = betas.iter().map(|b| b.sqrt()).collect();
        Ok(Schedule { kind, betas, alphas, alphas_cumprod, sigmas })
    }

    /// This schedule rescaled to zero terminal SNR (Lin et al. 2023, diffusers'
    /// `rescale_zero_terminal_snr`, here in f64): √ᾱ shifted so its last value
    /// is 0 and scaled so its first is unchanged; the betas follow, β_{T−1} = 1.
    /// Only a model that predicts v (or x̂0) can be sampled from ᾱ = 0.
    pub fn zero_terminal_snr(&self) -> Result<Schedule> {
        let sqrt_abar: Vec<f64> = self.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let (first, last) = (sqrt_abar[0], sqrt_abar[sqrt_abar.len() - 1]);
        if first <= last {
            return Err(Error::Argument { op: "schedule", msg: "zero terminal SNR needs ᾱ to fall over the schedule".into() });
        }
        let abar: Vec<f64> = sqrt_abar.iter().map(|s| ((s - last) * first / (first - last)).powi(2)).collect();
        let betas = (0..abar.len()).map(|t| if t == 0 { 1.0 - abar[0] } else { 1.0 - abar[t] / abar[t - 1] }).collect();
        Schedule::new(ScheduleKind::Explicit(betas), self.steps())
    }

    /// The lesson's default: linear from 1e-4 to 0.01 over 1000 steps.
    pub fn lesson_default() -> Schedule {
        Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.01 }, 1000).expect("valid")
    }

    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// ᾱ_t, with ᾱ_{−1} = 1 (t = −1 means "before the first step").
    pub fn abar(&self, t: i64) -> f64 {
        if t < 0 { 1.0 } else { self.alphas_cumprod[t as usize] }
    }
}

/// The continuous cosine schedule: ᾱ(t) = cos²(t·π/2), t ∈ [0, 1].
pub fn continuous_cosine_abar(t: f64) -> f64 {
    (t * FRAC_PI_2).cos().powi(2)
}

/// Its inverse: the time at which ᾱ(t) = abar, t = acos(√ᾱ)·2/π.
pub fn continuous_cosine_time(abar: f64) -> f64 {
    abar.clamp(0.0, 1.0).sqrt().acos() / FRAC_PI_2
}
