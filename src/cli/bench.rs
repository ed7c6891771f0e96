//! `minidiffusion bench kernels`: time each hot op at UNet shapes on one
//! device and report GFLOP/s (products) or GB/s (memory-bound ops). The same
//! shapes run through cuDNN/cuBLAS in scripts/bench_torch_kernels.py.

use super::resolve_device;
use clap::{Args, Subcommand};
use minidiffusion::ops::{self, Conv2dParams, matmul_t};
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
}

#[derive(Args, Debug)]
pub struct KernelArgs {
    /// auto (CUDA when a GPU is there, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Batch size of the UNet-shaped inputs.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Timed repetitions per case (after two warm-up runs).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Only cases whose name contains this text.
    #[arg(long)]
    pub only: Option<String>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Kernels(k) => kernels(k),
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
    for &(ci, co, hw) in &[(32, 32, 32), (64, 64, 16), (128, 128, 8), (256, 256, 4)] {
        let x = randn(&[b, ci, hw, hw], 1, device)?.detach().requires_grad_();
        let w = ops::mul_scalar(&randn(&[co, ci, 3, 3], 2, device)?, 0.05)?.detach().requires_grad_();
        let bias = randn(&[co], 3, device)?.detach().requires_grad_();
        let p = Conv2dParams { stride: 1, padding: 1 };
        let flops = 2.0 * (b * co * hw * hw * ci * 9) as f64;
        let shape = format!("{b}x{ci}x{hw}x{hw}->{co} k3");
        let bytes = 4.0 * (x.numel() + b * co * hw * hw + w.numel()) as f64;
        let (x2, w2, b2) = (x.clone(), w.clone(), bias.clone());
        out.push(Case {
            name: "conv2d_forward".into(),
            shape: shape.clone(),
            flops,
            bytes,
            work: Box::new(move || no_grad(|| ops::conv2d(&x2, &w2, Some(&b2), p).map(drop))),
        });
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
    for &(heads, pixels) in &[(8, 256), (16, 64)] {
        let q = randn(&[b, heads, pixels, 8], 9, device)?;
        let k = randn(&[b, heads, pixels, 8], 10, device)?;
        let v = randn(&[b, heads, pixels, 8], 11, device)?;
        out.push(Case {
            name: "attention".into(),
            shape: format!("{b}x{heads}h x{pixels}px d8"),
            flops: 4.0 * (b * heads * pixels * pixels * 8) as f64,
            bytes: 4.0 * 4.0 * (b * heads * pixels * 8) as f64,
            work: Box::new(move || no_grad(|| ops::attention(&q, &k, &v, 8f32.sqrt().recip()).map(drop))),
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
        println!("{:<16} {:<24} {:>10} {:>10} {:>10}", "kernel", "shape", "ms", "GFLOP/s", "GB/s");
    }
    for case in cases(args.batch_size, device)? {
        if args.only.as_ref().is_some_and(|f| !case.name.contains(f.as_str())) {
            continue;
        }
        for _ in 0..2 {
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
                "{{\"kernel\":\"{}\",\"shape\":\"{}\",\"device\":\"{device}\",\"ms\":{:.4},\"gflops\":{:.2},\"gbps\":{:.2}}}",
                case.name,
                case.shape,
                seconds * 1e3,
                gflops,
                gbps
            );
        } else {
            let g = if case.flops > 0.0 { format!("{gflops:.1}") } else { "—".into() };
            println!("{:<16} {:<24} {:>10.3} {:>10} {:>10.1}", case.name, case.shape, seconds * 1e3, g, gbps);
        }
    }
    Ok(())
}
