//! The basic layers: Linear, Conv2d, GroupNorm — PyTorch's layouts and names.

use super::init::Initializer;
use super::{Module, join};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{self, Conv2dParams};
use crate::tensor::Tensor;

/// A trainable leaf on `device` from host values.
pub fn param(values: Vec<f32>, dims: &[usize], device: Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, dims)?.to_device(device)?.detach().requires_grad_())
}

/// y = x·Wᵀ + b, weight [out, in].
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(init: &mut Initializer, features_in: usize, features_out: usize, bias: bool, device: Device) -> Result<Linear> {
        let bound = 1.0 / (features_in as f32).sqrt();
        Ok(Linear {
            weight: param(init.uniform(features_out * features_in, bound), &[features_out, features_in], device)?,
            bias: if bias { Some(param(init.uniform(features_out, bound), &[features_out], device)?) } else { None },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }
}

impl Module for Linear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b);
        }
    }
}

/// 2-D convolution, weight [out, in, k, k].
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: Conv2dParams,
}

impl Conv2d {
    pub fn new(init: &mut Initializer, cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize, device: Device) -> Result<Conv2d> {
        let fan_in = cin * kernel * kernel;
        let bound = 1.0 / (fan_in as f32).sqrt();
        Ok(Conv2d {
            weight: param(init.uniform(cout * fan_in, bound), &[cout, cin, kernel, kernel], device)?,
            bias: Some(param(init.uniform(cout, bound), &[cout], device)?),
            params: Conv2dParams { stride, padding },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(x, &self.weight, self.bias.as_ref(), self.params)
    }

    /// The convolution plus a per-image bias and/or a residual, added as it
    /// stores (`ops::conv2d_fused`).
    pub fn forward_add(&self, x: &Tensor, add: ops::ConvAdd) -> Result<Tensor> {
        ops::conv2d_fused(x, &self.weight, self.bias.as_ref(), add, self.params)
    }

    /// The convolution of `act(norm(x))` (act = SiLU when `silu`) plus `add`:
    /// the UNet's norm → conv, which at inference on CUDA never writes the
    /// normalised map (`ops::conv2d_after_norm`).
    pub fn forward_after_norm(&self, x: &Tensor, norm: &GroupNorm, silu: bool, add: ops::ConvAdd) -> Result<Tensor> {
        let first = ops::NormFirst { groups: norm.groups, weight: Some(&norm.weight), bias: Some(&norm.bias), eps: norm.eps, silu };
        ops::conv2d_after_norm(x, first, &self.weight, self.bias.as_ref(), add, self.params)
    }

    /// This convolution plus `add`, its output stored in bf16 where
    /// `store_bf16` asks (`ops::ConvAfter`).
    pub fn after<'a>(&'a self, add: ops::ConvAdd<'a>, store_bf16: Option<ops::Bf16Store>) -> ops::ConvAfter<'a> {
        ops::ConvAfter { weight: &self.weight, bias: self.bias.as_ref(), add, params: self.params, store_bf16 }
    }

    /// Set the weight to zero (the lesson's init of each resnet's conv2 and of conv_out).
    pub fn zero_weight(&self) -> Result<()> {
        self.weight.copy_from_slice(&vec![0.0; self.weight.numel()])
    }

    /// An orthogonal weight, as torch.nn.init.orthogonal_ (the lesson's downsamplers).
    pub fn orthogonal_weight(&self, init: &mut Initializer) -> Result<()> {
        let d = self.weight.dims();
        let values = init.orthogonal(d[0], d[1] * d[2] * d[3]);
        self.weight.copy_from_slice(&values)
    }
}

impl Module for Conv2d {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b);
        }
    }
}

/// Group normalisation with a per-channel affine (γ = 1, β = 0 at init).
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f32,
}

impl GroupNorm {
    /// As torch.nn.GroupNorm, refusing a group count that does not divide the channels.
    pub fn new(groups: usize, channels: usize, eps: f32, device: Device) -> Result<GroupNorm> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return crate::error::shape_err("group_norm", format!("{channels} channels cannot be split into {groups} groups"));
        }
        Ok(GroupNorm {
            weight: param(vec![1.0; channels], &[channels], device)?,
            bias: param(vec![0.0; channels], &[channels], device)?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::group_norm(x, self.groups, Some(&self.weight), Some(&self.bias), self.eps)
    }
}

impl Module for GroupNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "weight"), &self.weight);
        f(join(prefix, "bias"), &self.bias);
    }
}

/// Batch normalisation with running statistics (PyTorch's BatchNorm1d/2d:
/// momentum 0.1, eps 1e-5, γ = 1, β = 0 at init). `training` picks batch
/// statistics (and updates the running ones) or the running ones.
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f32,
    pub momentum: f32,
}

impl BatchNorm {
    pub fn new(channels: usize, device: Device) -> Result<BatchNorm> {
        Ok(BatchNorm {
            weight: param(vec![1.0; channels], &[channels], device)?,
            bias: param(vec![0.0; channels], &[channels], device)?,
            running_mean: Tensor::zeros_on([channels], device)?,
            running_var: Tensor::full_on(1.0, [channels], device)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let mode = if training { ops::BatchNormMode::Train { momentum: self.momentum } } else { ops::BatchNormMode::Eval };
        ops::batch_norm(x, &self.running_mean, &self.running_var, Some(&self.weight), Some(&self.bias), mode, self.eps)
    }
}

impl Module for BatchNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "weight"), &self.weight);
        f(join(prefix, "bias"), &self.bias);
    }
}

impl BatchNorm {
    /// The running statistics (saved with the weights; not trained).
    pub fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(join(prefix, "running_mean"), &self.running_mean);
        f(join(prefix, "running_var"), &self.running_var);
    }
}
