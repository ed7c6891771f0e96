//! The fid and eval commands with the shipped classifier
//! (models/fashion_classifier): a set against itself, features given
//! directly, images as .npy and PNG folders, bad input, and eval of a model
//! with the real-data floor and the x̂0 curve.

use minidiffusion::io::npy;
use std::path::{Path, PathBuf};
use std::process::Command;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minidiffusion-fid-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn classifier() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fashion_classifier")
}

/// Runs with the shipped classifier, its caches in a temporary copy.
fn run(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_minidiffusion"))
        .args(args)
        .current_dir(cwd)
        .env("MINIDIFFUSION_RUNS", cwd.join("runs.db"))
        .output()
        .expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A copy of the shipped classifier (so caches land in a temporary folder).
fn classifier_copy(dir: &Path) -> PathBuf {
    let c = dir.join("classifier");
    std::fs::create_dir_all(&c).unwrap();
    for f in ["classifier.json", "classifier.safetensors"] {
        std::fs::copy(classifier().join(f), c.join(f)).unwrap();
    }
    c
}

#[test]
fn features_against_themselves_and_shifted() {
    let dir = temp_dir("features");
    // 300 random 16-d feature rows, another 300 of the same distribution, and the first shifted by 1
    let v = minidiffusion::testing::randn(&[300, 16], 5);
    npy::write(&dir.join("a.npy"), &[300, 16], &v).unwrap();
    npy::write(&dir.join("a2.npy"), &[300, 16], &minidiffusion::testing::randn(&[300, 16], 6)).unwrap();
    npy::write(&dir.join("b.npy"), &[300, 16], &v.iter().map(|x| x + 1.0).collect::<Vec<_>>()).unwrap();
    let c = classifier_copy(&dir);
    let (code, stdout, stderr) = run(&["fid", "a.npy", "a.npy", "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()], &dir);
    assert_eq!(code, 0, "{stderr}");
    let j = json(&stdout);
    assert!(j["fid"].as_f64().unwrap().abs() < 1e-6, "{j}");
    // KID of two samples of one distribution ≈ 0 (unbiased: either sign), of shifted sets clearly positive
    let (code, stdout, stderr) = run(&["fid", "a.npy", "a2.npy", "--kid", "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()], &dir);
    assert_eq!(code, 0, "{stderr}");
    let same = json(&stdout)["kid"].as_f64().unwrap();
    let (_, stdout, _) = run(&["fid", "a.npy", "b.npy", "--kid", "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()], &dir);
    let shifted = json(&stdout)["kid"].as_f64().unwrap();
    assert!(same.abs() < 0.1 && shifted > 10.0 * same.abs().max(0.01), "same {same}, shifted {shifted}");
    assert_eq!((j["n_a"].as_u64(), j["feature_dim"].as_u64()), (Some(300), Some(16)));
    assert!(stderr.contains("biased upward"), "{stderr}");
    // a mean shift of 1 in 16 dims adds 16 to the FID
    let (code, stdout, _) = run(&["fid", "a.npy", "b.npy", "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()], &dir);
    assert_eq!(code, 0);
    assert!((json(&stdout)["fid"].as_f64().unwrap() - 16.0).abs() < 1e-6);
}

#[test]
fn real_images_score_near_the_floor_and_noise_scores_far() {
    let dir = temp_dir("images");
    let c = classifier_copy(&dir);
    // 200 real test images as a .npy and as a PNG folder, and 200 noise images
    let (code, stdout, stderr) =
        run(&["fid", "fashion-mnist:train:200", "fashion-mnist:test", "--kid", "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()], &dir);
    assert_eq!(code, 0, "{stderr}");
    let real = json(&stdout)["fid"].as_f64().unwrap();
    let cached = |c: &std::path::Path| -> usize {
        std::fs::read_dir(c.join("cache")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("fashion-mnist-test-")).count()
    };
    assert_eq!(cached(&c), 1, "the reference features are cached");
    // the same run again reads that cache; a classifier with other weights gets its own
    let (code, stdout, _) = run(&["fid", "fashion-mnist:train:200", "fashion-mnist:test", "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()], &dir);
    assert_eq!((code, json(&stdout)["fid"].as_f64().unwrap()), (0, real), "from the cache: the same FID");
    assert_eq!(cached(&c), 1);
    let weights = c.join("classifier.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // the last weight's top byte: other weights
    std::fs::write(&weights, &bytes).unwrap();
    let (code, stdout, stderr) = run(&["fid", "fashion-mnist:train:200", "fashion-mnist:test", "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()], &dir);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(cached(&c), 2, "a changed classifier does not read the other's cached features");
    assert!(json(&stdout)["fid"].as_f64().unwrap().is_finite()); // (that byte is the head's, which features skip: same FID)
    bytes[last] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();
    let noise: Vec<f32> = minidiffusion::testing::randn(&[200, 1, 32, 32], 9).iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    npy::write(&dir.join("noise.npy"), &[200, 1, 32, 32], &noise).unwrap();
    let (code, stdout, stderr) = run(&["fid", "noise.npy", "fashion-mnist:test", "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()], &dir);
    assert_eq!(code, 0, "{stderr}");
    let far = json(&stdout)["fid"].as_f64().unwrap();
    assert!(far > 5.0 * real, "noise FID {far} vs real {real}");
    // the same noise as PNG files gives nearly the same FID (8-bit quantisation)
    let pngs = dir.join("pngs");
    std::fs::create_dir_all(&pngs).unwrap();
    for i in 0..200 {
        let pixels: Vec<u8> = noise[i * 1024..(i + 1) * 1024].iter().map(|v| ((v + 1.0) * 127.5).round() as u8).collect();
        image::GrayImage::from_raw(32, 32, pixels).unwrap().save(pngs.join(format!("{i:04}.png"))).unwrap();
    }
    let (code, stdout, stderr) = run(&["fid", "pngs", "fashion-mnist:test", "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()], &dir);
    assert_eq!(code, 0, "{stderr}");
    let from_png = json(&stdout)["fid"].as_f64().unwrap();
    assert!((from_png - far).abs() < 0.05 * far, "{from_png} vs {far}");
}

#[test]
fn bad_inputs_are_clear() {
    let dir = temp_dir("bad");
    let c = classifier_copy(&dir);
    let cls = c.to_str().unwrap();
    for (args, needle) in [
        (vec!["fid", "missing.npy", "fashion-mnist:test", "--classifier", cls], "missing.npy"),
        (vec!["fid", "fashion-mnist:valid", "fashion-mnist:test", "--classifier", cls], "fashion-mnist:valid"),
        (vec!["fid", "fashion-mnist:test", "fashion-mnist:test", "--classifier", "/nonexistent/cls"], "/nonexistent/cls"),
    ] {
        let mut a = args.clone();
        a.extend(["--device", "cpu"]);
        let (code, _, stderr) = run(&a, &dir);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(needle) && !stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn eval_reports_fid_kid_floor_and_the_x0_curve() {
    let dir = temp_dir("eval");
    let c = classifier_copy(&dir);
    // a micro UNet trained for a few steps on the embedded sample
    std::fs::write(
        dir.join("micro.json"),
        r#"{"in_channels": 1, "out_channels": 1, "sample_size": 32, "block_out_channels": [8, 16],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8}"#,
    )
    .unwrap();
    let (code, _, stderr) = run(
        &["train", "--config", "micro.json", "--max-steps", "4", "--batch-size", "8", "--eval-images", "8", "--grid-steps", "0", "--device", "cpu", "--out", "model"],
        &dir,
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(
        &["eval", "--model", "model", "-n", "64", "--steps", "6", "--x0-curve", "--x0-every", "2", "--out", "curve", "--json", "--device", "cpu",
          "--classifier", c.to_str().unwrap()],
        &dir,
    );
    assert_eq!(code, 0, "{stderr}");
    let j = json(&stdout);
    let (fid, floor) = (j["fid"].as_f64().unwrap(), j["floor_fid"].as_f64().unwrap());
    assert!(fid.is_finite() && floor.is_finite() && fid > floor, "{j}");
    assert!(j["kid"].as_f64().unwrap().is_finite() && j["floor_kid"].as_f64().unwrap().is_finite());
    let curve = j["x0_curve"].as_array().unwrap();
    assert_eq!(curve.iter().map(|p| p["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 4, 6]);
    assert!(dir.join("curve/x0_curve.json").is_file() && dir.join("curve/x0_curve.png").is_file());
    // strided DDPM: the curve follows its 6 updates (it was sized by the 1000 training timesteps)
    let (code, stdout, stderr) = run(
        &["eval", "--model", "model", "-n", "16", "--sampler", "ddpm", "--steps", "6", "--x0-curve", "--x0-every", "2", "--out", "curve_ddpm",
          "--json", "--device", "cpu", "--classifier", c.to_str().unwrap()],
        &dir,
    );
    assert_eq!(code, 0, "{stderr}");
    let curve = json(&stdout)["x0_curve"].as_array().unwrap().clone();
    assert_eq!(curve.iter().map(|p| p["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 4, 6]);
}

#[test]
fn training_can_record_fid_and_kid_each_epoch() {
    let dir = temp_dir("epochfid");
    let c = classifier_copy(&dir);
    std::fs::write(
        dir.join("micro.json"),
        r#"{"in_channels": 1, "out_channels": 1, "sample_size": 32, "block_out_channels": [8, 16],
            "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
            "layers_per_block": 1, "norm_num_groups": 4}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_minidiffusion"))
        .args(["train", "--config", "micro.json", "--max-steps", "2", "--batch-size", "8", "--eval-images", "8", "--grid-steps", "0"])
        .args(["--epoch-fid", "32", "--device", "cpu", "--out", "model", "--runs-db", "runs.db"])
        .current_dir(&dir)
        .env("MINIDIFFUSION_CLASSIFIER", &c)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, stdout, stderr) = run(&["runs", "show", "1", "--json", "--runs-db", "runs.db"], &dir);
    assert_eq!(code, 0, "{stderr}");
    let j = json(&stdout);
    for key in ["fid", "kid"] {
        let points = j["metrics"][key].as_array().unwrap_or_else(|| panic!("no {key} in {j}"));
        assert_eq!(points.len(), 1);
        assert!(points[0][1].as_f64().unwrap().is_finite());
    }
}

/// train-classifier end to end on the repository's sample data (a few steps):
/// it saves a classifier that `fid` reads, reports its test accuracy as JSON,
/// and refuses zero epochs with one line and exit code 2.
#[test]
fn train_classifier_saves_a_classifier_fid_can_use() {
    let dir = temp_dir("train-classifier");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-sample");
    let out = dir.join("cls");
    let args = ["train-classifier", "--data", data.to_str().unwrap(), "--epochs", "1", "--batch-size", "64", "--limit", "128"];
    let (code, stdout, stderr) = run(&[&args[..], &["--device", "cpu", "--out", out.to_str().unwrap(), "--json"]].concat(), &dir);
    assert_eq!(code, 0, "{stderr}");
    let j = json(&stdout);
    let acc = j["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{stdout}");
    assert_eq!((j["epochs"].as_u64(), j["train_images"].as_u64()), (Some(1), Some(128)));
    assert!(out.join("classifier.json").is_file() && out.join("classifier.safetensors").is_file());
    let (code, stdout, stderr) = run(&["fid", "fashion-mnist:train:100", "fashion-mnist:train:100", "--json", "--device", "cpu", "--classifier", out.to_str().unwrap()], &dir);
    assert_eq!(code, 0, "{stderr}");
    assert!(json(&stdout)["fid"].as_f64().unwrap().abs() < 1e-6, "a set against itself: {stdout}");
    let zero = ["train-classifier", "--data", data.to_str().unwrap(), "--epochs", "0", "--device", "cpu", "--out", out.to_str().unwrap()];
    let (code, _, stderr) = run(&zero, &dir);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("--epochs"), "{stderr}");
}
