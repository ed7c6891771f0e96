//! The binary: help, version, and clear errors (exit code 2, no panic) on bad input.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_minidiffusion")).args(args).output().expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn help_and_version() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Usage: minidiffusion") && stdout.contains("info"), "{stdout}");
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("minidiffusion {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn device_cuda_without_gpu_is_one_line_and_exit_2() {
    if minidiffusion::device::cuda::gpu_count() > 0 {
        eprintln!("SKIPPED (a GPU is present)");
        return;
    }
    let (code, stdout, stderr) = run(&["bench", "kernels", "--device", "cuda", "--iters", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: --device cuda: "), "{stderr}");
    let (code, _, stderr) = run(&["bench", "kernels", "--device", "tpu"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("'tpu' is not one of auto, cpu, cuda, cuda:N"), "{stderr}");
}

#[test]
fn bench_kernels_runs_on_cpu() {
    // (--warmup 0: each launch once, as under ncu)
    let (code, stdout, stderr) = run(&["bench", "kernels", "--device", "cpu", "--batch-size", "1", "--warmup", "0", "--iters", "1", "--only", "add", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"kernel\":\"add\"") && stdout.contains("\"device\":\"cpu\""), "{stdout}");
    assert!(stdout.contains("\"shape\":\"1x32x32x32\"") && stdout.contains("\"precision\":\"f32\""), "{stdout}");
    // at bf16 it also times the conv reading a bf16-stored input
    let args = ["bench", "kernels", "--device", "cpu", "--batch-size", "1", "--iters", "1", "--only", "xbf16", "--precision", "bf16", "--json"];
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.matches("\"kernel\":\"conv2d_forward_xbf16\"").count(), 7, "{stdout}");
}

#[test]
fn bench_fid_runs_on_cpu_and_rejects_bad_sizes() {
    let (code, stdout, stderr) = run(&["bench", "fid", "--device", "cpu", "--n-real", "300", "--n-fake", "200", "--dim", "64", "--iters", "1", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(v["fid_ms"].as_f64().unwrap() > 0.0 && v["fid"].as_f64().unwrap() > 0.0, "{stdout}");
    assert_eq!(v["n_real"], 300);
    let (code, _, stderr) = run(&["bench", "fid", "--device", "cpu", "--n-fake", "1"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--n-real and --n-fake must be at least 2"), "{stderr}");
}

#[test]
fn info_lists_cpu() {
    let (code, stdout, _) = run(&["info", "--json"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("\"devices\":[\"cpu\"") && stdout.contains("\"cpu_threads\":"), "{stdout}");
}

#[test]
fn unknown_subcommand_and_flag_are_clear_errors() {
    for (args, names) in [(&["frobnicate"][..], "frobnicate"), (&["info", "--bogus"][..], "--bogus")] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("error:") && first.contains(names), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // no subcommand: usage on stderr, exit 2
    let (code, _, stderr) = run(&[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("Usage: minidiffusion"), "{stderr}");
}

#[test]
fn cuda_graph_flag_is_on_or_off() {
    let (code, stdout, stderr) = run(&["bench", "sample", "--config", "tiny", "--device", "cpu", "--cuda-graph", "maybe", "-n", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--cuda-graph: 'maybe' is neither on nor off"), "{stderr}");
    // on the CPU the flag is accepted and no graph is used
    let (code, stdout, stderr) =
        run(&["bench", "sample", "--config", "tiny", "--device", "cpu", "--steps", "3", "-n", "1", "--batch-size", "1", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["cuda_graph"], false, "{stdout}");
}

#[test]
fn ddpm_with_steps_runs_that_many_model_calls() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/unet_a");
    let out = std::env::temp_dir().join(format!("minidiffusion-cli-ddpm-{}.png", std::process::id()));
    let (code, stdout, stderr) = run(&["sample", "--model", model, "--sampler", "ddpm", "--steps", "10", "-n", "2", "--device", "cpu", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(10 per sample)"), "{stdout}");
    let (code, _, stderr) = run(&["sample", "--model", model, "--sampler", "ddpm", "--steps", "1001", "--device", "cpu", "--out", out.to_str().unwrap()]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("--steps: 1001 must be between 1 and the 1000 training timesteps"), "{stderr}");
    let _ = std::fs::remove_file(out);
}

/// Class labels for a model without class conditioning, and a Fourier (σ)
/// model the DDPM/DDIM samplers cannot drive: one line each, exit 2.
#[test]
fn sample_refuses_labels_it_cannot_use_and_fourier_models() {
    let golden = |name: &str| format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("minidiffusion-cli-labels-{}.png", std::process::id()));
    let (code, _, stderr) =
        run(&["sample", "--model", &golden("unet_a"), "-n", "1", "--steps", "2", "--device", "cpu", "--class-labels", "1", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--class-labels") && stderr.contains("not class-conditional"), "{stderr}");
    let (code, _, stderr) = run(&["sample", "--model", &golden("unet_h"), "-n", "1", "--steps", "2", "--device", "cpu", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("time_embedding_type fourier") && stderr.lines().count() == 1, "{stderr}");
    let (code, _, stderr) = run(&["sample", "--model", &golden("unet_g"), "-n", "1", "--steps", "2", "--device", "cpu", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("out_channels 1 is neither in_channels 2 nor twice it"), "{stderr}");
    assert!(!out.exists(), "nothing written on refusal");
}

/// A model with twice its input's output channels (ε̂, then a variance:
/// diffusers' learned variance) samples with DDPM's "learned_range" from its
/// scheduler config and with DDIM (the ε̂ half); a learned variance for a
/// model without that half, and "fixed_large_log" (NaN in diffusers), are
/// refused in one line, exit 2.
#[test]
fn learned_variance_models_sample_and_what_cannot_is_refused() {
    use minidiffusion::diffusion::Schedule;
    use minidiffusion::io::{model_dir, npy};
    use minidiffusion::nn::unet::{UNet2DConfig, UNet2DModel};
    let tmp = std::env::temp_dir().join(format!("minidiffusion-cli-learned-{}", std::process::id()));
    let model_path = tmp.join("model");
    let config = UNet2DConfig { out_channels: 2, ..UNet2DConfig::tiny_preset() };
    let model = UNet2DModel::new(config, 0, minidiffusion::Device::Cpu).unwrap();
    let mut scheduler = model_dir::SchedulerConfig::from_schedule(&Schedule::lesson_default());
    scheduler.variance_type = Some("learned_range".into());
    model_dir::save(&model_path, &model, &scheduler).unwrap();
    let (png, samples) = (tmp.join("s.png"), tmp.join("s.npy"));
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    for sampler in ["ddpm", "ddim"] {
        let args = ["sample", "--model", &path(&model_path), "--sampler", sampler, "--steps", "5", "-n", "2", "--device", "cpu"];
        let (code, _, stderr) = run(&[&args[..], &["--out", &path(&png), "--npy", &path(&samples)]].concat());
        assert_eq!(code, 0, "{sampler}: {stderr}");
        let (dims, values) = npy::read(&samples).unwrap();
        assert_eq!(dims, vec![2, 1, 32, 32], "{sampler}");
        assert!(values.iter().all(|v| v.is_finite()), "{sampler}");
    }
    let unet_a = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/unet_a");
    let (code, _, stderr) =
        run(&["sample", "--model", unet_a, "--sampler", "ddpm", "--ddpm-variance", "learned_range", "-n", "1", "--device", "cpu", "--out", &path(&png)]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("needs out_channels twice in_channels 1, not 1"), "{stderr}");
    scheduler.variance_type = Some("fixed_large_log".into());
    model_dir::save(&model_path, &model, &scheduler).unwrap();
    let (code, _, stderr) = run(&["sample", "--model", &path(&model_path), "--sampler", "ddpm", "-n", "1", "--device", "cpu", "--out", &path(&png)]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("scheduler_config.json") && stderr.contains("variance_type fixed_large_log"), "{stderr}");
    let _ = std::fs::remove_dir_all(tmp);
}

/// A score-SDE model (Fourier σ embedding) with a ScoreSdeVeScheduler config
/// samples with the predictor–corrector by default, images in [0, 1]; DDIM is
/// refused for it in one line, and sde-ve for a DDPM/DDIM model.
#[test]
fn score_sde_ve_models_sample_with_their_sampler() {
    use minidiffusion::diffusion::Schedule;
    use minidiffusion::io::{model_dir, npy};
    use minidiffusion::nn::unet::{UNet2DConfig, UNet2DModel};
    let tmp = std::env::temp_dir().join(format!("minidiffusion-cli-ve-{}", std::process::id()));
    let model_path = tmp.join("model");
    let config = UNet2DConfig { time_embedding_type: "fourier".into(), flip_sin_to_cos: true, ..UNet2DConfig::tiny_preset() };
    let model = UNet2DModel::new(config, 0, minidiffusion::Device::Cpu).unwrap();
    model_dir::save(&model_path, &model, &model_dir::SchedulerConfig::from_schedule(&Schedule::lesson_default())).unwrap();
    let ve = r#"{"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000, "snr": 0.15, "sigma_min": 0.01, "sigma_max": 50.0, "sampling_eps": 1e-5, "correct_steps": 1}"#;
    std::fs::write(model_path.join("scheduler_config.json"), ve).unwrap();
    let (png, samples) = (tmp.join("s.png"), tmp.join("s.npy"));
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (code, stdout, stderr) = run(&["sample", "--model", &path(&model_path), "--steps", "4", "-n", "2", "--device", "cpu", "--out", &path(&png), "--npy", &path(&samples)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(8 per sample)"), "4 steps × (1 corrector + 1 predictor) model calls: {stdout}");
    let (dims, values) = npy::read(&samples).unwrap();
    assert_eq!(dims, vec![2, 1, 32, 32]);
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)), "the pipeline's images are clamped to [0, 1]");
    let (code, _, stderr) = run(&["sample", "--model", &path(&model_path), "--sampler", "ddim", "-n", "1", "--device", "cpu", "--out", &path(&png)]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("--sampler ddim") && stderr.contains("ScoreSdeVeScheduler"), "{stderr}");
    std::fs::write(model_path.join("scheduler_config.json"), ve.replace("50.0", "0.001")).unwrap();
    let (code, _, stderr) = run(&["sample", "--model", &path(&model_path), "-n", "1", "--device", "cpu", "--out", &path(&png)]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("scheduler_config.json") && stderr.contains("sigma_max 0.001: must exceed sigma_min"), "{stderr}");
    let unet_a = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/unet_a");
    let (code, _, stderr) = run(&["sample", "--model", unet_a, "--sampler", "sde-ve", "-n", "1", "--device", "cpu", "--out", &path(&png)]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("not a ScoreSdeVeScheduler config"), "{stderr}");
    let _ = std::fs::remove_dir_all(tmp);
}
