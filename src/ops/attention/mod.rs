//! Multi-head scaled dot-product attention: O = softmax(scale·Q·Kᵀ)·V over the
//! last two dims of q [..., Lq, D], k [..., Lk, D], v [..., Lk, Dv]; leading
//! dims (batch, heads) must agree. [`attention_columns`] takes the same with
//! each sequence operand transposed, q [..., D, Lq], k [..., D, Lk],
//! v [..., Dv, Lk] → o [..., Dv, Lq]: the UNet's attention block hands it its
//! channels-first feature maps, [B, C, H, W] read as [B, heads, C/heads, H·W],
//! so no permute copies are made.
//!
//! At the bf16 precision (`ops::precision`) attention of channels-first heads
//! of at most 32 features multiplies bf16 operands — Q·Kᵀ from bf16 Q and K,
//! P·V from bf16 P and V, the softmax in f32, and with a gradient dP, dQ, dK
//! and dV from bf16 operands the same way — on the CPU
//! ([`cpu::forward_bf16`], [`cpu::backward_bf16`]) and on CUDA's tensor cores
//! alike; other shapes run at f32.

pub mod columns_backward;
pub mod cpu;
pub mod cuda;

pub use cpu::Layout;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, shape_err};
use crate::tensor::{DType, Shape, Storage, Tensor, cpu_f32_storage};

/// Attention with an explicit `scale` (use 1/√D for the standard form).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("attention");
    attention_in(q, k, v, scale, Layout::Rows)
}

/// [`attention`] on transposed sequences: q [..., D, Lq], k [..., D, Lk],
/// v [..., Dv, Lk] give o [..., Dv, Lq] (= attention(qᵀ, kᵀ, vᵀ)ᵀ).
pub fn attention_columns(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("attention_columns");
    attention_in(q, k, v, scale, Layout::Columns)
}

/// Inference attention over a packed projection (no gradient): qkv
/// [B, 3·heads·D, L] holds each image's q, k and v one after another along
/// the channels, as one conv of the three projections' stacked weights
/// writes them; o is [B, heads, D, L], as [`attention_columns`] of the three
/// parts. On CUDA the fused kernel reads the parts where they lie (no copy).
pub fn attention_columns_packed(qkv: &Tensor, heads: usize, scale: f32) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("attention_columns");
    packed_with(qkv, heads, scale, false)
}

/// [`attention_columns_packed`] of a bf16 projection whose q part is
/// bf16(c·q) (c = [`query_factor`]), as [`attention_columns_scaled_query`]
/// of its three parts: CUDA's bf16 inference kernel reads them where they
/// lie and stores O in bf16; an error anywhere else.
pub fn attention_columns_packed_scaled_query(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("attention_columns");
    packed_with(qkv, heads, 1.0, true)
}

fn packed_with(qkv: &Tensor, heads: usize, scale: f32, scaled_query: bool) -> Result<Tensor> {
    let &[b, c, len] = qkv.dims() else {
        return shape_err("attention", format!("packed q, k, v must be [B, 3·heads·D, L], got {}", qkv.shape()));
    };
    if heads == 0 || c % (3 * heads) != 0 {
        return shape_err("attention", format!("packed q, k, v {} do not split into 3 × {heads} heads", qkv.shape()));
    }
    let d = c / (3 * heads);
    let wants_grad = crate::autograd::is_grad_enabled() && qkv.requires_grad();
    let dims = cpu::Dims { batch: b * heads, lq: len, lk: len, d, dv: d };
    let bf16 = bf16_products(dims, Layout::Columns);
    let reads_as_stored = qkv.dtype() == DType::F32 || (scaled_query && bf16 && qkv.dtype() == DType::BF16);
    if let (Device::Cuda(_), false, true, true) = (qkv.device(), wants_grad, cuda::fused(dims, Layout::Columns), reads_as_stored) {
        let o = cuda::forward_output_packed(qkv.storage().cuda_any("attention")?, b, heads, d, len, scale, bf16)?;
        return Ok(Tensor::from_storage(Storage::Cuda(o), Shape::new(vec![b, heads, d, len])));
    }
    let part = |i: usize| crate::ops::reshape(&crate::ops::narrow(qkv, 1, i * heads * d, heads * d)?, [b, heads, d, len]);
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    if scaled_query { attention_columns_scaled_query(&q, &k, &v) } else { attention_columns(&q, &k, &v, scale) }
}

/// Whether attention of these dims multiplies bf16 operands (forward, and
/// backward when there is one): at the bf16 precision (`ops::precision`,
/// unless [`precision::attention_bf16`] is off), for the fused problems — the
/// Columns layout with heads of at most 32 features, the UNet's — on the CPU
/// ([`cpu::forward_bf16`], [`cpu::backward_bf16`]) and on CUDA (their twins
/// on the tensor cores) alike. Other shapes run at f32.
fn bf16_products(dims: cpu::Dims, layout: Layout) -> bool {
    use crate::ops::precision::{self, Precision};
    precision::current() == Precision::Bf16 && precision::attention_bf16() && cuda::fused(dims, layout)
}

/// Whether [`attention_columns`] of heads of `d` features over `len`
/// positions multiplies bf16 operands on this thread now — so that K and V
/// stored in bf16, and Q stored as bf16(c·Q) (c = [`query_factor`]), give
/// the same bits as from f32 ([`attention_columns_scaled_query`]).
pub fn columns_multiply_bf16(d: usize, len: usize) -> bool {
    bf16_products(cpu::Dims { batch: 1, lq: len, lk: len, d, dv: d }, Layout::Columns)
}

/// c = scale·log2 e: attention with bf16 products keeps its scores in base 2
/// and multiplies Q by c before rounding it to bf16 (the same f32 product on
/// the CPU and on CUDA).
pub fn query_factor(scale: f32) -> f32 {
    scale * std::f32::consts::LOG2_E
}

/// Inference attention (no gradient) on CUDA with bf16 products, Columns
/// layout, from `qc` = bf16(c·Q) (c = [`query_factor`]`(scale)`: Q already
/// multiplied and rounded as the attention would stage it) and K, V in
/// bf16; O in bf16. When qc is that, the bits of
/// [`attention_columns`]`(q, k, v, scale)` rounded to bf16: the kernel stages
/// the same words (the UNet's q, k and v projections store these at
/// inference, half the bytes of f32). An error anywhere else: the CPU, a
/// gradient wanted, other dtypes, heads the bf16 kernels do not take — the
/// caller asks [`columns_multiply_bf16`] first.
pub fn attention_columns_scaled_query(qc: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("attention_columns");
    attention_with(qc, k, v, 1.0, Layout::Columns, true)
}

fn attention_in(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, layout: Layout) -> Result<Tensor> {
    attention_with(q, k, v, scale, layout, false)
}

/// `scaled_query`: q is bf16(c·Q) and every operand bf16 (see
/// [`attention_columns_scaled_query`]), for the CUDA bf16 inference kernel only.
fn attention_with(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, layout: Layout, scaled_query: bool) -> Result<Tensor> {
    let device = Tensor::common_device("attention", &[q, k, v])?;
    let r = q.rank();
    if r < 2 || k.rank() != r || v.rank() != r {
        return shape_err("attention", format!("q {}, k {}, v {} need equal ranks ≥ 2", q.shape(), k.shape(), v.shape()));
    }
    // (sequence length, features) of an operand's last two dims
    let seq = |t: &Tensor| match layout {
        Layout::Rows => (t.dims()[r - 2], t.dims()[r - 1]),
        Layout::Columns => (t.dims()[r - 1], t.dims()[r - 2]),
    };
    let lead = &q.dims()[..r - 2];
    let ((lq, d), (lk, dk), (lv, dv)) = (seq(q), seq(k), seq(v));
    if &k.dims()[..r - 2] != lead || &v.dims()[..r - 2] != lead || dk != d || lv != lk {
        return shape_err("attention", format!("q {}, k {}, v {} do not fit together", q.shape(), k.shape(), v.shape()));
    }
    let dims = cpu::Dims { batch: lead.iter().product(), lq, lk, d, dv };
    // backward needs the rows' log-sum-exp (the CPU, and CUDA's fused kernel:
    // P is recomputed) or else the probabilities P; nothing when no input
    // requires grad (from_op then drops the node)
    let for_backward = crate::autograd::is_grad_enabled() && [q, k, v].iter().any(|t| t.requires_grad());
    let saves_lse = device == Device::Cpu || cuda::fused(dims, layout);
    // decided once: the backward multiplies as the forward did, and its saved
    // L is in base 2 at bf16 (natural log at f32)
    let bf16 = bf16_products(dims, layout);
    // bf16(c·Q), K and V (the UNet's projections at inference) are read as
    // they are by CUDA's bf16 inference kernel, which then stores O in bf16
    // too (the same staged words, the same sums); other bf16 operands are
    // widened to f32 (exact) first
    if scaled_query {
        let all_bf16 = [q, k, v].iter().all(|t| t.dtype() == DType::BF16);
        if !(all_bf16 && device.is_cuda() && !for_backward && bf16 && layout == Layout::Columns) {
            let what = format!("q {:?}, k {:?}, v {:?} on {device:?}", q.dtype(), k.dtype(), v.dtype());
            return crate::error::arg_err("attention", format!("a scaled bf16 query is read by CUDA's bf16 inference kernel only ({what})"));
        }
    } else if [q, k, v].iter().any(|t| t.dtype() != DType::F32) {
        let wide = |t: &Tensor| crate::ops::cast(t, DType::F32);
        return attention_in(&wide(q)?, &wide(k)?, &wide(v)?, scale, layout);
    }
    let mut out_dims = lead.to_vec();
    out_dims.extend(match layout {
        Layout::Rows => [lq, dv],
        Layout::Columns => [dv, lq],
    });
    let (storage, saved) = match device {
        Device::Cpu => {
            let (sq, sk, sv) = (q.storage(), k.storage(), v.storage());
            let (q, k, v) = (sq.cpu_f32("attention")?, sk.cpu_f32("attention")?, sv.cpu_f32("attention")?);
            if for_backward {
                let (o, lse) = if bf16 { cpu::forward_bf16(q, k, v, dims, scale) } else { cpu::forward(q, k, v, dims, layout, scale) };
                (cpu_f32_storage(o), cpu_f32_storage(lse))
            } else if bf16 {
                (cpu_f32_storage(cpu::forward_output_bf16(q, k, v, dims, scale)), cpu_f32_storage(Vec::new()))
            } else {
                (cpu_f32_storage(cpu::forward_output(q, k, v, dims, layout, scale)), cpu_f32_storage(Vec::new()))
            }
        }
        Device::Cuda(_) => {
            let (sq, sk, sv) = (q.storage(), k.storage(), v.storage());
            if for_backward && saves_lse {
                let (q, k, v) = (sq.cuda("attention")?, sk.cuda("attention")?, sv.cuda("attention")?);
                let (o, lse) = cuda::forward_lse(q, k, v, dims, scale, bf16)?;
                (Storage::Cuda(o), Storage::Cuda(lse))
            } else if for_backward {
                let (q, k, v) = (sq.cuda("attention")?, sk.cuda("attention")?, sv.cuda("attention")?);
                let (o, p) = cuda::forward(q, k, v, dims, layout, scale)?;
                (Storage::Cuda(o), Storage::Cuda(p))
            } else {
                let (q, k, v) = (sq.cuda_any("attention")?, sk.cuda_any("attention")?, sv.cuda_any("attention")?);
                let o = cuda::forward_output(q, k, v, dims, layout, scale, bf16)?;
                (Storage::Cuda(o), cpu_f32_storage(Vec::new()))
            }
        }
    };
    Ok(Tensor::from_op(storage, Shape::new(out_dims), |out| {
        let (q, k, v) = (q.clone(), k.clone(), v.clone());
        // what the forward saved, on its device
        let saved_shape = match (for_backward, saves_lse) {
            (false, _) => vec![0],
            (true, true) => vec![dims.batch, lq],
            (true, false) => vec![dims.batch, lq, lk],
        };
        let saved = Tensor::from_storage(saved, Shape::new(saved_shape));
        Node::new("attention", vec![q.clone(), k.clone(), v.clone()], move |g| {
            let (dq, dk, dv) = match Tensor::common_device("attention_backward", &[&q, g])? {
                Device::Cpu => {
                    let (sq, sk, sv, sp, sg) = (q.storage(), k.storage(), v.storage(), saved.storage(), g.storage());
                    let name = "attention_backward";
                    let (q, k, v, lse, g) = (sq.cpu_f32(name)?, sk.cpu_f32(name)?, sv.cpu_f32(name)?, sp.cpu_f32(name)?, sg.cpu_f32(name)?);
                    let (dq, dk, dv) = if bf16 {
                        let so = out.storage();
                        cpu::backward_bf16(q, k, v, so.cpu_f32(name)?, lse, g, dims, scale)
                    } else if layout == Layout::Columns && columns_backward::takes(dims) {
                        let so = out.storage();
                        columns_backward::backward(q, k, v, so.cpu_f32(name)?, lse, g, dims, scale)
                    } else {
                        cpu::backward(q, k, v, lse, g, dims, layout, scale)
                    };
                    (cpu_f32_storage(dq), cpu_f32_storage(dk), cpu_f32_storage(dv))
                }
                Device::Cuda(_) => {
                    let (sq, sk, sv, sp, sg) = (q.storage(), k.storage(), v.storage(), saved.storage(), g.storage());
                    let name = "attention_backward";
                    let (q, k, v, saved, g) = (sq.cuda(name)?, sk.cuda(name)?, sv.cuda(name)?, sp.cuda(name)?, sg.cuda(name)?);
                    let (dq, dk, dv) = if saves_lse {
                        let so = out.storage();
                        cuda::backward_lse(q, k, v, so.cuda(name)?, saved, g, dims, scale, bf16)?
                    } else {
                        cuda::backward(q, k, v, saved, g, dims, layout, scale)?
                    };
                    (Storage::Cuda(dq), Storage::Cuda(dk), Storage::Cuda(dv))
                }
            };
            let wrap = |data: Storage, t: &Tensor| Some(Tensor::from_storage(data, t.shape().clone()));
            Ok(vec![wrap(dq, &q), wrap(dk, &k), wrap(dv, &v)])
        })
    }))
}
