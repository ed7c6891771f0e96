//! FID of 10,000×512 against 2,048×512 features on the CPU (the real set's
//! and a sample set's statistics, the Newton–Schulz square root, the FID):
//! `cargo bench --bench fid`. Prints one timed breakdown first.

use criterion::{Criterion, criterion_group, criterion_main};
use minidiffusion::metrics::{FeatureStats, FidOptions, fid_with};
use minidiffusion::Device;
use minidiffusion::testing::fid_features;
use std::hint::black_box;
use std::time::Instant;

const D: usize = 512;

fn bench_fid(c: &mut Criterion) {
    let (real, fake) = (fid_features(10_000, D, 1), fid_features(2_048, D, 2));
    let run = || {
        let a = FeatureStats::from_slice(&real, 10_000, D).unwrap();
        let b = FeatureStats::from_slice(&fake, 2_048, D).unwrap();
        fid_with(&a, &b, Device::Cpu, &FidOptions::default()).unwrap()
    };
    let t0 = Instant::now();
    let a = FeatureStats::from_slice(&real, 10_000, D).unwrap();
    let t1 = Instant::now();
    let b = FeatureStats::from_slice(&fake, 2_048, D).unwrap();
    let t2 = Instant::now();
    let report = fid_with(&a, &b, Device::Cpu, &FidOptions::default()).unwrap();
    let t3 = Instant::now();
    eprintln!(
        "fid 10000x512 vs 2048x512 on the CPU ({} threads): {:.3} s = stats {:.3} s + {:.3} s, sqrt + fid {:.3} s ({} Newton–Schulz iterations, residual {:.1e}); FID {:.4}",
        rayon::current_num_threads(),
        (t3 - t0).as_secs_f64(),
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64(),
        report.iterations,
        report.residual,
        report.fid
    );
    let mut group = c.benchmark_group("fid");
    group.sample_size(10);
    group.bench_function("cpu_10000x512_vs_2048x512", |bch| {
        bch.iter(|| black_box(run()))
    });
    group.bench_function("cpu_sqrt_and_fid_only_512", |bch| {
        bch.iter(|| black_box(fid_with(&a, &b, Device::Cpu, &FidOptions::default()).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, bench_fid);
criterion_main!(benches);
