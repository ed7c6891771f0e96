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
//!
//! `group_norm_silu` fuses the SiLU the UNet always applies next:
//!   u = x̂·γ_c + β_c,  y = silu(u) = u·σ(u),
//! and its backward is the group-norm backward applied to
//!   dz = dy·silu'(u),  silu'(u) = σ(u)·(1 + u·(1 − σ(u))),
//! with u recomputed from x and the saved μ and rstd.
//!
//! On CUDA (kernels/groupnorm.cu) the forward is one launch (one block per
//! group), the backward two (dx per group, then dγ and dβ per channel); the
//! saved μ and rstd stay on the device.

pub mod cpu;
pub mod cuda;

use crate::autograd::{self, Node};
use crate::device::Device;
use crate::error::{Result, arg_err, shape_err};
use crate::tensor::{CpuStorage, DType, Storage, Tensor, cpu_f32_storage};
use cpu::GroupNormDims;

/// Checks that an optional per-channel parameter has shape [C].
fn check_param(op: &'static str, what: &str, p: Option<&Tensor>, c: usize) -> Result<()> {
    match p {
        Some(t) if t.dims() != [c] => shape_err(op, format!("{what} has shape {}, expected [{c}]", t.shape())),
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
    let _nvtx = crate::device::nvtx::range("group_norm");
    norm("group_norm", x, groups, weight, bias, eps, false, DType::F32)
}

/// silu(group_norm(x, groups, weight, bias, eps)) as one op: one pass on the
/// CPU, one kernel launch on CUDA, and no intermediate kept for backward.
pub fn group_norm_silu(
    x: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("group_norm_silu");
    norm("group_norm_silu", x, groups, weight, bias, eps, true, DType::F32)
}

/// `group_norm` with its output stored as `store`: F32, or BF16 when its
/// consumers are bf16 convolutions (the attention block's projections); as
/// [`group_norm_silu_stored`].
pub fn group_norm_stored(x: &Tensor, groups: usize, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32, store: DType) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("group_norm");
    norm("group_norm", x, groups, weight, bias, eps, false, store)
}

/// `group_norm_silu` with its output stored as `store`: F32, or BF16 (the
/// output rounded to bf16) when its consumer is a bf16 convolution, which
/// rounds its input to exactly those values
/// (`ops::precision::conv_input_storage`). The backward is the same: it
/// recomputes from x, not from the output.
pub fn group_norm_silu_stored(
    x: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    store: DType,
) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("group_norm_silu");
    norm("group_norm_silu", x, groups, weight, bias, eps, true, store)
}

/// `group_norm(_silu)_stored` of `concat([x, x2], 1)`, SiLU after the norm
/// when `silu`. At inference (no gradient wanted) on CUDA the kernel reads x
/// and x2 where they lie and the concatenation is never written (the UNet's
/// up path, where a skip joins the map: group norm and a 1×1 shortcut are
/// all that read it, see `ops::conv2d_concat`); the same values, bit for bit.
/// Otherwise the concatenation, then the norm (with its gradients).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_concat_stored(
    x: &Tensor,
    x2: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    silu: bool,
    store: DType,
) -> Result<Tensor> {
    let op = if silu { "group_norm_silu" } else { "group_norm" };
    let _nvtx = crate::device::nvtx::range(op);
    let grad_wanted = autograd::is_grad_enabled() && [Some(x), Some(x2), weight, bias].into_iter().flatten().any(|t| t.requires_grad());
    let joinable = x.rank() >= 2 && x2.rank() == x.rank() && x.dims()[0] == x2.dims()[0] && x.dims()[2..] == x2.dims()[2..];
    if !grad_wanted
        && joinable
        && store != DType::F16
        && matches!(x.device(), Device::Cuda(_))
        && x2.device() == x.device()
        && [x, x2].iter().all(|t| t.dtype() == DType::F32)
    {
        let mut dims = x.dims().to_vec();
        dims[1] += x2.dims()[1];
        let d = check_dims(op, &dims, groups, weight, bias, eps)?;
        let mut all: Vec<&Tensor> = vec![x, x2];
        all.extend(weight);
        all.extend(bias);
        Tensor::common_device(op, &all)?;
        let (xs, x2s, ws, bs) = (x.storage(), x2.storage(), weight.map(|w| w.storage()), bias.map(|b| b.storage()));
        let w = ws.as_ref().map(|s| s.cuda(op)).transpose()?;
        let b = bs.as_ref().map(|s| s.cuda(op)).transpose()?;
        if let Some((y, _)) = cuda::forward_concat(xs.cuda(op)?, x2s.cuda(op)?, d, w, b, eps, silu, store)? {
            return Ok(Tensor::from_storage(Storage::Cuda(y), dims.into()));
        }
    }
    norm(op, &crate::ops::concat(&[x, x2], 1)?, groups, weight, bias, eps, silu, store)
}

/// The group norm of a CUDA tensor `x` as the per-(image, channel) affine a
/// same convolution applies as it reads x (`ops::conv2d::conv2d_after_norm`):
/// (mean, scale, shift, 0) per (image, channel), [N·C, 4], checked as
/// [`group_norm`] checks.
pub(crate) fn cuda_affine(
    x: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<crate::device::cuda::CudaBuffer> {
    const OP: &str = "group_norm";
    let d = check(OP, x, groups, weight, bias, eps)?;
    let mut all: Vec<&Tensor> = vec![x];
    all.extend(weight);
    all.extend(bias);
    Tensor::common_device(OP, &all)?;
    let (xs, ws, bs) = (x.storage(), weight.map(|w| w.storage()), bias.map(|b| b.storage()));
    let w = ws.as_ref().map(|s| s.cuda(OP)).transpose()?;
    let b = bs.as_ref().map(|s| s.cuda(OP)).transpose()?;
    cuda::affine(xs.cuda(OP)?, d, w, b, eps)
}

/// The checked dimensions of a group norm of `x`.
fn check(op: &'static str, x: &Tensor, groups: usize, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<GroupNormDims> {
    check_dims(op, x.dims(), groups, weight, bias, eps)
}

/// The checked dimensions of a group norm of an input of `dims`.
fn check_dims(op: &'static str, dims: &[usize], groups: usize, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<GroupNormDims> {
    if dims.len() < 2 {
        return shape_err(op, format!("input must be [N, C, *], got shape {dims:?}"));
    }
    let (n, c) = (dims[0], dims[1]);
    let s: usize = dims[2..].iter().product();
    if groups == 0 {
        return arg_err(op, "groups must be at least 1");
    }
    if c % groups != 0 {
        return arg_err(op, format!("{c} channels do not divide into {groups} groups"));
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return arg_err(op, format!("eps must be finite and non-negative, got {eps}"));
    }
    check_param(op, "weight", weight, c)?;
    check_param(op, "bias", bias, c)?;
    Ok(GroupNormDims { n, c, s, groups })
}

/// What the forward pass keeps for backward: μ and rstd per group (n·G + g).
enum SavedStats {
    Cpu { mean: Vec<f32>, rstd: Vec<f32> },
    Cuda(cuda::SavedStats),
}

/// Group norm, followed by SiLU when `silu`, the output stored as `store`
/// (f32, or bf16 rounded to nearest even).
#[allow(clippy::too_many_arguments)]
fn norm(
    op: &'static str,
    x: &Tensor,
    groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
    silu: bool,
    store: DType,
) -> Result<Tensor> {
    let d = check(op, x, groups, weight, bias, eps)?;
    if store == DType::F16 {
        return arg_err(op, "f16 storage is not supported (f32 or bf16)");
    }
    let c = d.c;
    let mut all: Vec<&Tensor> = vec![x];
    all.extend(weight);
    all.extend(bias);
    let device = Tensor::common_device(op, &all)?;
    // x in bf16 storage (the resnets' conv1 output with bf16 activations):
    // read as it is by the CUDA kernel at inference into bf16, else widened
    // to f32 first (exact: the same values)
    if x.dtype() != DType::F32 {
        let grad_wanted = autograd::is_grad_enabled() && all.iter().any(|t| t.requires_grad());
        let read_as_is = !grad_wanted && matches!(&*x.storage(), Storage::Cuda(b) if cuda::reads_bf16(b, d, store));
        if !read_as_is {
            return norm(op, &crate::ops::cast(x, DType::F32)?, groups, weight, bias, eps, silu, store);
        }
    }

    let xs = x.storage();
    let ws = weight.map(|w| w.storage());
    let bs = bias.map(|b| b.storage());
    let (storage, saved) = match device {
        Device::Cpu => {
            let w = ws.as_ref().map(|s| s.cpu_f32(op)).transpose()?;
            let b = bs.as_ref().map(|s| s.cpu_f32(op)).transpose()?;
            let forward = if silu { cpu::forward_silu } else { cpu::forward };
            let (y, mean, rstd) = forward(xs.cpu_f32(op)?, d, w, b, eps);
            let y = match store {
                DType::BF16 => Storage::Cpu(CpuStorage::BF16(y.into_iter().map(half::bf16::from_f32).collect())),
                _ => cpu_f32_storage(y),
            };
            (y, SavedStats::Cpu { mean, rstd })
        }
        Device::Cuda(_) => {
            let w = ws.as_ref().map(|s| s.cuda(op)).transpose()?;
            let b = bs.as_ref().map(|s| s.cuda(op)).transpose()?;
            let (y, stats) = cuda::forward(xs.cuda_any(op)?, d, w, b, eps, silu, store)?;
            (Storage::Cuda(y), SavedStats::Cuda(stats))
        }
    };
    drop((xs, ws, bs));

    Ok(Tensor::from_op(storage, x.shape().clone(), |_| {
        let x = x.clone();
        let weight = weight.cloned();
        let bias = bias.cloned();
        let inputs: Vec<Tensor> = std::iter::once(x.clone()).chain(weight.clone()).chain(bias.clone()).collect();
        // x's gradient from its other uses (the residual beside a block's
        // first norm) is summed as dx is written
        Node::accumulating(op, inputs, move |g, earlier| {
            let mut earlier = earlier.into_iter();
            let mut dx_earlier = earlier.next().flatten();
            let (gs, xs) = (g.storage(), x.storage());
            let ws = weight.as_ref().map(|w| w.storage());
            let bs = bias.as_ref().map(|b| b.storage());
            let (dx, dw, db): (Option<Tensor>, Tensor, Tensor) = match &saved {
                SavedStats::Cpu { mean, rstd } => {
                    let w = ws.as_ref().map(|s| s.cpu_f32(op)).transpose()?;
                    let b = bs.as_ref().map(|s| s.cpu_f32(op)).transpose()?;
                    let (dy, xv) = (gs.cpu_f32(op)?, xs.cpu_f32(op)?);
                    // an f32 gradient on the CPU is added as dx is written; anything else after
                    let summed_in_pass = dx_earlier.take_if(|t| x.requires_grad() && t.dtype() == DType::F32 && t.device() == Device::Cpu);
                    let es = summed_in_pass.as_ref().map(|t| t.storage());
                    let add = es.as_ref().map(|s| s.cpu_f32(op)).transpose()?;
                    let (dx, dw, db) = cpu::backward(dy, xv, mean, rstd, w, b, silu, d, x.requires_grad(), add);
                    let dx = dx.map(|v| Tensor::from_vec(v, x.shape().clone())).transpose()?;
                    (autograd::plus(dx, dx_earlier.take())?, Tensor::from_vec(dw, vec![c])?, Tensor::from_vec(db, vec![c])?)
                }
                SavedStats::Cuda(stats) => {
                    let w = ws.as_ref().map(|s| s.cuda(op)).transpose()?;
                    let b = bs.as_ref().map(|s| s.cuda(op)).transpose()?;
                    // the kernel adds an f32 gradient on x's device; anything else is added after
                    let summed_in_kernel = dx_earlier.take_if(|t| t.dtype() == DType::F32 && t.device() == x.device());
                    let es = summed_in_kernel.as_ref().map(|t| t.storage());
                    let add = es.as_ref().map(|s| s.cuda(op)).transpose()?;
                    let (dx, dw, db) =
                        cuda::backward(gs.cuda(op)?, xs.cuda(op)?, stats, w, b, d, silu, x.requires_grad(), add)?;
                    let cuda = |buf, shape: Vec<usize>| Tensor::from_storage(Storage::Cuda(buf), shape.into());
                    let dx = dx.map(|v| cuda(v, x.dims().to_vec()));
                    (autograd::plus(dx, dx_earlier.take())?, cuda(dw, vec![c]), cuda(db, vec![c]))
                }
            };
            let mut grads = vec![dx];
            if let Some(w) = &weight {
                grads.push(autograd::plus(w.requires_grad().then_some(dw), earlier.next().flatten())?);
            }
            if bias.is_some() {
                grads.push(autograd::plus(Some(db), earlier.next().flatten())?);
            }
            Ok(grads)
        })
    }))
}
