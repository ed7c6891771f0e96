//! `minidiffusion fid A B` and `minidiffusion eval --model DIR`: FID and KID
//! on the features of our Fashion-MNIST classifier (SPEC "Evaluation").

use super::resolve_device;
use super::sample::SamplerArgs;
use anyhow::{Context, bail};
use clap::Args;
use minidiffusion::data::batches::{InputRange, images_f32};
use minidiffusion::data::{self, Split};
use minidiffusion::diffusion::sampler;
use minidiffusion::io::{model_dir, npy, png};
use minidiffusion::metrics::{self, FeatureStats};
use minidiffusion::nn::classifier::Classifier;
use minidiffusion::{Device, Tensor, no_grad};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the shipped classifier is: $MINIDIFFUSION_CLASSIFIER, else
/// models/fashion_classifier under the working directory, else in the checkout
/// this binary was built from.
pub fn default_classifier() -> PathBuf {
    if let Ok(p) = std::env::var("MINIDIFFUSION_CLASSIFIER") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from("models/fashion_classifier");
    if local.join("classifier.json").is_file() {
        return local;
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/fashion_classifier"))
}

#[derive(Args, Debug)]
pub struct FidArgs {
    /// A .npy of features (N, D), a .npy of images (N, C, H, W) in [−1, 1], a folder of PNGs,
    /// fashion-mnist:test or fashion-mnist:train[:N].
    pub a: String,
    /// The other set, in any of the same forms.
    pub b: String,
    /// Also compute KID.
    #[arg(long)]
    pub kid: bool,
    #[arg(long)]
    pub json: bool,
    /// Classifier directory (classifier.json + classifier.safetensors).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Features of one set: [N, D] on the device, and whether they came from a cache.
pub struct Features {
    pub features: Tensor,
    pub stats: FeatureStats,
}

fn classifier(path: Option<&Path>, device: Device) -> anyhow::Result<(Classifier, PathBuf)> {
    let dir = path.map(Path::to_path_buf).unwrap_or_else(default_classifier);
    let (c, _) = Classifier::load(&dir, device)?;
    Ok((c, dir))
}

/// Real Fashion-MNIST images padded to 32×32 in [−1, 1] (the border black, as
/// the lesson's reference set).
fn fashion_images(split: Split, limit: Option<usize>) -> anyhow::Result<(Vec<f32>, [usize; 4])> {
    let dir = data::fashion_mnist_dir();
    let ds = if dir.is_dir() {
        data::load_fashion_mnist(&dir, split)?
    } else {
        eprintln!("data: {} not found; using the embedded Fashion-MNIST sample", dir.display());
        data::embedded_fashion_mnist(split)?
    };
    let ds = limit.map_or(ds.clone(), |n| ds.take(n));
    let idx: Vec<usize> = (0..ds.len()).collect();
    Ok((images_f32(&ds, &idx, 2, InputRange::Symmetric), [ds.len(), 1, 32, 32]))
}

/// Grey PNGs of a folder, sorted by name, in [−1, 1].
fn png_folder(dir: &Path) -> anyhow::Result<(Vec<f32>, [usize; 4])> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read the folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no .png files", dir.display());
    }
    let mut values = Vec::new();
    let mut size = None;
    for f in &files {
        let img = image::open(f).with_context(|| format!("{}: not a readable PNG", f.display()))?.to_luma8();
        let (w, h) = img.dimensions();
        if *size.get_or_insert((w, h)) != (w, h) {
            bail!("{}: {}×{} differs from the first image's size", f.display(), w, h);
        }
        values.extend(img.pixels().map(|p| p.0[0] as f32 / 127.5 - 1.0));
    }
    let (w, h) = size.expect("non-empty");
    Ok((values, [files.len(), 1, h as usize, w as usize]))
}

/// FNV-1a (64-bit) over the bytes: a cache key, not a checksum against tampering.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The features of a set named on the command line (cached next to the classifier for Fashion-MNIST).
pub fn features_of(spec: &str, model: &Classifier, classifier_dir: &Path) -> anyhow::Result<Features> {
    if let Some(rest) = spec.strip_prefix("fashion-mnist:") {
        let (split, limit) = match rest.split_once(':') {
            Some(("train", n)) => (Split::Train, Some(n.parse::<usize>().with_context(|| format!("'{spec}': N must be a number"))?)),
            None if rest == "train" => (Split::Train, None),
            None if rest == "test" => (Split::Test, None),
            _ => bail!("'{spec}' is not fashion-mnist:test or fashion-mnist:train[:N]"),
        };
        // the cache is keyed by the images and the classifier's weights, so a
        // retrained classifier, another data folder or the embedded sample
        // never reads another's features
        let (images, dims) = fashion_images(split, limit)?;
        let weights = std::fs::read(classifier_dir.join("classifier.safetensors")).unwrap_or_default();
        let key = fnv1a(weights.iter().copied().chain(images.iter().flat_map(|v| v.to_le_bytes())));
        let cache = classifier_dir.join("cache").join(format!("{}-{key:016x}.npy", spec.replace(':', "-")));
        if let Ok((dims, v)) = npy::read(&cache) {
            let features = Tensor::from_vec_on(v, dims, model.device)?;
            let stats = FeatureStats::from_features(&features)?;
            return Ok(Features { features, stats });
        }
        let features = model.features_batched(&images, dims, 500)?;
        std::fs::create_dir_all(cache.parent().expect("has a parent")).ok();
        let _ = npy::write(&cache, features.dims(), &features.try_to_vec()?); // a cache: best effort
        let stats = FeatureStats::from_features(&features)?;
        return Ok(Features { features, stats });
    }
    let path = Path::new(spec);
    let (images, dims) = if path.is_dir() {
        png_folder(path)?
    } else {
        let (dims, v) = npy::read(path)?;
        match dims.len() {
            2 => {
                if dims[1] != model.config.channels.last().copied().unwrap_or(0) {
                    eprintln!("{spec}: {} features per row (the classifier gives {}): used as given", dims[1], model.config.channels.last().unwrap());
                }
                let features = Tensor::from_vec_on(v, dims, model.device)?;
                let stats = FeatureStats::from_features(&features)?;
                return Ok(Features { features, stats });
            }
            4 => (v, [dims[0], dims[1], dims[2], dims[3]]),
            _ => bail!("{spec}: expected features (N, D) or images (N, C, H, W), got shape {dims:?}"),
        }
    };
    let features = model.features_batched(&images, dims, 500)?;
    let stats = FeatureStats::from_features(&features)?;
    Ok(Features { features, stats })
}

fn warn_small(n: usize, what: &str) {
    if n < 2048 {
        eprintln!("note: {what} has {n} samples; FID is biased upward below 2048 — compare only at equal counts");
    }
}

pub fn run_fid(args: FidArgs) -> anyhow::Result<()> {
    let device = resolve_device(&args.device)?;
    let (model, dir) = classifier(args.classifier.as_deref(), device)?;
    let a = features_of(&args.a, &model, &dir)?;
    let b = features_of(&args.b, &model, &dir)?;
    if a.stats.dim != b.stats.dim {
        bail!("the sets have {} and {} features per sample", a.stats.dim, b.stats.dim);
    }
    warn_small(a.stats.n, &args.a);
    warn_small(b.stats.n, &args.b);
    let fid = metrics::fid(&a.stats, &b.stats, device)?;
    let kid = if args.kid { Some(metrics::kid(&a.features, &b.features)?) } else { None };
    if args.json {
        let mut v = serde_json::json!({"fid": fid, "n_a": a.stats.n, "n_b": b.stats.n, "feature_dim": a.stats.dim});
        if let Some(k) = kid {
            v["kid"] = serde_json::json!(k);
        }
        println!("{v}");
    } else {
        print!("FID {fid:.4} ({} vs {} samples, {} features)", a.stats.n, b.stats.n, a.stats.dim);
        if let Some(k) = kid {
            print!(", KID {k:.5}");
        }
        println!();
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Samples to draw and score.
    #[arg(short = 'n', long = "num", default_value_t = 2048)]
    pub n: usize,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// FID of x̂0 every --x0-every sampler steps: writes x0_curve.json and x0_curve.png next to --out.
    #[arg(long)]
    pub x0_curve: bool,
    #[arg(long, default_value_t = 50)]
    pub x0_every: usize,
    /// Where the x̂0 curve files go.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
    /// Class labels for a class-conditional model, comma-separated, cycled over
    /// the samples (default: every class in turn).
    #[arg(long, value_delimiter = ',')]
    pub class_labels: Vec<usize>,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// Map samples from the model's data range to the classifier's [−1, 1].
pub fn to_unit_range(v: &mut [f32], lo: f32, hi: f32) {
    v.iter_mut().for_each(|x| *x = 2.0 * (*x - lo) / (hi - lo) - 1.0);
}

pub fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = resolve_device(&args.device)?;
    let (model, scheduler) = model_dir::load(&args.model, device)?;
    let schedule = scheduler.schedule()?;
    let mut opts = args.sampler.options(&scheduler)?;
    super::sample::check_samplable(&model, &schedule, &opts, &args.model)?;
    let (classifier_model, dir) = classifier(args.classifier.as_deref(), device)?;
    if args.n < 2 || args.batch_size == 0 {
        bail!("-n must be at least 2 and --batch-size at least 1");
    }
    warn_small(args.n, "the sample set");
    if args.x0_curve {
        if matches!(opts.kind, sampler::SamplerKind::SdeVe { .. }) {
            bail!("--x0-curve: the score-SDE sampler forms no x̂0 per step");
        }
        let plan_len = sampler::plan(&schedule, &opts)?.len();
        opts.keep_x0_at = (0..plan_len).filter(|k| (k + 1) % args.x0_every.max(1) == 0 || k + 1 == plan_len).collect();
    }
    let (lo, hi) = super::sample::data_range(&args.model, &opts);
    let (c, (h, w)) = (model.config.in_channels, model.config.sample_hw().unwrap_or((32, 32)));
    let started = Instant::now();
    let mut samples = Vec::with_capacity(args.n * c * h * w);
    let mut history: Vec<(usize, usize, Vec<f32>)> = opts.keep_x0_at.iter().map(|&k| (k, 0, Vec::new())).collect();
    let mut evals = 0;
    for first in (0..args.n).step_by(args.batch_size) {
        let count = args.batch_size.min(args.n - first);
        let x_t = sampler::initial_noise([count, c, h, w], first, opts.seed, device)?;
        let labels = super::sample::batch_labels(&model, &args.class_labels, first, count)?;
        let s = no_grad(|| sampler::sample(|x, t| model.forward_with_labels(x, t, labels.as_ref()), x_t, first, &schedule, &opts))?;
        evals += s.model_evals;
        samples.extend(s.x0.try_to_vec()?);
        for ((_, t_slot, acc), (_, t, x0)) in history.iter_mut().zip(&s.x0_history) {
            *t_slot = *t;
            acc.extend(x0.try_to_vec()?);
        }
    }
    let sample_seconds = started.elapsed().as_secs_f64();
    let reference = features_of("fashion-mnist:test", &classifier_model, &dir)?;
    let score = |mut images: Vec<f32>| -> anyhow::Result<(f64, f64)> {
        to_unit_range(&mut images, lo, hi);
        let f = classifier_model.features_batched(&images, [args.n, c, h, w], 500)?;
        let stats = FeatureStats::from_features(&f)?;
        Ok((metrics::fid(&stats, &reference.stats, device)?, metrics::kid(&f, &reference.features)?))
    };
    let (fid, kid) = score(samples)?;
    let floor = features_of(&format!("fashion-mnist:train:{}", args.n), &classifier_model, &dir)?;
    let floor_fid = metrics::fid(&floor.stats, &reference.stats, device)?;
    let floor_kid = metrics::kid(&floor.features, &reference.features)?;
    let mut curve = Vec::new();
    for (k, t, x0) in history {
        let (f, _) = score(x0)?;
        curve.push(serde_json::json!({"step": k + 1, "timestep": t, "fid": f}));
    }
    if args.x0_curve {
        std::fs::create_dir_all(&args.out).ok();
        let text = serde_json::to_string_pretty(&serde_json::json!({"n": args.n, "sampler": args.sampler.sampler_name(&scheduler), "curve": curve}))? + "\n";
        minidiffusion::io::write_atomic(&args.out.join("x0_curve.json"), text.as_bytes())?;
        let xs: Vec<f64> = curve.iter().map(|p| p["step"].as_f64().unwrap_or(0.0)).collect();
        let ys: Vec<f64> = curve.iter().map(|p| p["fid"].as_f64().unwrap_or(0.0)).collect();
        png::write_line_plot(&args.out.join("x0_curve.png"), &xs, &ys)?;
    }
    let summary = serde_json::json!({
        "fid": fid, "kid": kid, "n": args.n, "floor_fid": floor_fid, "floor_kid": floor_kid,
        "sampler": args.sampler.sampler_name(&scheduler), "model_evals_per_sample": evals / args.n.div_ceil(args.batch_size).max(1),
        "sample_seconds": sample_seconds, "device": device.to_string(), "precision": opts.precision, "x0_curve": curve,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{} samples ({}, {} products): FID {fid:.3}, KID {kid:.5}; real-data floor at the same n: FID {floor_fid:.3}, KID {floor_kid:.5}; sampling took {sample_seconds:.1}s",
            args.n, args.sampler.sampler_name(&scheduler), opts.precision
        );
        for p in &curve {
            println!("  x̂0 after step {}: FID {:.3}", p["step"], p["fid"].as_f64().unwrap_or(f64::NAN));
        }
    }
    Ok(())
}

/// The per-epoch FID/KID of `n` DDIM-25 samples (fixed seed) against the test
/// set, for the tracker (issue 6's optional callback). None when no classifier.
pub fn epoch_scorer(n: usize, device: Device) -> anyhow::Result<impl FnMut(&minidiffusion::train::Learner) -> minidiffusion::Result<Vec<(String, f64)>>> {
    let dir = default_classifier();
    let (model, _) = Classifier::load(&dir, device).map_err(|e| anyhow::anyhow!("--epoch-fid needs the classifier: {e}"))?;
    let reference = features_of("fashion-mnist:test", &model, &dir)?;
    Ok(move |l: &minidiffusion::train::Learner| -> minidiffusion::Result<Vec<(String, f64)>> {
        let opts = sampler::SamplerOptions {
            kind: sampler::SamplerKind::Ddim { steps: 25, eta: 0.0, spacing: Default::default() },
            seed: 1234,
            precision: l.config.precision,
            ..Default::default()
        };
        let (c, (h, w)) = (l.model.config.in_channels, l.model.config.sample_hw().unwrap_or((32, 32)));
        let x_t = sampler::initial_noise([n, c, h, w], 0, opts.seed, device)?;
        let labels = l.sample_labels(0, n)?;
        let s = no_grad(|| sampler::sample(|x, t| l.model.forward_with_labels(x, t, labels.as_ref()), x_t, 0, &l.schedule, &opts))?;
        let mut images = s.x0.try_to_vec()?;
        let (lo, hi) = l.config.range()?.bounds();
        to_unit_range(&mut images, lo, hi);
        let f = model.features_batched(&images, [n, c, h, w], 256)?;
        let stats = FeatureStats::from_features(&f)?;
        Ok(vec![("fid".into(), metrics::fid(&stats, &reference.stats, device)?), ("kid".into(), metrics::kid(&f, &reference.features)?)])
    })
}
