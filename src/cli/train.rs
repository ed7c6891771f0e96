//! `minidiffusion train`: the lesson's DDPM training (SPEC "Training").

use super::resolve_device;
use anyhow::{Context, bail};
use clap::Args;
use minidiffusion::data::batches::InputRange;
use minidiffusion::data::{self, Dataset, Split};
use minidiffusion::io::model_dir;
use minidiffusion::nn::param_count;
use minidiffusion::nn::unet::{UNet2DConfig, UNet2DModel};
use minidiffusion::ops::Precision;
use minidiffusion::train::callbacks::{Checkpoint, Progress, Recorder};
use minidiffusion::track::{self, tracker::TrainTracking};
use minidiffusion::train::{Learner, TrainConfig, checkpoint};
use minidiffusion::{Device, Error};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Directory of the dataset files (default: /usr/share/datasets/fashion-mnist, else the embedded sample).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// fashion-mnist or cifar10.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// tiny, seed, or a JSON file with a UNet2DModel config (default: seed on a GPU, tiny on CPU).
    #[arg(long)]
    pub config: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many optimiser steps (the one-cycle schedule spans them).
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate of the one-cycle schedule (default: 1e-2 for seed, the lesson's; 3e-3 for tiny at its small batch).
    #[arg(long)]
    pub lr: Option<f64>,
    /// linear or cosine.
    #[arg(long, default_value = "linear")]
    pub schedule: String,
    #[arg(long, default_value_t = 1e-4)]
    pub beta_min: f64,
    #[arg(long, default_value_t = 0.01)]
    pub beta_max: f64,
    /// How each image's timestep is drawn: uniform (the lesson's DDPM) or triangular (20_DDIM's noisify, mode T/2).
    #[arg(long, default_value = "uniform")]
    pub timesteps: String,
    /// Data range: -0.5,0.5 (the lesson's finding), -1,1 or 0,1.
    #[arg(long, default_value = "-0.5,0.5")]
    pub input_range: String,
    /// auto (CUDA when a GPU is there, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Model directory to write (diffusers layout), at each epoch end and at the end.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in --out.
    #[arg(long)]
    pub resume: bool,
    /// Evaluate on the first N test images each epoch (default: all for seed, 1000 for tiny).
    #[arg(long)]
    pub eval_images: Option<usize>,
    /// Make the last stdout line a JSON summary.
    #[arg(long)]
    pub json: bool,
    /// The runs store this run is recorded in (default: $MINIDIFFUSION_RUNS, else runs/minidiffusion.db).
    #[arg(long)]
    pub runs_db: Option<PathBuf>,
    /// Name of the run in the store (default: <config>-<dataset>-<id>).
    #[arg(long)]
    pub run_name: Option<String>,
    /// FID and KID of this many DDIM-25 samples at each epoch end, recorded with the run (0: off; needs the classifier).
    #[arg(long, default_value_t = 0)]
    pub epoch_fid: usize,
    /// DDIM steps of the 16-sample grid drawn at each epoch end (0: no grids).
    #[arg(long, default_value_t = 50)]
    pub grid_steps: usize,
    /// Products (convolutions, linear layers) in f32, or bf16 (mixed precision: operands rounded to bf16,
    /// f32 sums, f32 master weights and gradients; bf16 tensor cores on CUDA). Default f32; a resumed run keeps its own.
    #[arg(long)]
    pub precision: Option<Precision>,
    /// What the model learns to predict: epsilon (the lesson's, the default), v_prediction or sample (x₀),
    /// as diffusers names it. A resumed run keeps its own.
    #[arg(long)]
    pub prediction: Option<String>,
    /// Rescale the schedule to zero terminal SNR (diffusers' rescale_betas_zero_snr); needs v_prediction or sample.
    #[arg(long)]
    pub zero_snr: bool,
    /// Scale each step's gradients down to this global L2 norm when theirs is larger (PyTorch's
    /// clip_grad_norm_; diffusers' train_unconditional uses 1.0). Default: none, as the lesson.
    /// A resumed run takes it when given.
    #[arg(long)]
    pub clip_grad_norm: Option<f32>,
}

/// A preset's defaults.
struct Preset {
    name: String,
    unet: UNet2DConfig,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    eval_images: Option<usize>,
}

fn preset(name: &str) -> anyhow::Result<Preset> {
    let p = |name: &str, unet, epochs, batch_size, lr, eval_images| Preset { name: name.into(), unet, epochs, batch_size, lr, eval_images };
    Ok(match name {
        "seed" => p("seed", UNet2DConfig::seed_preset(), 25, 512, 1e-2, None),
        // at batch 64, 1e-2 diverges after the warm-up (loss back to ≈1 by step 60), as PyTorch's
        // recipe does on this config (BENCHMARKS, "The recipe's stability"); 3e-3 does not
        "tiny" => p("tiny", UNet2DConfig::tiny_preset(), 1, 64, 3e-3, Some(1000)),
        file => {
            let text = std::fs::read_to_string(file).map_err(|e| Error::Data { path: file.into(), msg: format!("cannot read: {e}") })?;
            let config: UNet2DConfig = serde_json::from_str(&text).map_err(|e| Error::Data { path: file.into(), msg: format!("invalid UNet config: {e}") })?;
            config.validate().map_err(|e| match e {
                Error::Data { msg, .. } => Error::Data { path: file.into(), msg },
                other => other,
            })?;
            p(file, config, 25, 512, 1e-2, None)
        }
    })
}

/// Train and test splits of `dataset`.
fn load_data(dataset: &str, args: &TrainArgs) -> anyhow::Result<(Dataset, Dataset)> {
    match dataset {
        "fashion-mnist" => {
            let dir = match &args.data {
                Some(d) => Some(d.clone()),
                None => Some(data::fashion_mnist_dir()).filter(|d| d.is_dir()),
            };
            match dir {
                Some(d) => Ok((data::load_fashion_mnist(&d, Split::Train)?, data::load_fashion_mnist(&d, Split::Test)?)),
                None => {
                    eprintln!(
                        "data: {} not found and no --data given; using the embedded Fashion-MNIST sample (5,000 train / 1,000 test images, MIT licence)",
                        data::fashion_mnist_dir().display()
                    );
                    Ok((data::embedded_fashion_mnist(Split::Train)?, data::embedded_fashion_mnist(Split::Test)?))
                }
            }
        }
        "cifar10" => {
            let Some(d) = &args.data else { bail!("--dataset cifar10 needs --data DIR (the directory of data_batch_*.bin and test_batch.bin)") };
            Ok((data::load_cifar10(d, Split::Train)?, data::load_cifar10(d, Split::Test)?))
        }
        other => bail!("--dataset: '{other}' is not one of fashion-mnist, cifar10"),
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let device = resolve_device(&args.device)?;
    if let Some(c) = args.clip_grad_norm
        && !(c.is_finite() && c > 0.0)
    {
        bail!("--clip-grad-norm {c}: expected a positive norm");
    }
    InputRange::parse(&args.input_range)?;
    minidiffusion::train::TimestepDistribution::parse(&args.timesteps)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("model"));
    let resumed = if args.resume { Some(checkpoint::read_state(&out)?) } else { None };
    // a new run's config is read and checked before any data is loaded (a
    // bad config is then the only line printed)
    let chosen = if resumed.is_some() {
        None
    } else {
        let name = args.config.clone().unwrap_or_else(|| {
            let pick = if device.is_cuda() { "seed" } else { "tiny" };
            eprintln!("config: {pick} (the default on {}; --config to choose)", if device.is_cuda() { "a GPU" } else { "the CPU" });
            pick.to_string()
        });
        Some(preset(&name)?)
    };
    let dataset = resumed.as_ref().map_or(args.dataset.clone(), |s| s.train.dataset.clone());
    let (train, test) = load_data(&dataset, &args)?;
    let resuming = resumed.is_some();
    let (config, model) = if let Some(state) = resumed {
        let (model, _) = model_dir::load(&out, device)?;
        if let Some(p) = args.precision
            && p != state.train.precision
        {
            bail!("--precision {p}: the run in {} was trained at {}; resume it without --precision", out.display(), state.train.precision);
        }
        if let Some(p) = &args.prediction
            && *p != state.train.prediction
        {
            bail!("--prediction {p}: the run in {} predicts {}; resume it without --prediction", out.display(), state.train.prediction);
        }
        if args.zero_snr && !state.train.zero_snr {
            bail!("--zero-snr: the run in {} was trained without it; resume it without --zero-snr", out.display());
        }
        eprintln!("resuming {} at step {}/{} (epoch {})", out.display(), state.step, state.total_steps, state.epoch);
        let mut train = state.train;
        train.clip_grad_norm = args.clip_grad_norm.or(train.clip_grad_norm);
        (train, model)
    } else {
        let Preset { name: preset, mut unet, epochs, batch_size: batch, lr, eval_images } = chosen.expect("a new run has its config");
        if matches!(preset.as_str(), "tiny" | "seed") {
            // the presets take the dataset's channels (1 for Fashion-MNIST, 3 for CIFAR-10)
            (unet.in_channels, unet.out_channels) = (train.channels, train.channels);
        }
        let config = TrainConfig {
            preset,
            unet,
            dataset: args.dataset.clone(),
            epochs: args.epochs.unwrap_or(epochs),
            max_steps: args.max_steps,
            batch_size: args.batch_size.unwrap_or(batch),
            lr: args.lr.unwrap_or(lr),
            schedule: args.schedule.clone(),
            beta_min: args.beta_min,
            beta_max: args.beta_max,
            train_timesteps: 1000,
            input_range: args.input_range.clone(),
            seed: args.seed,
            weight_decay: 0.01,
            adam_eps: 1e-5,
            eval_images: args.eval_images.or(eval_images),
            timesteps: args.timesteps.clone(),
            precision: args.precision.unwrap_or_default(),
            prediction: args.prediction.clone().unwrap_or_else(|| "epsilon".into()),
            zero_snr: args.zero_snr,
            clip_grad_norm: args.clip_grad_norm,
        };
        config.prediction()?;
        config.noise_schedule()?;
        config.timestep_distribution()?;
        if config.epochs == 0 || config.batch_size == 0 || config.max_steps == Some(0) {
            bail!("--epochs, --batch-size and --max-steps must be at least 1");
        }
        let model = UNet2DModel::new(config.unet.clone(), config.seed, device)?;
        (config, model)
    };
    check_shapes(&config, &train)?;
    // (before the banner: a refusal is the one line printed)
    minidiffusion::train::check_model_fits(&model, &config.noise_schedule()?, &train, &test).map_err(|e| match e {
        Error::Data { path, msg } if path == "config.json" => Error::Data { path: config.preset.clone(), msg },
        other => other,
    })?;
    eprintln!(
        "training {} ({:.2}M parameters) on {} ({} train / {} test images from {}), batch {}, {} products{}, device {device}",
        config.preset,
        param_count(&model) as f64 / 1e6,
        config.dataset,
        train.len(),
        test.len(),
        train.source,
        config.batch_size,
        config.precision,
        config.clip_grad_norm.map_or(String::new(), |c| format!(", gradients clipped to norm {c}"))
    );
    let mut learner = Learner::new(config, model, train, test, device)?;
    if resuming {
        let state = checkpoint::read_state(&out)?;
        checkpoint::restore(&mut learner, &out, &state)?;
    }
    let (mut progress, mut saver, mut recorder) = (Progress::new(true), Checkpoint::new(out.clone()), Recorder::default());
    let runs_db = track::db_path(args.runs_db.as_deref());
    let mut tracking = TrainTracking::start(&runs_db, args.run_name.as_deref(), &learner, &out, args.grid_steps)
        .with_context(|| format!("cannot record the run in {} (--runs-db to choose another store)", runs_db.display()))?;
    eprintln!("run {} '{}' recorded in {} (minidiffusion runs show {})", tracking.tracker.id(), tracking.tracker.name(), runs_db.display(), tracking.tracker.id());
    let mut scores = if args.epoch_fid >= 2 {
        Some(track::tracker::EpochMetrics { handle: tracking.tracker.handle(), compute: super::fid::epoch_scorer(args.epoch_fid, device)? })
    } else {
        None
    };
    let [ckpts, grids, tracker] = tracking.callbacks();
    let mut callbacks: Vec<&mut dyn minidiffusion::train::Callback> = vec![&mut progress, &mut saver, &mut recorder, ckpts, grids];
    if let Some(s) = scores.as_mut() {
        callbacks.push(s);
    }
    callbacks.push(tracker);
    learner
        .fit(&mut callbacks)
        .with_context(|| format!("training stopped; the last checkpoint in {} is kept", out.display()))?;
    let summary = summarise(&recorder, &learner, device, &out);
    if args.json {
        println!("{summary}");
    } else {
        eprintln!("saved {} ({})", out.display(), summary);
    }
    Ok(())
}

fn check_shapes(config: &TrainConfig, train: &Dataset) -> anyhow::Result<()> {
    if config.unet.in_channels != train.channels || config.unet.out_channels != train.channels {
        bail!(
            "the model has {} input and {} output channels but {} images have {}",
            config.unet.in_channels,
            config.unet.out_channels,
            config.dataset,
            train.channels
        );
    }
    Ok(())
}

fn summarise(r: &Recorder, l: &Learner, device: Device, out: &Path) -> String {
    let mean = |v: &[f32]| if v.is_empty() { f32::NAN } else { v.iter().sum::<f32>() / v.len() as f32 };
    let first = mean(&r.losses[..r.losses.len().min(10)]);
    let last = mean(&r.losses[r.losses.len().saturating_sub(10)..]);
    let images: usize = r.epochs.iter().map(|e| e.images).sum();
    let seconds: f64 = r.epochs.iter().map(|e| e.train_seconds).sum();
    let images_per_s = if seconds > 0.0 { images as f64 / seconds } else { 0.0 };
    serde_json::json!({
        "steps": l.step,
        "first_loss": first,
        "final_loss": last,
        "eval_loss": r.epochs.last().map(|e| e.eval_loss),
        "images_per_s": (images_per_s * 10.0).round() / 10.0,
        "device": device.to_string(),
        "out": out.display().to_string(),
    })
    .to_string()
}
