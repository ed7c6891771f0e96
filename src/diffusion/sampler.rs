//! The samplers of the lesson (SPEC "Sampling"): DDPM over all T steps,
//! skip-DDPM (the model called only at some steps, ε̂ reused between), and
//! DDIM over a subset of timesteps with η and optional x̂0 clipping — each
//! step one fused update (ops::diffusion::step).
//!
//! Randomness: x_T is normal stream (seed, 0); the noise of the k-th update is
//! stream (seed, 1 + k). Element indices are global over the whole sample set,
//! so results do not depend on the batch size.

use super::Schedule;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::precision::Precision;
use crate::ops::diffusion::{LearnedSigma, StepCoefs, step, step_learned};
use crate::tensor::Tensor;

/// How DDIM picks its timesteps (diffusers' `timestep_spacing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Spacing {
    /// T//n·(n−1), …, T//n, 0 (plus steps_offset): 100 of 1000 → 990, 980, …, 0.
    #[default]
    Leading,
    /// round(T − k·T/n) − 1: 100 of 1000 → 999, 989, …, 9.
    Trailing,
    /// round(linspace(0, T−1, n)), descending.
    Linspace,
}

impl Spacing {
    pub fn parse(text: &str) -> Result<Spacing> {
        match text {
            "leading" => Ok(Spacing::Leading),
            "trailing" => Ok(Spacing::Trailing),
            "linspace" => Ok(Spacing::Linspace),
            _ => Err(Error::Argument { op: "--timestep-spacing", msg: format!("'{text}' is not one of leading, trailing, linspace") }),
        }
    }
}

/// Which sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerKind {
    /// All T steps, the model at each.
    Ddpm,
    /// The model only when t % 3 == 0 or t < 50 (367 calls for T = 1000).
    DdpmSkip,
    /// The model at {t : (t+101) % ((t+101)//100) == 0} (296 calls for T = 1000).
    DdpmSampleAt,
    /// `steps` timesteps with stochasticity η.
    Ddim { steps: usize, eta: f64, spacing: Spacing },
    /// DDPM over `steps` timesteps (spaced as DDIM's), each update from t to
    /// the next timestep with β = 1 − ᾱ_t/ᾱ_prev: diffusers' DDPMScheduler
    /// after `set_timesteps(steps)`.
    DdpmStrided { steps: usize, spacing: Spacing },
    /// The score-SDE VE predictor–corrector over `steps` noise levels
    /// (`super::sde_ve`; ScoreSdeVeScheduler): the model takes σ, not t.
    SdeVe { steps: usize, config: super::sde_ve::VeConfig },
}

/// DDPM's noise level σ_t² at step t.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DdpmVariance {
    /// σ_t² = β_t: the lesson's DDPM (SPEC; diffusers' "fixed_large").
    #[default]
    Beta,
    /// σ_t² = β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t, the posterior variance: diffusers'
    /// DDPMScheduler default ("fixed_small").
    Posterior,
    /// σ_t² is the model's second half of output channels ("learned").
    Learned,
    /// log σ_t² = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2 with v the
    /// model's second half of output channels ("learned_range", improved DDPM).
    LearnedRange,
}

impl DdpmVariance {
    /// `beta`, `posterior`, `learned` or `learned_range` (the --ddpm-variance values).
    pub fn parse(text: &str) -> Result<DdpmVariance> {
        match text {
            "beta" => Ok(DdpmVariance::Beta),
            "posterior" => Ok(DdpmVariance::Posterior),
            "learned" => Ok(DdpmVariance::Learned),
            "learned_range" => Ok(DdpmVariance::LearnedRange),
            _ => Err(Error::Argument { op: "--ddpm-variance", msg: format!("'{text}' is not beta, posterior, learned or learned_range") }),
        }
    }

    /// Whether the noise level comes from the model's output.
    pub fn is_learned(self) -> bool {
        matches!(self, DdpmVariance::Learned | DdpmVariance::LearnedRange)
    }

    /// How the DDPM update from ᾱ_t to ᾱ_prev turns a learned variance output
    /// into σ (None for the fixed variances): "learned" takes its square root;
    /// "learned_range" with β = 1 − ᾱ_t/ᾱ_prev and β̃ = max((1−ᾱ_prev)/(1−ᾱ_t)·β, 1e-20)
    /// as diffusers: σ = exp(½·(frac·ln β + (1−frac)·ln β̃)), frac = (v+1)/2,
    /// i.e. exp(a + b·v) with b = ¼·(ln β − ln β̃), a = ½·ln β̃ + b.
    pub fn learned_sigma(self, abar_t: f64, abar_prev: f64) -> Option<LearnedSigma> {
        match self {
            DdpmVariance::Beta | DdpmVariance::Posterior => None,
            DdpmVariance::Learned => Some(LearnedSigma { mode: 0, a: 0.0, b: 0.0 }),
            DdpmVariance::LearnedRange => {
                let beta = 1.0 - abar_t / abar_prev;
                let posterior = ((1.0 - abar_prev) / (1.0 - abar_t) * beta).max(1e-20);
                let b = 0.25 * (beta.ln() - posterior.ln());
                Some(LearnedSigma { mode: 1, a: (0.5 * posterior.ln() + b) as f32, b: b as f32 })
            }
        }
    }
}

/// What the model predicts (diffusers' `prediction_type`); the samplers
/// turn it into ε̂ at each model call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prediction {
    /// The noise ε ("epsilon"; the lesson's models).
    #[default]
    Epsilon,
    /// v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0 ("v_prediction").
    V,
    /// x_0 itself ("sample").
    Sample,
}

impl Prediction {
    /// diffusers' name: epsilon, v_prediction or sample.
    pub fn parse(text: &str) -> Option<Prediction> {
        match text {
            "epsilon" => Some(Prediction::Epsilon),
            "v_prediction" => Some(Prediction::V),
            "sample" => Some(Prediction::Sample),
            _ => None,
        }
    }

    /// (x̂0, ε̂) straight from a v or x̂0 model's output at x_t with ᾱ_t, as
    /// diffusers' schedulers form them: for v, x̂0 = √ᾱ·x_t − √(1−ᾱ)·v and
    /// ε̂ = √ᾱ·v + √(1−ᾱ)·x_t; for x̂0, ε̂ = (x_t − √ᾱ·x̂0)/√(1−ᾱ). (Going
    /// through ε̂ and back loses x̂0 to cancellation where ᾱ is small, and all
    /// of it where ᾱ = 0.) None for an ε model: its x̂0 is the fused step's.
    pub fn x0_and_epsilon(self, output: Tensor, x_t: &Tensor, abar: f64) -> Result<Option<(Tensor, Tensor)>> {
        use crate::ops::{add, mul_scalar, sub};
        let (a, b) = (abar.sqrt() as f32, (1.0 - abar).sqrt() as f32);
        Ok(match self {
            Prediction::Epsilon => None,
            Prediction::V => Some((sub(&mul_scalar(x_t, a)?, &mul_scalar(&output, b)?)?, add(&mul_scalar(&output, a)?, &mul_scalar(x_t, b)?)?)),
            Prediction::Sample => {
                let eps = mul_scalar(&sub(x_t, &mul_scalar(&output, a)?)?, 1.0 / b)?;
                Some((output, eps))
            }
        })
    }
}

/// diffusers' dynamic thresholding of x̂0 (`thresholding=True`): per sample,
/// s = the `ratio` quantile of |x̂0| (linear interpolation, as torch.quantile),
/// clamped to [1, max]; x̂0 ← clamp(x̂0, −s, s)/s. On x̂0's device
/// (`ops::diffusion::threshold`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholding {
    pub ratio: f32,
    pub max: f32,
}

impl Thresholding {
    /// Threshold each of the `batch` samples of `x0` (host values) in place.
    pub fn apply(self, x0: &mut [f32], batch: usize) {
        crate::ops::diffusion::cpu::threshold(x0, x0.len() / batch.max(1), self.ratio, self.max);
    }
}

/// The fused step for an x̂0 given directly (from a v or x̂0 model, or
/// thresholded): run with x̂0 in x_t's place (eps_scale 0, inv_sqrt_abar 1,
/// so x̂0 = X, clipped as asked) and in ε̂'s place whichever of ε̂ and x_t the
/// update still needs — DDIM has c_xt = 0, DDPM c_eps = 0 — so that
/// x_prev = c_x0·x̂0 + c_xt·x_t + c_eps·ε̂ + σ·z as before.
fn step_from_x0<'a>(x: &'a Tensor, eps: &'a Tensor, c: StepCoefs) -> (&'a Tensor, StepCoefs) {
    let from_x0 = StepCoefs { eps_scale: 0.0, inv_sqrt_abar: 1.0, c_xt: 0.0, ..c };
    if c.c_xt == 0.0 {
        (eps, from_x0)
    } else {
        assert_eq!(c.c_eps, 0.0, "a sampler update uses x_t or ε̂ besides x̂0, not both");
        (x, StepCoefs { c_eps: c.c_xt, ..from_x0 })
    }
}

/// Sampler settings beyond the kind.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerOptions {
    pub kind: SamplerKind,
    /// Clip x̂0 to [−v, v] before the update (diffusers clips at 1 by default; the lesson does not).
    pub clip_x0: Option<f32>,
    /// Dynamic thresholding of x̂0 instead (when set, `clip_x0` is not used).
    pub threshold: Option<Thresholding>,
    /// The noise level of DDPM's (and skip-DDPM's) updates.
    pub ddpm_variance: DdpmVariance,
    /// What the model's output is.
    pub prediction: Prediction,
    /// ᾱ used after the last DDIM step: 1 (set_alpha_to_one) or ᾱ_0.
    pub set_alpha_to_one: bool,
    /// Added to DDIM's leading timesteps (diffusers' steps_offset).
    pub steps_offset: usize,
    pub seed: u64,
    /// Keep x̂0 after these update indices (0-based), for the FID-per-step curve.
    pub keep_x0_at: Vec<usize>,
    /// The compute precision of the model calls' products (ops::precision).
    pub precision: Precision,
    /// On CUDA, capture one model step as a CUDA graph and replay it for the
    /// others (`cuda_graph::sample`); same results, bit for bit.
    pub cuda_graph: bool,
}

impl SamplerOptions {
    /// Whether the updates take their noise level from the model's variance
    /// half (a learned DDPM variance; DDIM and the score-SDE sampler take none).
    pub fn learns_variance(&self) -> bool {
        self.ddpm_variance.is_learned() && !matches!(self.kind, SamplerKind::Ddim { .. } | SamplerKind::SdeVe { .. })
    }
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            kind: SamplerKind::Ddpm,
            clip_x0: None,
            threshold: None,
            ddpm_variance: DdpmVariance::Beta,
            prediction: Prediction::Epsilon,
            set_alpha_to_one: true,
            steps_offset: 0,
            seed: 0,
            keep_x0_at: vec![],
            precision: Precision::F32,
            cuda_graph: true,
        }
    }
}

/// What a sampling run produced.
pub struct Samples {
    pub x0: Tensor,
    pub model_evals: usize,
    /// (update index, timestep, x̂0) for each kept step.
    pub x0_history: Vec<(usize, usize, Tensor)>,
}

/// DDIM's timesteps, descending, as diffusers' DDIMScheduler.set_timesteps.
pub fn ddim_timesteps(train_steps: usize, steps: usize, spacing: Spacing, offset: usize) -> Result<Vec<usize>> {
    if steps == 0 || steps > train_steps {
        return Err(Error::Argument { op: "--steps", msg: format!("{steps} must be between 1 and the {train_steps} training timesteps") });
    }
    let t = match spacing {
        Spacing::Leading => {
            let ratio = train_steps / steps;
            (0..steps).rev().map(|i| i * ratio + offset).collect::<Vec<_>>()
        }
        // numpy's arithmetic, and its rounding (half to even: 832.5 → 832)
        Spacing::Trailing => {
            // np.round(np.arange(T, 0, -T/n)) − 1
            let ratio = train_steps as f64 / steps as f64;
            (0..steps).map(|i| ((train_steps as f64 - i as f64 * ratio).round_ties_even() as usize).saturating_sub(1)).collect()
        }
        Spacing::Linspace => {
            // np.linspace(0, T−1, n).round()[::-1]: i·step, the last exactly T−1
            let last = (train_steps - 1) as f64;
            let step = if steps > 1 { last / (steps - 1) as f64 } else { 0.0 };
            (0..steps).rev().map(|i| if i + 1 == steps && steps > 1 { last as usize } else { (i as f64 * step).round_ties_even() as usize }).collect()
        }
    };
    if let Some(&bad) = t.iter().find(|&&x| x >= train_steps) {
        return Err(Error::Argument { op: "steps_offset", msg: format!("timestep {bad} is beyond the {train_steps} training timesteps") });
    }
    Ok(t)
}

/// Whether skip-DDPM calls the model at timestep t.
pub fn model_called_at(kind: SamplerKind, t: usize) -> bool {
    match kind {
        SamplerKind::DdpmSkip => t % 3 == 0 || t < 50,
        SamplerKind::DdpmSampleAt => (t + 101) % ((t + 101) / 100) == 0,
        _ => true,
    }
}

/// The DDPM update at t (SPEC): x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t;
/// x_{t−1} = x̂0·√ᾱ_{t−1}·β_t/(1−ᾱ_t) + x_t·√α_t·(1−ᾱ_{t−1})/(1−ᾱ_t) + σ_t·z, z = 0 at t = 0,
/// with σ_t² as `variance` says.
pub fn ddpm_coefs(s: &Schedule, t: usize, clip: Option<f32>, variance: DdpmVariance) -> StepCoefs {
    ddpm_update(s.abar(t as i64), s.abar(t as i64 - 1), s.betas[t], s.alphas[t], t > 0, clip, variance)
}

/// The DDPM update from t to an earlier `prev` (−1: the end, ᾱ = 1; the
/// next timestep visited, as diffusers' DDPMScheduler takes it between its
/// timesteps): the same update with α = ᾱ_t/ᾱ_prev and β = 1 − α.
pub fn ddpm_strided_coefs(s: &Schedule, t: usize, prev: i64, clip: Option<f32>, variance: DdpmVariance) -> StepCoefs {
    let (abar_t, abar_prev) = (s.abar(t as i64), s.abar(prev));
    let alpha = abar_t / abar_prev;
    ddpm_update(abar_t, abar_prev, 1.0 - alpha, alpha, t > 0, clip, variance)
}

fn ddpm_update(abar_t: f64, abar_prev: f64, beta: f64, alpha: f64, noise: bool, clip: Option<f32>, variance: DdpmVariance) -> StepCoefs {
    let sigma = match variance {
        DdpmVariance::Beta => beta.sqrt(),
        // diffusers clamps the variance at 1e-20 before the square root
        DdpmVariance::Posterior => ((1.0 - abar_prev) / (1.0 - abar_t) * beta).max(1e-20).sqrt(),
        // per element: σ_i = 1·s_i from the model's variance output (`learned_sigma`)
        DdpmVariance::Learned | DdpmVariance::LearnedRange => 1.0,
    };
    StepCoefs {
        eps_scale: (1.0 - abar_t).sqrt() as f32,
        inv_sqrt_abar: (1.0 / abar_t.sqrt()) as f32,
        clip: clip.unwrap_or(0.0),
        c_x0: (abar_prev.sqrt() * beta / (1.0 - abar_t)) as f32,
        c_xt: (alpha.sqrt() * (1.0 - abar_prev) / (1.0 - abar_t)) as f32,
        c_eps: 0.0,
        sigma: if noise { sigma as f32 } else { 0.0 },
    }
}

/// The DDIM update from ᾱ_t to ᾱ_prev with η: σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev));
/// x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z.
pub fn ddim_coefs(abar_t: f64, abar_prev: f64, eta: f64, clip: Option<f32>) -> StepCoefs {
    let variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev);
    let sigma = eta * variance.max(0.0).sqrt();
    StepCoefs {
        eps_scale: (1.0 - abar_t).sqrt() as f32,
        inv_sqrt_abar: (1.0 / abar_t.sqrt()) as f32,
        clip: clip.unwrap_or(0.0),
        c_x0: abar_prev.sqrt() as f32,
        c_xt: 0.0,
        c_eps: (1.0 - abar_prev - sigma * sigma).max(0.0).sqrt() as f32,
        sigma: sigma as f32,
    }
}

/// Initial noise x_T for samples `first..first+count` of a run (shape [count, C, H, W]).
pub fn initial_noise(dims: [usize; 4], first: usize, seed: u64, device: Device) -> Result<Tensor> {
    let per_sample = dims[1] * dims[2] * dims[3];
    let mut v = vec![0.0; dims.iter().product()];
    crate::rng::PhiloxStream::new(seed, 0).fill_normal((first * per_sample) as u64, &mut v);
    Tensor::from_vec(v, dims.to_vec())?.to_device(device)
}

/// Each update: (timestep, coefficients), in sampling order.
pub fn plan(schedule: &Schedule, opts: &SamplerOptions) -> Result<Vec<(usize, StepCoefs)>> {
    // thresholding takes the place of clipping
    let clip = if opts.threshold.is_some() { None } else { opts.clip_x0 };
    Ok(match opts.kind {
        SamplerKind::Ddpm | SamplerKind::DdpmSkip | SamplerKind::DdpmSampleAt => {
            (0..schedule.steps()).rev().map(|t| (t, ddpm_coefs(schedule, t, clip, opts.ddpm_variance))).collect()
        }
        SamplerKind::DdpmStrided { steps, spacing } => {
            // DDPMScheduler's previous timestep is the next one it visits (−1
            // after the last), not t − T/n as DDIM's: they differ for
            // linspace spacing and for trailing where n does not divide T
            let ts = ddim_timesteps(schedule.steps(), steps, spacing, opts.steps_offset)?;
            let prevs = next_timesteps(&ts);
            ts.iter().zip(prevs).map(|(&t, prev)| (t, ddpm_strided_coefs(schedule, t, prev, clip, opts.ddpm_variance))).collect()
        }
        SamplerKind::SdeVe { .. } => {
            return Err(Error::Argument { op: "sampler", msg: "the score-SDE sampler steps through noise levels, not a DDPM/DDIM plan".into() });
        }
        SamplerKind::Ddim { steps, eta, spacing } => {
            let ts = ddim_timesteps(schedule.steps(), steps, spacing, opts.steps_offset)?;
            let ratio = schedule.steps() / steps;
            let final_abar = if opts.set_alpha_to_one { 1.0 } else { schedule.abar(0) };
            ts.iter()
                .map(|&t| {
                    let prev = t as i64 - ratio as i64;
                    let abar_prev = if prev >= 0 { schedule.abar(prev) } else { final_abar };
                    (t, ddim_coefs(schedule.abar(t as i64), abar_prev, eta, clip))
                })
                .collect()
        }
    })
}

/// The per-element noise level of each planned update from the model's
/// variance output (None where the variance is fixed, and for DDIM, which
/// takes none).
pub fn learned_sigmas(schedule: &Schedule, opts: &SamplerOptions, plan: &[(usize, StepCoefs)]) -> Vec<Option<LearnedSigma>> {
    if !opts.learns_variance() {
        return vec![None; plan.len()];
    }
    // every DDPM kind updates from each planned timestep to the next
    let ts: Vec<usize> = plan.iter().map(|(t, _)| *t).collect();
    ts.iter().zip(next_timesteps(&ts)).map(|(&t, prev)| opts.ddpm_variance.learned_sigma(schedule.abar(t as i64), schedule.abar(prev))).collect()
}

/// Each timestep's successor in `ts` (descending), −1 after the last.
fn next_timesteps(ts: &[usize]) -> Vec<i64> {
    ts.iter().skip(1).map(|&t| t as i64).chain([-1]).collect()
}

/// (ε̂ or the model's prediction, its variance output): a model with twice
/// x's channels (diffusers' learned variance) gives both halves; otherwise
/// there is no variance output.
pub fn split_output(output: Tensor, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
    let (c, oc) = (x.dims().get(1).copied().unwrap_or(0), output.dims().get(1).copied().unwrap_or(0));
    if oc == 2 * c && c > 0 && output.dims().len() == x.dims().len() {
        Ok((crate::ops::narrow(&output, 1, 0, c)?, Some(crate::ops::narrow(&output, 1, c, c)?)))
    } else {
        Ok((output, None))
    }
}

/// Whether update k of `plan` calls the model (the first always does).
pub fn calls_model(kind: SamplerKind, plan: &[(usize, StepCoefs)], k: usize) -> bool {
    k == 0 || model_called_at(kind, plan[k].0)
}

/// Whether `sample` on `device` will replay its model steps from a CUDA graph.
pub fn uses_cuda_graph(device: Device, schedule: &Schedule, opts: &SamplerOptions) -> Result<bool> {
    if matches!(opts.kind, SamplerKind::SdeVe { .. }) {
        return Ok(false);
    }
    Ok(super::cuda_graph::worth_it(device, opts, &plan(schedule, opts)?)?.is_some())
}

/// Run the sampler from x_T (samples `first..` of the run, for the noise
/// indices). `model(x_t, t)` returns ε̂ for timesteps `t` ([B] f32).
pub fn sample(
    mut model: impl FnMut(&Tensor, &Tensor) -> Result<Tensor>,
    x_t: Tensor,
    first: usize,
    schedule: &Schedule,
    opts: &SamplerOptions,
) -> Result<Samples> {
    let _precision = crate::ops::precision::with_precision(opts.precision);
    if let SamplerKind::SdeVe { steps, config } = opts.kind {
        return super::sde_ve::sample(model, x_t, first, &config, steps, opts.seed).and_then(super::sde_ve::to_images);
    }
    let batch = x_t.dims()[0];
    let device = x_t.device();
    let start = (first * (x_t.numel() / batch.max(1))) as u64;
    let plan = plan(schedule, opts)?;
    if opts.prediction == Prediction::Epsilon {
        // x̂0 = (x_t − ε̂)/0 where ᾱ = 0: ±∞, which only clipping makes finite
        // (diffusers' too; the plan has no clip under thresholding); refused
        // before any work and the CUDA graph path
        if let Some(&(t, _)) = plan.iter().find(|(t, c)| schedule.abar(*t as i64) == 0.0 && c.clip == 0.0) {
            return Err(crate::error::Error::Argument {
                op: "sampler",
                msg: format!(
                    "ᾱ is 0 at timestep {t} (zero terminal SNR): an ε-prediction model gives no x̂0 there; use a v_prediction model, clipping, or timesteps that skip it (leading spacing)"
                ),
            });
        }
    }
    if let Some(backend) = super::cuda_graph::worth_it(device, opts, &plan)? {
        return super::cuda_graph::sample(&backend, model, x_t, start, &plan, opts);
    }
    let timesteps = |t: usize| Tensor::full_on(t as f32, [batch], device);
    let sigmas = learned_sigmas(schedule, opts, &plan);
    let mut x = x_t;
    let mut evals = 0;
    let mut history = Vec::new();
    let mut eps: Option<Tensor> = None;
    let mut variance: Option<Tensor> = None;
    for (k, &(t, coefs)) in plan.iter().enumerate() {
        let _nvtx = crate::device::nvtx::range("sampler step");
        let want_x0 = opts.keep_x0_at.contains(&k);
        let mut x0_direct = None;
        if calls_model(opts.kind, &plan, k) {
            let (output, var) = split_output(model(&x, &timesteps(t)?)?, &x)?;
            if sigmas[k].is_some() && var.is_none() {
                return Err(Error::Argument {
                    op: "sampler",
                    msg: format!(
                        "a learned DDPM variance needs a model whose output has twice the sample's {} channels (ε̂ and the variance); this one has {}",
                        x.dims()[1],
                        output.dims()[1]
                    ),
                });
            }
            variance = var;
            // (ε̂ is kept for skip-DDPM's reuse at the steps without a model call)
            eps = Some(match opts.prediction.x0_and_epsilon(output.clone(), &x, schedule.abar(t as i64))? {
                Some((x0, e)) => {
                    x0_direct = Some(x0);
                    e
                }
                None => output,
            });
            evals += 1;
        }
        let eps_now = eps.as_ref().expect("set at k = 0");
        if let Some(th) = opts.threshold {
            let x0 = match x0_direct.take() {
                Some(x0) => x0,
                None => crate::ops::mul_scalar(&crate::ops::sub(&x, &crate::ops::mul_scalar(eps_now, coefs.eps_scale)?)?, coefs.inv_sqrt_abar)?,
            };
            x0_direct = Some(crate::ops::diffusion::threshold(&x0, th.ratio, th.max)?);
        }
        let update = |x: &Tensor, e: &Tensor, c: StepCoefs| match (sigmas[k], &variance) {
            (Some(ls), Some(var)) => step_learned(x, e, var, ls, c, opts.seed, 1 + k as u64, start, want_x0),
            _ => step(x, e, c, opts.seed, 1 + k as u64, start, want_x0),
        };
        let (next, x0) = match &x0_direct {
            Some(x0) => {
                let (e, from_x0) = step_from_x0(&x, eps_now, coefs);
                update(x0, e, from_x0)?
            }
            None => update(&x, eps_now, coefs)?,
        };
        if let Some(x0) = x0 {
            history.push((k, t, x0));
        }
        x = next;
    }
    Ok(Samples { x0: x, model_evals: evals, x0_history: history })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{add_scalar, concat, mul_scalar};

    /// A stand-in ε model: 0.3·x + t/1000.
    fn eps_model(x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let t0 = t.to_vec()[0];
        add_scalar(&mul_scalar(x, 0.3)?, t0 / 1000.0)
    }

    /// Largest difference over b's scale (at least 1).
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b.to_vec().iter().fold(1f32, |m, v| m.max(v.abs()));
        a.to_vec().iter().zip(b.to_vec()).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// "learned_range" interpolates log β̃_t (v = −1) … log β_t (v = +1): at
    /// its ends the sampler gives the fixed variances' samples (up to exp/ln
    /// rounding), in plain, strided and skip DDPM; "learned" given β̃_t itself
    /// gives the posterior's (plain and strided).
    #[test]
    fn learned_variance_at_its_ends_samples_as_the_fixed_variances() {
        let s = Schedule::lesson_default();
        let x_t = Tensor::from_vec(crate::testing::randn(&[2, 1, 4, 4], 3), [2, 1, 4, 4]).unwrap();
        let kinds = [SamplerKind::DdpmStrided { steps: 10, spacing: Spacing::Leading }, SamplerKind::DdpmSkip, SamplerKind::Ddpm];
        for kind in kinds {
            let run = |variance: DdpmVariance, var_of: &dyn Fn(&Tensor, &Tensor) -> Option<Tensor>| {
                let opts = SamplerOptions { kind, ddpm_variance: variance, seed: 5, ..Default::default() };
                let model = |x: &Tensor, t: &Tensor| {
                    let eps = eps_model(x, t)?;
                    match var_of(x, t) {
                        Some(v) => concat(&[&eps, &v], 1),
                        None => Ok(eps),
                    }
                };
                sample(model, x_t.clone(), 0, &s, &opts).unwrap().x0
            };
            let ends = |v: f32| move |x: &Tensor, _: &Tensor| Some(Tensor::full(v, x.dims()));
            let fixed = |x: &Tensor, _: &Tensor| -> Option<Tensor> { let _ = x; None };
            let beta = run(DdpmVariance::Beta, &fixed);
            let posterior = run(DdpmVariance::Posterior, &fixed);
            assert!(max_diff(&beta, &posterior) > 1e-3, "{kind:?}: the two fixed variances differ");
            let d_hi = max_diff(&run(DdpmVariance::LearnedRange, &ends(1.0)), &beta);
            let d_lo = max_diff(&run(DdpmVariance::LearnedRange, &ends(-1.0)), &posterior);
            // (σ through exp and ln: a few ulp per step, over up to 1000 steps)
            assert!(d_hi < 1e-5 && d_lo < 1e-5, "{kind:?}: learned_range at +1 vs β {d_hi}, at −1 vs β̃ {d_lo}");
            // "learned": the output is the variance; give the posterior's β̃ of the
            // step (skip-DDPM reuses the last call's output, β̃ of an earlier t)
            if kind == SamplerKind::DdpmSkip {
                continue;
            }
            let stride = match kind {
                SamplerKind::DdpmStrided { steps, .. } => (s.steps() / steps) as i64,
                _ => 1,
            };
            let posterior_var = |x: &Tensor, t: &Tensor| {
                let t = t.to_vec()[0] as i64;
                let (at, ap) = (s.abar(t), s.abar(t - stride));
                Some(Tensor::full(((1.0 - ap) / (1.0 - at) * (1.0 - at / ap)).max(1e-20) as f32, x.dims()))
            };
            let d = max_diff(&run(DdpmVariance::Learned, &posterior_var), &posterior);
            assert!(d < 1e-5, "{kind:?}: learned given β̃ vs the posterior {d}");
        }
    }

    /// DDIM takes the ε̂ half of a model with a variance half (bit for bit);
    /// a learned DDPM variance without a variance half is refused by name.
    #[test]
    fn a_variance_half_is_split_off_and_required_where_learned() {
        let s = Schedule::lesson_default();
        let x_t = Tensor::from_vec(crate::testing::randn(&[2, 1, 4, 4], 4), [2, 1, 4, 4]).unwrap();
        let ddim = SamplerOptions { kind: SamplerKind::Ddim { steps: 5, eta: 1.0, spacing: Spacing::Leading }, ..Default::default() };
        let with_half = |x: &Tensor, t: &Tensor| concat(&[&eps_model(x, t)?, &mul_scalar(x, 7.0)?], 1);
        let a = sample(eps_model, x_t.clone(), 0, &s, &ddim).unwrap().x0;
        let b = sample(with_half, x_t.clone(), 0, &s, &ddim).unwrap().x0;
        assert_eq!(a.to_vec(), b.to_vec());
        let learned = SamplerOptions { kind: SamplerKind::Ddpm, ddpm_variance: DdpmVariance::LearnedRange, ..Default::default() };
        let err = sample(eps_model, x_t, 0, &s, &learned).err().expect("refused").to_string();
        assert!(err.contains("twice the sample's 1 channels"), "{err}");
    }
}
