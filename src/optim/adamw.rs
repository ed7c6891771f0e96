//! AdamW over model parameters: moments per parameter, the update from
//! [`adamw_math::adamw_step`] applied in place outside the tape.

use super::adamw_math::{AdamWHyper, adamw_step};
use crate::autograd::Gradients;
use crate::device::Device;
use crate::error::{Error, Result, shape_err};
use crate::tensor::Tensor;

/// AdamW with decoupled weight decay. As in PyTorch, a parameter without a
/// gradient this step is left alone (no decay, its step count unchanged).
pub struct AdamW {
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    steps: Vec<u64>,
    /// Current hyper-parameters; a schedule sets `lr` and `beta1` before each step.
    pub hyper: AdamWHyper,
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
    /// CUDA all of a device's parameters in one launch).
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        let mut batches: Vec<(Device, super::cuda::AdamWBatch)> = Vec::new();
        for i in 0..self.params.len() {
            let param = &self.params[i];
            let Some(grad) = grads.get(param) else { continue };
            if grad.shape() != param.shape() {
                return shape_err("adamw", format!("gradient {} for parameter {}", grad.shape(), param.shape()));
            }
            self.steps[i] += 1;
            match param.device() {
                Device::Cpu => {
                    let g = grad.storage();
                    let mut p = param.storage_mut();
                    let mut m = self.exp_avg[i].storage_mut();
                    let mut v = self.exp_avg_sq[i].storage_mut();
                    adamw_step(
                        p.cpu_f32_mut("adamw")?,
                        g.cpu_f32("adamw")?,
                        m.cpu_f32_mut("adamw")?,
                        v.cpu_f32_mut("adamw")?,
                        self.steps[i],
                        self.hyper,
                    );
                }
                Device::Cuda(_) => {
                    if grad.device() != param.device() {
                        return Err(Error::DeviceMismatch { op: "adamw", a: param.device(), b: grad.device() });
                    }
                    let device = param.device();
                    let batch = match batches.iter().position(|(d, _)| *d == device) {
                        Some(k) => &mut batches[k].1,
                        None => {
                            batches.push((device, Default::default()));
                            &mut batches.last_mut().expect("just pushed").1
                        }
                    };
                    let g = grad.storage();
                    // storage_mut marks the values written (what was derived from them is dropped)
                    let p = param.storage_mut();
                    let m = self.exp_avg[i].storage_mut();
                    let v = self.exp_avg_sq[i].storage_mut();
                    batch.push(p.cuda("adamw")?, g.cuda("adamw")?, m.cuda("adamw")?, v.cuda("adamw")?, self.steps[i], self.hyper)?;
                }
            }
        }
        // In place on the device buffers (kernels/optim.cu), which self.params,
        // the moments and `grads` keep alive; the one stream orders the launch
        // after every queued use of them.
        for (_, batch) in batches {
            batch.launch()?;
        }
        Ok(())
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
