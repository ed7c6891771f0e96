//! CUDA against the CPU twin for the FID/KID kernels (kernels/fid.cu): the f64
//! GEMM, the feature statistics (f64 column sums, centring, chunked f32 GEMM
//! summed in f64), the Newton–Schulz square root, FID and KID. Without a GPU
//! these run on the CPU emulation of CUDA; sizes are kept small (D ≤ 64).

use minidiffusion::device::cuda;
use minidiffusion::metrics::cuda::{download_f64, gemm_f64, upload_f64};
use minidiffusion::metrics::linalg::matmul_f64;
use minidiffusion::metrics::{
    FeatureStats, FidOptions, NsOptions, fid_with, kid, sqrtm_newton_schulz,
};
use minidiffusion::testing::{parity_device, randn};
use minidiffusion::{Device, Tensor};
use std::path::PathBuf;

fn features(name: &str) -> (Vec<f32>, usize, usize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/fid")
        .join(format!("{name}.npy"));
    let (shape, values) = minidiffusion::io::npy::read(&path).unwrap();
    (values, shape[0], shape[1])
}

fn max_rel(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale
}

fn cuda_device() -> minidiffusion::device::CudaDevice {
    match parity_device() {
        Device::Cuda(d) => d,
        Device::Cpu => unreachable!(),
    }
}

#[test]
fn gemm_f64_matches_host() {
    // c = 0.5·a·b + 2·I on odd sizes across tiles (two products in one launch): 1e-14 of max|c|
    let backend = cuda::backend(cuda_device()).unwrap();
    let (m, k, n) = (70, 33, 65);
    let a: Vec<f64> = randn(&[m, k], 1).iter().map(|&v| v as f64).collect();
    let b: Vec<f64> = randn(&[k, n], 2).iter().map(|&v| v as f64).collect();
    let b2: Vec<f64> = randn(&[k, n], 3).iter().map(|&v| v as f64).collect();
    let (da, db, db2) = (
        upload_f64(&backend, &a).unwrap(),
        upload_f64(&backend, &b).unwrap(),
        upload_f64(&backend, &b2).unwrap(),
    );
    let (dc, dc2) = (
        upload_f64(&backend, &vec![0.0; m * n]).unwrap(),
        upload_f64(&backend, &vec![0.0; m * n]).unwrap(),
    );
    gemm_f64(
        &backend,
        &[(&da, &db, &dc), (&da, &db2, &dc2)],
        (m, k, n),
        0.5,
        2.0,
    )
    .unwrap();
    for (bb, dcc) in [(&b, &dc), (&b2, &dc2)] {
        let mut want = matmul_f64(&a, bb, m, k, n);
        want.iter_mut().for_each(|v| *v *= 0.5);
        for i in 0..m.min(n) {
            want[i * n + i] += 2.0;
        }
        let got = download_f64(dcc).unwrap();
        assert!(max_rel(&got, &want) <= 1e-14, "{}", max_rel(&got, &want));
    }
}

#[test]
fn feature_stats_parity() {
    // 1100×40 (two chunks of 1024 rows, the second padded) and the golden
    // 300×64: mean and covariance (f64 products, another summation order)
    // to 1e-12 of max|·|
    let device = parity_device();
    let (g, gn, gd) = features("a_300x64");
    let x: Vec<f32> = randn(&[1100, 40], 5)
        .iter()
        .map(|v| v * 2.0 + 1.0)
        .collect();
    for (values, n, d) in [(x, 1100, 40), (g, gn, gd)] {
        let cpu = FeatureStats::from_slice(&values, n, d).unwrap();
        let dev =
            FeatureStats::from_features(&Tensor::from_vec_on(values, [n, d], device).unwrap())
                .unwrap();
        let (em, ec) = (max_rel(&dev.mean, &cpu.mean), max_rel(&dev.cov, &cpu.cov));
        eprintln!("stats parity {n}×{d} ({device}): mean {em:.1e}, cov {ec:.1e}");
        assert!(em <= 1e-12 && ec <= 1e-12);
        assert_eq!((dev.n, dev.dim), (n, d));
    }
}

#[test]
fn newton_schulz_parity() {
    // √(Σ₁Σ₂) for D = 64 on the device vs the CPU: the same iterations
    // (±1), traces to 1e-10 relative, matrices to 1e-8 of max|√A|
    let device = parity_device();
    let (a, na, d) = features("a_300x64");
    let (b, nb, _) = features("b_200x64");
    let (sa, sb) = (
        FeatureStats::from_slice(&a, na, d).unwrap(),
        FeatureStats::from_slice(&b, nb, d).unwrap(),
    );
    let prod = matmul_f64(&sa.cov, &sb.cov, d, d, d);
    let cpu = sqrtm_newton_schulz(&prod, d, &NsOptions::default(), Device::Cpu).unwrap();
    let dev = sqrtm_newton_schulz(&prod, d, &NsOptions::default(), device).unwrap();
    let tr_rel = (dev.trace - cpu.trace).abs() / cpu.trace.abs();
    eprintln!(
        "sqrtm parity ({device}): cpu {} it res {:.1e}, device {} it res {:.1e}, trace rel {tr_rel:.1e}, matrix {:.1e}",
        cpu.iterations,
        cpu.residual,
        dev.iterations,
        dev.residual,
        max_rel(&dev.sqrt, &cpu.sqrt)
    );
    assert!(dev.converged && dev.residual <= 1e-6);
    assert!(dev.iterations.abs_diff(cpu.iterations) <= 1);
    assert!(tr_rel <= 1e-10 && max_rel(&dev.sqrt, &cpu.sqrt) <= 1e-8);
}

#[test]
fn fid_and_kid_parity() {
    // FID (regular and singular) to 1e-9 relative; KID to 1e-6 relative
    let device = parity_device();
    let load = |name: &str| {
        let (v, n, d) = features(name);
        (
            FeatureStats::from_slice(&v, n, d).unwrap(),
            Tensor::from_vec(v, [n, d]).unwrap(),
        )
    };
    let (sa, ta) = load("a_300x64");
    let (sb, tb) = load("b_200x64");
    let (ss, _) = load("s_40x64");
    for (x, y, what) in [(&sa, &sb, "300 vs 200"), (&ss, &sb, "singular 40 vs 200")] {
        let cpu = fid_with(x, y, Device::Cpu, &FidOptions::default()).unwrap();
        let dev = fid_with(x, y, device, &FidOptions::default()).unwrap();
        let r = (dev.fid - cpu.fid).abs() / cpu.fid.abs();
        eprintln!(
            "fid parity {what} ({device}): {:.10} vs cpu {:.10} (rel {r:.1e})",
            dev.fid, cpu.fid
        );
        assert!(r <= 1e-9);
    }
    let cpu = kid(&ta, &tb).unwrap();
    let dev = kid(
        &ta.to_device(device).unwrap(),
        &tb.to_device(device).unwrap(),
    )
    .unwrap();
    eprintln!("kid parity ({device}): {dev:.10e} vs cpu {cpu:.10e}");
    // the kernel matrices' dot products run on the tensor cores (3xTF32): an
    // H100 differed by 1.3e-6 relative
    assert!((dev - cpu).abs() <= 1e-5 * cpu.abs());
}
