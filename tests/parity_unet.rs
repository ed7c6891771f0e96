//! Whole-model parity on the CUDA device (a GPU when there is one, else the CPU
//! emulation of CUDA): the diffusers golden UNets' ε̂ computed on the device,
//! and training steps on the device against the same steps on the CPU.

use minidiffusion::data::{Split, embedded_fashion_mnist};
use minidiffusion::io::{model_dir, npy};
use minidiffusion::testing::{assert_close, parity_device};
use minidiffusion::train::{Learner, TrainConfig};
use minidiffusion::{Device, Tensor, no_grad};
use std::path::{Path, PathBuf};

fn golden(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(rel)
}

fn load(rel: &str) -> (Vec<usize>, Vec<f32>) {
    npy::read(&golden(rel)).unwrap_or_else(|e| panic!("{e}"))
}

/// Largest |a − b| / (1e-5 + max |b|).
fn scaled_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-5;
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The CPU emulation runs each CUDA thread as an OS thread: minutes per
/// forward pass, so it checks a subset; a GPU checks everything.
fn on_gpu(device: Device) -> bool {
    matches!(device, Device::Cuda(c) if !c.emulated)
}

#[test]
fn golden_unets_on_the_device_match_diffusers() {
    let device = parity_device();
    let all: [(&str, &[&str]); 3] =
        [("unet_a", &["t0", "mixed_1_999"]), ("unet_b", &["t500", "mixed_500_0"]), ("unet_c", &["t999", "mixed_1_999"])];
    let models = if on_gpu(device) { &all[..] } else { &all[2..] };
    for &(name, cases) in models {
        let cases = if on_gpu(device) { cases } else { &cases[1..] };
        let (model, _) = model_dir::load(&golden(name), device).unwrap();
        let (xs, xv) = load(&format!("{name}/forward/x.npy"));
        let x = Tensor::from_vec_on(xv, xs, device).unwrap();
        for case in cases {
            let (ts, tv) = load(&format!("{name}/forward/t_{case}.npy"));
            let t = Tensor::from_vec_on(tv, ts, device).unwrap();
            let (_, want) = load(&format!("{name}/forward/eps_{case}.npy"));
            let got = no_grad(|| model.forward(&x, &t)).unwrap();
            assert_eq!(got.device(), device);
            let got = got.to_vec();
            eprintln!("{name} {case} on {device}: scaled error {:.2e}", scaled_error(&got, &want));
            // f32 with other summation orders (tiled GEMM, split-K, FMA): as the CPU's bar
            assert_close(&format!("{name} eps {case} on {device}"), &got, &want, 1e-5, 1e-4);
        }
    }
}

fn learner(device: Device, batch_size: usize) -> Learner {
    let (model, _) = model_dir::load(&golden("unet_a"), device).unwrap();
    let config = TrainConfig {
        max_steps: Some(20),
        seed: 3,
        eval_images: Some(batch_size),
        ..TrainConfig::lesson("unet_a", model.config.clone(), batch_size, 1e-2)
    };
    let train = embedded_fashion_mnist(Split::Train).unwrap().take(64);
    let test = embedded_fashion_mnist(Split::Test).unwrap().take(16);
    Learner::new(config, model, train, test, device).unwrap()
}

#[test]
fn training_steps_on_the_device_follow_the_cpu() {
    // same data, Philox noise and timesteps on both: only rounding differs
    let device = parity_device();
    // the emulation: one step (forward, backward, AdamW) and the eval, ~3 min in CI
    let (steps, b) = if on_gpu(device) { (4, 8) } else { (1, 2) };
    let (mut cpu, mut dev) = (learner(Device::Cpu, b), learner(device, b));
    for step in 0..steps {
        let batch: Vec<usize> = (step * b..step * b + b).collect();
        let (lc, ld) = (cpu.train_step(&batch).unwrap(), dev.train_step(&batch).unwrap());
        eprintln!("step {step}: loss cpu {lc:.7} {device} {ld:.7}");
        assert_close(&format!("loss at step {step} on {device}"), &[ld], &[lc], 1e-6, 1e-4);
    }
    // AdamW's first steps move every weight by about lr, whatever the gradient's
    // size: rounding in a near-zero gradient can flip a step, so compare the
    // weights loosely and the model's output (the eval loss) tightly
    let (ec, ed) = (cpu.eval_loss().unwrap(), dev.eval_loss().unwrap());
    eprintln!("eval loss cpu {ec:.7} {device} {ed:.7}");
    assert_close(&format!("eval loss after {steps} steps on {device}"), &[ed], &[ec], 1e-6, 1e-3);
    for (pc, pd) in cpu.opt.params().iter().zip(dev.opt.params()) {
        assert_eq!(pd.device(), device);
        assert_close(&format!("weights after {steps} steps on {device}"), &pd.to_vec(), &pc.to_vec(), 1e-4, 1e-2);
    }
}
