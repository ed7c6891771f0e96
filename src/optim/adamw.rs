//! AdamW over model parameters: moments per parameter, the update from
//! [`adamw_math::adamw_step`] applied in place outside the tape.

use super::adamw_math::{AdamWHyper, adamw_step};
use crate::autograd::Gradients;
use crate::device::Device;
use crate::error::{Error, Result, shape_err};
use crate::tensor::{HostValues, Tensor};

/// AdamW with decoupled weight decay. As in PyTorch, a parameter without a
/// gradient this step is left alone (no decay, its step count unchanged).
pub struct AdamW {
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    steps: Vec<u64>,
    /// Current hyper-parameters; a schedule sets `lr` and `beta1` before each step.
    pub hyper: AdamWHyper,
    /// Scale the gradients to this global L2 norm when theirs is larger
    /// (PyTorch's `clip_grad_norm_(params, max_norm)` before the step).
    pub max_grad_norm: Option<f32>,
}

/// A step's gradient norm, on its way from the devices: [`GradNorm::wait`]
/// gives (‖g‖, the factor the gradients were scaled by: 1 unclipped).
pub struct GradNorm(Vec<HostValues>);

impl GradNorm {
    pub fn wait(self) -> Result<(f32, f32)> {
        let (mut sumsq, mut factor) = (0.0f64, 1.0f32);
        for part in self.0 {
            let v = part.wait()?;
            (sumsq, factor) = (sumsq + v[1] as f64 * v[1] as f64, factor.min(v[0]));
        }
        Ok((sumsq.sqrt() as f32, factor))
    }
}

/// PyTorch's clip_grad_norm_ factor for a global norm `norm`, in f32 as there
/// and as kernels/optim.cu's `grad_clip_factor` (1 without clipping).
fn clip_factor(norm: f32, max_norm: Option<f32>) -> f32 {
    match max_norm {
        Some(max) if max > 0.0 => {
            let coef = max / (norm + 1e-6);
            if coef < 1.0 { coef } else { 1.0 }
        }
        _ => 1.0,
    }
}

impl AdamW {
    /// Moments start at zero on each parameter's device. A parameter listed
    /// twice is an error (its two updates would land in one launch).
    pub fn new(params: Vec<Tensor>, hyper: AdamWHyper) -> Result<Self> {
        let mut ids: Vec<_> = params.iter().map(Tensor::id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Argument { op: "adamw", msg: "a parameter appears more than once".into() });
        }
        let zeros = |p: &Tensor| Tensor::zeros_on(p.shape().clone(), p.device());
        Ok(AdamW {
            exp_avg: params.iter().map(zeros).collect::<Result<_>>()?,
            exp_avg_sq: params.iter().map(zeros).collect::<Result<_>>()?,
            steps: vec![0; params.len()],
            params,
            hyper,
            max_grad_norm: None,
        })
    }

    /// The defaults of the lesson's training runs: betas (0.9, 0.999), eps 1e-5, weight decay 0.01.
    pub fn lesson_defaults(lr: f32) -> AdamWHyper {
        AdamWHyper { lr, beta1: 0.9, beta2: 0.999, eps: 1e-5, weight_decay: 0.01 }
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// One update of every parameter that has a gradient in `grads` (on
    /// CUDA all of a device's parameters in one launch), the gradients first
    /// scaled down to `max_grad_norm` when set. Returns their global norm.
    pub fn step(&mut self, grads: &Gradients) -> Result<GradNorm> {
        let mut present: Vec<(usize, &Tensor)> = Vec::new();
        for (i, param) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(param) else { continue };
            if grad.shape() != param.shape() {
                return shape_err("adamw", format!("gradient {} for parameter {}", grad.shape(), param.shape()));
            }
            if grad.device() != param.device() {
                return Err(Error::DeviceMismatch { op: "adamw", a: param.device(), b: grad.device() });
            }
            present.push((i, grad));
        }
        let mut devices: Vec<Device> = Vec::new();
        for (i, _) in &present {
            let d = self.params[*i].device();
            if !devices.contains(&d) {
                devices.push(d);
            }
        }
        if self.max_grad_norm.is_some() && devices.len() > 1 {
            return Err(Error::Argument { op: "adamw", msg: "gradient clipping needs the parameters on one device (one global norm)".into() });
        }
        let mut parts = Vec::new();
        for device in devices {
            let on: Vec<(usize, &Tensor)> = present.iter().copied().filter(|(i, _)| self.params[*i].device() == device).collect();
            parts.push(match device {
                Device::Cpu => self.step_cpu(&on)?,
                Device::Cuda(_) => self.step_cuda(&on)?,
            });
        }
        Ok(GradNorm(parts))
    }

    /// The CPU parameters' step: the norm, then each update on the scaled gradient.
    fn step_cpu(&mut self, present: &[(usize, &Tensor)]) -> Result<HostValues> {
        // Σ g² in f64: fixed runs of each gradient on the rayon threads, added in order
        let mut sumsq = 0.0f64;
        for (_, g) in present {
            use rayon::prelude::*;
            let runs: Vec<f64> = g.storage().cpu_f32("adamw")?.par_chunks(1 << 16).map(|run| crate::ops::fast_math::sum_sq_dev_f64(run, 0.0)).collect();
            sumsq += runs.iter().sum::<f64>();
        }
        let norm = sumsq.sqrt() as f32;
        let factor = clip_factor(norm, self.max_grad_norm);
        for &(i, grad) in present {
            self.steps[i] += 1;
            let g = grad.storage();
            let g = g.cpu_f32("adamw")?;
            let scaled: Vec<f32>;
            let g = if factor == 1.0 {
                g
            } else {
                scaled = g.iter().map(|v| v * factor).collect();
                &scaled
            };
            let mut p = self.params[i].storage_mut();
            let mut m = self.exp_avg[i].storage_mut();
            let mut v = self.exp_avg_sq[i].storage_mut();
            adamw_step(p.cpu_f32_mut("adamw")?, g, m.cpu_f32_mut("adamw")?, v.cpu_f32_mut("adamw")?, self.steps[i], self.hyper);
        }
        Ok(HostValues::Ready(vec![factor, norm]))
    }

    /// One CUDA device's parameters: the norm, the factor and every update
    /// in three launches (kernels/optim.cu), in place on the device buffers,
    /// which self.params, the moments and the gradients keep alive; the one
    /// stream orders the launches after every queued use of them.
    fn step_cuda(&mut self, present: &[(usize, &Tensor)]) -> Result<HostValues> {
        let mut batch = super::cuda::AdamWBatch::default();
        for &(i, grad) in present {
            self.steps[i] += 1;
            let g = grad.storage();
            // storage_mut marks the values written (what was derived from them is dropped)
            let p = self.params[i].storage_mut();
            let m = self.exp_avg[i].storage_mut();
            let v = self.exp_avg_sq[i].storage_mut();
            batch.push(p.cuda("adamw")?, g.cuda("adamw")?, m.cuda("adamw")?, v.cuda("adamw")?, self.steps[i], self.hyper)?;
        }
        Ok(match batch.launch(self.max_grad_norm.unwrap_or(0.0))? {
            Some(clip) => HostValues::Pending(clip.download_async()?),
            None => HostValues::Ready(vec![1.0, 0.0]),
        })
    }

    /// Moments and step counts, for checkpoints: (exp_avg, exp_avg_sq, steps).
    pub fn state(&self) -> (&[Tensor], &[Tensor], &[u64]) {
        (&self.exp_avg, &self.exp_avg_sq, &self.steps)
    }

    /// Restore moments and step counts saved by [`AdamW::state`].
    pub fn load_state(&mut self, exp_avg: &[Vec<f32>], exp_avg_sq: &[Vec<f32>], steps: &[u64]) -> Result<()> {
        let n = self.params.len();
        if exp_avg.len() != n || exp_avg_sq.len() != n || steps.len() != n {
            return shape_err("adamw", format!("optimiser state for {} parameters, model has {n}", exp_avg.len()));
        }
        for i in 0..n {
            self.exp_avg[i].copy_from_slice(&exp_avg[i])?;
            self.exp_avg_sq[i].copy_from_slice(&exp_avg_sq[i])?;
        }
        self.steps = steps.to_vec();
        Ok(())
    }
}
