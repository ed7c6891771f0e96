//! Test helpers shared by the op tests and the CPU↔CUDA parity tests.
//! Adding an op's gradient check is one call:
//!
//! ```ignore
//! grad_check("silu", &[&[2, 3, 4]], |x| ops::silu(&x[0]), GradTol::default());
//! ```

use crate::autograd::{backward, no_grad};
use crate::ops;
use crate::rng::PhiloxStream;
use crate::tensor::{Shape, Tensor};

/// Finite-difference settings: central differences with step `h`; an entry
/// passes when |numeric − analytic| ≤ atol + rtol·|numeric|.
#[derive(Clone, Copy, Debug)]
pub struct GradTol {
    pub h: f64,
    pub atol: f64,
    pub rtol: f64,
}

impl Default for GradTol {
    /// f32 forward passes, loss summed in f64: h = 1e-3 keeps truncation error
    /// near 1e-6 and round-off near 1e-4 for losses of order 10.
    fn default() -> Self {
        GradTol { h: 1e-3, atol: 2e-3, rtol: 1e-2 }
    }
}

/// Standard-normal test data of `shape` from the Philox stream `seed`.
pub fn randn(shape: &[usize], seed: u64) -> Vec<f32> {
    let mut v = vec![0.0; shape.iter().product()];
    PhiloxStream::new(seed, 0).fill_normal(0, &mut v);
    v
}

/// Gradient check of `f` at random normal inputs of the given shapes.
pub fn grad_check(name: &str, shapes: &[&[usize]], f: impl Fn(&[Tensor]) -> crate::Result<Tensor>, tol: GradTol) {
    let values: Vec<(Vec<f32>, Shape)> =
        shapes.iter().enumerate().map(|(i, s)| (randn(s, 1000 + i as u64), Shape::from(*s))).collect();
    grad_check_at(name, values, f, tol);
}

/// Gradient check of `f` at the given input values: compares the tape's
/// gradients of L = Σ f(x)·R (R fixed random weights) with central differences.
/// Panics with the worst entry when a check fails.
pub fn grad_check_at(
    name: &str,
    inputs: Vec<(Vec<f32>, Shape)>,
    f: impl Fn(&[Tensor]) -> crate::Result<Tensor>,
    tol: GradTol,
) {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|(v, s)| Tensor::from_vec(v.clone(), s.clone()).expect("input shape").requires_grad_())
        .collect();
    let out = f(&leaves).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let weights = randn(out.dims(), 7);
    let weights_t = Tensor::from_vec(weights.clone(), out.shape().clone()).unwrap();
    let loss = ops::sum_all(&ops::mul(&out, &weights_t).unwrap()).unwrap();
    let grads = backward(&loss).unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));

    let weighted_loss = |xs: &[Tensor]| -> f64 {
        let y = no_grad(|| f(xs)).unwrap().to_vec();
        y.iter().zip(&weights).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    for (i, (values, shape)) in inputs.iter().enumerate() {
        let analytic = grads.get(&leaves[i]).map(|g| g.to_vec()).unwrap_or_else(|| vec![0.0; values.len()]);
        assert_eq!(analytic.len(), values.len(), "{name}: gradient {i} has the wrong size");
        let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f64);
        for j in 0..values.len() {
            let numeric = {
                let eval_at = |delta: f64| {
                    let mut v = values.clone();
                    v[j] = (v[j] as f64 + delta) as f32;
                    let actual_delta = v[j] as f64 - values[j] as f64;
                    let xs: Vec<Tensor> = inputs
                        .iter()
                        .enumerate()
                        .map(|(k, (w, s))| Tensor::from_vec(if k == i { v.clone() } else { w.clone() }, s.clone()).unwrap())
                        .collect();
                    (weighted_loss(&xs), actual_delta)
                };
                let (plus, dp) = eval_at(tol.h);
                let (minus, dm) = eval_at(-tol.h);
                (plus - minus) / (dp - dm)
            };
            let a = analytic[j] as f64;
            let excess = (numeric - a).abs() - (tol.atol + tol.rtol * numeric.abs());
            if excess > worst.0 {
                worst = (excess, j, numeric, a);
            }
        }
        assert!(
            worst.0 <= 0.0,
            "{name}: gradient of input {i} (shape {shape}) wrong at entry {}: numeric {} vs analytic {} (atol {}, rtol {})",
            worst.1,
            worst.2,
            worst.3,
            tol.atol,
            tol.rtol
        );
    }
}

/// Panics unless |got − want| ≤ atol + rtol·|want| everywhere.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: {} values, expected {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs() && g.is_finite() == w.is_finite(),
            "{name}: entry {i}: got {g}, expected {w} (atol {atol}, rtol {rtol})"
        );
    }
}

/// The CUDA device parity tests compare against the CPU twin: the first GPU
/// when there is one, else the CPU emulation of CUDA (the same kernels and
/// launches, run by kernels/emu). With `MINIDIFFUSION_REQUIRE_GPU=1` a missing
/// GPU is a failure instead.
pub fn parity_device() -> crate::Device {
    use crate::device::{CudaDevice, Device, cuda};
    if cuda::gpu_count() > 0 {
        return Device::Cuda(CudaDevice { ordinal: 0, emulated: false });
    }
    if std::env::var("MINIDIFFUSION_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("MINIDIFFUSION_REQUIRE_GPU=1 but there is no CUDA device");
    }
    static NOTICE: std::sync::Once = std::sync::Once::new();
    NOTICE.call_once(|| eprintln!("parity: no GPU (SKIPPED on hardware); running the CUDA kernels on the CPU emulation"));
    Device::Cuda(CudaDevice { ordinal: 0, emulated: true })
}

/// The kernels `f` launches on [`parity_device`], one name per kernel (its
/// profile): for the tests that check which kernels a shape takes.
pub fn kernels_launched(f: impl FnOnce()) -> Vec<&'static str> {
    kernel_calls(f).into_iter().map(|(kernel, _)| kernel).collect()
}

/// [`kernels_launched`] with each kernel's launch count. The device has one
/// profiler: a test process's calls take turns.
pub fn kernel_calls(f: impl FnOnce()) -> Vec<(&'static str, usize)> {
    static PROFILER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let crate::Device::Cuda(d) = parity_device() else { unreachable!("parity_device is CUDA") };
    let backend = crate::device::cuda::backend(d).expect("the parity device");
    backend.start_profiling();
    f();
    backend.stop_profiling().expect("a profile").into_iter().map(|r| (r.kernel, r.calls)).collect()
}

/// Tolerance of a CUDA↔CPU comparison: |cuda − cpu| ≤ atol + rtol·|cpu|.
#[derive(Clone, Copy, Debug)]
pub struct ParityTol {
    pub atol: f32,
    pub rtol: f32,
}

impl ParityTol {
    /// Elementwise kernels with the same formula: a few ulp.
    pub const EXACTISH: ParityTol = ParityTol { atol: 1e-6, rtol: 1e-5 };
    /// Reductions and products summed in another order.
    pub const REDUCTION: ParityTol = ParityTol { atol: 1e-5, rtol: 1e-4 };
    /// Products on the tensor cores at f32 accuracy (3xTF32, kernels/mma.cuh):
    /// each mma rounds its sum towards zero, so long sums drift by a few ulp of
    /// the output's scale (measured on an H100: 6e-5 at K = 603, scale ~10;
    /// 1.05e-4 at K = 1152, scale ~34, past this bar: cases keep K × scale
    /// near the first). The emulator rounds the same way (kernels/emu).
    pub const TENSOR_CORE: ParityTol = ParityTol { atol: 1e-4, rtol: 1e-4 };
    /// Products of bf16 operands on the tensor cores against the CPU twin on
    /// the same rounded operands: the products are exact, but the mma's f32
    /// sum truncates like TF32's and there is one accumulator (3xTF32 keeps
    /// the small products apart). Over K ≈ 600 at scale ~25 (the parity
    /// shapes) that can reach ~6e-5 at worst, so twice TENSOR_CORE's bar; a
    /// wrong rounding mode or a skipped rounding errs by ≥ 1e-2 there.
    pub const BF16_TENSOR_CORE: ParityTol = ParityTol { atol: 2e-4, rtol: 2e-4 };
}

/// Runs `f` on the CPU and on [`parity_device`] with the same inputs (random
/// normal values of the given shapes), and compares the outputs and the
/// gradients of L = Σ f(x)·R for every input.
pub fn parity_check(name: &str, shapes: &[&[usize]], f: impl Fn(&[Tensor]) -> crate::Result<Tensor>, tol: ParityTol) {
    let values: Vec<(Vec<f32>, Shape)> =
        shapes.iter().enumerate().map(|(i, s)| (randn(s, 2000 + i as u64), Shape::from(*s))).collect();
    parity_check_at(name, values, f, tol);
}

/// [`parity_check`] at the given input values.
pub fn parity_check_at(name: &str, inputs: Vec<(Vec<f32>, Shape)>, f: impl Fn(&[Tensor]) -> crate::Result<Tensor>, tol: ParityTol) {
    let device = parity_device();
    let run = |device: crate::Device| -> (Vec<f32>, Vec<Vec<f32>>) {
        let leaves: Vec<Tensor> = inputs
            .iter()
            .map(|(v, s)| Tensor::from_vec_on(v.clone(), s.clone(), device).expect("upload").detach().requires_grad_())
            .collect();
        let out = f(&leaves).unwrap_or_else(|e| panic!("{name} on {device}: forward failed: {e}"));
        assert_eq!(out.device(), device, "{name}: output on the wrong device");
        let weights = Tensor::from_vec_on(randn(out.dims(), 11), out.shape().clone(), device).unwrap();
        let loss = ops::sum_all(&ops::mul(&out, &weights).unwrap()).unwrap();
        let grads = backward(&loss).unwrap_or_else(|e| panic!("{name} on {device}: backward failed: {e}"));
        let grad_values = leaves
            .iter()
            .map(|l| grads.get(l).map(|g| g.to_vec()).unwrap_or_else(|| vec![0.0; l.numel()]))
            .collect();
        (out.to_vec(), grad_values)
    };
    let (cpu_out, cpu_grads) = run(crate::Device::Cpu);
    let (dev_out, dev_grads) = run(device);
    assert_close(&format!("{name} forward ({device} vs cpu)"), &dev_out, &cpu_out, tol.atol, tol.rtol);
    for (i, (d, c)) in dev_grads.iter().zip(&cpu_grads).enumerate() {
        assert_close(&format!("{name} gradient of input {i} ({device} vs cpu)"), d, c, tol.atol, tol.rtol);
    }
}

/// FID benchmark features [n, dim] (`cargo bench --bench fid`, `bench fid`):
/// GeneralRelu-like, leaky(z·diag(s)·W) − 0.4 with z normal, s falling from
/// 3 to 0.01 and W normal / √dim, so the covariances have a decaying spectrum
/// and the Newton–Schulz square root does real iterations.
pub fn fid_features(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let scale: Vec<f32> = (0..dim).map(|j| 3.0 - 2.99 * j as f32 / (dim.max(2) - 1) as f32).collect();
    let z: Vec<f32> = randn(&[n, dim], seed).iter().enumerate().map(|(e, v)| v * scale[e % dim]).collect();
    let w: Vec<f32> = randn(&[dim, dim], 99).iter().map(|v| v / (dim as f32).sqrt()).collect();
    let h = ops::matmul(&Tensor::from_vec(z, [n, dim]).expect("shape"), &Tensor::from_vec(w, [dim, dim]).expect("shape")).expect("matmul");
    h.to_vec().iter().map(|&v| if v > 0.0 { v } else { 0.1 * v } - 0.4).collect()
}

/// Write the first `n_train` / `n_test` images of the embedded Fashion-MNIST
/// sample into `dir` as raw IDX files (a small real dataset for end-to-end tests).
pub fn write_idx_sample(dir: &std::path::Path, n_train: usize, n_test: usize) -> crate::Result<()> {
    use crate::data::{Split, embedded_fashion_mnist};
    let io = |e: std::io::Error| crate::Error::Io { path: dir.display().to_string(), source: e };
    std::fs::create_dir_all(dir).map_err(io)?;
    for (split, prefix, n) in [(Split::Train, "train", n_train), (Split::Test, "t10k", n_test)] {
        let ds = embedded_fashion_mnist(split)?.take(n);
        let n = ds.len() as u32;
        let mut images: Vec<u8> = [0x0803u32, n, 28, 28].iter().flat_map(|v| v.to_be_bytes()).collect();
        images.extend_from_slice(&ds.images);
        let mut labels: Vec<u8> = [0x0801u32, n].iter().flat_map(|v| v.to_be_bytes()).collect();
        labels.extend_from_slice(&ds.labels);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).map_err(io)?;
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).map_err(io)?;
    }
    Ok(())
}
