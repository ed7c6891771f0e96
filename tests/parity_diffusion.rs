//! The fused diffusion kernels against their CPU twins: noisify and the
//! sampler step (DDPM and DDIM coefficients, with and without noise, clipping
//! and x̂0), bit for bit — both round each product and sum in the same order
//! and draw the same Philox normals (within 2 ulp on a GPU, whose double
//! log/sin/cos may differ in the last bit: tolerance 1e-6 relative).

use minidiffusion::diffusion::sampler::{DdpmVariance, ddim_coefs, ddpm_coefs};
use minidiffusion::diffusion::{Schedule, ScheduleKind};
use minidiffusion::ops::diffusion::{DeviceStep, noisify, step, threshold};
use minidiffusion::testing::{assert_close, parity_device, randn};
use minidiffusion::{Device, Tensor};

fn pair(dims: &[usize], seed: u64) -> (Tensor, Tensor) {
    let cpu = Tensor::from_vec(randn(dims, seed), dims).unwrap();
    let dev = cpu.to_device(parity_device()).unwrap();
    (cpu, dev)
}

#[test]
fn noisify_parity() {
    let (cpu, dev) = pair(&[3, 1, 7, 5], 1);
    let abar = [0.9999, 0.5, 0.0123];
    for start in [0u64, 3, 1001] {
        let (xt_c, eps_c) = noisify(&cpu, &abar, 42, 9, start).unwrap();
        let (xt_d, eps_d) = noisify(&dev, &abar, 42, 9, start).unwrap();
        assert_eq!(xt_d.device(), parity_device());
        assert_close("noisify eps", &eps_d.to_vec(), &eps_c.to_vec(), 0.0, 1e-6);
        assert_close("noisify x_t", &xt_d.to_vec(), &xt_c.to_vec(), 1e-7, 1e-6);
        // x_t = √ᾱ·x0 + √(1−ᾱ)·ε with its own ε
        let (x0, e, xt) = (cpu.to_vec(), eps_c.to_vec(), xt_c.to_vec());
        for i in 0..x0.len() {
            let ab = abar[i / 35];
            assert!((xt[i] - ((ab.sqrt() as f32) * x0[i] + ((1.0 - ab).sqrt() as f32) * e[i])).abs() < 1e-6);
        }
    }
}

#[test]
fn step_parity() {
    let s = Schedule::lesson_default();
    let (xt_c, xt_d) = pair(&[2, 3, 5, 3], 2);
    let (eps_c, eps_d) = pair(&[2, 3, 5, 3], 3);
    let cases = [
        ("ddpm t=500", ddpm_coefs(&s, 500, None, DdpmVariance::Beta)),
        ("ddpm t=0", ddpm_coefs(&s, 0, None, DdpmVariance::Beta)),
        ("ddim eta=0", ddim_coefs(s.abar(700), s.abar(600), 0.0, None)),
        ("ddim eta=1 clipped", ddim_coefs(s.abar(700), s.abar(600), 1.0, Some(1.0))),
    ];
    for (name, k) in cases {
        for start in [0u64, 5] {
            let (p_c, x0_c) = step(&xt_c, &eps_c, k, 7, 3, start, true).unwrap();
            let (p_d, x0_d) = step(&xt_d, &eps_d, k, 7, 3, start, true).unwrap();
            assert_close(name, &p_d.to_vec(), &p_c.to_vec(), 1e-7, 1e-6);
            assert_close(name, &x0_d.unwrap().to_vec(), &x0_c.unwrap().to_vec(), 1e-7, 1e-6);
            let (p_none, x0_none) = step(&xt_d, &eps_d, k, 7, 3, start, false).unwrap();
            assert!(x0_none.is_none());
            assert_eq!(p_none.to_vec(), p_d.to_vec());
        }
    }
    // a noisy step really adds noise
    let k = ddpm_coefs(&s, 500, None, DdpmVariance::Beta);
    let (a, _) = step(&xt_c, &eps_c, k, 7, 3, 0, false).unwrap();
    let (b, _) = step(&xt_c, &eps_c, minidiffusion::ops::diffusion::StepCoefs { sigma: 0.0, ..k }, 7, 3, 0, false).unwrap();
    assert_ne!(a.to_vec(), b.to_vec());
    assert_eq!(Device::Cpu, a.device());
}

/// The step a CUDA graph replays (values written to the device by `set`, x
/// updated in place by `apply`) against the CPU twin of the ordinary step.
#[test]
fn device_step_in_place_parity() {
    let s = Schedule::lesson_default();
    let (xt_c, xt_d) = pair(&[2, 3, 5, 3], 4);
    let (eps_c, eps_d) = pair(&[2, 3, 5, 3], 5);
    let dev = DeviceStep::new(parity_device(), 2).unwrap();
    let cases = [
        (500, ddpm_coefs(&s, 500, None, DdpmVariance::Beta), 0u64),
        (0, ddpm_coefs(&s, 0, None, DdpmVariance::Beta), 5),
        (700, ddim_coefs(s.abar(700), s.abar(600), 1.0, Some(1.0)), 7),
    ];
    for (t, k, start) in cases {
        let (p_c, x0_c) = step(&xt_c, &eps_c, k, 11, 2, start, true).unwrap();
        let x = xt_d.deep_clone().unwrap();
        let x0 = Tensor::zeros_on([2, 3, 5, 3], parity_device()).unwrap();
        dev.set(t, k, 11, 2, start, Some(&x0)).unwrap();
        assert_eq!(dev.timesteps().to_vec(), vec![t as f32; 2]);
        dev.apply(&x, &eps_d).unwrap();
        assert_close("in-place step", &x.to_vec(), &p_c.to_vec(), 1e-7, 1e-6);
        assert_close("in-place step x̂0", &x0.to_vec(), &x0_c.unwrap().to_vec(), 1e-7, 1e-6);
        // without x̂0 the update is the same
        let y = xt_d.deep_clone().unwrap();
        dev.set(t, k, 11, 2, start, None).unwrap();
        dev.apply(&y, &eps_d).unwrap();
        assert_eq!(y.to_vec(), x.to_vec());
    }
    assert!(DeviceStep::new(Device::Cpu, 2).is_err(), "a device step is CUDA's");
}

/// The step whose noise level comes per element from a learned variance
/// output (DDPM's "learned" and "learned_range") against its CPU twin; the
/// twin is the plain step's mean plus σ_i·z_i with z drawn on its own.
#[test]
fn learned_variance_step_parity() {
    use minidiffusion::ops::diffusion::step_learned;
    use minidiffusion::ops::random::randn_at;
    let s = Schedule::lesson_default();
    let dims = [2, 3, 5, 3];
    let (xt_c, xt_d) = pair(&dims, 6);
    let (eps_c, eps_d) = pair(&dims, 7);
    let raw = randn(&dims, 8);
    // learned_range's output is a v in [−1, 1]; learned's is a variance (> 0)
    let outputs = [
        (DdpmVariance::LearnedRange, raw.iter().map(|v| v.tanh()).collect::<Vec<f32>>()),
        (DdpmVariance::Learned, raw.iter().map(|v| 1e-3 * (1.0 + v.abs())).collect()),
    ];
    for (variance, v) in outputs {
        let var_c = Tensor::from_vec(v.clone(), dims).unwrap();
        let var_d = var_c.to_device(parity_device()).unwrap();
        for t in [500usize, 0] {
            let k = ddpm_coefs(&s, t, None, variance);
            let ls = variance.learned_sigma(s.abar(t as i64), s.abar(t as i64 - 1)).unwrap();
            for start in [0u64, 5] {
                let name = format!("{variance:?} t={t} start={start}");
                let (p_c, x0_c) = step_learned(&xt_c, &eps_c, &var_c, ls, k, 7, 3, start, true).unwrap();
                let (p_d, x0_d) = step_learned(&xt_d, &eps_d, &var_d, ls, k, 7, 3, start, true).unwrap();
                // (a GPU's expf is within 2 ulp, not correctly rounded)
                assert_close(&name, &p_d.to_vec(), &p_c.to_vec(), 1e-7, 1e-6);
                assert_close(&name, &x0_d.unwrap().to_vec(), &x0_c.unwrap().to_vec(), 1e-7, 1e-6);
                let (mean, _) = step(&xt_c, &eps_c, minidiffusion::ops::diffusion::StepCoefs { sigma: 0.0, ..k }, 7, 3, start, false).unwrap();
                let z = randn_at(dims, 7, 3, start, Device::Cpu).unwrap().to_vec();
                let want: Vec<f32> = mean.to_vec().iter().enumerate().map(|(i, m)| m + k.sigma * ls.scale(v[i]) * z[i]).collect();
                assert_eq!(p_c.to_vec(), want, "{name}: mean + σ_i·z_i");
                assert_eq!(t == 0, p_c.to_vec() == mean.to_vec(), "{name}: noise exactly where t > 0");
            }
        }
    }
}

/// The score-SDE VE sampler (predictor–corrector) on the device against the
/// CPU, with a toy score model s(x, σ) = −(x − 0.3)/σ²: the same noise draws
/// (Philox) and updates; the per-sample norms sum in another order.
#[test]
fn score_sde_ve_sampler_parity() {
    use minidiffusion::diffusion::sde_ve::{self, VeConfig};
    use minidiffusion::ops;
    let config = VeConfig { num_train_timesteps: 100, snr: 0.16, sigma_min: 0.01, sigma_max: 20.0, sampling_eps: 1e-3, correct_steps: 2 };
    let score = |x: &Tensor, sigma: &Tensor| {
        let s = sigma.to_vec()[0];
        ops::mul_scalar(&ops::add_scalar(x, -0.3)?, -1.0 / (s * s))
    };
    let run = |device: Device| {
        let x = Tensor::from_vec(randn(&[2, 3, 5, 4], 9), [2, 3, 5, 4]).unwrap().to_device(device).unwrap();
        sde_ve::sample(score, x, 3, &config, 8, 11).unwrap()
    };
    let (cpu, dev) = (run(Device::Cpu), run(parity_device()));
    assert_eq!((cpu.model_evals, dev.model_evals), (24, 24), "8 steps × (2 corrector + 1 predictor) calls");
    let want = cpu.x0.to_vec();
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    assert_close("score-SDE VE samples", &dev.x0.to_vec(), &want, 1e-5 * scale, 1e-5);
    // the toy score pulls every sample towards 0.3 from σ_max·z
    let spread = want.iter().fold(0f32, |m, v| m.max((v - 0.3).abs()));
    assert!(spread < 1.0, "samples near 0.3 (within {spread})");
}

/// Dynamic thresholding on the device against the CPU twin (a sort per
/// sample), bit for bit: the radix selection finds the same two ranked
/// values, and the lerp, clamp and division round alike. Samples of 1, 7,
/// 1,024 and 12,288 values (3×64×64); ratios at both ends and between;
/// thresholds below 1, between and above; ties, signed zeros, ±∞ and NaN.
#[test]
fn thresholding_parity() {
    let special = [0.0f32, -0.0, 1.5, -1.5, 1.5, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 3.0, 1e-40, -7.25];
    let cases: [(&[usize], f32); 6] = [(&[3, 1], 3.0), (&[4, 7], 1.0), (&[2, 1, 32, 32], 2.5), (&[2, 3, 64, 64], 4.0), (&[5, 2, 4, 4], 0.7), (&[2, 1, 8, 8], 1.3)];
    for (i, &(dims, scale)) in cases.iter().enumerate() {
        let mut values: Vec<f32> = randn(dims, 60 + i as u64).iter().map(|v| v * scale).collect();
        // ties and specials in the last case but one; repeated values in the last
        if i == 4 {
            for (j, v) in values.iter_mut().enumerate().step_by(3) {
                *v = special[j / 3 % special.len()];
            }
        }
        if i == 5 {
            for v in values.iter_mut() {
                *v = (*v * 2.0).round() / 2.0;
            }
        }
        let cpu = Tensor::from_vec(values, dims).unwrap();
        let dev = cpu.to_device(parity_device()).unwrap();
        for ratio in [0.0f32, 0.5, 0.9, 0.995, 1.0] {
            for max in [0.5f32, 1.7, 100.0] {
                let want = threshold(&cpu, ratio, max).unwrap().to_vec();
                let got = threshold(&dev, ratio, max).unwrap().to_vec();
                let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{dims:?} ratio {ratio} max {max}: device {:?}… vs CPU {:?}…", &got[..got.len().min(8)], &want[..want.len().min(8)]);
            }
        }
    }
    let x = Tensor::from_vec(vec![1.0; 4], [2, 2]).unwrap();
    let err = threshold(&x, 1.5, 1.0).unwrap_err().to_string();
    assert!(err.contains("ratio") && err.contains("1.5"), "{err}");
}

/// DDIM and DDPM runs with dynamic thresholding give the CPU's samples on
/// the device, where x̂0 is now thresholded without a host copy.
#[test]
fn thresholded_sampling_parity() {
    use minidiffusion::diffusion::sampler::{self, SamplerKind, SamplerOptions, Spacing, Thresholding};
    use minidiffusion::ops;
    // ε̂ = 0.3·x_t − 0.8·(t/1000): x̂0 grows past 1 as t falls, so the threshold scales
    let model = |x: &Tensor, t: &Tensor| ops::add(&ops::mul_scalar(x, 0.3)?, &ops::reshape(&ops::mul_scalar(t, -0.0008)?, [x.dims()[0], 1, 1, 1])?);
    let s = Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.05 }, 40).unwrap();
    let th = Some(Thresholding { ratio: 0.9, max: 1.5 });
    let kinds = [SamplerKind::Ddim { steps: 6, eta: 0.5, spacing: Spacing::Trailing }, SamplerKind::Ddpm];
    for kind in kinds {
        let opts = SamplerOptions { kind, threshold: th, seed: 4, ..Default::default() };
        let run = |device: Device, opts: &SamplerOptions| {
            let x = Tensor::from_vec(randn(&[3, 2, 4, 4], 8), [3, 2, 4, 4]).unwrap().to_device(device).unwrap();
            minidiffusion::no_grad(|| sampler::sample(model, x, 0, &s, opts)).unwrap().x0.to_vec()
        };
        let (want, got) = (run(Device::Cpu, &opts), run(parity_device(), &opts));
        assert_close(&format!("{kind:?} thresholded samples"), &got, &want, 1e-6, 1e-6);
        let plain = run(Device::Cpu, &SamplerOptions { threshold: None, ..opts.clone() });
        assert!(plain.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3), "{kind:?}: the threshold changes the samples");
    }
}
