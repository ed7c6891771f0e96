//! `minidiffusion bench kernels`: time each hot op at UNet shapes on one
//! device and report GFLOP/s (products) or GB/s (memory-bound ops). The same
//! shapes run through cuDNN/cuBLAS in scripts/bench_torch_kernels.py.

use super::resolve_device;
use clap::{Args, Subcommand};
use minidiffusion::ops::{self, Conv2dParams, Precision, matmul_t, with_precision};
use minidiffusion::{Device, Result, Tensor, backward, no_grad};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// Time each kernel family at UNet shapes (forward and backward).
    Kernels(KernelArgs),
    /// Time sampling: samples/s and model evaluations/s.
    Sample(SampleBenchArgs),
    /// Time training steps: images/s.
    Train(TrainBenchArgs),
    /// Time FID between two feature sets (statistics on the device, Newton–Schulz square root, FID).
    Fid(FidBenchArgs),
}

#[derive(Args, Debug)]
pub struct FidBenchArgs {
    /// Rows of the first (real) feature set.
    #[arg(long, default_value_t = 10_000)]
    pub n_real: usize,
    /// Rows of the second (sample) feature set.
    #[arg(long, default_value_t = 2_048)]
    pub n_fake: usize,
    /// Feature dimension (the classifier's: 512).
    #[arg(long, default_value_t = 512)]
    pub dim: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SampleBenchArgs {
    /// A model directory to sample (else --config).
    #[arg(long, conflicts_with = "config")]
    pub model: Option<std::path::PathBuf>,
    /// A preset (tiny, seed), randomly initialised — enough for timing.
    #[arg(long)]
    pub config: Option<String>,
    #[command(flatten)]
    pub sampler: super::sample::SamplerArgs,
    #[arg(short = 'n', long = "num", default_value_t = 64)]
    pub n: usize,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
    /// Print a table of the timed run: per kernel (calls, total ms, share) on CUDA, per op, layer and step (self time) on the CPU.
    #[arg(long)]
    pub profile: bool,
}

#[derive(Args, Debug)]
pub struct TrainBenchArgs {
    /// A preset: tiny or seed.
    #[arg(long, default_value = "tiny")]
    pub config: String,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
    /// Print a table of the timed steps: per kernel (calls, total ms, share) on CUDA, per op, layer and step (self time) on the CPU.
    #[arg(long)]
    pub profile: bool,
    /// Products in f32 or bf16 (mixed precision, f32 master weights).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

#[derive(Args, Debug)]
pub struct KernelArgs {
    /// auto (CUDA when a GPU is there, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Batch size of the UNet-shaped inputs.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed repetitions per case (after the warm-up runs).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Untimed runs per case before the timed ones (0 under a profiler that
    /// should see each launch once).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Only cases whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Products (conv2d, matmul) in f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Kernels(k) => kernels(k),
        BenchWhat::Sample(a) => sample(a),
        BenchWhat::Train(a) => train(a),
        BenchWhat::Fid(a) => fid(a),
    }
}

/// One timed case: `work` runs the op once; FLOPs and bytes give the rates.
struct Case {
    name: String,
    shape: String,
    flops: f64,
    bytes: f64,
    work: Box<dyn Fn() -> Result<()>>,
}

fn randn(dims: &[usize], seed: u64, device: Device) -> Result<Tensor> {
    Tensor::randn(dims.to_vec(), seed, 0).to_device(device)
}

fn cases(b: usize, device: Device) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    // the seed UNet's 3×3 convs per level, and the 1×1 convs of its attention
    // blocks (q, k, v and out projections)
    let convs = [(32, 32, 32, 3), (64, 64, 16, 3), (128, 128, 8, 3), (256, 256, 4, 3), (64, 64, 16, 1), (128, 128, 8, 1), (256, 256, 4, 1)];
    for &(ci, co, hw, k) in &convs {
        let x = randn(&[b, ci, hw, hw], 1, device)?.detach().requires_grad_();
        let w = ops::mul_scalar(&randn(&[co, ci, k, k], 2, device)?, 0.05)?.detach().requires_grad_();
        let bias = randn(&[co], 3, device)?.detach().requires_grad_();
        let p = Conv2dParams { stride: 1, padding: k / 2 };
        let flops = 2.0 * (b * co * hw * hw * ci * k * k) as f64;
        let shape = format!("{b}x{ci}x{hw}x{hw}->{co} k{k}");
        let bytes = 4.0 * (x.numel() + b * co * hw * hw + w.numel()) as f64;
        let (x2, w2, b2) = (x.clone(), w.clone(), bias.clone());
        out.push(Case {
            name: "conv2d_forward".into(),
            shape: shape.clone(),
            flops,
            bytes,
            work: Box::new(move || no_grad(|| ops::conv2d(&x2, &w2, Some(&b2), p).map(drop))),
        });
        if ops::precision::current() == Precision::Bf16 {
            // the input as the bf16 path stores a GroupNorm + SiLU output
            let xb = no_grad(|| ops::cast(&x, minidiffusion::tensor::DType::BF16))?;
            let (w3, b3) = (w.clone(), bias.clone());
            out.push(Case {
                name: "conv2d_forward_xbf16".into(),
                shape: shape.clone(),
                flops,
                bytes: bytes - 2.0 * xb.numel() as f64,
                work: Box::new(move || no_grad(|| ops::conv2d(&xb, &w3, Some(&b3), p).map(drop))),
            });
        }
        if k == 3 {
            // a resnet's group norm → SiLU → conv at inference (on CUDA the conv applies the norm as it reads x)
            let (x3, w3, b3) = (x.clone(), w.clone(), bias.clone());
            let (gamma, beta) = (randn(&[ci], 9, device)?, randn(&[ci], 10, device)?);
            out.push(Case {
                name: "norm_silu_conv2d".into(),
                shape: shape.clone(),
                flops,
                bytes,
                work: Box::new(move || {
                    let norm = ops::NormFirst { groups: 8, weight: Some(&gamma), bias: Some(&beta), eps: 1e-5, silu: true };
                    no_grad(|| ops::conv2d_after_norm(&x3, norm, &w3, Some(&b3), ops::ConvAdd::default(), p).map(drop))
                }),
            });
        }
        let loss = ops::sum_all(&ops::conv2d(&x, &w, Some(&bias), p)?)?;
        out.push(Case { name: "conv2d_backward".into(), shape, flops: 2.0 * flops, bytes: 2.0 * bytes, work: Box::new(move || backward(&loss).map(drop)) });
    }
    {
        let (m, k, n) = (b * 256, 64, 192);
        let a = randn(&[m, k], 4, device)?;
        let w = randn(&[n, k], 5, device)?;
        out.push(Case {
            name: "matmul".into(),
            shape: format!("{m}x{k}·({n}x{k})ᵀ"),
            flops: 2.0 * (m * k * n) as f64,
            bytes: 4.0 * (m * k + k * n + m * n) as f64,
            work: Box::new(move || no_grad(|| matmul_t(&a, false, &w, true).map(drop))),
        });
    }
    for &(ch, hw) in &[(32, 32), (64, 16)] {
        let x = randn(&[b, ch, hw, hw], 6, device)?;
        let g = randn(&[ch], 7, device)?;
        let beta = randn(&[ch], 8, device)?;
        let bytes = 8.0 * x.numel() as f64;
        out.push(Case {
            name: "group_norm".into(),
            shape: format!("{b}x{ch}x{hw}x{hw} g8"),
            flops: 0.0,
            bytes,
            work: Box::new(move || no_grad(|| ops::group_norm(&x, 8, Some(&g), Some(&beta), 1e-5).map(drop))),
        });
    }
    // the UNet's attention: channels-first heads [B, heads, 8, pixels] (attention_columns)
    for &(heads, pixels) in &[(8, 256), (16, 64)] {
        let q = randn(&[b, heads, 8, pixels], 9, device)?.detach().requires_grad_();
        let k = randn(&[b, heads, 8, pixels], 10, device)?.detach().requires_grad_();
        let v = randn(&[b, heads, 8, pixels], 11, device)?.detach().requires_grad_();
        let (flops, bytes) = (4.0 * (b * heads * pixels * pixels * 8) as f64, 4.0 * 4.0 * (b * heads * pixels * 8) as f64);
        let shape = format!("{b}x{heads}h x{pixels}px d8");
        let (q2, k2, v2) = (q.clone(), k.clone(), v.clone());
        out.push(Case {
            name: "attention".into(),
            shape: shape.clone(),
            flops,
            bytes,
            work: Box::new(move || no_grad(|| ops::attention_columns(&q2, &k2, &v2, 8f32.sqrt().recip()).map(drop))),
        });
        // backward: dQ, dK, dV from the saved log-sum-exp (2.5× the forward's products)
        let loss = ops::sum_all(&ops::attention_columns(&q, &k, &v, 8f32.sqrt().recip())?)?;
        out.push(Case {
            name: "attention_backward".into(),
            shape,
            flops: 2.5 * flops,
            bytes: 2.0 * bytes,
            work: Box::new(move || backward(&loss).map(drop)),
        });
    }
    {
        let x = randn(&[b, 32, 32, 32], 12, device)?;
        let y = randn(&[b, 32, 32, 32], 13, device)?;
        let bytes = 12.0 * x.numel() as f64;
        let x2 = x.clone();
        out.push(Case { name: "add".into(), shape: format!("{b}x32x32x32"), flops: 0.0, bytes, work: Box::new(move || no_grad(|| ops::add(&x, &y).map(drop))) });
        out.push(Case {
            name: "silu".into(),
            shape: format!("{b}x32x32x32"),
            flops: 0.0,
            bytes: 8.0 * x2.numel() as f64,
            work: Box::new(move || no_grad(|| ops::silu(&x2).map(drop))),
        });
    }
    Ok(out)
}

/// What `--profile` times: a CUDA device's kernels (CUDA events), or on the
/// CPU the ranges of this thread's ops, layers and steps (self time).
enum Profiler {
    Cuda(std::sync::Arc<minidiffusion::device::cuda::CudaBackend>),
    Cpu,
}

/// Start timing when asked; [`print_profile`] prints the table.
fn profiler(device: Device, on: bool) -> anyhow::Result<Option<Profiler>> {
    if !on {
        return Ok(None);
    }
    Ok(Some(match device {
        Device::Cuda(d) => {
            let backend = minidiffusion::device::cuda::backend(d)?;
            backend.start_profiling();
            Profiler::Cuda(backend)
        }
        Device::Cpu => {
            minidiffusion::device::cpu_profile::start();
            Profiler::Cpu
        }
    }))
}

fn print_profile(profiler: Option<Profiler>) -> anyhow::Result<()> {
    use minidiffusion::device::{cpu_profile, cuda};
    match profiler {
        Some(Profiler::Cuda(b)) => eprint!("{}", cuda::profile_table(&b.stop_profiling()?)),
        Some(Profiler::Cpu) => eprint!("{}", cpu_profile::table(&cpu_profile::stop())),
        None => {}
    }
    Ok(())
}

fn synchronize(device: Device) -> Result<()> {
    if let Device::Cuda(d) = device {
        minidiffusion::device::cuda::backend(d)?.synchronize()?;
    }
    Ok(())
}

fn kernels(args: KernelArgs) -> anyhow::Result<()> {
    let device = resolve_device(&args.device)?;
    if args.iters == 0 || args.batch_size == 0 {
        anyhow::bail!("--iters and --batch-size must be at least 1");
    }
    if !args.json {
        println!("{:<20} {:<24} {:>10} {:>10} {:>10}", "kernel", "shape", "ms", "GFLOP/s", "GB/s");
    }
    // the backward cases' graphs are built here, so their products take the precision too
    let _precision = with_precision(args.precision);
    for case in cases(args.batch_size, device)? {
        if args.only.as_ref().is_some_and(|f| !case.name.contains(f.as_str())) {
            continue;
        }
        for _ in 0..args.warmup {
            (case.work)()?;
        }
        synchronize(device)?;
        let start = Instant::now();
        for _ in 0..args.iters {
            (case.work)()?;
        }
        synchronize(device)?;
        let seconds = start.elapsed().as_secs_f64() / args.iters as f64;
        let gflops = case.flops / seconds / 1e9;
        let gbps = case.bytes / seconds / 1e9;
        if args.json {
            println!(
                "{{\"kernel\":\"{}\",\"shape\":\"{}\",\"device\":\"{device}\",\"precision\":\"{}\",\"ms\":{:.4},\"gflops\":{:.2},\"gbps\":{:.2}}}",
                case.name,
                case.shape,
                args.precision,
                seconds * 1e3,
                gflops,
                gbps
            );
        } else {
            let g = if case.flops > 0.0 { format!("{gflops:.1}") } else { "—".into() };
            println!("{:<20} {:<24} {:>10.3} {:>10} {:>10.1}", case.name, case.shape, seconds * 1e3, g, gbps);
        }
    }
    Ok(())
}

fn preset_config(name: &str) -> anyhow::Result<minidiffusion::nn::unet::UNet2DConfig> {
    use minidiffusion::nn::unet::UNet2DConfig;
    match name {
        "tiny" => Ok(UNet2DConfig::tiny_preset()),
        "seed" => Ok(UNet2DConfig::seed_preset()),
        other => anyhow::bail!("--config: '{other}' is not one of tiny, seed"),
    }
}

fn sample(args: SampleBenchArgs) -> anyhow::Result<()> {
    use minidiffusion::io::model_dir::{self, SchedulerConfig};
    use minidiffusion::nn::unet::UNet2DModel;
    let device = resolve_device(&args.device)?;
    let (model, scheduler, label) = match (&args.model, &args.config) {
        (Some(dir), _) => {
            let (m, s) = model_dir::load(dir, device)?;
            (m, s, dir.display().to_string())
        }
        (None, name) => {
            let name = name.clone().unwrap_or_else(|| "seed".into());
            let m = UNet2DModel::new(preset_config(&name)?, 0, device)?;
            let s = SchedulerConfig::from_schedule(&minidiffusion::diffusion::Schedule::lesson_default());
            (m, s, name)
        }
    };
    let schedule = scheduler.schedule()?;
    let opts = args.sampler.options(&scheduler)?;
    if args.n == 0 || args.batch_size == 0 {
        anyhow::bail!("-n and --batch-size must be at least 1");
    }
    // warm-up: one DDIM step on one batch (allocator, kernel loading)
    let warm = minidiffusion::diffusion::SamplerOptions {
        kind: minidiffusion::diffusion::SamplerKind::Ddim { steps: 1, eta: 0.0, spacing: Default::default() },
        ..opts.clone()
    };
    super::sample::sample_all(&model, &schedule, &warm, args.batch_size.min(args.n), args.batch_size, None, &[], device)?;
    let prof = profiler(device, args.profile)?;
    // a graph's kernels cannot be timed one by one: profiled runs launch each
    let graphed = minidiffusion::diffusion::sampler::uses_cuda_graph(device, &schedule, &opts)?;
    if args.profile && opts.cuda_graph && matches!(device, Device::Cuda(_)) {
        eprintln!("note: --profile times every kernel, so this run launches them one by one (no CUDA graph)");
    }
    let (_, _, evals, seconds) = super::sample::sample_all(&model, &schedule, &opts, args.n, args.batch_size, None, &[], device)?;
    print_profile(prof)?;
    let steps = evals / args.n;
    let (sps, eps) = (args.n as f64 / seconds, evals as f64 / seconds);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"samples_per_s": sps, "model_evals_per_s": eps, "device": device.to_string(), "n": args.n,
                "steps": steps, "batch_size": args.batch_size, "sampler": args.sampler.sampler.as_deref().unwrap_or("ddim"), "model": label, "seconds": seconds,
                "precision": opts.precision, "cuda_graph": graphed})
        );
    } else {
        println!(
            "{label}: {} samples × {steps} model calls in {seconds:.2}s on {device} ({} products{}): {sps:.2} samples/s, {eps:.1} model evaluations/s",
            args.n,
            opts.precision,
            if graphed { ", CUDA graph" } else { "" }
        );
    }
    Ok(())
}

fn train(args: TrainBenchArgs) -> anyhow::Result<()> {
    use minidiffusion::data::{Split, embedded_fashion_mnist};
    use minidiffusion::nn::unet::UNet2DModel;
    use minidiffusion::train::{Learner, TrainConfig};
    let device = resolve_device(&args.device)?;
    if args.steps == 0 || args.batch_size == 0 {
        anyhow::bail!("--steps and --batch-size must be at least 1");
    }
    let unet = preset_config(&args.config)?;
    let train = embedded_fashion_mnist(Split::Train)?;
    let test = embedded_fashion_mnist(Split::Test)?.take(args.batch_size);
    let config = TrainConfig {
        epochs: 1_000,
        max_steps: Some(args.steps + 1),
        precision: args.precision,
        ..TrainConfig::lesson(&args.config, unet.clone(), args.batch_size, 1e-2)
    };
    let model = UNet2DModel::new(unet, 0, device)?;
    let mut learner = Learner::new(config, model, train.clone(), test, device)?;
    let batch = |k: usize| -> Vec<usize> { (0..args.batch_size).map(|i| (k * args.batch_size + i) % train.len()).collect() };
    learner.train_step(&batch(0))?;
    synchronize(device)?;
    let prof = profiler(device, args.profile)?;
    let start = Instant::now();
    // as `train` runs them: each step queued before the previous loss is read
    let batches: Vec<Vec<usize>> = (1..=args.steps).map(batch).collect();
    learner.run_steps(batches.iter().map(Vec::as_slice), |_, _| Ok(()))?;
    synchronize(device)?;
    let seconds = start.elapsed().as_secs_f64();
    print_profile(prof)?;
    let ips = (args.steps * args.batch_size) as f64 / seconds;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"images_per_s": ips, "device": device.to_string(), "config": args.config, "batch_size": args.batch_size,
                "steps": args.steps, "seconds_per_step": seconds / args.steps as f64, "precision": args.precision})
        );
    } else {
        println!(
            "{}: {} steps of batch {} in {seconds:.2}s on {device} ({} products): {ips:.1} images/s, {:.3}s per step",
            args.config,
            args.steps,
            args.batch_size,
            args.precision,
            seconds / args.steps as f64
        );
    }
    Ok(())
}

/// FID of two feature sets already on the device, as `eval` scores: each
/// set's statistics (mean, covariance) on the device, then the square root
/// and the FID, for the features of `cargo bench --bench fid`.
fn fid(args: FidBenchArgs) -> anyhow::Result<()> {
    use minidiffusion::metrics::{FeatureStats, FidOptions, fid_with};
    let device = resolve_device(&args.device)?;
    if args.n_real < 2 || args.n_fake < 2 || args.dim == 0 || args.iters == 0 {
        anyhow::bail!("--n-real and --n-fake must be at least 2, --dim and --iters at least 1");
    }
    let features = |n: usize, seed: u64| -> Result<Tensor> {
        Tensor::from_vec(minidiffusion::testing::fid_features(n, args.dim, seed), [n, args.dim])?.to_device(device)
    };
    let (real, fake) = (features(args.n_real, 1)?, features(args.n_fake, 2)?);
    let run = || -> anyhow::Result<(f64, f64, minidiffusion::metrics::FidReport)> {
        let start = Instant::now();
        let (a, b) = (FeatureStats::from_features(&real)?, FeatureStats::from_features(&fake)?);
        let stats = start.elapsed().as_secs_f64();
        let report = fid_with(&a, &b, device, &FidOptions::default())?;
        Ok((stats, start.elapsed().as_secs_f64(), report))
    };
    run()?;
    let (mut stats, mut total) = (0.0, 0.0);
    let mut last = None;
    for _ in 0..args.iters {
        let (s, t, r) = run()?;
        stats += s / args.iters as f64;
        total += t / args.iters as f64;
        last = Some(r);
    }
    let report = last.expect("at least one iteration");
    if args.json {
        println!(
            "{}",
            serde_json::json!({"fid_ms": total * 1e3, "stats_ms": stats * 1e3, "sqrt_and_fid_ms": (total - stats) * 1e3,
                "n_real": args.n_real, "n_fake": args.n_fake, "dim": args.dim, "device": device.to_string(),
                "fid": report.fid, "newton_schulz_iterations": report.iterations})
        );
    } else {
        println!(
            "FID of {}×{} vs {}×{} on {device}: {:.1} ms (statistics {:.1} ms, square root + FID {:.1} ms, {} Newton–Schulz iterations); FID {:.4}",
            args.n_real,
            args.dim,
            args.n_fake,
            args.dim,
            total * 1e3,
            stats * 1e3,
            (total - stats) * 1e3,
            report.iterations,
            report.fid
        );
    }
    Ok(())
}
