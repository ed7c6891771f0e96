//! Batch normalisation, as `torch.nn.functional.batch_norm`.
//!
//! x is [N, C] or [N, C, *] (spatial dims flattened to S); each channel c is
//! normalised over its M = N·S values:
//!   y = (x − μ_c)/√(σ²_c + eps)·γ_c + β_c.
//! Train: μ, σ² are the batch mean and biased variance, and the running
//!   statistics are updated in place, outside the tape (PyTorch's convention):
//!     running_mean ← (1−m)·running_mean + m·μ
//!     running_var  ← (1−m)·running_var  + m·σ²·M/(M−1)   (unbiased)
//! Eval: μ, σ² are the running statistics, so y is affine in x.
//!
//! Backward (x̂ = (x−μ)·rstd, means over the M values of a channel; μ and
//! rstd are kept from the forward pass, x̂ is recomputed from x):
//!   Train: dx = γ·rstd·(dy − mean(dy) − x̂·mean(dy·x̂))
//!   Eval:  dx = γ·rstd·dy
//!   dγ_c = Σ dy·x̂,   dβ_c = Σ dy.
//! The running statistics never get gradients.
//!
//! On CUDA (kernels/batchnorm.cu) forward and backward are one launch each,
//! one block per channel; the train-mode forward also updates the running
//! statistics in place on the device, and the saved μ and rstd stay there.

pub mod cpu;
pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Error, Result, arg_err, shape_err};
use crate::tensor::{DType, Storage, Tensor, cpu_f32_storage};
use cpu::BatchNormDims;

const OP: &str = "batch_norm";

/// Which statistics batch norm normalises with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchNormMode {
    /// Batch statistics; the running statistics move towards them by `momentum`
    /// (0.1 in `nn.BatchNorm2d`).
    Train { momentum: f32 },
    /// The running statistics.
    Eval,
}

/// What the forward pass keeps for backward: the per-channel μ and rstd it used.
enum SavedStats {
    Cpu { mean: Vec<f32>, rstd: Vec<f32> },
    Cuda(cuda::SavedStats),
}

/// Checks that a per-channel tensor has shape [C].
fn check_channel(what: &str, p: Option<&Tensor>, c: usize) -> Result<()> {
    match p {
        Some(t) if t.dims() != [c] => shape_err(OP, format!("{what} has shape {}, expected [{c}]", t.shape())),
        _ => Ok(()),
    }
}

/// Batch norm of `x` [N, C, *] with per-channel running statistics
/// `running_mean`, `running_var` [C] (updated in place in `Train` mode) and
/// optional affine `weight` (γ) and `bias` (β), both [C].
pub fn batch_norm(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    mode: BatchNormMode,
    eps: f32,
) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("batch_norm");
    if x.rank() < 2 {
        return shape_err(OP, format!("input must be [N, C] or [N, C, *], got shape {}", x.shape()));
    }
    let (n, c) = (x.dims()[0], x.dims()[1]);
    let s: usize = x.dims()[2..].iter().product();
    let d = BatchNormDims { n, c, s };
    if !(eps >= 0.0 && eps.is_finite()) {
        return arg_err(OP, format!("eps must be finite and non-negative, got {eps}"));
    }
    check_channel("running_mean", Some(running_mean), c)?;
    check_channel("running_var", Some(running_var), c)?;
    check_channel("weight", weight, c)?;
    check_channel("bias", bias, c)?;
    let train = match mode {
        BatchNormMode::Train { momentum } => {
            if !momentum.is_finite() {
                return arg_err(OP, format!("momentum must be finite, got {momentum}"));
            }
            if d.m() <= 1 {
                return arg_err(
                    OP,
                    format!("expected more than 1 value per channel when training, got input shape {}", x.shape()),
                );
            }
            Some(momentum)
        }
        BatchNormMode::Eval => None,
    };
    let mut all: Vec<&Tensor> = vec![x, running_mean, running_var];
    all.extend(weight);
    all.extend(bias);
    let device = Tensor::common_device(OP, &all)?;
    // Refuse other dtypes before the running statistics are touched.
    if let Some(t) = all.iter().find(|t| t.dtype() != DType::F32) {
        return Err(Error::DType { op: OP, dtype: t.dtype() });
    }

    let (storage, saved) = match device {
        Device::Cpu => {
            let rstd_of = |var: f64| (1.0 / (var + eps as f64).sqrt()) as f32;
            let (mean, rstd): (Vec<f32>, Vec<f32>) = match train {
                Some(momentum) => {
                    let (mean, var) = cpu::channel_stats(x.storage().cpu_f32(OP)?, d);
                    // Running statistics: in place, not recorded.
                    let (m, unbias) = (momentum as f64, d.m() as f64 / (d.m() - 1) as f64);
                    {
                        let mut rm = running_mean.storage_mut();
                        for (r, &mu) in rm.cpu_f32_mut(OP)?.iter_mut().zip(&mean) {
                            *r = ((1.0 - m) * *r as f64 + m * mu) as f32;
                        }
                    }
                    {
                        let mut rv = running_var.storage_mut();
                        for (r, &v) in rv.cpu_f32_mut(OP)?.iter_mut().zip(&var) {
                            *r = ((1.0 - m) * *r as f64 + m * v * unbias) as f32;
                        }
                    }
                    (mean.iter().map(|&v| v as f32).collect(), var.into_iter().map(rstd_of).collect())
                }
                None => {
                    let mean = running_mean.storage().cpu_f32(OP)?.to_vec();
                    let rstd = running_var.storage().cpu_f32(OP)?.iter().map(|&v| rstd_of(v as f64)).collect();
                    (mean, rstd)
                }
            };
            let xs = x.storage();
            let ws = weight.map(|w| w.storage());
            let bs = bias.map(|b| b.storage());
            let w = ws.as_ref().map(|s| s.cpu_f32(OP)).transpose()?;
            let b = bs.as_ref().map(|s| s.cpu_f32(OP)).transpose()?;
            let y = cpu::forward(xs.cpu_f32(OP)?, d, &mean, &rstd, w, b);
            (cpu_f32_storage(y), SavedStats::Cpu { mean, rstd })
        }
        Device::Cuda(_) => {
            // The kernel writes the running statistics in place (train mode).
            // They are device memory behind a pointer: read guards suffice to
            // keep the buffers alive, and never deadlock should running_mean
            // and running_var be one tensor.
            if train.is_some() {
                running_mean.written_in_place();
                running_var.written_in_place();
            }
            let (xs, rm, rv) = (x.storage(), running_mean.storage(), running_var.storage());
            let ws = weight.map(|w| w.storage());
            let bs = bias.map(|b| b.storage());
            let w = ws.as_ref().map(|s| s.cuda(OP)).transpose()?;
            let b = bs.as_ref().map(|s| s.cuda(OP)).transpose()?;
            let (y, stats) = cuda::forward(xs.cuda(OP)?, d, rm.cuda(OP)?, rv.cuda(OP)?, w, b, train, eps)?;
            (Storage::Cuda(y), SavedStats::Cuda(stats))
        }
    };

    Ok(Tensor::from_op(storage, x.shape().clone(), |_| {
        let x = x.clone();
        let weight = weight.cloned();
        let has_bias = bias.is_some();
        let inputs: Vec<Tensor> = std::iter::once(x.clone()).chain(weight.clone()).chain(bias.cloned()).collect();
        Node::new(OP, inputs, move |g| {
            let (gs, xs) = (g.storage(), x.storage());
            let ws = weight.as_ref().map(|w| w.storage());
            let (dx, dw, db): (Option<Tensor>, Tensor, Tensor) = match &saved {
                SavedStats::Cpu { mean, rstd } => {
                    let w = ws.as_ref().map(|s| s.cpu_f32(OP)).transpose()?;
                    let (dx, dw, db) = cpu::backward(
                        gs.cpu_f32(OP)?,
                        xs.cpu_f32(OP)?,
                        d,
                        mean,
                        rstd,
                        w,
                        train.is_some(),
                        x.requires_grad(),
                    );
                    (
                        dx.map(|v| Tensor::from_vec(v, x.shape().clone())).transpose()?,
                        Tensor::from_vec(dw, vec![c])?,
                        Tensor::from_vec(db, vec![c])?,
                    )
                }
                SavedStats::Cuda(stats) => {
                    let w = ws.as_ref().map(|s| s.cuda(OP)).transpose()?;
                    let (dx, dw, db) =
                        cuda::backward(gs.cuda(OP)?, xs.cuda(OP)?, stats, w, d, train.is_some(), x.requires_grad())?;
                    let cuda = |buf, shape: Vec<usize>| Tensor::from_storage(Storage::Cuda(buf), shape.into());
                    (dx.map(|v| cuda(v, x.dims().to_vec())), cuda(dw, vec![c]), cuda(db, vec![c]))
                }
            };
            let mut grads = vec![dx];
            if let Some(w) = &weight {
                grads.push(w.requires_grad().then_some(dw));
            }
            if has_bias {
                grads.push(Some(db));
            }
            Ok(grads)
        })
    }))
}
