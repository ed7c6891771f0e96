//! diffusers' model directory: `config.json` (UNet2DModel), the weights in
//! `diffusion_pytorch_model.safetensors`, and `scheduler_config.json`
//! (DDIMScheduler keys). A directory saved by diffusers loads here; one saved
//! here loads with `UNet2DModel.from_pretrained` and `DDIMScheduler.from_pretrained`.

use super::safetensors::{self as st, StateDict};
use super::write_atomic;
use crate::device::Device;
use crate::diffusion::sampler::{DdpmVariance, Prediction, Thresholding};
use crate::diffusion::sde_ve::VeConfig;
use crate::diffusion::{Schedule, ScheduleKind};
use crate::error::{Error, Result};
use crate::nn::load_state;
use crate::nn::unet::{UNet2DConfig, UNet2DModel};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
pub const SCHEDULER: &str = "scheduler_config.json";
/// The diffusers version our files say they match.
pub const DIFFUSERS_VERSION: &str = "0.35.2";

fn d_steps() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    1e-4
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_linear() -> String {
    "linear".into()
}
fn d_true() -> bool {
    true
}
fn d_one() -> f64 {
    1.0
}
fn d_ratio() -> f64 {
    0.995
}
fn d_leading() -> String {
    "leading".into()
}
fn d_epsilon() -> String {
    "epsilon".into()
}

/// diffusers' scheduler config (DDIMScheduler / DDPMScheduler keys and defaults).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SchedulerConfig {
    #[serde(default = "d_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_linear")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "d_true")]
    pub clip_sample: bool,
    #[serde(default = "d_one")]
    pub clip_sample_range: f64,
    #[serde(default = "d_true")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "d_leading")]
    pub timestep_spacing: String,
    #[serde(default = "d_epsilon")]
    pub prediction_type: String,
    /// Dynamic thresholding of x̂₀ (Imagen's; replaces clipping when on).
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default = "d_ratio")]
    pub dynamic_thresholding_ratio: f64,
    #[serde(default = "d_one")]
    pub sample_max_value: f64,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// DDPMScheduler's noise level ("fixed_small", "fixed_large"); DDIMScheduler configs have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance_type: Option<String>,
    /// A ScoreSdeVeScheduler config's keys (`_class_name` says so; read by
    /// `load`): the score-SDE VE sampler's, none of the β keys above apply.
    #[serde(skip)]
    pub sde_ve: Option<VeConfig>,
}

impl SchedulerConfig {
    /// The config describing `schedule` (named when diffusers has the name,
    /// else as trained_betas). Our samplers do not clip x̂₀ unless asked.
    pub fn from_schedule(schedule: &Schedule) -> SchedulerConfig {
        let mut c: SchedulerConfig = serde_json::from_str("{}").expect("defaults");
        c.num_train_timesteps = schedule.steps();
        c.clip_sample = false;
        c.set_alpha_to_one = true; // SPEC: ᾱ_prev = 1 after t = 0
        match &schedule.kind {
            ScheduleKind::Linear { beta_min, beta_max } => (c.beta_start, c.beta_end) = (*beta_min, *beta_max),
            ScheduleKind::ScaledLinear { beta_min, beta_max } => {
                (c.beta_start, c.beta_end, c.beta_schedule) = (*beta_min, *beta_max, "scaled_linear".into())
            }
            ScheduleKind::SquaredCosCapV2 => c.beta_schedule = "squaredcos_cap_v2".into(),
            // (DDIMScheduler, the class we write, has no "sigmoid")
            ScheduleKind::Sigmoid { .. } | ScheduleKind::Cosine | ScheduleKind::Explicit(_) => c.trained_betas = Some(schedule.betas.clone()),
        }
        c
    }

    /// The x̂₀ clipping diffusers' DDIM and DDPM schedulers apply with this
    /// config (none when thresholding, which takes its place).
    pub fn clip_x0(&self) -> Option<f32> {
        (self.clip_sample && !self.thresholding).then_some(self.clip_sample_range as f32)
    }

    /// The dynamic thresholding of x̂₀ this config asks for.
    pub fn thresholding(&self) -> Option<Thresholding> {
        self.thresholding.then_some(Thresholding { ratio: self.dynamic_thresholding_ratio as f32, max: self.sample_max_value as f32 })
    }

    /// What the model predicts (epsilon, v_prediction or sample).
    pub fn prediction(&self) -> Result<Prediction> {
        Prediction::parse(&self.prediction_type).ok_or_else(|| Error::Data {
            path: SCHEDULER.into(),
            msg: format!("prediction_type {} is not supported (epsilon, v_prediction or sample)", self.prediction_type),
        })
    }

    /// The DDPM noise level this config asks for: diffusers' "fixed_small" (and
    /// "fixed_small_log", the same σ) is the posterior variance, "fixed_large"
    /// is β_t, "learned" and "learned_range" come from the model's second half
    /// of output channels; without a variance_type, β_t (the lesson's DDPM).
    pub fn ddpm_variance(&self) -> Result<DdpmVariance> {
        let refuse = |why: &str| Error::Data { path: SCHEDULER.into(), msg: format!("variance_type {} is not supported ({why})", self.variance_type.as_deref().unwrap_or("")) };
        match self.variance_type.as_deref() {
            None | Some("fixed_large") => Ok(DdpmVariance::Beta),
            Some("fixed_small" | "fixed_small_log") => Ok(DdpmVariance::Posterior),
            Some("learned") => Ok(DdpmVariance::Learned),
            Some("learned_range") => Ok(DdpmVariance::LearnedRange),
            // DDPMScheduler.step takes the square root of log β_t < 0: NaN
            Some("fixed_large_log") => Err(refuse("diffusers' DDPMScheduler samples NaN with it: σ = √(ln β_t)")),
            Some(_) => Err(refuse("fixed_small, fixed_small_log, fixed_large, learned or learned_range")),
        }
    }

    /// The schedule this config describes; unsupported values are refused by name.
    pub fn schedule(&self) -> Result<Schedule> {
        let refuse = |key: &str, value: &dyn std::fmt::Display| Error::Data {
            path: SCHEDULER.into(),
            msg: format!("{key} {value} is not supported"),
        };
        self.prediction()?;
        if self.thresholding && !(self.dynamic_thresholding_ratio > 0.0 && self.dynamic_thresholding_ratio <= 1.0) {
            return Err(refuse("dynamic_thresholding_ratio", &self.dynamic_thresholding_ratio));
        }
        if self.thresholding && !(self.sample_max_value > 0.0 && self.sample_max_value.is_finite()) {
            return Err(refuse("sample_max_value", &self.sample_max_value));
        }
        self.ddpm_variance()?;
        if self.clip_sample && !(self.clip_sample_range > 0.0 && self.clip_sample_range.is_finite()) {
            return Err(refuse("clip_sample_range", &self.clip_sample_range));
        }
        if !matches!(self.timestep_spacing.as_str(), "leading" | "trailing" | "linspace") {
            return Err(refuse("timestep_spacing", &self.timestep_spacing));
        }
        let kind = match (&self.trained_betas, self.beta_schedule.as_str()) {
            (Some(b), _) => ScheduleKind::Explicit(b.clone()),
            (None, "linear") => ScheduleKind::Linear { beta_min: self.beta_start, beta_max: self.beta_end },
            (None, "scaled_linear") => ScheduleKind::ScaledLinear { beta_min: self.beta_start, beta_max: self.beta_end },
            (None, "squaredcos_cap_v2") => ScheduleKind::SquaredCosCapV2,
            (None, "sigmoid") => ScheduleKind::Sigmoid { beta_min: self.beta_start, beta_max: self.beta_end },
            (None, other) => return Err(refuse("beta_schedule", &other)),
        };
        let schedule = Schedule::new(kind, self.num_train_timesteps)?;
        if self.rescale_betas_zero_snr { schedule.zero_terminal_snr() } else { Ok(schedule) }
    }
}

/// diffusers renamed the attention parameters in 0.14; old files still say these.
fn modernise_names(state: StateDict) -> StateDict {
    state
        .into_iter()
        .map(|(name, v)| {
            let renamed = [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")]
                .iter()
                .find(|(old, _)| name.contains(old))
                .map(|(old, new)| name.replace(old, new))
                .unwrap_or(name);
            (renamed, v)
        })
        .collect()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Data { path: path.display().to_string(), msg: format!("cannot read: {e}") })?;
    serde_json::from_str(&text).map_err(|e| Error::Data { path: path.display().to_string(), msg: format!("invalid JSON: {e}") })
}

fn to_json<T: Serialize>(class: &str, value: &T) -> Result<Vec<u8>> {
    let mut v = serde_json::to_value(value).map_err(|e| Error::Argument { op: "save", msg: e.to_string() })?;
    let map = v.as_object_mut().expect("structs serialise to objects");
    map.insert("_class_name".into(), class.into());
    map.insert("_diffusers_version".into(), DIFFUSERS_VERSION.into());
    let mut text = serde_json::to_string_pretty(&v).expect("serialisable");
    text.push('\n');
    Ok(text.into_bytes())
}

/// Load a model directory onto `device`.
pub fn load(dir: &Path, device: Device) -> Result<(UNet2DModel, SchedulerConfig)> {
    if !dir.is_dir() {
        return Err(Error::Data { path: dir.display().to_string(), msg: "no such model directory".into() });
    }
    // a diffusers pipeline directory (DDPMPipeline / DDIMPipeline.save_pretrained): unet/ and scheduler/
    let (unet_dir, scheduler_dir) = if !dir.join(CONFIG).is_file() && dir.join("unet").join(CONFIG).is_file() {
        (dir.join("unet"), dir.join("scheduler"))
    } else {
        (dir.to_path_buf(), dir.to_path_buf())
    };
    let dir = unet_dir.as_path();
    let config_path = dir.join(CONFIG);
    let config: UNet2DConfig = read_json(&config_path)?;
    config.validate().map_err(|e| match e {
        Error::Data { msg, .. } => Error::Data { path: config_path.display().to_string(), msg },
        other => other,
    })?;
    let weights_path = weights_file(dir)?;
    if !weights_path.is_file() && dir.join("diffusion_pytorch_model.bin").is_file() {
        return Err(Error::Data {
            path: dir.join("diffusion_pytorch_model.bin").display().to_string(),
            msg: "PyTorch pickle weights are not read; save with safe_serialization=True".into(),
        });
    }
    let state = modernise_names(st::read(&weights_path)?);
    // (a block the config describes that cannot be built, e.g. groups that do not divide its channels)
    let model = UNet2DModel::new(config, 0, device).map_err(|e| match e {
        Error::Shape { msg, .. } => Error::Data { path: config_path.display().to_string(), msg },
        other => other,
    })?;
    load_state(&model, &state, &weights_path.display().to_string())?;
    let scheduler_path = scheduler_dir.join(SCHEDULER);
    if !scheduler_path.is_file() {
        return Err(Error::Data { path: scheduler_path.display().to_string(), msg: "missing (the noise schedule comes from it)".into() });
    }
    let in_file = |e: Error| match e {
        Error::Data { msg, .. } | Error::Argument { msg, .. } => Error::Data { path: scheduler_path.display().to_string(), msg },
        other => other,
    };
    let json: serde_json::Value = read_json(&scheduler_path)?;
    let parse = |what| in_file(Error::Data { path: String::new(), msg: format!("invalid {what}") });
    let mut scheduler: SchedulerConfig = serde_json::from_value(json.clone()).map_err(|e| parse(format!("scheduler config: {e}")))?;
    if json.get("_class_name").and_then(|v| v.as_str()) == Some("ScoreSdeVeScheduler") {
        let ve: VeConfig = serde_json::from_value(json).map_err(|e| parse(format!("ScoreSdeVeScheduler config: {e}")))?;
        ve.validate().map_err(in_file)?;
        scheduler.sde_ve = Some(ve);
    }
    scheduler.schedule().map_err(in_file)?;
    Ok((model, scheduler))
}

/// The weights in `dir`: `diffusion_pytorch_model.safetensors`, or else the
/// one variant there (`diffusion_pytorch_model.fp16.safetensors`, as
/// `save_pretrained(variant="fp16")` names it).
fn weights_file(dir: &Path) -> Result<std::path::PathBuf> {
    let plain = dir.join(WEIGHTS);
    if plain.is_file() {
        return Ok(plain);
    }
    let variants: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("diffusion_pytorch_model.") && n.ends_with(".safetensors")))
        .collect();
    match variants.as_slice() {
        [one] => Ok(one.clone()),
        [] => Ok(plain), // reading it reports it missing
        many => Err(Error::Data {
            path: dir.display().to_string(),
            msg: format!("no {WEIGHTS} and {} variants of it; keep one", many.len()),
        }),
    }
}

/// Save a model directory (each file written atomically).
pub fn save(dir: &Path, model: &UNet2DModel, scheduler: &SchedulerConfig) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    write_atomic(&dir.join(WEIGHTS), &st::serialize(&st::module_tensors(model)?)?)?;
    write_atomic(&dir.join(CONFIG), &to_json("UNet2DModel", &model.config)?)?;
    write_atomic(&dir.join(SCHEDULER), &to_json("DDIMScheduler", scheduler)?)
}
