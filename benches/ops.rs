//! Criterion benches of the hot CPU ops at UNet-like shapes (batch 64,
//! 32×32 and 16×16 feature maps, 32–256 channels), forward and backward.
//! Throughput is reported in elements/s where one element is one FLOP
//! (multiply and add counted separately), so "Gelem/s" reads as GFLOP/s.
//! Backward is timed as a full walk of the tape from a scalar loss on a graph
//! built once: for conv2d that is dX and dW and db (≈ 2× the forward FLOPs).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use minidiffusion::ops::{self, Conv2dParams, matmul_t};
use minidiffusion::{Tensor, backward, no_grad};
use std::hint::black_box;
use std::time::Duration;

fn randn(dims: &[usize], seed: u64) -> Tensor {
    Tensor::randn(dims.to_vec(), seed, 0)
}

fn param(dims: &[usize], seed: u64, scale: f32) -> Tensor {
    ops::mul_scalar(&randn(dims, seed), scale).unwrap().requires_grad_()
}

fn conv2d(c: &mut Criterion) {
    // freed buffers kept for reuse as the CLI keeps them (else each large
    // output is mapped and zeroed afresh, a page fault a page)
    minidiffusion::device::keep_freed_memory();
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    // (batch, in channels, out channels, size, kernel)
    for &(n, ci, co, hw, k) in &[(64, 32, 32, 32, 3), (64, 64, 64, 16, 3), (64, 128, 128, 16, 3), (64, 256, 256, 8, 3), (64, 64, 128, 16, 1)] {
        let flops = 2 * n * co * hw * hw * ci * k * k;
        let x = randn(&[n, ci, hw, hw], 1).requires_grad_();
        let w = param(&[co, ci, k, k], 2, 0.05);
        let b = param(&[co], 3, 0.1);
        let p = Conv2dParams { stride: 1, padding: k / 2 };
        let id = format!("{n}x{ci}x{hw}x{hw}->{co} k{k}");
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::new("forward", &id), |bench| {
            bench.iter(|| no_grad(|| black_box(ops::conv2d(&x, &w, Some(&b), p).unwrap())))
        });
        let loss = ops::sum_all(&ops::conv2d(&x, &w, Some(&b), p).unwrap()).unwrap();
        group.throughput(Throughput::Elements(2 * flops as u64));
        group.bench_function(BenchmarkId::new("backward", &id), |bench| bench.iter(|| black_box(backward(&loss).unwrap())));
    }
    group.finish();
}

/// The 3×3 same convs' weight gradient alone, side by side in one run: the
/// AVX-512 direct kernel (`direct_weight_grad`) and im2col + gemm.
fn conv2d_weight_grad(c: &mut Criterion) {
    use minidiffusion::ops::conv2d::cpu::{ConvGeom, conv2d_backward_weight_gemm};
    use minidiffusion::ops::conv2d::direct_weight_grad;
    let mut group = c.benchmark_group("conv2d_weight_grad");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for &(n, ci, co, hw) in &[(64, 32, 32, 32), (64, 64, 64, 16), (64, 128, 128, 16), (64, 256, 256, 8), (64, 16, 16, 32), (64, 256, 256, 4)] {
        let g = ConvGeom { n, c: ci, h: hw, w: hw, oc: co, kh: 3, kw: 3, stride: 1, pad: 1, oh: hw, ow: hw };
        let (x, dy) = (randn(&[n, ci, hw, hw], 1).to_vec(), randn(&[n, co, hw, hw], 2).to_vec());
        let id = format!("{n}x{ci}x{hw}x{hw}->{co}");
        group.throughput(Throughput::Elements((2 * n * co * hw * hw * ci * 9) as u64));
        if direct_weight_grad::takes(&g) {
            group.bench_function(BenchmarkId::new("direct", &id), |bench| bench.iter(|| black_box(direct_weight_grad::backward_weight(&dy, &x, &g))));
        }
        group.bench_function(BenchmarkId::new("im2col_gemm", &id), |bench| bench.iter(|| black_box(conv2d_backward_weight_gemm(&dy, &x, &g))));
    }
    group.finish();
}

/// The small maps' forward side by side in one run: the channel-lane kernel
/// (`channel_lanes`, 4- and 8-pixel rows) and the pixel-lane one (`direct`).
fn conv2d_small_maps(c: &mut Criterion) {
    use minidiffusion::ops::conv2d::cpu::{ConvGeom, Epilogue};
    use minidiffusion::ops::conv2d::{channel_lanes, direct};
    if !direct::available() {
        return;
    }
    let mut group = c.benchmark_group("conv2d_small_maps");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    // the seed UNet's 8×8 and 4×4 convs at batch 32, concatenated inputs too
    for &(n, ci, co, hw) in &[(32, 256, 256, 4), (32, 512, 256, 4), (32, 128, 128, 8), (32, 256, 256, 8), (32, 384, 128, 8), (64, 64, 64, 8), (64, 128, 64, 8), (64, 32, 32, 8), (64, 64, 64, 4)] {
        let g = ConvGeom { n, c: ci, h: hw, w: hw, oc: co, kh: 3, kw: 3, stride: 1, pad: 1, oh: hw, ow: hw };
        let (x, w, b) = (randn(&[n, ci, hw, hw], 1).to_vec(), randn(&[co, ci, 3, 3], 2).to_vec(), randn(&[co], 3).to_vec());
        let epi = Epilogue { bias: Some(&b), ..Epilogue::default() };
        let id = format!("{n}x{ci}x{hw}x{hw}->{co}");
        group.throughput(Throughput::Elements((2 * n * co * hw * hw * ci * 9) as u64));
        let lanes = channel_lanes::Packed::new(&w, &g);
        group.bench_function(BenchmarkId::new("channel_lanes", &id), |bench| bench.iter(|| black_box(channel_lanes::forward_packed(&x, &lanes, &epi, &g))));
        let panels = direct::Panels::pixel_lanes(&w, &g);
        group.bench_function(BenchmarkId::new("pixel_lanes", &id), |bench| bench.iter(|| black_box(direct::forward_packed(&x, &panels, &epi, &g))));
        if ci == 256 && hw == 4 {
            // packing the weight, as a trained forward does every call
            group.throughput(Throughput::Elements((co * ci * 9) as u64));
            group.bench_function(BenchmarkId::new("pack_channel_lanes", &id), |bench| bench.iter(|| black_box(channel_lanes::Packed::new(&w, &g))));
            group.bench_function(BenchmarkId::new("pack_pixel_lanes", &id), |bench| bench.iter(|| black_box(direct::Panels::pixel_lanes(&w, &g))));
        }
    }
    group.finish();
}

fn group_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_norm");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for &(n, ch, hw) in &[(64, 32, 32), (64, 64, 16), (64, 256, 8)] {
        let x = randn(&[n, ch, hw, hw], 1).requires_grad_();
        let w = param(&[ch], 2, 1.0);
        let b = param(&[ch], 3, 1.0);
        let id = format!("{n}x{ch}x{hw}x{hw} g8");
        group.throughput(Throughput::Bytes((2 * x.numel() * 4) as u64));
        group.bench_function(BenchmarkId::new("forward", &id), |bench| {
            bench.iter(|| no_grad(|| black_box(ops::group_norm(&x, 8, Some(&w), Some(&b), 1e-5).unwrap())))
        });
        let loss = ops::sum_all(&ops::group_norm(&x, 8, Some(&w), Some(&b), 1e-5).unwrap()).unwrap();
        group.bench_function(BenchmarkId::new("backward", &id), |bench| bench.iter(|| black_box(backward(&loss).unwrap())));
    }
    group.finish();
}

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    // the attention block's q/k/v projection at 16×16 with 64 channels, and a square product
    for &(m, k, n) in &[(64 * 256, 64, 192), (512, 512, 512)] {
        let a = randn(&[m, k], 1).requires_grad_();
        let b = param(&[k, n], 2, 0.1);
        let id = format!("{m}x{k}x{n}");
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        group.bench_function(BenchmarkId::new("forward", &id), |bench| {
            bench.iter(|| no_grad(|| black_box(ops::matmul(&a, &b).unwrap())))
        });
        let loss = ops::sum_all(&ops::matmul(&a, &b).unwrap()).unwrap();
        group.throughput(Throughput::Elements((4 * m * k * n) as u64));
        group.bench_function(BenchmarkId::new("backward", &id), |bench| bench.iter(|| black_box(backward(&loss).unwrap())));
    }
    group.finish();
}

fn attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    // heads = channels / 8: 16×16 with 64 channels, 8×8 with 128 channels
    for &(n, heads, pixels, d) in &[(64, 8, 256, 8), (64, 16, 64, 8)] {
        let q = randn(&[n, heads, pixels, d], 1).requires_grad_();
        let k = randn(&[n, heads, pixels, d], 2).requires_grad_();
        let v = randn(&[n, heads, pixels, d], 3).requires_grad_();
        let scale = 1.0 / (d as f32).sqrt();
        let id = format!("{n}x{heads}h x{pixels}px d{d}");
        group.throughput(Throughput::Elements((4 * n * heads * pixels * pixels * d) as u64));
        group.bench_function(BenchmarkId::new("forward", &id), |bench| {
            bench.iter(|| no_grad(|| black_box(ops::attention(&q, &k, &v, scale).unwrap())))
        });
        let loss = ops::sum_all(&ops::attention(&q, &k, &v, scale).unwrap()).unwrap();
        group.bench_function(BenchmarkId::new("backward", &id), |bench| bench.iter(|| black_box(backward(&loss).unwrap())));
        // the same product through matmul + softmax, for comparison
        group.bench_function(BenchmarkId::new("forward_unfused", &id), |bench| {
            bench.iter(|| {
                no_grad(|| {
                    let s = ops::mul_scalar(&matmul_t(&q, false, &k, true).unwrap(), scale).unwrap();
                    black_box(ops::matmul(&ops::softmax(&s).unwrap(), &v).unwrap())
                })
            })
        });
    }
    group.finish();
}

/// The UNet's attention (channels-first heads, Layout::Columns) at the seed
/// UNet's training batch 32, the CPU kernels called directly so the
/// reference paths run beside them: the training forward (lanes, keeping
/// the log-sum-exp) beside the gemm forward of the same sizes (Rows), and
/// the lane backward beside the gemm backward it replaced.
fn attention_columns(c: &mut Criterion) {
    use minidiffusion::ops::attention::{Layout, columns_backward, cpu};
    minidiffusion::device::keep_freed_memory();
    let mut group = c.benchmark_group("attention_columns");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    // (batch·heads, pixels, head size): 16×16 with 64 channels, 8×8 with 128,
    // 4×4 with 256; 16×16 with heads of 16
    for &(bh, pixels, d) in &[(32 * 8, 256, 8), (32 * 16, 64, 8), (32 * 32, 16, 8), (32 * 4, 256, 16)] {
        let dims = cpu::Dims { batch: bh, lq: pixels, lk: pixels, d, dv: d };
        let data = |seed: u64| randn(&[bh * d * pixels], seed).to_vec();
        let (q, k, v, g) = (data(1), data(2), data(3), data(4));
        let scale = 1.0 / (d as f32).sqrt();
        let id = format!("{bh}x{pixels}px d{d}");
        group.throughput(Throughput::Elements((4 * bh * pixels * pixels * d) as u64));
        group.bench_function(BenchmarkId::new("forward_lanes", &id), |b| b.iter(|| black_box(cpu::forward(&q, &k, &v, dims, Layout::Columns, scale))));
        group.bench_function(BenchmarkId::new("forward_gemm", &id), |b| b.iter(|| black_box(cpu::forward(&q, &k, &v, dims, Layout::Rows, scale))));
        let (o, lse) = cpu::forward(&q, &k, &v, dims, Layout::Columns, scale);
        // the backward's FLOPs: five products of the forward's two
        group.throughput(Throughput::Elements((10 * bh * pixels * pixels * d) as u64));
        group.bench_function(BenchmarkId::new("backward_lanes", &id), |b| {
            b.iter(|| black_box(columns_backward::backward(&q, &k, &v, &o, &lse, &g, dims, scale)))
        });
        group.bench_function(BenchmarkId::new("backward_gemm", &id), |b| {
            b.iter(|| black_box(cpu::backward(&q, &k, &v, &lse, &g, dims, Layout::Columns, scale)))
        });
    }
    group.finish();
}

criterion_group!(benches, conv2d, conv2d_weight_grad, conv2d_small_maps, group_norm, matmul, attention, attention_columns);
criterion_main!(benches);
