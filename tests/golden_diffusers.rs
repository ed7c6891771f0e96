//! Against diffusers: golden files made by scripts/make_golden.py (diffusers
//! 0.42.1, torch 2.15.0, CPU, f32) under tests/golden/. UNet forward passes of
//! eight random models, the time embedding, schedules, DDIM and DDPM updates,
//! and a whole DDIM run.

use minidiffusion::diffusion::sampler::{self, DdpmVariance, SamplerKind, SamplerOptions, Spacing, ddim_coefs, ddpm_coefs};
use minidiffusion::diffusion::{Schedule, ScheduleKind};
use minidiffusion::io::{model_dir, npy};
use minidiffusion::ops::diffusion::{StepCoefs, step};
use minidiffusion::testing::assert_close;
use minidiffusion::{Device, Tensor, no_grad, ops};
use std::path::{Path, PathBuf};

fn golden(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(rel)
}

fn load(rel: &str) -> (Vec<usize>, Vec<f32>) {
    npy::read(&golden(rel)).unwrap_or_else(|e| panic!("{e}"))
}

fn tensor(rel: &str) -> Tensor {
    let (shape, v) = load(rel);
    Tensor::from_vec(v, shape).unwrap()
}

/// Largest |a − b| / (1e-5 + max |b|): an error relative to the output's scale.
fn scaled_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-5;
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

const CASES: [&str; 6] = ["t0", "t1", "t500", "t999", "mixed_1_999", "mixed_500_0"];

#[test]
fn unet_forward_matches_diffusers() {
    // f32 throughout; sums in a different order: 1e-5 absolute + 1e-4 relative
    // unet_e: resnet_time_scale_shift "scale_shift", a mid attention without group norm;
    // unet_i: the score-SDE Skip blocks (FIR resampling resnets, the 3-channel
    // image pyramid, 32-group attention ÷ √2), norm_num_groups null
    for name in ["unet_a", "unet_b", "unet_c", "unet_d", "unet_e", "unet_i"] {
        let (model, _) = model_dir::load(&golden(name), Device::Cpu).unwrap();
        let x = tensor(&format!("{name}/forward/x.npy"));
        for case in CASES {
            let t = tensor(&format!("{name}/forward/t_{case}.npy"));
            let (_, want) = load(&format!("{name}/forward/eps_{case}.npy"));
            let got = no_grad(|| model.forward(&x, &t)).unwrap();
            assert_close(&format!("{name} eps {case}"), &got.to_vec(), &want, 1e-5, 1e-4);
        }
    }
}

/// The rarer UNet2DModel switches, each against diffusers' forward:
/// unet_f: act_fn mish, time_embedding_dim 24, a class table, resnet down/upsamplers;
/// unet_g: act_fn gelu, a learned time embedding, ResnetDownsample/UpsampleBlock2D,
///   scale_shift, class_embed_type "timestep";
/// unet_h: a Fourier embedding of noise levels σ (output divided by σ), relu,
///   class_embed_type "identity", no mid block.
#[test]
fn unet_forward_with_the_rarer_switches_matches_diffusers() {
    let sigma_cases = ["s_small", "s_one", "s_mixed"];
    for (name, cases) in [("unet_f", &CASES[..]), ("unet_g", &CASES[..]), ("unet_h", &sigma_cases[..])] {
        let (model, _) = model_dir::load(&golden(name), Device::Cpu).unwrap();
        let x = tensor(&format!("{name}/forward/x.npy"));
        let labels = tensor(&format!("{name}/forward/class_labels.npy"));
        for case in cases {
            let t = tensor(&format!("{name}/forward/t_{case}.npy"));
            let (_, want) = load(&format!("{name}/forward/eps_{case}.npy"));
            let got = no_grad(|| model.forward_with_labels(&x, &t, Some(&labels))).unwrap();
            assert_close(&format!("{name} eps {case}"), &got.to_vec(), &want, 1e-5, 1e-4);
            // the time projection alone (sinusoidal, learned or Fourier)
            let (_, want_proj) = load(&format!("{name}/forward/time_proj_{case}.npy"));
            let c = &model.config;
            let proj = match name {
                "unet_g" => ops::embedding_lookup(&minidiffusion::nn::named_params(&model).into_iter().find(|(n, _)| n == "time_proj.weight").unwrap().1, &t),
                "unet_h" => ops::fourier_embedding(&t, &minidiffusion::nn::named_params(&model).into_iter().find(|(n, _)| n == "time_proj.weight").unwrap().1, false),
                _ => ops::timestep_embedding(&t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift as f32, 10000.0),
            };
            assert_close(&format!("{name} time_proj {case}"), &proj.unwrap().to_vec(), &want_proj, 2e-5, 1e-5);
        }
        // class-conditional: labels are required
        let t = tensor(&format!("{name}/forward/t_{}.npy", cases[0]));
        assert!(model.forward(&x, &t).unwrap_err().to_string().contains("class labels are needed"), "{name}");
    }
    // and a model without class conditioning refuses labels
    let (model, _) = model_dir::load(&golden("unet_a"), Device::Cpu).unwrap();
    let (x, t) = (tensor("unet_a/forward/x.npy"), tensor("unet_a/forward/t_t1.npy"));
    assert!(model.forward_with_labels(&x, &t, Some(&t)).is_err());
}

#[test]
fn unet_forward_non_square_input() {
    let (model, _) = model_dir::load(&golden("unet_c"), Device::Cpu).unwrap();
    let x = tensor("unet_c/forward/x_8x12.npy");
    let t = tensor("unet_c/forward/t_mixed_1_999_8x12.npy");
    let (_, want) = load("unet_c/forward/eps_mixed_1_999_8x12.npy");
    let got = no_grad(|| model.forward(&x, &t)).unwrap();
    assert_close("unet_c 8x12", &got.to_vec(), &want, 1e-5, 1e-4);
}

#[test]
fn time_embedding_matches_diffusers() {
    for (name, dim, flip, shift) in [("unet_a", 8, true, 0.0), ("unet_b", 8, false, 1.0), ("unet_c", 8, true, 1.0)] {
        for case in CASES {
            let t = tensor(&format!("{name}/forward/t_{case}.npy"));
            let (_, want) = load(&format!("{name}/forward/time_proj_{case}.npy"));
            let got = ops::timestep_embedding(&t, dim, flip, shift, 10000.0).unwrap();
            // f32 sin/cos of arguments up to 999: 2e-5 absolute
            assert_close(&format!("{name} time_proj {case}"), &got.to_vec(), &want, 2e-5, 0.0);
        }
    }
}

#[test]
fn schedules_match_diffusers() {
    for (dir, kind) in [
        ("linear_1e-4_0.01", ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.01 }),
        ("linear_1e-4_0.02", ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.02 }),
        ("squaredcos_cap_v2", ScheduleKind::SquaredCosCapV2),
        ("scaled_linear_8.5e-4_0.012", ScheduleKind::ScaledLinear { beta_min: 8.5e-4, beta_max: 0.012 }),
        ("sigmoid_1e-4_0.02", ScheduleKind::Sigmoid { beta_min: 1e-4, beta_max: 0.02 }),
    ] {
        let s = Schedule::new(kind, 1000).unwrap();
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        // f64 against numpy's f64 recomputation: exact up to rounding
        assert_close(&format!("{dir} betas f64"), &f32s(&s.betas), &load(&format!("schedules/{dir}/betas_f64.npy")).1, 0.0, 1e-6);
        assert_close(&format!("{dir} abar f64"), &f32s(&s.alphas_cumprod), &load(&format!("schedules/{dir}/alphas_cumprod_f64.npy")).1, 0.0, 1e-6);
        // against diffusers' f32 tensors (f32 linspace and cumprod): 2e-6 relative, 1e-9 absolute near ᾱ ≈ 0
        assert_close(&format!("{dir} betas"), &f32s(&s.betas), &load(&format!("schedules/{dir}/betas.npy")).1, 1e-9, 2e-6);
        assert_close(&format!("{dir} abar"), &f32s(&s.alphas_cumprod), &load(&format!("schedules/{dir}/alphas_cumprod.npy")).1, 1e-9, 2e-6);
    }
}

#[test]
fn scheduler_config_of_a_diffusers_model_gives_its_schedule() {
    let (_, sched) = model_dir::load(&golden("unet_c"), Device::Cpu).unwrap();
    let s = sched.schedule().unwrap();
    assert_eq!(s.kind, ScheduleKind::SquaredCosCapV2);
    let (_, sched) = model_dir::load(&golden("unet_b"), Device::Cpu).unwrap();
    assert_eq!(sched.schedule().unwrap().kind, ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.02 });
    // DDPMScheduler's "sigmoid"; written back as trained_betas (DDIMScheduler, which we write, has no sigmoid)
    let sigmoid: model_dir::SchedulerConfig =
        serde_json::from_str(r#"{"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid", "beta_start": 0.0001, "beta_end": 0.02}"#).unwrap();
    let s = sigmoid.schedule().unwrap();
    assert_eq!(s.kind, ScheduleKind::Sigmoid { beta_min: 1e-4, beta_max: 0.02 });
    let written = model_dir::SchedulerConfig::from_schedule(&s);
    assert_eq!(written.trained_betas.as_deref(), Some(s.betas.as_slice()));
    assert_eq!(written.schedule().unwrap().alphas_cumprod, s.alphas_cumprod);
}

/// Replays a diffusers run recorded in `dir` (starting from `x_T`): each update
/// from the recorded x_t and ε̂, with `coefs[k]` and the recorded noise z in
/// place of ours (x_next = deterministic part + σ·z), must give the recorded
/// x̂0 and next sample. Returns the recorded timesteps.
fn replay(dir: &str, x_t: &str, coefs: impl Fn(usize) -> StepCoefs) -> Vec<usize> {
    let (_, ts) = load(&format!("{dir}/timesteps.npy"));
    let (shape, eps) = load(&format!("{dir}/model_output.npy"));
    let (_, noise) = load(&format!("{dir}/variance_noise.npy"));
    let (_, prev) = load(&format!("{dir}/prev_sample.npy"));
    let (_, x0s) = load(&format!("{dir}/pred_original_sample.npy"));
    let per = shape[1..].iter().product::<usize>();
    let ts: Vec<usize> = ts.iter().map(|&t| t as usize).collect();
    let (_, mut x) = load(x_t);
    for (k, &t) in ts.iter().enumerate() {
        let coefs = coefs(t);
        let at = |v: &[f32]| v[k * per..(k + 1) * per].to_vec();
        let xt = Tensor::from_vec(x.clone(), shape[1..].to_vec()).unwrap();
        let e = Tensor::from_vec(at(&eps), shape[1..].to_vec()).unwrap();
        let (next, x0) = step(&xt, &e, StepCoefs { sigma: 0.0, ..coefs }, 0, 0, 0, true).unwrap();
        let next: Vec<f32> = next.to_vec().iter().zip(at(&noise)).map(|(v, z)| v + coefs.sigma * z).collect();
        assert_close(&format!("{dir} x0 step {k} (t={t})"), &x0.unwrap().to_vec(), &at(&x0s), 1e-5, 1e-4);
        assert_close(&format!("{dir} step {k} (t={t})"), &next, &at(&prev), 1e-5, 1e-4);
        x = at(&prev);
    }
    ts
}

#[test]
fn ddim_steps_match_diffusers() {
    let s = Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.01 }, 1000).unwrap();
    for (dir, eta) in [("sampling/ddim_eta0", 0.0), ("sampling/ddim_eta1", 1.0)] {
        let coefs = |t: usize| {
            let prev = t as i64 - 100;
            let abar_prev = if prev >= 0 { s.abar(prev) } else { s.abar(0) }; // set_alpha_to_one = False
            ddim_coefs(s.abar(t as i64), abar_prev, eta, None)
        };
        let ts = replay(dir, "sampling/x_T.npy", coefs);
        assert_eq!(ts, sampler::ddim_timesteps(1000, 10, Spacing::Leading, 0).unwrap());
    }
}

#[test]
fn ddpm_update_matches_diffusers_over_1000_steps() {
    // diffusers' DDPMScheduler adds σ² = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t noise ("fixed_small", our
    // DdpmVariance::Posterior); the lesson's DDPM uses σ² = β_t, and only σ differs.
    let s = Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.01 }, 1000).unwrap();
    let dir = "sampling/ddpm_1000_synthetic";
    let ts = replay(dir, &format!("{dir}/x_T.npy"), |t| {
        let (posterior, lesson) = (ddpm_coefs(&s, t, None, DdpmVariance::Posterior), ddpm_coefs(&s, t, None, DdpmVariance::Beta));
        assert_eq!(StepCoefs { sigma: 0.0, ..posterior }, StepCoefs { sigma: 0.0, ..lesson }, "only σ differs");
        assert!(t == 0 || lesson.sigma == s.betas[t].sqrt() as f32);
        posterior
    });
    assert_eq!(ts, (0..1000).rev().collect::<Vec<_>>());
}

#[test]
fn whole_ddim_run_matches_diffusers() {
    let (model, _) = model_dir::load(&golden("unet_a"), Device::Cpu).unwrap();
    let s = Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.01 }, 1000).unwrap();
    let x_t = tensor("sampling/x_T.npy");
    let opts = SamplerOptions {
        kind: SamplerKind::Ddim { steps: 10, eta: 0.0, spacing: Spacing::Leading },
        set_alpha_to_one: false,
        ..Default::default()
    };
    let out = no_grad(|| sampler::sample(|x, t| model.forward(x, t), x_t, 0, &s, &opts)).unwrap();
    assert_eq!(out.model_evals, 10);
    let (shape, prev) = load("sampling/ddim_eta0/prev_sample.npy");
    let per: usize = shape[1..].iter().product();
    let want = &prev[9 * per..];
    let err = scaled_error(&out.x0.to_vec(), want);
    // ten model calls compound f32 differences: 1e-4 of the output's scale
    assert!(err < 1e-4, "final sample differs from diffusers by {err} of its scale");
}

#[test]
fn noisify_formula_matches_add_noise() {
    let s = Schedule::lesson_default();
    let (shape, x0) = load("noisify/x0.npy");
    let (_, noise) = load("noisify/noise.npy");
    let (_, ts) = load("noisify/t.npy");
    let (_, want) = load("noisify/x_t.npy");
    let per: usize = shape[1..].iter().product();
    let got: Vec<f32> = (0..x0.len())
        .map(|i| {
            let abar = s.abar(ts[i / per] as i64);
            (abar.sqrt() as f32) * x0[i] + ((1.0 - abar).sqrt() as f32) * noise[i]
        })
        .collect();
    // diffusers forms √(1 − ᾱ_t) from an f32 ᾱ_t: at t = 0, 1 − 0.9999f32 keeps only
    // ~3 digits (relative 6e-4 in 1 − ᾱ), ours is f64: 5e-6 absolute covers it
    assert_close("add_noise", &got, &want, 5e-6, 1e-5);
}

/// `sample --model DIR` samples as DIR's scheduler_config.json says, as
/// diffusers' `DDIMScheduler.from_pretrained(DIR)` does: trailing spacing
/// with x̂0 clipped at 0.5; unet_a's output read as v; read as x̂0. The
/// flags override the config.
#[test]
fn sample_follows_the_model_directorys_scheduler_config() {
    let dir = std::env::temp_dir().join(format!("minidiffusion-golden-sched-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(golden("unet_a").join(f), dir.join(f)).unwrap();
    }
    let sample = |extra: &[&str]| -> Vec<f32> {
        let npy_out = dir.join("out.npy");
        let mut args = vec!["sample", "--model", dir.to_str().unwrap(), "--steps", "10", "--device", "cpu"];
        let (x_t, png) = (golden("sampling/x_T.npy"), dir.join("grid.png"));
        args.extend(["--init-noise", x_t.to_str().unwrap(), "--npy", npy_out.to_str().unwrap(), "--out", png.to_str().unwrap()]);
        args.extend(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_minidiffusion")).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        npy::read(&npy_out).unwrap().1
    };
    let (shape, prev) = load("sampling/ddim_eta0/prev_sample.npy");
    let per: usize = shape[1..].iter().product();
    let epsilon_leading = &prev[9 * per..];
    // ddim_zero_snr_*: rescale_betas_zero_snr, so ᾱ = 0 at t = 999 (trailing visits it first)
    // ddim_threshold: dynamic thresholding (ratio 0.9, sample_max_value 2);
    // ddim_cosine_*: squaredcos_cap_v2 at trailing spacing, tiny ᾱ at the first step
    let cases = [
        "ddim_trailing_clip",
        "ddim_v_prediction",
        "ddim_sample_prediction",
        "ddim_zero_snr_v",
        "ddim_zero_snr_sample",
        "ddim_threshold",
        "ddim_cosine_v_trailing",
        "ddim_cosine_sample_trailing",
    ];
    for case in cases {
        std::fs::copy(golden(&format!("sampling/{case}/scheduler_config.json")), dir.join("scheduler_config.json")).unwrap();
        let (_, want) = load(&format!("sampling/{case}/final_sample.npy"));
        assert!(scaled_error(epsilon_leading, &want) > 0.05, "{case}: must differ from the plain run to show anything");
        let err = scaled_error(&sample(&[]), &want);
        eprintln!("{case}: {err:.2e} of the scale from diffusers");
        assert!(err < 1e-4, "{case}: sampling with the directory's scheduler config differs from diffusers by {err} of the scale");
    }
    // flags win: leading spacing and no clipping is the ddim_eta0 run
    std::fs::copy(golden("sampling/ddim_trailing_clip/scheduler_config.json"), dir.join("scheduler_config.json")).unwrap();
    let err = scaled_error(&sample(&["--timestep-spacing", "leading", "--clip-x0", "none"]), epsilon_leading);
    assert!(err < 1e-4, "the flags did not override the scheduler config ({err})");
    let _ = std::fs::remove_dir_all(&dir);
}

/// DDPM's noise level follows the directory's scheduler config too: unet_b's
/// DDPMScheduler says variance_type "fixed_small" (the posterior variance),
/// so `--sampler ddpm` uses it unless `--ddpm-variance beta` asks for the
/// lesson's σ² = β_t. A config with a variance_type we refuse
/// (fixed_large_log), or a learned one for a model without a variance half,
/// is one error line naming the file, exit 2.
#[test]
fn ddpm_noise_level_follows_the_scheduler_config() {
    let model = golden("unet_b");
    let dir = std::env::temp_dir().join(format!("minidiffusion-golden-ddpm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |model: &Path, extra: &[&str]| -> (i32, String, Vec<f32>) {
        let (npy_out, png) = (dir.join("out.npy"), dir.join("grid.png"));
        let _ = std::fs::remove_file(&npy_out);
        let mut args = vec!["sample", "--model", model.to_str().unwrap(), "--sampler", "ddpm", "-n", "2", "--device", "cpu"];
        args.extend(["--npy", npy_out.to_str().unwrap(), "--out", png.to_str().unwrap()]);
        args.extend(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_minidiffusion")).args(&args).output().unwrap();
        let values = if out.status.success() { npy::read(&npy_out).unwrap().1 } else { vec![] };
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), values)
    };
    let (code, stderr, default) = run(&model, &[]);
    assert_eq!(code, 0, "{stderr}");
    let (_, _, posterior) = run(&model, &["--ddpm-variance", "posterior"]);
    let (_, _, beta) = run(&model, &["--ddpm-variance", "beta"]);
    assert_eq!(default, posterior, "fixed_small is the posterior variance");
    // (unet_b's random weights blow the samples up to ~800: compare elementwise)
    let differing = beta.iter().zip(&posterior).filter(|(a, b)| (*a - *b).abs() > 1e-4).count();
    assert!(differing * 10 > beta.len() * 9, "σ² = β_t must give other samples ({differing} of {} differ)", beta.len());

    let (code, stderr, _) = run(&model, &["--ddpm-variance", "wide"]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("--ddpm-variance") && stderr.contains("'wide'"), "{stderr}");
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(model.join(f), dir.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(model.join("scheduler_config.json")).unwrap();
    std::fs::write(dir.join("scheduler_config.json"), config.replace("\"fixed_small\"", "\"fixed_large_log\"")).unwrap();
    let (code, stderr, _) = run(&dir, &[]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("scheduler_config.json") && stderr.contains("variance_type fixed_large_log"), "{stderr}");
    // a learned variance needs a model with a variance half, which unet_b has not
    std::fs::write(dir.join("scheduler_config.json"), config.replace("\"fixed_small\"", "\"learned_range\"")).unwrap();
    let (code, stderr, _) = run(&dir, &[]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("config.json") && stderr.contains("needs out_channels twice in_channels 3"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// DDIM's timesteps for each spacing, as diffusers' `set_timesteps` makes them
/// (numpy arithmetic, rounding half to even), for T = 1000, 100 and 37, n from
/// 1 to 50, steps_offset 0 and 1. Where diffusers lists a timestep ≥ T (leading
/// with an offset at n = T) its `step` would fail indexing ᾱ: ours refuses it.
#[test]
fn ddim_timesteps_match_diffusers_for_every_spacing() {
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden("index.json")).unwrap()).unwrap();
    let cases = index["sampling"]["ddim_timesteps_by_spacing"].as_array().unwrap();
    assert!(cases.len() > 100, "{} cases", cases.len());
    for c in cases {
        let n = |k: &str| c[k].as_u64().unwrap() as usize;
        let (t_train, steps, offset) = (n("num_train_timesteps"), n("num_inference_steps"), n("steps_offset"));
        let spacing = Spacing::parse(c["spacing"].as_str().unwrap()).unwrap();
        let want: Vec<usize> = c["timesteps"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let got = sampler::ddim_timesteps(t_train, steps, spacing, offset);
        if want.iter().any(|&t| t >= t_train) {
            assert!(got.is_err(), "{c}: {got:?}");
        } else {
            assert_eq!(got.unwrap(), want, "{c}");
        }
    }
}

/// A diffusers pipeline directory (`DDIMPipeline.save_pretrained(dir,
/// variant="fp16")`: model_index.json, unet/ with fp16 weights under the
/// variant name, scheduler/) loads as a model directory: the UNet from unet/,
/// the schedule from scheduler/.
#[test]
fn a_diffusers_pipeline_directory_with_fp16_variant_weights_loads() {
    let (model, scheduler) = model_dir::load(&golden("pipeline_a"), Device::Cpu).unwrap();
    let (_, plain) = model_dir::load(&golden("unet_a"), Device::Cpu).unwrap();
    assert_eq!(scheduler, plain);
    let x = tensor("unet_a/forward/x.npy");
    let t = tensor("unet_a/forward/t_mixed_1_999.npy");
    let (_, want) = load("pipeline_a_eps_mixed_1_999.npy");
    let got = no_grad(|| model.forward(&x, &t)).unwrap();
    assert_close("pipeline_a eps", &got.to_vec(), &want, 1e-5, 1e-4);
    // the f32 weights give another ε̂: the fp16 file was read, not unet_a's
    let (_, f32_eps) = load("unet_a/forward/eps_mixed_1_999.npy");
    assert!(scaled_error(&want, &f32_eps) > 1e-5, "fp16 rounding must show");
}

/// One training step against PyTorch autograd on the diffusers UNet: the MSE
/// loss, the gradient of every parameter (unet_a; unet_d with its bottom-right
/// padding, centred input and scaled mid block), and for unet_d the weights
/// after one AdamW step as torch.optim.AdamW takes it.
#[test]
fn a_training_step_matches_pytorch_autograd_and_adamw() {
    use minidiffusion::io::safetensors as st;
    use minidiffusion::nn::named_params;
    use minidiffusion::optim::{AdamW, AdamWHyper};
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden("index.json")).unwrap()).unwrap();
    // unet_f, unet_g: class labels (one repeated) through a table and through the
    // learned time projection, mish/gelu and the resnet resamplers backward;
    // unet_i: the Skip blocks' FIR resampling and image pyramid backward
    for name in ["unet_a", "unet_d", "unet_f", "unet_g", "unet_i"] {
        let case = &index["training_step"][name];
        let (model, _) = model_dir::load(&golden(name), Device::Cpu).unwrap();
        let x_t = tensor(&format!("training_step/{name}/x_t.npy"));
        let eps = tensor(&format!("training_step/{name}/eps.npy"));
        let t: Vec<f32> = case["t"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let t = Tensor::from_vec(t, [3]).unwrap();
        let labels = case["class_labels"].as_array().map(|l| {
            let l: Vec<f32> = l.iter().map(|v| v.as_f64().unwrap() as f32).collect();
            Tensor::from_vec(l, [3]).unwrap()
        });
        let loss = ops::mse_loss(&model.forward_with_labels(&x_t, &t, labels.as_ref()).unwrap(), &eps).unwrap();
        let want_loss = case["loss"].as_f64().unwrap() as f32;
        assert_close(&format!("{name} loss"), &[loss.item().unwrap()], &[want_loss], 1e-6, 1e-5);
        let grads = minidiffusion::backward(&loss).unwrap();
        let want = st::read(&golden(&format!("training_step/{name}/grads.safetensors"))).unwrap();
        let params = named_params(&model);
        assert_eq!(params.len(), want.len(), "{name}: one gradient per parameter");
        // the keys' bias has a zero gradient in exact arithmetic (softmax ignores a
        // shift shared by all keys): both sides are rounding noise there, so each
        // tensor's scale is at least 1e-3 of the model's largest gradient
        let model_scale = want.values().flat_map(|(_, w)| w.iter()).fold(0f32, |m, v| m.max(v.abs()));
        let mut worst = (0f32, String::new());
        for (pname, p) in &params {
            let (shape, w) = &want[pname];
            let g = grads.get(p).unwrap_or_else(|| panic!("{name}: no gradient for {pname}")).to_vec();
            assert_eq!(p.dims(), shape.as_slice(), "{pname}");
            // f32 sums in another order: 1e-4 of the tensor's largest gradient
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3 * model_scale);
            let err = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            assert!(err < 1e-4, "{name} {pname}: gradient {err:e} of its scale from PyTorch's");
            if err > worst.0 {
                worst = (err, pname.clone());
            }
        }
        eprintln!("{name}: loss {want_loss}, worst gradient {:.2e} of its scale ({})", worst.0, worst.1);
        if name != "unet_d" {
            continue;
        }
        let hyper = AdamWHyper { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-5, weight_decay: 0.01 };
        let mut opt = AdamW::new(params.iter().map(|(_, p)| p.clone()).collect(), hyper).unwrap();
        opt.step(&grads).unwrap();
        let after = st::read(&golden(&format!("training_step/{name}/weights_after_adamw.safetensors"))).unwrap();
        for (pname, p) in named_params(&model) {
            // the first step moves each weight by ~lr·sign(g): a gradient within rounding of 0 may flip it
            let got = p.to_vec();
            let flipped = got.iter().zip(&after[&pname].1).filter(|(a, b)| (*a - *b).abs() > 1e-6 + 1e-5 * b.abs()).count();
            assert!(flipped * 1000 <= got.len().max(1000), "{name} {pname}: {flipped} of {} weights differ after AdamW", got.len());
        }
    }
}

/// DDPMScheduler with a learned variance ("learned_range" over 10 leading
/// steps and 7 trailing, "learned" over 25 trailing) and with "fixed_small"
/// over 7 linspace steps, model-free: each update replayed from the recorded
/// x_t, model output (ε̂, then the variance output where it is learned) and
/// noise — the mean by our step, the noise by the σ our sampler gives each
/// element. At 7 linspace or trailing steps the timesteps are not T/n apart:
/// each update goes to the next timestep visited, as DDPMScheduler's.
#[test]
fn strided_ddpm_with_learned_variances_and_uneven_spacings_matches_diffusers() {
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden("index.json")).unwrap()).unwrap();
    for (dir, want_variance, steps, spacing) in [
        ("sampling/ddpm_learned_range_10", DdpmVariance::LearnedRange, 10, Spacing::Leading),
        ("sampling/ddpm_learned_25_trailing", DdpmVariance::Learned, 25, Spacing::Trailing),
        ("sampling/ddpm_learned_range_trailing_7", DdpmVariance::LearnedRange, 7, Spacing::Trailing),
        ("sampling/ddpm_linspace_7", DdpmVariance::Posterior, 7, Spacing::Linspace),
    ] {
        let key = dir.trim_start_matches("sampling/");
        let config: model_dir::SchedulerConfig = serde_json::from_value(index["sampling"][key]["scheduler_config"].clone()).unwrap();
        assert_eq!(config.ddpm_variance().unwrap(), want_variance, "{dir}: variance_type read from the config");
        let s = config.schedule().unwrap();
        let opts = SamplerOptions { kind: SamplerKind::DdpmStrided { steps, spacing }, ddpm_variance: want_variance, ..Default::default() };
        let plan = sampler::plan(&s, &opts).unwrap();
        let sigmas = sampler::learned_sigmas(&s, &opts, &plan);
        let (_, ts) = load(&format!("{dir}/timesteps.npy"));
        assert_eq!(ts.iter().map(|&t| t as usize).collect::<Vec<_>>(), plan.iter().map(|(t, _)| *t).collect::<Vec<_>>(), "{dir}");
        if steps == 7 {
            let gaps: Vec<usize> = plan.windows(2).map(|w| w[0].0 - w[1].0).collect();
            assert!(gaps.iter().any(|&g| g != 1000 / 7), "{dir}: uneven gaps {gaps:?}");
        }
        let (out_shape, outputs) = load(&format!("{dir}/model_output.npy"));
        let (x_shape, mut x) = load(&format!("{dir}/x_T.npy"));
        let (_, noise) = load(&format!("{dir}/variance_noise.npy"));
        let (_, prev) = load(&format!("{dir}/prev_sample.npy"));
        let (_, x0s) = load(&format!("{dir}/pred_original_sample.npy"));
        let (per, per_out) = (x.len(), out_shape[1..].iter().product::<usize>());
        let mut noisy_steps = 0;
        for (k, &(t, coefs)) in plan.iter().enumerate() {
            let at = |v: &[f32], n: usize| v[k * n..(k + 1) * n].to_vec();
            let xt = Tensor::from_vec(x.clone(), x_shape.clone()).unwrap();
            let output = Tensor::from_vec(at(&outputs, per_out), out_shape[1..].to_vec()).unwrap();
            let (eps, var) = sampler::split_output(output, &xt).unwrap();
            assert_eq!(var.is_some(), want_variance.is_learned(), "{dir}: a variance half exactly where it is learned");
            let (mean, x0) = step(&xt, &eps, StepCoefs { sigma: 0.0, ..coefs }, 0, 0, 0, true).unwrap();
            let sigma_of = |i: usize| match (sigmas[k], &var) {
                (Some(ls), Some(v)) => coefs.sigma * ls.scale(v.to_vec()[i]),
                _ => coefs.sigma,
            };
            let z = at(&noise, per);
            let next: Vec<f32> = mean.to_vec().iter().enumerate().map(|(i, m)| m + sigma_of(i) * z[i]).collect();
            noisy_steps += usize::from(coefs.sigma > 0.0);
            assert_eq!(coefs.sigma > 0.0, t > 0, "{dir}: noise exactly where t > 0");
            // 1e-4 of each step's scale: at t = 0 the synthetic ε̂ is ~26 and diffusers'
            // f32 ᾱ_0 makes its √(1−ᾱ_0) 8e-5 (relative) off the f64 value we use
            let close = |what: &str, got: &[f32], want: &[f32]| {
                let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                assert_close(&format!("{dir} {what} step {k} (t={t})"), got, want, 1e-4 * scale, 1e-4);
            };
            close("x0", &x0.unwrap().to_vec(), &at(&x0s, per));
            close("x_prev", &next, &at(&prev, per));
            x = at(&prev, per);
        }
        // trailing spacing ends at a t > 0: noise on every step; leading and linspace end at t = 0
        assert_eq!(noisy_steps, if spacing == Spacing::Trailing { steps } else { steps - 1 }, "{dir}");
    }
}

/// diffusers' DDPMScheduler after `set_timesteps(10)` (unet_a, fixed_small):
/// our strided DDPM visits the same timesteps, and each update, replayed from
/// the recorded x_t, ε̂ and noise, gives its x̂0 and next sample.
#[test]
fn strided_ddpm_steps_match_diffusers() {
    let s = Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.01 }, 1000).unwrap();
    let opts = SamplerOptions {
        kind: SamplerKind::DdpmStrided { steps: 10, spacing: Spacing::Leading },
        ddpm_variance: DdpmVariance::Posterior,
        ..Default::default()
    };
    let plan = sampler::plan(&s, &opts).unwrap();
    let coefs = |t: usize| plan.iter().find(|(u, _)| *u == t).expect("a planned timestep").1;
    let ts = replay("sampling/ddpm_10", "sampling/x_T.npy", coefs);
    assert_eq!(ts, plan.iter().map(|(t, _)| *t).collect::<Vec<_>>());
    // every step of the strided plan at stride 1 is the plain DDPM update
    let all = sampler::plan(&s, &SamplerOptions { kind: SamplerKind::DdpmStrided { steps: 1000, spacing: Spacing::Leading }, ..Default::default() }).unwrap();
    let plain = sampler::plan(&s, &SamplerOptions { kind: SamplerKind::Ddpm, ..Default::default() }).unwrap();
    for ((t, a), (t2, b)) in all.iter().zip(&plain) {
        assert_eq!(t, t2);
        for (u, v) in [(a.c_x0, b.c_x0), (a.c_xt, b.c_xt), (a.sigma, b.sigma), (a.eps_scale, b.eps_scale)] {
            assert!((u - v).abs() <= 1e-6 * v.abs().max(1e-3), "t={t}: {u} vs {v}");
        }
    }
}

/// diffusers' `_threshold_sample` on its own (ratio 0.9, sample_max_value 2):
/// one sample whose |x̂0| quantile is below 1 (plain clip at 1), one between 1
/// and 2 (scaled by its quantile), one above 2 (clamped at 2).
#[test]
fn dynamic_thresholding_matches_diffusers() {
    use minidiffusion::diffusion::sampler::Thresholding;
    let (shape, mut x) = load("sampling/ddim_threshold/threshold_in.npy");
    let (_, want) = load("sampling/ddim_threshold/threshold_out.npy");
    Thresholding { ratio: 0.9, max: 2.0 }.apply(&mut x, shape[0]);
    assert_close("thresholded x0", &x, &want, 1e-6, 1e-6);
    // the three regimes are all there
    let per = x.len() / 3;
    let peaks: Vec<f32> = want.chunks(per).map(|c| c.iter().fold(0f32, |m, v| m.max(v.abs()))).collect();
    assert!(peaks[0] < 1.0 && (peaks[1] - 1.0).abs() < 1e-6 && (peaks[2] - 1.0).abs() < 1e-6, "{peaks:?}");
}

/// The score-SDE VE sampler against diffusers' ScoreSdeVeScheduler: the
/// levels of N-step runs (t_i as torch's f32 linspace, σ_i, the discrete
/// levels), and every corrector and predictor update of a model-free run
/// replayed from its recorded input, score and noise.
#[test]
fn score_sde_ve_matches_diffusers() {
    use minidiffusion::diffusion::sde_ve::{self, VeConfig, VePlan};
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(golden("index.json")).unwrap()).unwrap();
    for case in index["sde_ve"]["levels"].as_array().unwrap() {
        let config: VeConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let n = case["num_inference_steps"].as_u64().unwrap() as usize;
        let plan = VePlan::new(&config, n).unwrap();
        let file = |key: &str| load(case[key].as_str().unwrap()).1;
        assert_eq!(plan.timesteps, file("timesteps"), "n {n}: timesteps bit for bit");
        assert_close(&format!("n {n} sigmas"), &plan.sigmas, &file("sigmas"), 0.0, 2e-6);
        assert_close(&format!("n {n} discrete sigmas"), &plan.discrete_sigmas, &file("discrete_sigmas"), 0.0, 2e-6);
    }
    let run = &index["sde_ve"]["run"];
    let config: VeConfig = serde_json::from_value(run["config"].clone()).unwrap();
    let n = run["num_inference_steps"].as_u64().unwrap() as usize;
    let plan = VePlan::new(&config, n).unwrap();
    let file = |key: &str| load(run["files"][key].as_str().unwrap());
    let (shape, x_in) = file("x_in");
    let (score, noise, x_out, mean) = (file("score").1, file("noise").1, file("x_out").1, file("mean").1);
    let per: usize = shape[1..].iter().product();
    let at = |v: &[f32], k: usize| Tensor::from_vec(v[k * per..(k + 1) * per].to_vec(), shape[1..].to_vec()).unwrap();
    let updates = shape[0];
    assert_eq!(updates, n * (config.correct_steps + 1));
    for k in 0..updates {
        let (i, corrector) = (k / (config.correct_steps + 1), k % (config.correct_steps + 1) < config.correct_steps);
        let (x, s, z) = (at(&x_in, k), at(&score, k), at(&noise, k));
        let want = at(&x_out, k).to_vec();
        // the updates' inputs reach ~50 (σ_max): 1e-5 of that scale
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        if corrector {
            let got = sde_ve::correct(&x, &s, &z, config.snr).unwrap();
            assert_close(&format!("corrector update {k} (step {i})"), &got.to_vec(), &want, 1e-5 * scale, 1e-5);
        } else {
            let (got, got_mean) = sde_ve::predict(&x, &s, &z, plan.predictor_g(i)).unwrap();
            assert_close(&format!("predictor update {k} (step {i})"), &got.to_vec(), &want, 1e-5 * scale, 1e-5);
            assert_close(&format!("predictor mean {k} (step {i})"), &got_mean.to_vec(), &at(&mean, k).to_vec(), 1e-5 * scale, 1e-5);
        }
    }
}
