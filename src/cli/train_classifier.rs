//! `minidiffusion train-classifier`: the lesson's Fashion-MNIST classifier
//! (data_aug2) whose features score samples. Inputs 28×28 in [−1, 1], random
//! crop (pad 1) and horizontal flip, AdamW + one-cycle, cross-entropy.

use super::resolve_device;
use anyhow::bail;
use clap::Args;
use minidiffusion::data::batches::{InputRange, epoch_order, images_f32};
use minidiffusion::data::{self, Dataset, Split};
use minidiffusion::nn::classifier::{Classifier, ClassifierConfig, ClassifierInfo};
use minidiffusion::nn::{param_count, params};
use minidiffusion::optim::{AdamW, OneCycle};
use minidiffusion::rng::PhiloxStream;
use minidiffusion::{Device, Tensor, backward, no_grad, ops};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct TrainClassifierArgs {
    /// Fashion-MNIST directory (default: /usr/share/datasets/fashion-mnist, else the embedded sample).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Directory for classifier.safetensors and classifier.json.
    #[arg(long, default_value = "models/fashion_classifier")]
    pub out: PathBuf,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// End with one JSON line: test accuracy, epochs, images, seconds, where it was saved.
    #[arg(long)]
    pub json: bool,
}

/// Images `idx` in [−1, 1] at 28×28, each shifted by a random crop of the
/// 1-pixel zero-padded image and flipped left-right with probability ½.
fn augmented(ds: &Dataset, idx: &[usize], seed: u64, step: u64) -> Vec<f32> {
    let (h, w) = (ds.height, ds.width);
    let plain = images_f32(ds, idx, 0, InputRange::Symmetric);
    let mut draws = vec![0u32; idx.len() * 3];
    PhiloxStream::new(seed, 0x6100_0000_0000 + step).fill_below(0, 3, &mut draws);
    let mut out = vec![0.0f32; plain.len()];
    for (i, img) in plain.chunks(h * w).enumerate() {
        let (dy, dx, flip) = (draws[3 * i] as isize - 1, draws[3 * i + 1] as isize - 1, draws[3 * i + 2] % 2 == 0);
        for y in 0..h as isize {
            for x in 0..w as isize {
                let (sy, sx) = (y + dy, if flip { w as isize - 1 - x } else { x } + dx);
                let v = if (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx) { img[(sy as usize) * w + sx as usize] } else { 0.0 };
                out[i * h * w + (y as usize) * w + x as usize] = v;
            }
        }
    }
    out
}

/// Accuracy on `ds` (eval mode: running statistics).
pub fn accuracy(model: &Classifier, ds: &Dataset, batch: usize, device: Device) -> anyhow::Result<f64> {
    let mut correct = 0usize;
    for start in (0..ds.len()).step_by(batch) {
        let idx: Vec<usize> = (start..(start + batch).min(ds.len())).collect();
        let x = Tensor::from_vec(images_f32(ds, &idx, 0, InputRange::Symmetric), [idx.len(), 1, ds.height, ds.width])?.to_device(device)?;
        let logits = no_grad(|| model.forward(&x, false))?.try_to_vec()?;
        for (row, &i) in logits.chunks(10).zip(&idx) {
            let pred = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (k, &v)| if v > b.1 { (k, v) } else { b }).0;
            correct += (pred == ds.labels[i] as usize) as usize;
        }
    }
    Ok(correct as f64 / ds.len().max(1) as f64)
}

pub fn run(args: TrainClassifierArgs) -> anyhow::Result<()> {
    let device = resolve_device(&args.device)?;
    if args.epochs == 0 || args.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    let dir = args.data.clone().or_else(|| Some(data::fashion_mnist_dir()).filter(|d| d.is_dir()));
    let (train, test) = match &dir {
        Some(d) => (data::load_fashion_mnist(d, Split::Train)?, data::load_fashion_mnist(d, Split::Test)?),
        None => {
            eprintln!("data: using the embedded Fashion-MNIST sample (5,000 train / 1,000 test images)");
            (data::embedded_fashion_mnist(Split::Train)?, data::embedded_fashion_mnist(Split::Test)?)
        }
    };
    let train = args.limit.map_or(train.clone(), |n| train.take(n));
    let model = Classifier::new(ClassifierConfig::default(), args.seed, device)?;
    let steps_per_epoch = train.len().div_ceil(args.batch_size);
    let total = steps_per_epoch * args.epochs;
    let sched = OneCycle::new(args.lr, total);
    let mut opt = AdamW::new(params(&model), AdamW::lesson_defaults(args.lr as f32))?;
    opt.hyper.eps = 1e-8; // torch.optim.AdamW's default, as the lesson's classifier used
    eprintln!(
        "training the classifier ({:.2}M parameters) on {} images, {} epochs of {steps_per_epoch} steps, batch {}, device {device}",
        param_count(&model) as f64 / 1e6,
        train.len(),
        args.epochs,
        args.batch_size
    );
    let started = Instant::now();
    let mut step = 0usize;
    let mut acc = 0.0;
    for epoch in 0..args.epochs {
        let order = epoch_order(train.len(), args.seed, epoch as u64);
        let (mut loss_sum, mut batches) = (0f64, 0usize);
        // a step's loss is read once the next step is queued (the device keeps working)
        let mut read_loss = |queued: Option<(minidiffusion::tensor::HostValues, usize)>| -> anyhow::Result<()> {
            if let Some((loss, at)) = queued {
                let value = loss.wait()?[0];
                if !value.is_finite() {
                    bail!("the loss is {value} at step {at}; stopping");
                }
                loss_sum += value as f64;
                batches += 1;
            }
            Ok(())
        };
        let mut queued = None;
        for idx in order.chunks(args.batch_size) {
            let x = Tensor::from_vec(augmented(&train, idx, args.seed, step as u64), [idx.len(), 1, train.height, train.width])?.to_device(device)?;
            let labels: Vec<usize> = idx.iter().map(|&i| train.labels[i] as usize).collect();
            let loss = ops::cross_entropy(&model.forward(&x, true)?, &labels)?;
            let value = loss.to_host_async()?;
            let grads = backward(&loss)?;
            opt.hyper.lr = sched.lr(step) as f32;
            opt.hyper.beta1 = sched.beta1(step) as f32;
            opt.step(&grads)?;
            read_loss(queued.replace((value, step)))?;
            step += 1;
        }
        read_loss(queued)?;
        acc = accuracy(&model, &test, args.batch_size, device)?;
        println!(
            "epoch {}: train loss {:.4}, test accuracy {:.4} ({:.0}s)",
            epoch + 1,
            loss_sum / batches.max(1) as f64,
            acc,
            started.elapsed().as_secs_f64()
        );
    }
    let info = ClassifierInfo {
        config: model.config.clone(),
        test_accuracy: acc,
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        device: device.to_string(),
        seconds: started.elapsed().as_secs_f64(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    model.save(&args.out, &info)?;
    if args.json {
        let summary = serde_json::json!({
            "test_accuracy": acc, "epochs": args.epochs, "train_images": train.len(), "test_images": test.len(),
            "seconds": info.seconds, "device": device.to_string(), "out": args.out.display().to_string(),
        });
        println!("{summary}");
    } else {
        println!("saved {} (test accuracy {:.4})", args.out.display(), acc);
    }
    Ok(())
}
