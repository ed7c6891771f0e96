//! Group normalisation, as `torch.nn.functional.group_norm`.
//!
//! x is [N, C, *] (spatial dims flattened to S); the C channels split into G
//! groups of C/G, and each (n, g) is normalised over its M = (C/G)·S values:
//!   μ = Σx/M,  σ² = Σ(x−μ)²/M (biased),  x̂ = (x−μ)/√(σ²+eps),
//!   y = x̂·γ_c + β_c.
//!
//! Backward (g_i = dy_i·γ_c, means over the M values of a group; μ and rstd
//! are kept from the forward pass, x̂ is recomputed from x):
//!   dx_i = rstd·(g_i − mean(g) − x̂_i·mean(g·x̂))
//!   dγ_c = Σ_{n,s} dy·x̂,   dβ_c = Σ_{n,s} dy.

pub mod cpu;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, arg_err, shape_err};
use crate::tensor::{Tensor, cpu_f32_storage};
use cpu::GroupNormDims;

const OP: &str = "group_norm";

/// Checks that an optional per-channel parameter has shape [C].
fn check_param(what: &str, p: Option<&Tensor>, c: usize) -> Result<()> {
    match p {
        Some(t) if t.dims() != [c] => shape_err(OP, format!("{what} has shape {}, expected [{c}]", t.shape())),
        _ => Ok(()),
    }
}

/// Group norm of `x` [N, C, *] with `groups` groups and optional per-channel
/// affine `weight` (γ) and `bias` (β), both [C].
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    if x.rank() < 2 {
        return shape_err(OP, format!("input must be [N, C, *], got shape {}", x.shape()));
    }
    let (n, c) = (x.dims()[0], x.dims()[1]);
    let s: usize = x.dims()[2..].iter().product();
    if groups == 0 {
        return arg_err(OP, "groups must be at least 1");
    }
    if c % groups != 0 {
        return arg_err(OP, format!("{c} channels do not divide into {groups} groups"));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return arg_err(OP, format!("eps must be finite and non-negative, got {eps}"));
    }
    check_param("weight", weight, c)?;
    check_param("bias", bias, c)?;
    let mut all: Vec<&Tensor> = vec![x];
    all.extend(weight);
    all.extend(bias);
    let device = Tensor::common_device(OP, &all)?;
    let d = GroupNormDims { n, c, s, groups };

    let (storage, mean, rstd) = match device {
        Device::Cpu => {
            let xs = x.storage();
            let ws = weight.map(|w| w.storage());
            let bs = bias.map(|b| b.storage());
            let w = ws.as_ref().map(|s| s.cpu_f32(OP)).transpose()?;
            let b = bs.as_ref().map(|s| s.cpu_f32(OP)).transpose()?;
            let (y, mean, rstd) = cpu::forward(xs.cpu_f32(OP)?, d, w, b, eps);
            (cpu_f32_storage(y), mean, rstd)
        }
        Device::Cuda(_) => return Err(crate::error::Error::Cuda("group_norm: no CUDA kernel yet".into())),
    };

    Ok(Tensor::from_op(storage, x.shape().clone(), |_| {
        let x = x.clone();
        let weight = weight.cloned();
        let has_bias = bias.is_some();
        let inputs: Vec<Tensor> = std::iter::once(x.clone()).chain(weight.clone()).chain(bias.cloned()).collect();
        Node::new(OP, inputs, move |g| {
            let (dx, dw, db) = match g.device() {
                Device::Cpu => {
                    let (gs, xs) = (g.storage(), x.storage());
                    let ws = weight.as_ref().map(|w| w.storage());
                    let w = ws.as_ref().map(|s| s.cpu_f32(OP)).transpose()?;
                    cpu::backward(gs.cpu_f32(OP)?, xs.cpu_f32(OP)?, &mean, &rstd, w, d, x.requires_grad())
                }
                Device::Cuda(_) => return Err(crate::error::Error::Cuda("group_norm: no CUDA kernel yet".into())),
            };
            let mut grads = vec![dx.map(|v| Tensor::from_vec(v, x.shape().clone())).transpose()?];
            if let Some(w) = &weight {
                grads.push(w.requires_grad().then(|| Tensor::from_vec(dw, vec![c])).transpose()?);
            }
            if has_bias {
                grads.push(Some(Tensor::from_vec(db, vec![c])?));
            }
            Ok(grads)
        })
    }))
}
