//! x̂0 not from ε̂. Zero terminal SNR (diffusers' rescale_betas_zero_snr): the
//! rescaled schedule against diffusers' (f32) alphas_cumprod, and the samplers
//! at ᾱ = 0, where x̂0 comes straight from a v (or x̂0) model's output and an ε
//! model is refused. Dynamic thresholding in DDPM's update. The whole DDIM
//! runs against diffusers are in golden_diffusers.rs
//! (sample_follows_the_model_directorys_scheduler_config).

use minidiffusion::diffusion::sampler::{self, Prediction, SamplerKind, SamplerOptions, Spacing};
use minidiffusion::diffusion::{Schedule, ScheduleKind};
use minidiffusion::io::npy;
use minidiffusion::testing::{assert_close, randn};
use minidiffusion::{Tensor, no_grad};
use std::path::Path;

/// unet_a's schedule (linear 1e-4 … 0.01), rescaled.
fn rescaled() -> Schedule {
    Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.01 }, 1000).unwrap().zero_terminal_snr().unwrap()
}

#[test]
fn rescaled_schedule_matches_diffusers() {
    let s = rescaled();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sampling/ddim_zero_snr_v/alphas_cumprod.npy");
    let (_, want) = npy::read(&path).unwrap();
    let got: Vec<f32> = s.alphas_cumprod.iter().map(|&a| a as f32).collect();
    // ours in f64, diffusers' in f32
    assert_close("rescaled alphas_cumprod", &got, &want, 2e-6, 1e-5);
    assert_eq!(s.abar(999), 0.0);
    assert_eq!(s.betas[999], 1.0);
    // the first ᾱ is kept
    let plain = Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.01 }, 1000).unwrap();
    assert!((s.abar(0) - plain.abar(0)).abs() < 1e-15);
    // β = 1 is only allowed last
    let mut b = vec![0.01; 10];
    b[4] = 1.0;
    assert!(Schedule::new(ScheduleKind::Explicit(b), 10).is_err());
}

/// A model whose output is a fixed tensor (a stand-in for v or x̂0).
fn fixed_output(dims: &[usize]) -> Tensor {
    Tensor::from_vec(randn(dims, 5), dims.to_vec()).unwrap()
}

#[test]
fn ddpm_at_zero_snr_takes_x0_from_the_output() {
    let s = rescaled();
    let dims = [2, 1, 4, 4];
    let out = fixed_output(&dims);
    for (prediction, sign) in [(Prediction::V, -1.0f32), (Prediction::Sample, 1.0)] {
        for kind in [SamplerKind::Ddpm, SamplerKind::DdpmSkip] {
            let opts = SamplerOptions { kind, prediction, seed: 3, keep_x0_at: vec![0], ..Default::default() };
            let x_t = sampler::initial_noise(dims, 0, 3, minidiffusion::Device::Cpu).unwrap();
            let r = no_grad(|| sampler::sample(|_, _| Ok(out.clone()), x_t, 0, &s, &opts)).unwrap();
            let (k, t, x0) = &r.x0_history[0];
            assert_eq!((*k, *t), (0, 999));
            let want: Vec<f32> = out.to_vec().iter().map(|v| sign * v).collect();
            assert_eq!(x0.to_vec(), want, "{prediction:?} {kind:?}: x̂0 at ᾱ = 0");
            assert!(r.x0.to_vec().iter().all(|v| v.is_finite()), "{prediction:?} {kind:?}");
        }
    }
}

#[test]
fn an_epsilon_model_is_refused_where_abar_is_zero() {
    let s = rescaled();
    let dims = [1, 1, 4, 4];
    let out = fixed_output(&dims);
    let run = |spacing| {
        let opts = SamplerOptions { kind: SamplerKind::Ddim { steps: 10, eta: 0.0, spacing }, ..Default::default() };
        let x_t = sampler::initial_noise(dims, 0, 1, minidiffusion::Device::Cpu).unwrap();
        no_grad(|| sampler::sample(|_, _| Ok(out.clone()), x_t, 0, &s, &opts))
    };
    let err = run(Spacing::Trailing).err().expect("refused").to_string();
    assert!(err.contains("ᾱ is 0 at timestep 999") && err.contains("v_prediction"), "{err}");
    // leading spacing starts at 900: ᾱ > 0 all the way
    assert!(run(Spacing::Leading).unwrap().x0.to_vec().iter().all(|v| v.is_finite()));
}

/// DDPM with dynamic thresholding (the update that needs x_t besides x̂0), on
/// a 2-step schedule, against the update written out by hand with the
/// sampler's Philox noise drawn again. The model's ε̂ points at x̂0 targets
/// whose |x̂0| quantiles lie in (1, max), so the threshold scales, not only
/// clips; the second call's ε̂ is fixed, so the result depends on the first
/// update's x_t term.
#[test]
fn ddpm_with_thresholding_follows_the_update_by_hand() {
    use minidiffusion::diffusion::sampler::{DdpmVariance, Thresholding, ddpm_coefs};
    use minidiffusion::rng::PhiloxStream;
    let s = Schedule::new(ScheduleKind::Linear { beta_min: 0.1, beta_max: 0.5 }, 2).unwrap();
    let dims = [2, 1, 4, 4];
    let th = Thresholding { ratio: 0.8, max: 3.0 };
    let (t1, t2): (Vec<f32>, Vec<f32>) = (randn(&dims, 6).iter().map(|v| 1.5 * v).collect(), randn(&dims, 7).iter().map(|v| 1.5 * v).collect());
    // ε̂ at x and t pointing at x̂0 = target
    let toward = |x: &[f32], t: usize, target: &[f32]| -> Vec<f32> {
        let (a, b) = (s.abar(t as i64).sqrt() as f32, (1.0 - s.abar(t as i64)).sqrt() as f32);
        x.iter().zip(target).map(|(&x, &x0)| (x - a * x0) / b).collect()
    };
    // the update by hand: x_prev = c_x0·thr(x̂0) + c_xt·x_t + σ·z
    let update = |k: usize, t: usize, x: &[f32], eps: &[f32]| -> Vec<f32> {
        let c = ddpm_coefs(&s, t, None, DdpmVariance::Beta);
        let mut x0: Vec<f32> = x.iter().zip(eps).map(|(&x, &e)| (x - c.eps_scale * e) * c.inv_sqrt_abar).collect();
        th.apply(&mut x0, 2);
        let mut z = vec![0f32; x.len()];
        if c.sigma > 0.0 {
            PhiloxStream::new(5, 1 + k as u64).fill_normal(0, &mut z);
        }
        (0..x.len()).map(|i| c.c_x0 * x0[i] + c.c_xt * x[i] + c.sigma * z[i]).collect()
    };
    assert!(ddpm_coefs(&s, 1, None, DdpmVariance::Beta).c_xt > 0.1, "the first update uses x_t besides x̂0");
    let x_t = sampler::initial_noise(dims, 0, 5, minidiffusion::Device::Cpu).unwrap();
    let xt = x_t.to_vec();
    let eps1 = toward(&xt, 1, &t1);
    let x1 = update(0, 1, &xt, &eps1);
    let eps2 = toward(&x1, 0, &t2);
    let want = update(1, 0, &x1, &eps2);
    let mut calls = 0;
    let model = |_: &Tensor, _: &Tensor| {
        calls += 1;
        Tensor::from_vec(if calls == 1 { eps1.clone() } else { eps2.clone() }, dims.to_vec())
    };
    let opts = SamplerOptions { kind: SamplerKind::Ddpm, threshold: Some(th), seed: 5, ..Default::default() };
    let got = no_grad(|| sampler::sample(model, x_t, 0, &s, &opts)).unwrap().x0.to_vec();
    assert_close("thresholded DDPM", &got, &want, 1e-5, 1e-5);
}
