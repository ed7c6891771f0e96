//! The fused diffusion ops (no gradients): noisify for training, and one
//! sampler step for DDPM and DDIM, with Philox noise so CPU and CUDA draw the
//! same numbers for the same (seed, offset).
//!
//!   noisify:  x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε,  ε ~ N(0, I), t per sample
//!   step:     x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t  (optionally clipped)
//!             x_prev = c_x0·x̂0 + c_xt·x_t + c_eps·ε̂ + σ·z
//!   threshold: x̂0's dynamic thresholding, per sample

pub mod cpu;
pub mod cuda;

pub use cpu::{LearnedSigma, StepCoefs};

use crate::device::Device;
use crate::error::{Error, Result, shape_err};
use crate::tensor::{Storage, Tensor, cpu_f32_storage};

/// (x_t, ε) for a batch x0 [B, ...] at per-sample timesteps with ᾱ values `abar` (len B).
/// Noise element i is normal number `start + i` of the Philox stream (seed, offset).
pub fn noisify(x0: &Tensor, abar: &[f64], seed: u64, offset: u64, start: u64) -> Result<(Tensor, Tensor)> {
    let _nvtx = crate::device::nvtx::range("diffusion_noisify");
    let batch = x0.dims().first().copied().unwrap_or(0);
    if abar.len() != batch || batch == 0 {
        return shape_err("noisify", format!("{} ᾱ values for a batch of shape {}", abar.len(), x0.shape()));
    }
    let a: Vec<f32> = abar.iter().map(|v| v.sqrt() as f32).collect();
    let b: Vec<f32> = abar.iter().map(|v| (1.0 - v).sqrt() as f32).collect();
    let per_sample = x0.numel() / batch;
    let (xt, eps) = match x0.device() {
        Device::Cpu => {
            let (xt, eps) = cpu::noisify(x0.storage().cpu_f32("noisify")?, &a, &b, per_sample, seed, offset, start);
            (cpu_f32_storage(xt), cpu_f32_storage(eps))
        }
        Device::Cuda(_) => {
            let (xt, eps) = cuda::noisify(x0.storage().cuda("noisify")?, &a, &b, per_sample, seed, offset, start)?;
            (Storage::Cuda(xt), Storage::Cuda(eps))
        }
    };
    Ok((Tensor::from_storage(xt, x0.shape().clone()), Tensor::from_storage(eps, x0.shape().clone())))
}

/// Dynamic thresholding of x̂0 [B, ...] (diffusers' `thresholding=True`), per
/// sample: s = the `ratio` quantile of |x̂0| (torch.quantile's linear
/// interpolation), clamped to [1, max]; clamp(x̂0, −s, s)/s. On CUDA one block
/// a sample finds the two ranked values by radix selection: no host copy.
pub fn threshold(x0: &Tensor, ratio: f32, max: f32) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("diffusion_threshold");
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::Argument { op: "thresholding", msg: format!("the quantile ratio must lie in [0, 1], got {ratio}") });
    }
    let batch = x0.dims().first().copied().unwrap_or(0);
    let per = if batch == 0 { 0 } else { x0.numel() / batch };
    let storage = match x0.device() {
        Device::Cpu => {
            let mut values = x0.storage().cpu_f32("thresholding")?.to_vec();
            cpu::threshold(&mut values, per, ratio, max);
            cpu_f32_storage(values)
        }
        Device::Cuda(_) => Storage::Cuda(cuda::threshold(x0.storage().cuda("thresholding")?, per, ratio, max)?),
    };
    Ok(Tensor::from_storage(storage, x0.shape().clone()))
}

/// One sampler update: (x_prev, x̂0 if `want_x0`).
/// z element i is normal number `start + i` of the Philox stream (seed, offset).
pub fn step(xt: &Tensor, eps: &Tensor, k: StepCoefs, seed: u64, offset: u64, start: u64, want_x0: bool) -> Result<(Tensor, Option<Tensor>)> {
    step_with(xt, eps, k, None, seed, offset, start, want_x0)
}

/// [`step`] whose noise level is per element, from the model's variance
/// output `var` (shape of x_t): σ_i = k.sigma·s_i with s_i as `ls` says
/// (k.sigma is 1 where the step adds noise, 0 where it does not).
#[allow(clippy::too_many_arguments)]
pub fn step_learned(xt: &Tensor, eps: &Tensor, var: &Tensor, ls: LearnedSigma, k: StepCoefs, seed: u64, offset: u64, start: u64, want_x0: bool) -> Result<(Tensor, Option<Tensor>)> {
    if var.shape() != xt.shape() {
        return shape_err("sampler step", format!("x_t {} and the variance output {} differ", xt.shape(), var.shape()));
    }
    step_with(xt, eps, k, Some((var, ls)), seed, offset, start, want_x0)
}

#[allow(clippy::too_many_arguments)]
fn step_with(
    xt: &Tensor,
    eps: &Tensor,
    k: StepCoefs,
    learned: Option<(&Tensor, LearnedSigma)>,
    seed: u64,
    offset: u64,
    start: u64,
    want_x0: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let _nvtx = crate::device::nvtx::range("diffusion_step");
    if xt.shape() != eps.shape() {
        return shape_err("sampler step", format!("x_t {} and ε̂ {} differ", xt.shape(), eps.shape()));
    }
    let mut all = vec![xt, eps];
    all.extend(learned.map(|(v, _)| v));
    let device = Tensor::common_device("sampler step", &all)?;
    let var_storage = learned.map(|(v, _)| v.storage());
    let (prev, x0) = match device {
        Device::Cpu => {
            let (sx, se) = (xt.storage(), eps.storage());
            let var = match (&var_storage, learned) {
                (Some(s), Some((_, ls))) => Some((s.cpu_f32("step")?, ls)),
                _ => None,
            };
            let (p, x0) = cpu::step(sx.cpu_f32("step")?, se.cpu_f32("step")?, k, var, seed, offset, start, want_x0);
            (cpu_f32_storage(p), x0.map(cpu_f32_storage))
        }
        Device::Cuda(_) => {
            let (sx, se) = (xt.storage(), eps.storage());
            let var = match (&var_storage, learned) {
                (Some(s), Some((_, ls))) => Some((s.cuda("step")?, ls)),
                _ => None,
            };
            let (p, x0) = cuda::step(sx.cuda("step")?, se.cuda("step")?, k, var, seed, offset, start, want_x0)?;
            (Storage::Cuda(p), x0.map(Storage::Cuda))
        }
    };
    let shape = xt.shape().clone();
    Ok((Tensor::from_storage(prev, shape.clone()), x0.map(|s| Tensor::from_storage(s, shape))))
}

/// One sampler step's values as the CUDA kernels read them from device
/// memory (mirrors `StepParams` in kernels/diffusion.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    pub coefs: StepCoefs,
    /// The timestep the model is called with.
    pub t: f32,
    pub seed: u64,
    pub offset: u64,
    pub start: u64,
    /// Device address for x̂0, or 0.
    pub x0_out: u64,
}

/// A sampler step whose values live on the device: `set` writes them (one
/// launch), `apply` updates x in place reading them. Work captured once in a
/// CUDA graph — the model on `timesteps()`, then `apply` — is thus replayed
/// for every step with that step's values. CUDA only.
pub struct DeviceStep {
    params: crate::device::cuda::CudaBuffer,
    timesteps: Tensor,
}

impl DeviceStep {
    /// For a batch of `batch` samples on the CUDA device `device`.
    pub fn new(device: Device, batch: usize) -> Result<DeviceStep> {
        let Device::Cuda(d) = device else {
            return Err(Error::WrongDevice { op: "DeviceStep", expected: "cuda", got: device });
        };
        let backend = crate::device::cuda::backend(d)?;
        Ok(DeviceStep { params: cuda::params_buffer(&backend)?, timesteps: Tensor::zeros_on([batch], device)? })
    }

    /// The timesteps [batch] the model is called with (set by `set`).
    pub fn timesteps(&self) -> &Tensor {
        &self.timesteps
    }

    /// This step's values: timestep t, coefficients, noise stream
    /// (seed, offset) from element `start`, and where x̂0 goes (a tensor the
    /// size of x on this device, or none).
    pub fn set(&self, t: usize, coefs: StepCoefs, seed: u64, offset: u64, start: u64, x0_out: Option<&Tensor>) -> Result<()> {
        if let Some(x0) = x0_out {
            x0.written_in_place();
        }
        self.timesteps.written_in_place();
        let x0_storage = x0_out.map(|x| x.storage());
        let x0_ptr = match &x0_storage {
            Some(s) => s.cuda("sampler step x̂0")?.ptr(),
            None => 0,
        };
        let value = StepParams { coefs, t: t as f32, seed, offset, start, x0_out: x0_ptr };
        cuda::set_step(&self.params, self.timesteps.storage().cuda("sampler step")?, &value)
    }

    /// x ← x_prev in place with ε̂ and the values set last.
    pub fn apply(&self, x: &Tensor, eps: &Tensor) -> Result<()> {
        let _nvtx = crate::device::nvtx::range("diffusion_step");
        if x.shape() != eps.shape() {
            return shape_err("sampler step", format!("x_t {} and ε̂ {} differ", x.shape(), eps.shape()));
        }
        x.written_in_place();
        let (sx, se) = (x.storage(), eps.storage());
        cuda::step_in_place(sx.cuda("sampler step")?, se.cuda("sampler step")?, &self.params)
    }
}
