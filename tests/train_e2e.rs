//! End to end on the CPU with a micro UNet on a slice of the embedded
//! Fashion-MNIST sample: the loss falls, a checkpoint reloads and gives the
//! same samples for the same seed, a resumed run ends bit-identical to an
//! uninterrupted one, and bad input is one clear line with exit code 2.

use minidiffusion::data::Split;
use minidiffusion::io::{npy, safetensors};
use minidiffusion::nn::unet::UNet2DModel;
use minidiffusion::train::callbacks::Checkpoint;
use minidiffusion::train::{Callback, EpochReport, Learner, checkpoint};
use minidiffusion::{Device, Error};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minidiffusion-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n_train` / `n_test` images of the embedded sample as IDX files in a new directory.
fn small_dataset(name: &str, n_train: usize, n_test: usize) -> PathBuf {
    let dir = temp_dir(name);
    minidiffusion::testing::write_idx_sample(&dir, n_train, n_test).unwrap();
    dir
}

/// A UNet small enough for CI: two levels, attention at 16×16 and in the middle.
fn micro_config(dir: &Path) -> PathBuf {
    let path = dir.join("micro.json");
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        r#"{{"in_channels": 1, "out_channels": 1, "sample_size": 32, "block_out_channels": [8, 16],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8}}"#
    )
    .unwrap();
    path
}

fn run(args: &[&str]) -> (i32, String, String) {
    // runs are recorded in a store of this test process, not the checkout's runs/
    let store = std::env::temp_dir().join(format!("minidiffusion-e2e-runs-{}.db", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_minidiffusion"))
        .args(args)
        .env("MINIDIFFUSION_RUNS", store)
        .output()
        .expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn json_field(line: &str, key: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[test]
fn training_lowers_the_loss_and_the_checkpoint_samples_reproducibly() {
    let data = small_dataset("learn", 256, 64);
    let work = temp_dir("learn-out");
    let config = micro_config(&work);
    let out = work.join("model");
    let (code, stdout, stderr) = run(&[
        "train", "--data", data.to_str().unwrap(), "--config", config.to_str().unwrap(), "--epochs", "3",
        "--batch-size", "16", "--lr", "3e-3", "--device", "cpu", "--out", out.to_str().unwrap(), "--json", "--grid-steps", "5",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let last = stdout.lines().last().unwrap();
    let (first, fin) = (json_field(last, "first_loss"), json_field(last, "final_loss"));
    assert_eq!(json_field(last, "steps"), 48.0);
    assert!(json_field(last, "images_per_s") > 0.0);
    // ε-prediction starts near 1 (zeroed output conv) and must fall well below
    assert!(fin < 0.6 * first, "loss did not fall: first {first}, final {fin}\n{stderr}");
    assert!(stderr.contains("epoch 3: train loss"), "{stderr}");
    for f in ["config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "optimizer.safetensors", "minidiffusion.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // same seed → identical samples; another seed → different
    let sample = |seed: &str, name: &str| {
        let npy_path = work.join(name);
        let (code, stdout, stderr) = run(&[
            "sample", "--model", out.to_str().unwrap(), "-n", "3", "--steps", "5", "--seed", seed, "--device", "cpu",
            "--out", work.join(format!("{name}.png")).to_str().unwrap(), "--npy", npy_path.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("samples/s") && stdout.contains("model evaluations/s"), "{stdout}");
        npy::read(&npy_path).unwrap()
    };
    let (a, b, c) = (sample("7", "a.npy"), sample("7", "b.npy"), sample("8", "c.npy"));
    assert_eq!(a.0, vec![3, 1, 32, 32]);
    assert_eq!(a, b);
    assert_ne!(a.1, c.1);
    assert!(a.1.iter().all(|v| v.is_finite()));
}

/// Fails the run after `epochs` epochs, as a crash would.
struct StopAfter(usize);
impl Callback for StopAfter {
    fn after_epoch(&mut self, _l: &Learner, r: &EpochReport) -> minidiffusion::Result<()> {
        if r.epoch >= self.0 { Err(Error::Argument { op: "test", msg: "simulated crash".into() }) } else { Ok(()) }
    }
}

#[test]
fn resume_continues_to_the_same_result() {
    let data = small_dataset("resume", 64, 16);
    let work = temp_dir("resume-out");
    let config = micro_config(&work);
    let full = work.join("full");
    let args = |out: &Path| -> Vec<String> {
        ["train", "--data", data.to_str().unwrap(), "--config", config.to_str().unwrap(), "--epochs", "3", "--batch-size", "16", "--device", "cpu", "--out", out.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let a = args(&full);
    let (code, _, stderr) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stderr}");

    // the same run, crashed after epoch 1 (its checkpoint saved), then resumed by the CLI
    let state = checkpoint::read_state(&full).unwrap();
    let part = work.join("part");
    let train = minidiffusion::data::load_fashion_mnist(&data, Split::Train).unwrap();
    let test = minidiffusion::data::load_fashion_mnist(&data, Split::Test).unwrap();
    let model = UNet2DModel::new(state.train.unet.clone(), state.train.seed, Device::Cpu).unwrap();
    let mut learner = Learner::new(state.train.clone(), model, train, test, Device::Cpu).unwrap();
    let (mut saver, mut stop) = (Checkpoint::new(part.clone()), StopAfter(1));
    assert!(learner.fit(&mut [&mut saver, &mut stop]).is_err());
    assert_eq!(checkpoint::read_state(&part).unwrap().step, 4);
    let mut b = args(&part);
    b.push("--resume".into());
    let (code, _, stderr) = run(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("resuming") && stderr.contains("step 4/12"), "{stderr}");

    let weights = |d: &Path| safetensors::read(&d.join("diffusion_pytorch_model.safetensors")).unwrap();
    let (wa, wb) = (weights(&full), weights(&part));
    assert_eq!(wa.len(), wb.len());
    for (name, (shape, values)) in &wa {
        assert_eq!(&wb[name].0, shape);
        assert_eq!(&wb[name].1, values, "{name} differs after resume");
    }
    assert_eq!(checkpoint::read_state(&part).unwrap().step, 12);
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let (code, _, stderr) = run(&["train", "--data", "/nonexistent/fmnist", "--device", "cpu", "--max-steps", "1"]);
    assert_eq!(code, 2);
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/fmnist: no such directory"), "{stderr}");
    assert!(!stderr.contains("panicked"));

    let data = temp_dir("badmagic");
    std::fs::write(data.join("train-images-idx3-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    std::fs::write(data.join("train-labels-idx1-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 0]).unwrap();
    let (code, _, stderr) = run(&["train", "--data", data.to_str().unwrap(), "--device", "cpu", "--max-steps", "1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("train-images-idx3-ubyte: wrong magic number"), "{stderr}");

    let (code, _, stderr) = run(&["sample", "--model", "/nonexistent/model", "--device", "cpu"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/model: no such model directory"), "{stderr}");

    let (code, _, stderr) = run(&["train", "--config", "/nonexistent.json", "--device", "cpu"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent.json: cannot read"), "{stderr}");

    let (code, _, stderr) = run(&["train", "--timesteps", "gaussian", "--device", "cpu", "--max-steps", "1"]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("--timesteps: 'gaussian' is neither uniform nor triangular"), "{stderr}");

    // a dropout that is no probability
    let work = temp_dir("dropout");
    let with_dropout = work.join("dropout.json");
    let config = std::fs::read_to_string(micro_config(&work)).unwrap().replace("\"layers_per_block\"", "\"dropout\": 1.0, \"layers_per_block\"");
    std::fs::write(&with_dropout, config).unwrap();
    let (code, _, stderr) = run(&["train", "--config", with_dropout.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!((code, stderr.lines().count()), (2, 1), "{stderr}");
    assert!(stderr.contains("dropout.json: dropout 1 is not supported (a probability in [0, 1))"), "{stderr}");

    let (code, _, stderr) = run(&["sample", "--model", "/tmp", "--sampler", "dpm", "--device", "cpu"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("config.json"), "{stderr}");
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_checkpoint() {
    let data = small_dataset("nan", 64, 16);
    let work = temp_dir("nan-out");
    let config = micro_config(&work);
    let out = work.join("model");
    let (code, _, stderr) = run(&[
        "train", "--data", data.to_str().unwrap(), "--config", config.to_str().unwrap(), "--epochs", "4", "--batch-size", "16",
        "--lr", "1e30", "--device", "cpu", "--out", out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("the loss is") && stderr.contains("last checkpoint"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // whatever checkpoint exists is from before the divergence: all finite
    let weights = out.join("diffusion_pytorch_model.safetensors");
    if weights.is_file() {
        assert!(safetensors::read(&weights).unwrap().values().all(|(_, v)| v.iter().all(|x| x.is_finite())));
    }
}

#[test]
fn cifar10_trains_with_three_channels() {
    // 40 training records and 8 test records of structured 3×32×32 images
    let data = temp_dir("cifar");
    let record = |i: usize| {
        let mut r = vec![(i % 10) as u8];
        r.extend((0..3072).map(|p| ((p % 32) * 8 + i) as u8));
        r
    };
    std::fs::write(data.join("data_batch_1.bin"), (0..40).flat_map(record).collect::<Vec<u8>>()).unwrap();
    std::fs::write(data.join("test_batch.bin"), (40..48).flat_map(record).collect::<Vec<u8>>()).unwrap();
    let out = temp_dir("cifar-out").join("model");
    let (code, stdout, stderr) = run(&[
        "train", "--dataset", "cifar10", "--data", data.to_str().unwrap(), "--config", "tiny", "--max-steps", "3",
        "--batch-size", "8", "--device", "cpu", "--out", out.to_str().unwrap(), "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json_field(stdout.lines().last().unwrap(), "steps"), 3.0);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["in_channels"].as_u64(), config["out_channels"].as_u64()), (Some(3), Some(3)));
    let npy_path = out.join("s.npy");
    let (code, _, stderr) = run(&[
        "sample", "--model", out.to_str().unwrap(), "-n", "2", "--steps", "2", "--device", "cpu",
        "--out", out.join("s.png").to_str().unwrap(), "--npy", npy_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(npy::read(&npy_path).unwrap().0, vec![2, 3, 32, 32]);
    // --dataset cifar10 without --data is refused clearly
    let (code, _, stderr) = run(&["train", "--dataset", "cifar10", "--device", "cpu"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--dataset cifar10 needs --data DIR"), "{stderr}");
}

/// `--clip-grad-norm`: a bad value is one line naming the flag; a run saves
/// it with its state and says so; a resumed run takes a new one.
#[test]
fn gradient_clipping_is_checked_recorded_and_resumable() {
    let data = small_dataset("clip", 32, 16);
    let work = temp_dir("clip-out");
    let config = micro_config(&work);
    let out = work.join("model");
    let base = ["train", "--data", data.to_str().unwrap(), "--config", config.to_str().unwrap(), "--batch-size", "16", "--device", "cpu"];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    for bad in ["0", "-1", "nan"] {
        let flag = format!("--clip-grad-norm={bad}");
        let args = with(&[&flag, "--out", out.to_str().unwrap()]);
        let (code, _, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
        assert!(stderr.contains("--clip-grad-norm") && stderr.contains("positive"), "{stderr}");
    }
    assert!(!out.exists(), "a refused run writes nothing");
    let args = with(&["--epochs", "1", "--clip-grad-norm", "0.5", "--out", out.to_str().unwrap(), "--grid-steps", "0"]);
    let (code, _, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("gradients clipped to norm 0.5"), "{stderr}");
    assert_eq!(checkpoint::read_state(&out).unwrap().train.clip_grad_norm, Some(0.5));
    let args = with(&["--epochs", "2", "--clip-grad-norm", "2", "--out", out.to_str().unwrap(), "--resume", "--grid-steps", "0"]);
    let (code, _, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(checkpoint::read_state(&out).unwrap().train.clip_grad_norm, Some(2.0));
}

#[test]
fn bf16_training_is_recorded_and_resume_keeps_it() {
    let data = small_dataset("bf16", 32, 16);
    let work = temp_dir("bf16-out");
    let config = micro_config(&work);
    let out = work.join("model");
    let base = ["train", "--data", data.to_str().unwrap(), "--config", config.to_str().unwrap(), "--batch-size", "16", "--device", "cpu"];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let args = with(&["--epochs", "1", "--precision", "bf16", "--out", out.to_str().unwrap(), "--grid-steps", "0"]);
    let (code, _, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("bf16 products"), "{stderr}");
    let state = checkpoint::read_state(&out).unwrap();
    assert_eq!(state.train.precision, minidiffusion::ops::Precision::Bf16);

    // resuming at another precision is refused in one line, the checkpoint untouched
    let before = std::fs::read(out.join("diffusion_pytorch_model.safetensors")).unwrap();
    let args = with(&["--epochs", "2", "--precision", "f32", "--out", out.to_str().unwrap(), "--resume"]);
    let (code, _, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
    assert!(stderr.contains("--precision f32") && stderr.contains("trained at bf16"), "{stderr}");
    assert_eq!(std::fs::read(out.join("diffusion_pytorch_model.safetensors")).unwrap(), before);

    // an unknown precision names the flag
    let (code, _, stderr) = run(&["sample", "--model", out.to_str().unwrap(), "--precision", "f16", "--device", "cpu"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--precision") && stderr.contains("expected f32 or bf16"), "{stderr}");
}

/// `fit` queues each step before reading the previous step's loss: the
/// losses, learning rates and weights equal those of steps taken one at a
/// time, and each batch is reported in order with its own step, epoch, lr.
#[test]
fn queued_steps_equal_steps_taken_one_at_a_time() {
    use minidiffusion::data::embedded_fashion_mnist;
    use minidiffusion::nn::unet::UNet2DConfig;
    use minidiffusion::train::{BatchReport, TrainConfig};
    let (steps, batch) = (5, 4);
    let learner = || {
        let unet = UNet2DConfig::tiny_preset();
        let config = TrainConfig { max_steps: Some(steps), eval_images: Some(8), ..TrainConfig::lesson("tiny", unet.clone(), batch, 1e-2) };
        let model = UNet2DModel::new(unet, 1, Device::Cpu).unwrap();
        let train = embedded_fashion_mnist(Split::Train).unwrap().take(steps * batch);
        let test = embedded_fashion_mnist(Split::Test).unwrap().take(8);
        Learner::new(config, model, train, test, Device::Cpu).unwrap()
    };
    let batches: Vec<Vec<usize>> = (0..steps).map(|s| (s * batch..(s + 1) * batch).rev().collect()).collect();
    let mut one_by_one = learner();
    let mut expected = Vec::new();
    for b in &batches {
        let report = one_by_one.queue_step(b).unwrap().finish().unwrap();
        let BatchReport { loss, grad_norm, grad_scale, .. } = report;
        assert!(grad_norm > 0.0 && grad_scale == 1.0, "{report:?}");
        expected.push(BatchReport { step: one_by_one.step, epoch: 1, images: batch, lr: one_by_one.lr, loss, grad_norm, grad_scale });
    }
    let mut queued = learner();
    let mut reports = Vec::new();
    queued
        .run_steps(batches.iter().map(Vec::as_slice), |l, r| {
            assert_eq!(l.step, (r.step + 1).min(steps), "the next step is queued before a loss is read");
            reports.push(r);
            Ok(())
        })
        .unwrap();
    assert_eq!(reports, expected);
    assert_eq!(reports.iter().map(|r| r.step).collect::<Vec<_>>(), (1..=steps).collect::<Vec<_>>());
    assert!(reports[0].lr < reports[2].lr, "one-cycle warms up");
    for (a, b) in one_by_one.opt.params().iter().zip(queued.opt.params()) {
        assert_eq!(a.to_vec(), b.to_vec());
    }
    // a callback's error stops the loop at that batch
    let mut stopped = learner();
    let mut seen = 0;
    let err = stopped
        .run_steps(batches.iter().map(Vec::as_slice), |_, r| {
            seen += 1;
            if r.step == 2 { Err(Error::Argument { op: "test", msg: "stop".into() }) } else { Ok(()) }
        })
        .unwrap_err();
    assert!(err.to_string().contains("stop") && seen == 2, "{err}");
}

/// A class-conditional UNet (num_class_embeds 10) trains on the data's labels
/// and samples by label: labels change the samples, no labels means every
/// class in turn, and labels the model cannot take are one line, exit 2.
#[test]
fn class_conditional_training_and_sampling() {
    let data = small_dataset("classes", 64, 32);
    let work = temp_dir("classes-out");
    let write_config = |name: &str, extra: &str| {
        let path = work.join(name);
        std::fs::write(
            &path,
            format!(
                r#"{{"in_channels": 1, "out_channels": 1, "sample_size": 32, "block_out_channels": [8, 16],
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
                "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8, {extra}}}"#
            ),
        )
        .unwrap();
        path
    };
    let config = write_config("classes.json", r#""num_class_embeds": 10"#);
    let out = work.join("model");
    let train = |config: &Path| {
        run(&[
            "train", "--data", data.to_str().unwrap(), "--config", config.to_str().unwrap(), "--max-steps", "6", "--batch-size", "16",
            "--lr", "3e-3", "--device", "cpu", "--out", out.to_str().unwrap(),
        ])
    };
    let (code, _, stderr) = train(&config);
    assert_eq!(code, 0, "{stderr}");
    // the epoch's sample grid is drawn by class too
    assert!(!stderr.contains("warning"), "{stderr}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["num_class_embeds"], 10);
    let sample = |labels: Option<&str>, name: &str| {
        let npy_path = work.join(name);
        let mut args = vec![
            "sample", "--model", out.to_str().unwrap(), "-n", "4", "--steps", "4", "--seed", "3", "--device", "cpu",
            "--out", work.join("grid.png").to_str().unwrap().to_string().leak(), "--npy", npy_path.to_str().unwrap().to_string().leak(),
        ];
        if let Some(l) = labels {
            args.extend(["--class-labels", l]);
        }
        let (code, _, stderr) = run(&args);
        (code, stderr, if code == 0 { npy::read(&npy_path).unwrap().1 } else { vec![] })
    };
    let (code, stderr, two) = sample(Some("2"), "two.npy");
    assert_eq!(code, 0, "{stderr}");
    let (_, _, three) = sample(Some("3"), "three.npy");
    assert_ne!(two, three, "the class label must change the samples");
    // no labels: every class in turn, the same as 0,1,2,3
    let (_, _, default) = sample(None, "default.npy");
    let (_, _, explicit) = sample(Some("0,1,2,3"), "explicit.npy");
    assert_eq!(default, explicit);
    let (code, stderr, _) = sample(Some("10"), "bad.npy");
    assert_eq!(code, 2);
    assert!(stderr.contains("--class-labels") && stderr.contains("label 10 is out of range for 10 classes"), "{stderr}");

    // fewer table rows than the data has classes; a Fourier (σ) model
    for (extra, want) in [
        (r#""num_class_embeds": 5"#, "num_class_embeds 5 is fewer than the data's 10 classes"),
        (r#""time_embedding_type": "fourier""#, "noise levels"),
    ] {
        let (code, _, stderr) = train(&write_config("bad.json", extra));
        assert_eq!(code, 2, "{extra}: {stderr}");
        assert!(stderr.contains(want) && stderr.lines().count() == 1, "{extra}: {stderr}");
    }
}

/// The config's dropout is applied in training (diffusers' ResnetBlock2D:
/// after norm2's activation, before conv2): the losses differ from a run
/// without it, and the masks come from the run's seed, so a rerun repeats them.
#[test]
fn dropout_in_training_is_applied_and_reproducible() {
    let data = small_dataset("dropout-train", 64, 32);
    let work = temp_dir("dropout-train-out");
    let micro = std::fs::read_to_string(micro_config(&work)).unwrap();
    let train = |p: f64, name: &str| {
        let path = work.join(format!("{name}.json"));
        std::fs::write(&path, micro.replace("\"layers_per_block\"", &format!("\"dropout\": {p}, \"layers_per_block\""))).unwrap();
        let (code, stdout, stderr) = run(&[
            "train", "--data", data.to_str().unwrap(), "--config", path.to_str().unwrap(), "--max-steps", "4", "--batch-size", "16",
            "--lr", "3e-3", "--device", "cpu", "--out", work.join(name).to_str().unwrap(), "--json",
        ]);
        assert_eq!(code, 0, "{stderr}");
        json_field(stdout.lines().last().unwrap(), "final_loss")
    };
    let (none, a, b) = (train(0.0, "p0"), train(0.3, "p3a"), train(0.3, "p3b"));
    assert_eq!(a, b, "same seed, same masks");
    assert_ne!(a, none, "dropout must change the training");
}

/// v-prediction on a zero-terminal-SNR schedule: the target is
/// √ᾱ·ε − √(1−ᾱ)·x₀; a run trains, its scheduler_config.json says
/// v_prediction with ᾱ = 0 at the last step (β = 1), and it samples with DDPM
/// (which visits ᾱ = 0) and trailing DDIM; the flags that cannot work are refused.
#[test]
fn v_prediction_on_a_zero_snr_schedule_trains_and_samples() {
    use minidiffusion::diffusion::sampler::Prediction;
    use minidiffusion::train::training_target;
    // the target, against the formula on the host
    let (x0v, epsv) = (minidiffusion::testing::randn(&[2, 1, 3, 3], 1), minidiffusion::testing::randn(&[2, 1, 3, 3], 2));
    let abar = [0.3f64, 0.0];
    let (x0, eps) = (minidiffusion::Tensor::from_vec(x0v.clone(), [2, 1, 3, 3]).unwrap(), minidiffusion::Tensor::from_vec(epsv.clone(), [2, 1, 3, 3]).unwrap());
    let got = training_target(Prediction::V, &x0, eps.clone(), &abar).unwrap().to_vec();
    let want: Vec<f32> = (0..18).map(|i| epsv[i] * (abar[i / 9].sqrt() as f32) - x0v[i] * ((1.0 - abar[i / 9]).sqrt() as f32)).collect();
    assert_eq!(got, want);
    assert_eq!(training_target(Prediction::Sample, &x0, eps.clone(), &abar).unwrap().to_vec(), x0v);
    assert_eq!(training_target(Prediction::Epsilon, &x0, eps, &abar).unwrap().to_vec(), epsv);

    let data = small_dataset("vpred", 64, 32);
    let work = temp_dir("vpred-out");
    let config = micro_config(&work);
    let out = work.join("model");
    let base = ["train", "--data", data.to_str().unwrap(), "--config", config.to_str().unwrap(), "--batch-size", "16", "--device", "cpu"];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend(["--out", out.to_str().unwrap()]);
        a.extend(extra);
        run(&a)
    };
    let (code, _, stderr) = with(&["--max-steps", "4", "--prediction", "v_prediction", "--zero-snr", "--grid-steps", "0"]);
    assert_eq!(code, 0, "{stderr}");
    let sched: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("scheduler_config.json")).unwrap()).unwrap();
    assert_eq!(sched["prediction_type"], "v_prediction");
    assert_eq!(sched["trained_betas"].as_array().unwrap().last().unwrap().as_f64(), Some(1.0));
    for sampler in [&["--sampler", "ddpm"][..], &["--steps", "5", "--timestep-spacing", "trailing"][..]] {
        let npy_path = work.join("s.npy");
        let mut args = vec!["sample", "--model", out.to_str().unwrap(), "-n", "2", "--device", "cpu", "--npy", npy_path.to_str().unwrap()];
        let png = work.join("s.png");
        args.extend(["--out", png.to_str().unwrap()]);
        args.extend(sampler);
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 0, "{sampler:?}: {stderr}");
        assert!(npy::read(&npy_path).unwrap().1.iter().all(|v| v.is_finite()), "{sampler:?}");
    }
    // resuming with another objective, and zero SNR for an ε model: one line, exit 2
    let (code, _, stderr) = with(&["--max-steps", "6", "--resume", "--prediction", "epsilon"]);
    assert!(code == 2 && stderr.contains("--prediction epsilon: the run in") && stderr.lines().count() == 1, "{stderr}");
    let (code, _, stderr) = run(&[&base[..], &["--zero-snr", "--max-steps", "1"]].concat());
    assert!(code == 2 && stderr.contains("--zero-snr: needs --prediction v_prediction or sample") && stderr.lines().count() == 1, "{stderr}");
}
