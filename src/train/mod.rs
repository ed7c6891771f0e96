//! The training loop, miniai's Learner in Rust: `fit` runs epochs of noisify →
//! ε̂ = model(x_t, t) → MSE → backward → AdamW with one-cycle, and everything
//! around it (progress, checkpoints, metrics, run tracking) is a [`Callback`].
//!
//! On a GPU the host queues work and the device runs it. Reading a step's
//! loss waits for that step's forward pass, so the loop reads it only after
//! the next step is queued ([`Learner::run_steps`]): the device always has a
//! step to work on while the host logs and builds the next one.

pub mod callbacks;
pub mod checkpoint;

use crate::data::batches::{InputRange, epoch_order, images_f32};
use crate::data::{Dataset, DatasetKind};
use crate::device::Device;
use crate::diffusion::sampler::Prediction;
use crate::diffusion::{Schedule, ScheduleKind};
use crate::error::{Error, Result};
use crate::nn::params;
use crate::nn::unet::{ClassConditioning, DropoutStreams, UNet2DConfig, UNet2DModel};
use crate::ops;
use crate::ops::precision::Precision;
use crate::optim::{AdamW, AdamWHyper, GradNorm, OneCycle};
use crate::rng::PhiloxStream;
use crate::tensor::{HostValues, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Philox offsets of the training randomness (disjoint ranges).
const TIMESTEP_STREAM: u64 = 0x7100_0000_0000;
const NOISE_STREAM: u64 = 0x7200_0000_0000;
const EVAL_TIMESTEP_STREAM: u64 = 0x7300_0000_0000;
const EVAL_NOISE_STREAM: u64 = 0x7400_0000_0000;
/// Step s's dropout masks: streams DROPOUT_STREAM + s·2¹⁶ + k, k-th resnet.
const DROPOUT_STREAM: u64 = 0x7500_0000_0000_0000;

fn uniform() -> String {
    "uniform".into()
}
fn epsilon() -> String {
    "epsilon".into()
}

/// How training draws timesteps (see [`TrainConfig::timesteps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepDistribution {
    Uniform,
    Triangular,
}

impl TimestepDistribution {
    /// "uniform" or "triangular".
    pub fn parse(name: &str) -> Result<TimestepDistribution> {
        match name {
            "uniform" => Ok(TimestepDistribution::Uniform),
            "triangular" => Ok(TimestepDistribution::Triangular),
            other => Err(Error::Argument { op: "--timesteps", msg: format!("'{other}' is neither uniform nor triangular") }),
        }
    }

    /// `count` timesteps below `steps` from Philox `stream` of `seed`.
    pub fn draw(self, seed: u64, stream: u64, steps: usize, count: usize) -> Vec<u32> {
        let philox = PhiloxStream::new(seed, stream);
        match self {
            TimestepDistribution::Uniform => {
                let mut t = vec![0u32; count];
                philox.fill_below(0, steps as u32, &mut t);
                t
            }
            TimestepDistribution::Triangular => {
                // numpy's triangular(0, 0.5, 1) by its inverse CDF: √(u/2) below
                // u = 0.5, 1 − √((1−u)/2) above; then ⌊T·x⌋ as the lesson's long cast
                let mut u = vec![0f32; count];
                philox.fill_uniform(0, &mut u);
                u.iter()
                    .map(|&u| {
                        let u = u as f64;
                        let x = if u <= 0.5 { (u * 0.5).sqrt() } else { 1.0 - ((1.0 - u) * 0.5).sqrt() };
                        ((x * steps as f64) as u32).min(steps as u32 - 1)
                    })
                    .collect()
            }
        }
    }
}

/// Everything that defines a training run (saved with its checkpoints).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    /// "tiny", "seed" or the JSON file the UNet config came from.
    pub preset: String,
    pub unet: UNet2DConfig,
    pub dataset: String,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub lr: f64,
    /// "linear" or "cosine".
    pub schedule: String,
    pub beta_min: f64,
    pub beta_max: f64,
    pub train_timesteps: usize,
    pub input_range: String,
    pub seed: u64,
    pub weight_decay: f32,
    pub adam_eps: f32,
    /// Evaluate on the first this many test images (all when absent).
    #[serde(default)]
    pub eval_images: Option<usize>,
    /// How training draws each image's timestep: "uniform" on 0..T (the
    /// lesson's DDPM) or "triangular" (20_DDIM's noisify: ⌊T·x⌋ with x from
    /// the triangular distribution on [0, 1] with mode 0.5: more middle steps).
    #[serde(default = "uniform")]
    pub timesteps: String,
    /// The compute precision of the model's products in training, evaluation
    /// and the grids drawn meanwhile (ops::precision); weights, optimizer
    /// state and gradients stay f32 (f32 master weights; bf16 needs no loss scaling).
    #[serde(default)]
    pub precision: Precision,
    /// What the model learns to predict, as diffusers' `prediction_type`:
    /// "epsilon" (the lesson's), "v_prediction" (v = √ᾱ·ε − √(1−ᾱ)·x₀) or
    /// "sample" (x₀); written to the model's scheduler_config.json.
    #[serde(default = "epsilon")]
    pub prediction: String,
    /// Train on the schedule rescaled to zero terminal SNR (diffusers'
    /// rescale_betas_zero_snr: ᾱ = 0 at the last step); needs v or x₀ prediction.
    #[serde(default)]
    pub zero_snr: bool,
    /// Scale each step's gradients down to this global L2 norm when theirs is
    /// larger (PyTorch's `clip_grad_norm_`; diffusers' train_unconditional
    /// uses 1.0). None, the lesson's recipe: no clipping.
    #[serde(default)]
    pub clip_grad_norm: Option<f32>,
}

impl TrainConfig {
    /// The lesson's recipe for `unet` on Fashion-MNIST: linear β from 1e-4 to
    /// 0.01 over 1000 steps, images in [−0.5, 0.5], AdamW (wd 0.01, eps 1e-5),
    /// one epoch, seed 0, every test image evaluated.
    pub fn lesson(preset: &str, unet: UNet2DConfig, batch_size: usize, lr: f64) -> TrainConfig {
        TrainConfig {
            preset: preset.into(),
            unet,
            dataset: "fashion-mnist".into(),
            epochs: 1,
            max_steps: None,
            batch_size,
            lr,
            schedule: "linear".into(),
            beta_min: 1e-4,
            beta_max: 0.01,
            train_timesteps: 1000,
            input_range: "-0.5,0.5".into(),
            seed: 0,
            weight_decay: 0.01,
            adam_eps: 1e-5,
            eval_images: None,
            timesteps: uniform(),
            precision: Precision::F32,
            prediction: epsilon(),
            zero_snr: false,
            clip_grad_norm: None,
        }
    }

    /// What the model predicts (`prediction`).
    pub fn prediction(&self) -> Result<Prediction> {
        let p = Prediction::parse(&self.prediction)
            .ok_or_else(|| Error::Argument { op: "--prediction", msg: format!("'{}' is not one of epsilon, v_prediction, sample", self.prediction) })?;
        if self.zero_snr && p == Prediction::Epsilon {
            return Err(Error::Argument { op: "--zero-snr", msg: "needs --prediction v_prediction or sample (an ε model gives no x̂₀ where ᾱ = 0)".into() });
        }
        Ok(p)
    }

    pub fn noise_schedule(&self) -> Result<Schedule> {
        let kind = match self.schedule.as_str() {
            "linear" => ScheduleKind::Linear { beta_min: self.beta_min, beta_max: self.beta_max },
            "cosine" => ScheduleKind::Cosine,
            other => return Err(Error::Argument { op: "--schedule", msg: format!("'{other}' is not one of linear, cosine") }),
        };
        let schedule = Schedule::new(kind, self.train_timesteps)?;
        if self.zero_snr { schedule.zero_terminal_snr() } else { Ok(schedule) }
    }

    pub fn timestep_distribution(&self) -> Result<TimestepDistribution> {
        TimestepDistribution::parse(&self.timesteps)
    }

    pub fn range(&self) -> Result<InputRange> {
        InputRange::parse(&self.input_range)
    }

    pub fn dataset_kind(&self) -> DatasetKind {
        if self.dataset == "cifar10" { DatasetKind::Cifar10 } else { DatasetKind::FashionMnist }
    }
}

/// Pixels added on each side so 28×28 images become 32×32.
pub fn padding_for(ds: &Dataset) -> usize {
    if ds.height == 28 { 2 } else { 0 }
}

/// The first `n` images of `ds`, scaled to `range`, padded to 32×32 (28×28
/// inputs), as one [n, C, H, W] tensor on `device`.
fn prepared(ds: &Dataset, n: usize, range: InputRange, device: Device) -> Result<Tensor> {
    let pad = padding_for(ds);
    let indices: Vec<usize> = (0..n).collect();
    let dims = [n, ds.channels, ds.height + 2 * pad, ds.width + 2 * pad];
    Tensor::from_vec(images_f32(ds, &indices, pad, range), dims)?.to_device(device)
}

/// What one epoch did.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    /// Images trained on, and the seconds that took (evaluation excluded).
    pub images: usize,
    pub train_seconds: f64,
    pub train_loss: f32,
    pub eval_loss: f32,
    pub images_per_s: f64,
    pub seconds: f64,
}

/// A finished training step.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchReport {
    /// The step's number (1 is the first) and its epoch (1 is the first).
    pub step: usize,
    pub epoch: usize,
    pub images: usize,
    /// The learning rate it used.
    pub lr: f64,
    pub loss: f32,
    /// The gradients' global L2 norm, and the factor they were scaled by
    /// (below 1 when clipped to `clip_grad_norm`).
    pub grad_norm: f32,
    pub grad_scale: f32,
}

/// A queued training step whose loss is still on its way from the device.
pub struct QueuedStep {
    report: BatchReport,
    loss: HostValues,
    grad_norm: GradNorm,
}

impl QueuedStep {
    /// Wait for the loss. A loss that is not finite is an error (the weights
    /// are then spoilt; the last checkpoint is not).
    pub fn finish(self) -> Result<BatchReport> {
        let loss = self.loss.wait()?[0];
        let (grad_norm, grad_scale) = self.grad_norm.wait()?;
        let r = self.report;
        if !loss.is_finite() {
            return Err(Error::Argument {
                op: "train",
                msg: format!("the loss is {loss} at step {} (epoch {}); stopping, the last checkpoint is kept", r.step, r.epoch),
            });
        }
        Ok(BatchReport { loss, grad_norm, grad_scale, ..r })
    }
}

/// Hooks around the loop. Each returns Ok to go on; an error stops the run.
/// A batch is reported once its loss is known, while the next step runs.
pub trait Callback {
    fn before_fit(&mut self, _l: &Learner) -> Result<()> {
        Ok(())
    }
    fn after_batch(&mut self, _l: &Learner, _batch: &BatchReport) -> Result<()> {
        Ok(())
    }
    fn after_epoch(&mut self, _l: &Learner, _report: &EpochReport) -> Result<()> {
        Ok(())
    }
    fn after_fit(&mut self, _l: &Learner) -> Result<()> {
        Ok(())
    }
    /// The run stopped with `err` (NaN loss, I/O failure, interrupt).
    fn on_failure(&mut self, _l: &Learner, _err: &Error) {}
}

/// What a model predicting `prediction` is trained towards, for images x₀
/// noised with ε at ᾱ per image: ε, v = √ᾱ·ε − √(1−ᾱ)·x₀, or x₀.
pub fn training_target(prediction: Prediction, x0: &Tensor, eps: Tensor, abar: &[f64]) -> Result<Tensor> {
    let per_image = |values: Vec<f32>| Tensor::from_vec_on(values, [abar.len(), 1, 1, 1], x0.device());
    match prediction {
        Prediction::Epsilon => Ok(eps),
        Prediction::Sample => Ok(x0.clone()),
        Prediction::V => {
            let a = per_image(abar.iter().map(|v| v.sqrt() as f32).collect())?;
            let b = per_image(abar.iter().map(|v| (1.0 - v).sqrt() as f32).collect())?;
            ops::sub(&ops::mul(&eps, &a)?, &ops::mul(x0, &b)?)
        }
    }
}

/// The data's class count: one more than the largest label of either split.
fn class_count(train: &Dataset, test: &Dataset) -> usize {
    train.labels.iter().chain(&test.labels).max().map_or(0, |&m| m as usize + 1)
}

/// Refuse a model this trainer cannot drive: one whose time embedding cannot
/// take the schedule's integer timesteps, or (class-conditional models are
/// trained on the data's class labels) whose class embedding cannot take the labels.
pub fn check_model_fits(model: &UNet2DModel, schedule: &Schedule, train: &Dataset, test: &Dataset) -> Result<()> {
    model.check_integer_timesteps(schedule.steps())?;
    let Some(kind) = model.config.class_conditioning() else { return Ok(()) };
    let classes = class_count(train, test);
    let refuse = |msg: String| Err(Error::Data { path: "config.json".into(), msg });
    match kind {
        ClassConditioning::Identity => refuse("class_embed_type \"identity\" takes label vectors; training here gives class numbers".into()),
        ClassConditioning::Table(n) if n < classes => refuse(format!("num_class_embeds {n} is fewer than the data's {classes} classes")),
        _ => model.class_labels_for(&[classes.saturating_sub(1)], 0, 1).map(|_| ()),
    }
}

/// The model, its optimiser and schedule, the data, and where the run is.
pub struct Learner {
    pub config: TrainConfig,
    pub model: UNet2DModel,
    pub opt: AdamW,
    pub one_cycle: OneCycle,
    pub schedule: Schedule,
    timestep_distribution: TimestepDistribution,
    pub train: Dataset,
    pub test: Dataset,
    pub device: Device,
    /// Optimiser steps done.
    pub step: usize,
    /// Epochs done.
    pub epoch: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Both splits scaled and padded once, on the device: a batch is a row gather.
    train_x: Tensor,
    test_x: Tensor,
}

impl Learner {
    pub fn new(config: TrainConfig, model: UNet2DModel, train: Dataset, test: Dataset, device: Device) -> Result<Learner> {
        if config.batch_size == 0 || train.is_empty() {
            return Err(Error::Argument { op: "train", msg: "needs a batch size ≥ 1 and at least one training image".into() });
        }
        let steps_per_epoch = train.len().div_ceil(config.batch_size);
        let total_steps = config.max_steps.map_or(steps_per_epoch * config.epochs, |m| m.min(steps_per_epoch * config.epochs.max(1)).max(1));
        let hyper = AdamWHyper { lr: config.lr as f32, beta1: 0.9, beta2: 0.999, eps: config.adam_eps, weight_decay: config.weight_decay };
        let opt = AdamW::new(params(&model), hyper)?;
        let one_cycle = OneCycle::new(config.lr, total_steps);
        let schedule = config.noise_schedule()?;
        config.prediction()?;
        check_model_fits(&model, &schedule, &train, &test)?;
        let timestep_distribution = config.timestep_distribution()?;
        let range = config.range()?;
        let eval_n = config.eval_images.map_or(test.len(), |m| m.min(test.len()));
        let train_x = prepared(&train, train.len(), range, device)?;
        let test_x = prepared(&test, eval_n, range, device)?;
        Ok(Learner { config, model, opt, one_cycle, schedule, timestep_distribution, train, test, device, step: 0, epoch: 0, steps_per_epoch, total_steps, lr: 0.0, train_x, test_x })
    }

    fn timesteps(&self, stream: u64, count: usize) -> Vec<u32> {
        self.timestep_distribution.draw(self.config.seed, stream, self.schedule.steps(), count)
    }

    /// The class labels of rows `indices` of `data` when the model is class-conditional.
    fn labels(&self, data: &Dataset, indices: &[usize]) -> Result<Option<Tensor>> {
        if self.model.config.class_conditioning().is_none() {
            return Ok(None);
        }
        let values: Vec<f32> = indices.iter().map(|&i| data.labels[i] as f32).collect();
        Ok(Some(Tensor::from_vec_on(values, [indices.len()], self.device)?))
    }

    /// Class labels for samples first…first+count−1 drawn during training
    /// (sample grids, per-epoch FID): every class of the training data in
    /// turn; None for a model without class conditioning.
    pub fn sample_labels(&self, first: usize, count: usize) -> Result<Option<Tensor>> {
        let classes: Vec<usize> = match self.model.config.class_conditioning() {
            Some(_) => (0..class_count(&self.train, &self.test)).collect(),
            None => vec![],
        };
        self.model.class_labels_for(&classes, first, count)
    }

    /// The noisy batch and its target for rows `indices` of `images`:
    /// (x_t, t as f32 [B], the target: ε, v or x₀ as `prediction` says).
    fn noisy_batch(&self, images: &Tensor, indices: &[usize], t_stream: u64, noise_stream: u64) -> Result<(Tensor, Tensor, Tensor)> {
        let x0 = ops::index_select(images, indices)?;
        let t = self.timesteps(t_stream, indices.len());
        let abar: Vec<f64> = t.iter().map(|&t| self.schedule.abar(t as i64)).collect();
        let (x_t, eps) = ops::diffusion::noisify(&x0, &abar, self.config.seed, noise_stream, 0)?;
        let t = Tensor::from_vec_on(t.iter().map(|&v| v as f32).collect(), [indices.len()], self.device)?;
        Ok((x_t, t, training_target(self.config.prediction()?, &x0, eps, &abar)?))
    }

    /// Queue one optimiser step on images `indices` (on a GPU the host does
    /// not wait for it); [`QueuedStep::finish`] reads its loss.
    pub fn queue_step(&mut self, indices: &[usize]) -> Result<QueuedStep> {
        let _nvtx = crate::device::nvtx::range("train step");
        let _precision = crate::ops::precision::with_precision(self.config.precision);
        let (x_t, t, eps) = self.noisy_batch(&self.train_x, indices, TIMESTEP_STREAM + self.step as u64, NOISE_STREAM + self.step as u64)?;
        let labels = self.labels(&self.train, indices)?;
        let p = self.model.config.dropout as f32;
        let dropout = (p > 0.0).then(|| DropoutStreams::new(p, self.config.seed, DROPOUT_STREAM + ((self.step as u64) << 16)));
        let pred = self.model.forward_train(&x_t, &t, labels.as_ref(), dropout.as_ref())?;
        let loss = ops::mse_loss(&pred, &eps)?;
        let value = loss.to_host_async()?;
        let grads = crate::autograd::backward(&loss)?;
        self.lr = self.one_cycle.lr(self.step);
        self.opt.hyper.lr = self.lr as f32;
        self.opt.hyper.beta1 = self.one_cycle.beta1(self.step) as f32;
        let optimizer_range = crate::device::nvtx::range("optimizer step");
        self.opt.max_grad_norm = self.config.clip_grad_norm;
        let grad_norm = self.opt.step(&grads)?;
        drop(optimizer_range);
        self.step += 1;
        let report = BatchReport { step: self.step, epoch: self.epoch + 1, images: indices.len(), lr: self.lr, loss: f32::NAN, grad_norm: f32::NAN, grad_scale: f32::NAN };
        Ok(QueuedStep { report, loss: value, grad_norm })
    }

    /// One optimiser step on images `indices`, waiting for its loss.
    pub fn train_step(&mut self, indices: &[usize]) -> Result<f32> {
        Ok(self.queue_step(indices)?.finish()?.loss)
    }

    /// One step per batch, in order, each queued before the previous step's
    /// loss is read; `done` sees every finished step in order. The same
    /// numbers as [`Learner::train_step`] one at a time.
    pub fn run_steps<'a>(
        &mut self,
        batches: impl IntoIterator<Item = &'a [usize]>,
        mut done: impl FnMut(&Learner, BatchReport) -> Result<()>,
    ) -> Result<()> {
        let mut queued: Option<QueuedStep> = None;
        for indices in batches {
            let next = self.queue_step(indices)?;
            if let Some(previous) = queued.replace(next) {
                done(self, previous.finish()?)?;
            }
        }
        match queued {
            Some(last) => done(self, last.finish()?),
            None => Ok(()),
        }
    }

    /// Mean MSE over the test split with fixed noise (comparable across epochs).
    pub fn eval_loss(&self) -> Result<f32> {
        let _guard = crate::autograd::NoGradGuard::new();
        let _precision = crate::ops::precision::with_precision(self.config.precision);
        let n = self.test_x.dims()[0];
        // every batch queued first, the losses read after (one wait on a GPU)
        let mut losses = Vec::new();
        for (b, start) in (0..n).step_by(self.config.batch_size).enumerate() {
            let idx: Vec<usize> = (start..(start + self.config.batch_size).min(n)).collect();
            let (x_t, t, eps) = self.noisy_batch(&self.test_x, &idx, EVAL_TIMESTEP_STREAM + b as u64, EVAL_NOISE_STREAM + b as u64)?;
            let labels = self.labels(&self.test, &idx)?;
            losses.push((ops::mse_loss(&self.model.forward_with_labels(&x_t, &t, labels.as_ref())?, &eps)?.to_host_async()?, idx.len()));
        }
        let (mut total, mut count) = (0f64, 0usize);
        for (loss, images) in losses {
            total += loss.wait()?[0] as f64 * images as f64;
            count += images;
        }
        Ok((total / count.max(1) as f64) as f32)
    }

    /// Epochs until `total_steps`, calling back around each batch and epoch.
    pub fn fit(&mut self, callbacks: &mut [&mut dyn Callback]) -> Result<()> {
        let result = self.fit_inner(callbacks);
        if let Err(e) = &result {
            for cb in callbacks.iter_mut() {
                cb.on_failure(self, e);
            }
        }
        result
    }

    fn fit_inner(&mut self, callbacks: &mut [&mut dyn Callback]) -> Result<()> {
        for cb in callbacks.iter_mut() {
            cb.before_fit(self)?;
        }
        while self.step < self.total_steps {
            let started = Instant::now();
            let order = epoch_order(self.train.len(), self.config.seed, self.epoch as u64);
            let (mut loss_sum, mut batches, mut images) = (0f64, 0usize, 0usize);
            let remaining = self.total_steps - self.step;
            self.run_steps(order.chunks(self.config.batch_size).take(remaining), |l, batch| {
                loss_sum += batch.loss as f64;
                batches += 1;
                images += batch.images;
                callbacks.iter_mut().try_for_each(|cb| cb.after_batch(l, &batch))
            })?;
            let train_seconds = started.elapsed().as_secs_f64();
            self.epoch += 1;
            let report = EpochReport {
                epoch: self.epoch,
                images,
                train_seconds,
                train_loss: (loss_sum / batches.max(1) as f64) as f32,
                eval_loss: self.eval_loss()?,
                images_per_s: images as f64 / train_seconds.max(1e-9),
                seconds: started.elapsed().as_secs_f64(),
            };
            for cb in callbacks.iter_mut() {
                cb.after_epoch(self, &report)?;
            }
        }
        for cb in callbacks.iter_mut() {
            cb.after_fit(self)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangular_timesteps_follow_the_triangular_distribution() {
        let (steps, n) = (1000usize, 200_000usize);
        let t = TimestepDistribution::Triangular.draw(7, 3, steps, n);
        assert!(t.iter().all(|&v| (v as usize) < steps));
        // P(bin [a, b)) from the CDF F(x) = 2x² below 0.5, 1 − 2(1 − x)² above
        let cdf = |x: f64| if x <= 0.5 { 2.0 * x * x } else { 1.0 - 2.0 * (1.0 - x) * (1.0 - x) };
        let mut counts = [0usize; 10];
        for &v in &t {
            counts[v as usize / 100] += 1;
        }
        for (b, &c) in counts.iter().enumerate() {
            let p = cdf((b + 1) as f64 / 10.0) - cdf(b as f64 / 10.0);
            let (expected, sd) = (p * n as f64, (n as f64 * p * (1.0 - p)).sqrt());
            assert!((c as f64 - expected).abs() < 5.0 * sd, "bin {b}: {c} vs {expected:.0} ± {sd:.0}");
        }
        let mean = t.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((mean - 499.5).abs() < 2.0, "mean {mean}");
        // the middle is favoured: the two central bins hold 36 %, the two outer 4 %
        assert!(counts[4] + counts[5] > 8 * (counts[0] + counts[9]));
    }

    #[test]
    fn uniform_timesteps_are_philox_fill_below() {
        let t = TimestepDistribution::Uniform.draw(7, 3, 1000, 4096);
        let mut want = vec![0u32; 4096];
        PhiloxStream::new(7, 3).fill_below(0, 1000, &mut want);
        assert_eq!(t, want);
        let counts = t.iter().fold([0usize; 10], |mut c, &v| {
            c[v as usize / 100] += 1;
            c
        });
        assert!(counts.iter().all(|&c| (300..520).contains(&c)), "{counts:?}");
    }
}
