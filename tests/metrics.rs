//! FID and KID on the CPU: scipy agreement (tests/golden/fid, made by
//! scripts/fid_reference.py), an independent eigen-decomposition reference
//! (nalgebra) of tr √(√Σ₁·Σ₂·√Σ₁), the closed form FID of two Gaussians,
//! singular covariances, the eps retry, the covariance's precision, stats
//! caching, and KID (hand-checked tiny case, same vs shifted distribution,
//! the lesson's chunking).

use minidiffusion::Device;
use minidiffusion::Tensor;
use minidiffusion::metrics::linalg::{matmul_f64, trace};
use minidiffusion::metrics::{
    FeatureStats, FidOptions, KidSubsets, NsOptions, SqrtInput, fid, fid_with, kid,
    kid_chunk_count, kid_subsets, sqrtm_newton_schulz, squared_mmd,
};
use minidiffusion::testing::randn;
use nalgebra::DMatrix;
use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/fid")
        .join(name)
}

fn load_features(name: &str) -> (Vec<f32>, usize, usize) {
    let (shape, values) = minidiffusion::io::npy::read(&golden(&format!("{name}.npy"))).unwrap();
    (values, shape[0], shape[1])
}

fn stats_of(name: &str) -> FeatureStats {
    let (v, n, d) = load_features(name);
    FeatureStats::from_slice(&v, n, d).unwrap()
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(golden("reference.json")).unwrap()).unwrap()
}

/// Symmetric PSD square root by eigen-decomposition (negative rounding eigenvalues clipped to 0).
fn sqrt_psd(m: &[f64], d: usize) -> DMatrix<f64> {
    let e = DMatrix::from_row_slice(d, d, m).symmetric_eigen();
    let s = DMatrix::from_diagonal(&e.eigenvalues.map(|v| v.max(0.0).sqrt()));
    &e.eigenvectors * s * e.eigenvectors.transpose()
}

/// The independent reference: tr √(√Σ₁·Σ₂·√Σ₁) by two symmetric eigen-decompositions.
fn tr_sqrt_eig(c1: &[f64], c2: &[f64], d: usize) -> f64 {
    let r = sqrt_psd(c1, d);
    let m = &r * DMatrix::from_row_slice(d, d, c2) * &r;
    let m = (&m + m.transpose()) * 0.5;
    m.symmetric_eigen()
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum()
}

fn fid_eig(a: &FeatureStats, b: &FeatureStats) -> f64 {
    let mean: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    mean + a.trace() + b.trace() - 2.0 * tr_sqrt_eig(&a.cov, &b.cov, a.dim)
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-300)
}

/// Random covariance with a decaying spectrum: L·Lᵀ/d, L with columns scaled by decay^j.
fn random_cov(d: usize, seed: u64, decay: f64) -> Vec<f64> {
    let l: Vec<f64> = randn(&[d, d], seed)
        .iter()
        .enumerate()
        .map(|(e, &v)| v as f64 * decay.powi((e % d) as i32))
        .collect();
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            c[i * d + j] = (0..d).map(|k| l[i * d + k] * l[j * d + k]).sum::<f64>() / d as f64;
        }
    }
    c
}

#[test]
fn fid_matches_scipy_to_1e4() {
    // tolerance: 1e-4 relative (issue 5); measured ≤ 1.3e-8, singular cases included
    let r = reference();
    for case in r["fid"].as_array().unwrap() {
        let (a, b) = (case["a"].as_str().unwrap(), case["b"].as_str().unwrap());
        let want = case["fid"].as_f64().unwrap();
        let report = fid_with(
            &stats_of(a),
            &stats_of(b),
            Device::Cpu,
            &FidOptions::default(),
        )
        .unwrap();
        let got = report.fid;
        assert!(got.is_finite(), "{a} vs {b}: not finite");
        if a == b {
            // FID of a set with itself: 0 up to rounding, relative to the traces
            let scale = 2.0 * report.trace_a;
            eprintln!(
                "fid {a} vs itself: {got:.3e} (scipy {want:.3e}), {:.1e} of tr Σ₁+tr Σ₂, {} iterations",
                got.abs() / scale,
                report.iterations
            );
            assert!(got.abs() <= 1e-9 * scale, "{a} vs itself: {got}");
            continue;
        }
        eprintln!(
            "fid {a} vs {b}: {got:.10} scipy {want:.10} rel {:.2e}; eig(ref) rel {:.2e}; {} iterations, residual {:.1e}, offset {}",
            rel(got, want),
            rel(got, case["fid_eig"].as_f64().unwrap()),
            report.iterations,
            report.residual,
            report.offset
        );
        assert!(rel(got, want) <= 1e-4, "{a} vs {b}: {got} vs scipy {want}");
        // the symmetric variant agrees too
        let sym = fid_with(
            &stats_of(a),
            &stats_of(b),
            Device::Cpu,
            &FidOptions {
                input: SqrtInput::Symmetric,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            rel(sym.fid, want) <= 1e-4,
            "{a} vs {b} (symmetric): {} vs scipy {want}",
            sym.fid
        );
    }
}

#[test]
fn newton_schulz_matches_eigen_reference() {
    // tolerance: tr √(Σ₁Σ₂) to 1e-9 relative of the eigen value (measured
    // ~1e-13); SPEC's stopping rule alone (residual ≤ 1e-6) is looser: ≤ 1e-3
    // here. The last case is ill-conditioned past f64 (Σ's eigenvalues span
    // 1e-9, the product's 1e-18): 1e-5 there (measured 2e-6).
    for (d, seed, decay, tol) in [
        (16, 1, 0.9, 1e-9),
        (64, 2, 0.95, 1e-9),
        (64, 4, 0.9, 1e-9),
        (64, 3, 0.85, 1e-5),
    ] {
        let (c1, c2) = (random_cov(d, seed, decay), random_cov(d, seed + 100, decay));
        let want = tr_sqrt_eig(&c1, &c2, d);
        let a = matmul_f64(&c1, &c2, d, d, d);
        let r = sqrtm_newton_schulz(&a, d, &NsOptions::default(), Device::Cpu).unwrap();
        assert!(r.converged && r.residual <= 1e-6);
        let spec = sqrtm_newton_schulz(&a, d, &NsOptions::spec(), Device::Cpu).unwrap();
        eprintln!(
            "ns d={d} decay {decay}: tr rel err {:.1e} ({} it, residual {:.1e}); SPEC rule: {:.1e} ({} it, residual {:.1e})",
            rel(r.trace, want),
            r.iterations,
            r.residual,
            rel(spec.trace, want),
            spec.iterations,
            spec.residual
        );
        assert!(rel(r.trace, want) <= tol, "d={d}: {} vs {want}", r.trace);
        assert!(spec.residual <= 1e-6 && rel(spec.trace, want) <= 1e-3);
        // the returned trace is the trace of the returned matrix, whose square is A
        assert!(rel(trace(&r.sqrt, d), r.trace) <= 1e-12);
        let sq = matmul_f64(&r.sqrt, &r.sqrt, d, d, d);
        let err: f64 = sq
            .iter()
            .zip(&a)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(err / norm <= 1e-6, "residual {}", err / norm);
        // symmetric input: the matrix itself against the eigen square root
        let s = sqrtm_newton_schulz(&c1, d, &NsOptions::default(), Device::Cpu).unwrap();
        let e = sqrt_psd(&c1, d);
        let max_err = (0..d * d)
            .map(|k| (s.sqrt[k] - e[(k / d, k % d)]).abs())
            .fold(0.0, f64::max);
        let max_abs = e.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        eprintln!(
            "ns √Σ d={d}: max |NS − eig| {:.1e} of max|√Σ|",
            max_err / max_abs
        );
        assert!(max_err <= 1e-6 * max_abs);
    }
}

#[test]
fn fid_of_gaussians_closed_form() {
    // Exact statistics: fid() against the closed form computed independently
    // (nalgebra eigen): 1e-9 relative.
    let d = 24;
    let (c1, c2) = (random_cov(d, 7, 0.9), random_cov(d, 8, 0.8));
    let mu1: Vec<f64> = randn(&[d], 9).iter().map(|&v| v as f64).collect();
    let mu2: Vec<f64> = randn(&[d], 10).iter().map(|&v| 0.5 * v as f64).collect();
    let a = FeatureStats {
        n: 1000,
        dim: d,
        mean: mu1.clone(),
        cov: c1.clone(),
    };
    let b = FeatureStats {
        n: 1000,
        dim: d,
        mean: mu2.clone(),
        cov: c2.clone(),
    };
    let want = fid_eig(&a, &b);
    let got = fid(&a, &b, Device::Cpu).unwrap();
    eprintln!(
        "gaussian closed form: fid {got:.12} vs {want:.12} (rel {:.1e})",
        rel(got, want)
    );
    assert!(rel(got, want) <= 1e-9);

    // Samples x = μ + L·z with Σ = L·Lᵀ (L = Cholesky): the sample FID
    // converges to the closed form; with N = 20,000 per set the sampling
    // error (bias ~ tr-terms/N plus noise) is within 3 % here.
    let n = 20_000;
    let draw = |mu: &[f64], c: &[f64], seed: u64| -> Vec<f32> {
        let l = DMatrix::from_row_slice(d, d, c).cholesky().unwrap().l();
        let z = randn(&[n, d], seed);
        let mut x = vec![0.0f32; n * d];
        for r in 0..n {
            for i in 0..d {
                let v: f64 = (0..=i).map(|k| l[(i, k)] * z[r * d + k] as f64).sum();
                x[r * d + i] = (mu[i] + v) as f32;
            }
        }
        x
    };
    let sa = FeatureStats::from_slice(&draw(&mu1, &c1, 11), n, d).unwrap();
    let sb = FeatureStats::from_slice(&draw(&mu2, &c2, 12), n, d).unwrap();
    let sampled = fid(&sa, &sb, Device::Cpu).unwrap();
    eprintln!(
        "gaussian samples (N={n}): fid {sampled:.5} vs closed form {want:.5} (rel {:.1e})",
        rel(sampled, want)
    );
    assert!(rel(sampled, want) <= 0.03);
}

#[test]
fn fid_of_a_set_with_itself_is_zero() {
    // tolerance: 1e-9·(tr Σ₁ + tr Σ₂) (measured ≤ 5e-14)
    for name in ["a_300x64", "s_40x64", "t_30x64_dead"] {
        let s = stats_of(name);
        let r = fid_with(&s, &s, Device::Cpu, &FidOptions::default()).unwrap();
        eprintln!(
            "self fid {name}: {:.2e} (traces {:.3}), {} iterations, offset {}",
            r.fid,
            2.0 * s.trace(),
            r.iterations,
            r.offset
        );
        assert!(r.fid.abs() <= 1e-9 * 2.0 * s.trace(), "{name}: {}", r.fid);
    }
}

#[test]
fn singular_covariances_are_finite_and_match_the_reference() {
    // N < D (and dead units): finite, no NaN, 1e-6 of the eigen reference (measured ≤ 1.2e-8)
    for (a, b) in [
        ("s_40x64", "t_30x64_dead"),
        ("a_300x64", "s_40x64"),
        ("t_30x64_dead", "b_200x64"),
    ] {
        let (sa, sb) = (stats_of(a), stats_of(b));
        let r = fid_with(&sa, &sb, Device::Cpu, &FidOptions::default()).unwrap();
        let want = fid_eig(&sa, &sb);
        eprintln!(
            "singular {a} vs {b}: {:.10} eig {want:.10} rel {:.1e}, {} it, offset {}",
            r.fid,
            rel(r.fid, want),
            r.iterations,
            r.offset
        );
        assert!(r.fid.is_finite() && rel(r.fid, want) <= 1e-6);
    }
}

#[test]
fn eps_offset_when_newton_schulz_fails() {
    // An iteration cap too small to converge: FID retries with εI on both
    // covariances (pytorch-fid's rule) and reports it; the value stays finite.
    let (sa, sb) = (stats_of("s_40x64"), stats_of("t_30x64_dead"));
    let opts = FidOptions {
        ns: NsOptions {
            max_iter: 3,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = fid_with(&sa, &sb, Device::Cpu, &opts).unwrap();
    assert_eq!(r.offset, 1e-6);
    assert!(r.fid.is_finite());
}

#[test]
fn covariance_precision_against_f64() {
    // the chunked f64 GEMM covariance vs a plain f64 loop over the same
    // features: max error ≤ 1e-12 of max|Σ|; mean ≤ 1e-12.
    let (n, d) = (4100, 96); // 5 chunks of 1024 rows, the last partial
    let x: Vec<f32> = randn(&[n, d], 21)
        .iter()
        .enumerate()
        .map(|(e, &v)| v * (1.0 + (e % d) as f32 / 10.0) + 3.0)
        .collect();
    let s = FeatureStats::from_slice(&x, n, d).unwrap();
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|r| x[r * d + j] as f64).sum::<f64>() / n as f64)
        .collect();
    let mut worst = 0.0f64;
    let mut max_abs = 0.0f64;
    for i in 0..d {
        for j in 0..d {
            let c: f64 = (0..n)
                .map(|r| (x[r * d + i] as f64 - mean[i]) * (x[r * d + j] as f64 - mean[j]))
                .sum::<f64>()
                / (n - 1) as f64;
            worst = worst.max((c - s.cov[i * d + j]).abs());
            max_abs = max_abs.max(c.abs());
        }
    }
    let mean_err = mean
        .iter()
        .zip(&s.mean)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "covariance {n}×{d}: max error {:.1e} of max|Σ|, mean error {mean_err:.1e}",
        worst / max_abs
    );
    assert!(worst <= 1e-12 * max_abs && mean_err <= 1e-12);
}

#[test]
fn stats_save_and_load() {
    let s = stats_of("b_200x64");
    let path = std::env::temp_dir().join(format!(
        "minidiffusion-fid-stats-{}.safetensors",
        std::process::id()
    ));
    s.save(&path).unwrap();
    let back = FeatureStats::load(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(back, s);
    let t = Tensor::from_vec(vec![1.0], [1, 1]).unwrap();
    assert!(
        FeatureStats::from_features(&t).is_err(),
        "one sample has no covariance"
    );
}

#[test]
fn kid_matches_the_lesson_reference() {
    // the lesson's chunking in f64 numpy; f32 Gram matrices here: 1e-5 relative
    for case in reference()["kid"].as_array().unwrap() {
        let (a, b) = (case["a"].as_str().unwrap(), case["b"].as_str().unwrap());
        let ((xa, na, d), (xb, nb, _)) = (load_features(a), load_features(b));
        let got = kid(
            &Tensor::from_vec(xa, [na, d]).unwrap(),
            &Tensor::from_vec(xb, [nb, d]).unwrap(),
        )
        .unwrap();
        let want = case["kid"].as_f64().unwrap();
        eprintln!(
            "kid {a} vs {b}: {got:.10e} numpy {want:.10e} rel {:.1e}",
            rel(got, want)
        );
        assert!(rel(got, want) <= 1e-5);
    }
    assert_eq!(
        (
            kid_chunk_count(10_000, 256),
            kid_chunk_count(10_000, 2048),
            kid_chunk_count(10_000, 512)
        ),
        (6, 41, 11)
    );
    assert_eq!(kid_chunk_count(100, 120), 4);
}

#[test]
fn kid_tiny_case_by_hand() {
    // x = {(1,0), (0,1)}, y = {(1,1), (0,0)}, d = 2, k(a,b) = (a·b/2 + 1)³:
    // kxx off-diagonal: k(x1,x2) = 1 twice → 2/(2·1) = 1
    // kyy off-diagonal: k(y1,y2) = 1 twice → 1
    // kxy: k(x1,y1) = 1.5³, k(x1,y2) = 1, k(x2,y1) = 1.5³, k(x2,y2) = 1 → 2·(6.75 + 2)/4 = 4.375
    // MMD² = 1 + 1 − 4.375 = −2.375
    let got = squared_mmd(&[1.0, 0.0, 0.0, 1.0], 2, &[1.0, 1.0, 0.0, 0.0], 2, 2);
    assert!((got + 2.375).abs() < 1e-12, "{got}");
    // the chunked KID of 8 rows each: 4 chunks of 2, the same pair repeated → the same value
    let x: Vec<f32> = [1.0, 0.0, 0.0, 1.0].repeat(4);
    let y: Vec<f32> = [1.0, 1.0, 0.0, 0.0].repeat(4);
    let k = kid(
        &Tensor::from_vec(x, [8, 2]).unwrap(),
        &Tensor::from_vec(y, [8, 2]).unwrap(),
    )
    .unwrap();
    assert!((k + 2.375).abs() < 1e-12, "{k}");
}

#[test]
fn kid_same_vs_shifted_distribution() {
    // Two samples of one distribution: |KID| ≤ 1e-2 (an unbiased, noisy
    // estimate: chunks of 50); shifted by 0.5 in every dim: KID > 0.5
    // (measured: −3.8e-3 and 1.02).
    let (n, d) = (1000, 32);
    let x = Tensor::from_vec(randn(&[n, d], 31), [n, d]).unwrap();
    let y = Tensor::from_vec(randn(&[n, d], 32), [n, d]).unwrap();
    let shifted =
        Tensor::from_vec(randn(&[n, d], 33).iter().map(|v| v + 0.5).collect(), [n, d]).unwrap();
    let same = kid(&x, &y).unwrap();
    let diff = kid(&x, &shifted).unwrap();
    let (sub_mean, sub_std) = kid_subsets(
        &x,
        &shifted,
        &KidSubsets {
            subsets: 10,
            subset_size: 200,
            seed: 1,
        },
    )
    .unwrap();
    let (sub_same, _) = kid_subsets(
        &x,
        &y,
        &KidSubsets {
            subsets: 10,
            subset_size: 200,
            seed: 1,
        },
    )
    .unwrap();
    eprintln!(
        "kid same {same:.2e}, shifted {diff:.4}; subsets: same {sub_same:.2e}, shifted {sub_mean:.4} ± {sub_std:.4}"
    );
    assert!(same.abs() <= 1e-2, "{same}");
    assert!(diff > 0.5, "{diff}");
    assert!(sub_same.abs() <= 1e-2 && sub_mean > 0.5);
    // deterministic in the seed
    assert_eq!(
        kid_subsets(
            &x,
            &shifted,
            &KidSubsets {
                subsets: 10,
                subset_size: 200,
                seed: 1
            }
        )
        .unwrap()
        .0,
        sub_mean
    );
}
