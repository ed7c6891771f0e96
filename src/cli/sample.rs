//! `minidiffusion sample`: draw images from a model directory with DDPM,
//! skip-DDPM or DDIM (SPEC "Sampling").

use super::resolve_device;
use anyhow::bail;
use clap::Args;
use minidiffusion::diffusion::sampler::{self, DdpmVariance, SamplerKind, SamplerOptions, Spacing};
use minidiffusion::diffusion::Schedule;
use minidiffusion::io::model_dir::{self, SchedulerConfig};
use minidiffusion::io::{npy, png};
use minidiffusion::nn::unet::UNet2DModel;
use minidiffusion::ops::Precision;
use minidiffusion::train::checkpoint;
use minidiffusion::{Device, Tensor, no_grad};
use std::path::PathBuf;
use std::time::Instant;

/// The sampler flags shared by sample, bench sample and eval.
#[derive(Args, Debug, Clone)]
pub struct SamplerArgs {
    /// ddpm (all steps), ddpm-skip (t%3==0 or t<50), ddpm-sample-at, ddim, or sde-ve (the score-SDE
    /// predictor–corrector of a ScoreSdeVeScheduler model). Default: sde-ve for those, else ddim.
    #[arg(long)]
    pub sampler: Option<String>,
    /// DDIM timesteps (default 100). With ddpm: fewer than the training timesteps runs DDPM over
    /// that many, as diffusers' DDPMScheduler.set_timesteps (default: every timestep). With sde-ve:
    /// noise levels (default: the config's num_train_timesteps, as ScoreSdeVePipeline).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM η: 0 deterministic, 1 DDPM-like noise.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Clip x̂0 to [−V, V] before each update, or none (the lesson's own DDIM). Default: as the
    /// model's scheduler_config.json says (clip_sample, clip_sample_range); minidiffusion's own models do not clip.
    #[arg(long)]
    pub clip_x0: Option<String>,
    /// DDIM timestep spacing: leading (990, 980, …, 0), trailing or linspace. Default: the model's
    /// scheduler_config.json timestep_spacing (leading when it has none, as in diffusers).
    #[arg(long)]
    pub timestep_spacing: Option<String>,
    /// DDPM's noise: beta (σ² = β_t, the lesson's), posterior (σ² = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t, diffusers'
    /// DDPMScheduler), or learned / learned_range (from the second half of the output channels of a model
    /// with twice its input's). Default: the model's scheduler_config.json variance_type (beta when it has none).
    #[arg(long)]
    pub ddpm_variance: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Products of the model calls: f32, or bf16 (operands rounded to bf16, f32 sums; bf16 tensor cores on CUDA).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// On CUDA: capture a model step as a CUDA graph and replay it (on), or launch every kernel (off). Same samples.
    #[arg(long, default_value = "on")]
    pub cuda_graph: String,
}

impl SamplerArgs {
    /// The sampler asked for, or the model's default (sde-ve for a
    /// ScoreSdeVeScheduler config, else ddim).
    pub fn sampler_name(&self, scheduler: &SchedulerConfig) -> &str {
        self.sampler.as_deref().unwrap_or(if scheduler.sde_ve.is_some() { "sde-ve" } else { "ddim" })
    }

    pub fn options(&self, scheduler: &SchedulerConfig) -> anyhow::Result<SamplerOptions> {
        let spacing = || -> anyhow::Result<Spacing> {
            Ok(match &self.timestep_spacing {
                Some(flag) => Spacing::parse(flag)?,
                None => Spacing::parse(&scheduler.timestep_spacing)
                    .map_err(|_| anyhow::anyhow!("{}: timestep_spacing {} is not supported", model_dir::SCHEDULER, scheduler.timestep_spacing))?,
            })
        };
        let name = self.sampler_name(scheduler);
        if scheduler.sde_ve.is_some() && name != "sde-ve" {
            bail!("--sampler {name}: {} is a ScoreSdeVeScheduler (a model of noise levels σ): sample it with --sampler sde-ve", model_dir::SCHEDULER);
        }
        let kind = match name {
            "ddpm" => match self.steps {
                Some(steps) if steps != scheduler.num_train_timesteps => SamplerKind::DdpmStrided { steps, spacing: spacing()? },
                _ => SamplerKind::Ddpm,
            },
            "ddpm-skip" => SamplerKind::DdpmSkip,
            "ddpm-sample-at" => SamplerKind::DdpmSampleAt,
            "ddim" => SamplerKind::Ddim { steps: self.steps.unwrap_or(100), eta: self.eta, spacing: spacing()? },
            "sde-ve" => match scheduler.sde_ve {
                Some(config) => SamplerKind::SdeVe { steps: self.steps.unwrap_or(config.num_train_timesteps), config },
                None => bail!("--sampler sde-ve: {} is not a ScoreSdeVeScheduler config", model_dir::SCHEDULER),
            },
            other => bail!("--sampler: '{other}' is not one of ddpm, ddpm-skip, ddpm-sample-at, ddim, sde-ve"),
        };
        if !(0.0..=10.0).contains(&self.eta) {
            bail!("--eta: {} is outside [0, 10]", self.eta);
        }
        let clip_x0 = match self.clip_x0.as_deref() {
            None => scheduler.clip_x0(),
            Some("none") => None,
            Some(v) => match v.parse::<f32>() {
                Ok(c) if c > 0.0 && c.is_finite() => Some(c),
                _ => bail!("--clip-x0: '{v}' is neither none nor a positive number"),
            },
        };
        let cuda_graph = match self.cuda_graph.as_str() {
            "on" => true,
            "off" => false,
            other => bail!("--cuda-graph: '{other}' is neither on nor off"),
        };
        let ddpm_variance = match &self.ddpm_variance {
            Some(flag) => DdpmVariance::parse(flag)?,
            None => scheduler.ddpm_variance()?,
        };
        // an explicit --clip-x0 (none included) replaces the config's thresholding
        let threshold = if self.clip_x0.is_some() { None } else { scheduler.thresholding() };
        Ok(SamplerOptions {
            kind,
            clip_x0,
            threshold,
            ddpm_variance,
            prediction: scheduler.prediction()?,
            set_alpha_to_one: scheduler.set_alpha_to_one,
            steps_offset: scheduler.steps_offset,
            seed: self.seed,
            keep_x0_at: vec![],
            precision: self.precision,
            cuda_graph,
        })
    }
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Model directory (diffusers layout: config.json, diffusion_pytorch_model.safetensors, scheduler_config.json).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Number of samples.
    #[arg(short = 'n', long = "num", default_value_t = 16)]
    pub n: usize,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Start from this x_T (float32 .npy, N×C×H×W) instead of seeded noise; N comes from it.
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// PNG grid of the samples.
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    /// Also write the samples as float32 .npy (N×C×H×W) in the model's data range.
    #[arg(long)]
    pub npy: Option<PathBuf>,
    /// Class labels for a class-conditional model, comma-separated, cycled over
    /// the samples (default: every class in turn).
    #[arg(long, value_delimiter = ',')]
    pub class_labels: Vec<usize>,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Refuse a model the samplers cannot drive with `opts`, naming its config file.
pub fn check_samplable(model: &UNet2DModel, schedule: &Schedule, opts: &SamplerOptions, dir: &std::path::Path) -> anyhow::Result<()> {
    let c = &model.config;
    let path = dir.join(model_dir::CONFIG);
    // twice the channels: ε̂ (or v, x̂0) then a variance (diffusers' learned variance)
    if c.out_channels != c.in_channels && c.out_channels != 2 * c.in_channels {
        bail!(
            "{}: out_channels {} is neither in_channels {} nor twice it: the samplers need an output shaped like their input (and a variance, for a learned one)",
            path.display(),
            c.out_channels,
            c.in_channels
        );
    }
    if opts.learns_variance() && c.out_channels != 2 * c.in_channels {
        bail!(
            "{}: a learned DDPM variance (variance_type learned or learned_range) needs out_channels twice in_channels {}, not {} (use --ddpm-variance beta or posterior)",
            path.display(),
            c.in_channels,
            c.out_channels
        );
    }
    if matches!(opts.kind, SamplerKind::SdeVe { .. }) {
        // (the score-SDE sampler gives the model noise levels σ)
        return Ok(());
    }
    model.check_integer_timesteps(schedule.steps()).map_err(|e| match e {
        minidiffusion::Error::Data { msg, .. } => anyhow::anyhow!("{}: {msg}", dir.join(model_dir::CONFIG).display()),
        other => other.into(),
    })
}

/// The class labels of samples first… (see `UNet2DModel::class_labels_for`), errors naming the flag.
pub fn batch_labels(model: &UNet2DModel, given: &[usize], first: usize, count: usize) -> anyhow::Result<Option<Tensor>> {
    model.class_labels_for(given, first, count).map_err(|e| anyhow::anyhow!("--class-labels: {e}"))
}

/// The model's data range: from the training record when there is one, else
/// diffusers' [−1, 1] ([0, 1] for the score-SDE sampler's images).
pub fn data_range(dir: &std::path::Path, opts: &SamplerOptions) -> (f32, f32) {
    if matches!(opts.kind, SamplerKind::SdeVe { .. }) {
        return (0.0, 1.0);
    }
    checkpoint::read_state(dir).ok().and_then(|s| s.train.range().ok()).map_or((-1.0, 1.0), |r| r.bounds())
}

/// Sample `n` images in batches; returns (samples N×C×H×W on the host, model evaluations, seconds).
#[allow(clippy::too_many_arguments)]
pub fn sample_all(
    model: &UNet2DModel,
    schedule: &Schedule,
    opts: &SamplerOptions,
    n: usize,
    batch_size: usize,
    init: Option<&(Vec<usize>, Vec<f32>)>,
    class_labels: &[usize],
    device: Device,
) -> anyhow::Result<(Vec<f32>, [usize; 4], usize, f64)> {
    let c = model.config.in_channels;
    let (h, w) = match init {
        Some((dims, _)) => (dims[2], dims[3]),
        None => model.config.sample_hw().unwrap_or((32, 32)),
    };
    let per = c * h * w;
    let mut out = Vec::with_capacity(n * per);
    let mut evals = 0;
    let started = Instant::now();
    for first in (0..n).step_by(batch_size.max(1)) {
        let count = batch_size.min(n - first);
        let x_t = match init {
            Some((_, v)) => Tensor::from_vec_on(v[first * per..(first + count) * per].to_vec(), [count, c, h, w], device)?,
            None => sampler::initial_noise([count, c, h, w], first, opts.seed, device)?,
        };
        let labels = batch_labels(model, class_labels, first, count)?;
        let s = no_grad(|| sampler::sample(|x, t| model.forward_with_labels(x, t, labels.as_ref()), x_t, first, schedule, opts))?;
        evals += s.model_evals * count;
        out.extend(s.x0.try_to_vec()?);
    }
    Ok((out, [n, c, h, w], evals, started.elapsed().as_secs_f64()))
}

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    let device = resolve_device(&args.device)?;
    let (model, scheduler) = model_dir::load(&args.model, device)?;
    let schedule = scheduler.schedule()?;
    let opts = args.sampler.options(&scheduler)?;
    check_samplable(&model, &schedule, &opts, &args.model)?;
    let init = match &args.init_noise {
        Some(p) => {
            let (dims, v) = npy::read(p)?;
            if dims.len() != 4 || dims[1] != model.config.in_channels {
                bail!("{}: x_T must be N×{}×H×W, got {dims:?}", p.display(), model.config.in_channels);
            }
            Some((dims, v))
        }
        None => None,
    };
    let n = init.as_ref().map_or(args.n, |(d, _)| d[0]);
    if n == 0 || args.batch_size == 0 {
        bail!("-n and --batch-size must be at least 1");
    }
    let (samples, dims, evals, seconds) = sample_all(&model, &schedule, &opts, n, args.batch_size, init.as_ref(), &args.class_labels, device)?;
    let (lo, hi) = data_range(&args.model, &opts);
    let cols = (n as f64).sqrt().ceil() as usize;
    png::write_grid(&args.out, &samples, &dims, lo, hi, cols)?;
    if let Some(p) = &args.npy {
        npy::write(p, &dims, &samples)?;
    }
    println!(
        "{n} samples in {seconds:.2}s on {device}: {:.1} samples/s, {:.1} model evaluations/s ({} per sample); grid: {}",
        n as f64 / seconds,
        evals as f64 / seconds,
        evals / n,
        args.out.display()
    );
    Ok(())
}
