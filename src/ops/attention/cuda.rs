//! Attention on CUDA. Channels-first heads of at most 32 features (the UNet's)
//! run fused, forward and backward, with no [Lq, Lk] matrix in memory
//! ([`fused`]); otherwise the CPU twin's steps as launches: the products are
//! the tiled GEMM of kernels/gemm.cu (batched over the leading dims,
//! transposes by strides), the softmax is the warp-per-row kernel of
//! kernels/attention.cu.
//! Shapes per batch entry as in the CPU twin: q [Lq, D], k [Lk, D], v [Lk, Dv],
//! o [Lq, Dv] for Layout::Rows, each transposed for Layout::Columns; p [Lq, Lk].

use super::cpu::{Dims, Layout};
use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::ops::binary::cuda::elems;
use crate::error::Result;
use crate::ops::matmul::cuda::{MatView, gemm};
use crate::ops::softmax::cuda as softmax;
use crate::tensor::DType;

/// The batch of [l, d] sequence matrices in `buf`, as [l, d] views.
fn view(layout: Layout, buf: &CudaBuffer, l: usize, d: usize) -> MatView<'_> {
    match layout {
        Layout::Rows => MatView::rows(buf, l, d),
        Layout::Columns => MatView::rows(buf, d, l).t(),
    }
}

/// out = a·b (per batch entry) for an [l, d] result stored in `layout`:
/// (a·b)ᵀ = bᵀ·aᵀ into [d, l] for Columns, so every write is a plain row.
fn product(layout: Layout, a: MatView, b: MatView, out: &CudaBuffer, batch: usize, alpha: f32) -> Result<()> {
    match layout {
        Layout::Rows => gemm(a, b, MatView::rows(out, a.rows, b.cols), batch, alpha, false),
        Layout::Columns => gemm(b.t(), a.t(), MatView::rows(out, b.cols, a.rows), batch, alpha, false),
    }
}

/// P = softmax(scale·Q·Kᵀ) row-wise, O = P·V. Returns (O, P); P is kept for backward.
pub fn forward(q: &CudaBuffer, k: &CudaBuffer, v: &CudaBuffer, dims: Dims, layout: Layout, scale: f32) -> Result<(CudaBuffer, CudaBuffer)> {
    let Dims { batch, lq, lk, d, dv } = dims;
    let backend = q.backend();
    let p = backend.alloc(batch * lq * lk)?;
    let o = backend.alloc(batch * lq * dv)?;
    // S = scale·Q·Kᵀ, into P's buffer
    gemm(view(layout, q, lq, d), view(layout, k, lk, d).t(), MatView::rows(&p, lq, lk), batch, scale, false)?;
    // P = softmax(S), in place
    softmax::forward_into(&p, &p, lk)?;
    // O = P·V
    product(layout, MatView::rows(&p, lq, lk), view(layout, v, lk, dv), &o, batch, 1.0)?;
    Ok((o, p))
}

/// Largest D and Dv of the fused kernels.
const FUSED_MAX_HEAD: usize = 32;
/// Sequence positions (threads) per block of the fused kernels, at most.
const FUSED_THREADS: usize = 128;

/// True when the fused kernels run this problem: Layout::Columns with
/// D, Dv ≤ 32 (the UNet's heads) and at least one key.
pub fn fused(dims: Dims, layout: Layout) -> bool {
    layout == Layout::Columns && dims.d <= FUSED_MAX_HEAD && dims.dv <= FUSED_MAX_HEAD && dims.lk > 0
}

/// The fused kernels per head size: every per-feature loop is unrolled
/// 8, 16 or 32 times, the smallest that holds D and Dv.
const INFER: [&str; 3] = ["attention_columns_infer_h8", "attention_columns_infer_h16", "attention_columns_infer_h32"];
const BACKWARD_QUERY: [&str; 3] =
    ["attention_columns_backward_query_h8", "attention_columns_backward_query_h16", "attention_columns_backward_query_h32"];
const BACKWARD_KEY: [&str; 3] =
    ["attention_columns_backward_key_h8", "attention_columns_backward_key_h16", "attention_columns_backward_key_h32"];

fn for_head(kernels: [&'static str; 3], dims: Dims) -> &'static str {
    match dims.d.max(dims.dv) {
        0..=8 => kernels[0],
        9..=16 => kernels[1],
        _ => kernels[2],
    }
}

/// One thread per sequence position: `batch` entries of `len` positions, the
/// blocks along x (y and z stop at 65,535 blocks; batch × heads passes that at
/// 2,048 images), each block a multiple of 32 threads, at most 128.
fn fused_launch(batch: usize, len: usize) -> LaunchConfig {
    let threads = len.div_ceil(32).clamp(1, FUSED_THREADS / 32) * 32;
    LaunchConfig::blocks(batch * len.div_ceil(threads), threads as u32)
}

/// O without keeping P (inference): the fused kernel where [`fused`] (with
/// bf16 products on the tensor cores when `bf16`), else [`forward`] with P
/// dropped (f32).
pub fn forward_output(q: &CudaBuffer, k: &CudaBuffer, v: &CudaBuffer, dims: Dims, layout: Layout, scale: f32, bf16: bool) -> Result<CudaBuffer> {
    if !fused(dims, layout) {
        return Ok(forward(q, k, v, dims, layout, scale)?.0);
    }
    fused_forward(q, k, v, dims, scale, false, None, bf16).map(|(o, _)| o)
}

/// Inference attention over one packed [images, 3·heads·D, L] buffer — each
/// image's Q, then K, then V, as one conv of the three projections writes
/// them — into O [images·heads, D, L] (requires [`fused`]). A bf16 buffer
/// holds bf16(c·Q) (see [`fused_forward`]) and gives O in bf16.
pub fn forward_output_packed(qkv: &CudaBuffer, images: usize, heads: usize, d: usize, len: usize, scale: f32, bf16: bool) -> Result<CudaBuffer> {
    let dims = Dims { batch: images * heads, lq: len, lk: len, d, dv: d };
    let inner = heads * d * len;
    elems("attention", qkv.len())?;
    if qkv.len() != 3 * images * inner {
        return Err(crate::error::Error::Cuda(format!("packed attention: {} values for {images} × 3 × {inner}", qkv.len())));
    }
    // K and V: the same buffer from the image's second and third thirds on
    let at = |offset: usize| Arg::Ptr(qkv.ptr() + (offset * qkv.dtype().size_of()) as u64);
    let strides = PackedStrides { heads, image: 3 * inner, k: at(inner), v: at(2 * inner) };
    fused_forward(qkv, qkv, qkv, dims, scale, false, Some(strides), bf16).map(|(o, _)| o)
}

/// Where the fused forward finds K and V in a packed buffer, and its image stride.
struct PackedStrides {
    heads: usize,
    image: usize,
    k: Arg,
    v: Arg,
}

/// (O, L) by the fused kernel (requires [`fused`]): L [batch, Lq] the rows'
/// log-sum-exp — in base 2 with `bf16` products (the CPU twin's
/// `forward_bf16`) — from which [`backward_lse`] recomputes P; no
/// [batch, Lq, Lk] P is written or kept.
pub fn forward_lse(q: &CudaBuffer, k: &CudaBuffer, v: &CudaBuffer, dims: Dims, scale: f32, bf16: bool) -> Result<(CudaBuffer, CudaBuffer)> {
    let (o, lse) = fused_forward(q, k, v, dims, scale, true, None, bf16)?;
    Ok((o, lse.expect("asked for")))
}

/// The inference kernels per head size with bf16 products (kernels/attention.cu's
/// `attention_bf16`: Q·Kᵀ and P·V as m16n8k16 mma, 16 queries a warp).
const INFER_BF16: [&str; 3] = ["attention_columns_infer_bf16_h8", "attention_columns_infer_bf16_h16", "attention_columns_infer_bf16_h32"];

/// The same from bf16(c·Q), K and V stored in bf16, storing O in bf16 (inference).
const INFER_BF16_IO: [&str; 3] = ["attention_columns_infer_bf16_io_h8", "attention_columns_infer_bf16_io_h16", "attention_columns_infer_bf16_io_h32"];

/// Query tiles of 16 a warp; warps a block: up to 8 (the block's staged keys
/// serve 128 queries: two blocks a head at 16×16), fewer when Lq is short
/// (the 4×4 maps' 16 queries: one warp).
fn bf16_launch(batch: usize, lq: usize) -> LaunchConfig {
    let warps = lq.div_ceil(16).clamp(1, 8);
    LaunchConfig::blocks(batch * lq.div_ceil(16 * warps), 32 * warps as u32)
}

/// O (and L when `with_lse`) by the f32 kernel (a query a thread) or, with
/// `bf16`, the tensor-core one; the two take the same arguments. Q, K and V
/// stored in bf16 (all three, Q as bf16(c·Q); with `bf16`, no L) give O
/// stored in bf16: the staged words and the sums are the same
/// (kernels/attention.cu).
#[allow(clippy::too_many_arguments)]
fn fused_forward(
    q: &CudaBuffer,
    k: &CudaBuffer,
    v: &CudaBuffer,
    dims: Dims,
    scale: f32,
    with_lse: bool,
    packed: Option<PackedStrides>,
    bf16: bool,
) -> Result<(CudaBuffer, Option<CudaBuffer>)> {
    let Dims { batch, lq, lk, d, dv } = dims;
    let backend = q.backend();
    let io_bf16 = q.dtype() == DType::BF16;
    if [k, v].iter().any(|t| t.dtype() != q.dtype()) || (io_bf16 && (!bf16 || with_lse)) {
        let what = format!("q {:?}, k {:?}, v {:?}", q.dtype(), k.dtype(), v.dtype());
        return Err(crate::error::Error::Cuda(format!("fused attention: {what}: bf16 q, k and v are read at inference with bf16 products only")));
    }
    let o = backend.alloc_as(batch * lq * dv, if io_bf16 { DType::BF16 } else { DType::F32 })?;
    let lse = if with_lse { Some(backend.alloc(batch * lq)?) } else { None };
    if batch * lq == 0 {
        return Ok((o, lse));
    }
    let int = |n: usize| elems("attention", n).map(Arg::I32);
    // every index the kernel forms, and the block count, is below the largest buffer's length
    elems("attention", batch * d.max(dv).max(1) * lq.max(lk))?;
    let lse_arg = lse.as_ref().map_or(Arg::Ptr(0), |l| l.arg());
    // batch entry b = image·heads + head (see kernels/attention.cu's infer)
    let (k_arg, v_arg, heads, [q_image, k_image, v_image]) = match packed {
        Some(p) => (p.k, p.v, p.heads, [p.image; 3]),
        None => (k.arg(), v.arg(), 1, [d * lq, d * lk, dv * lk]),
    };
    let stride = |n: usize| Arg::U64(n as u64);
    let args =
        [o.arg(), lse_arg, q.arg(), k_arg, v_arg, int(lq)?, int(lk)?, int(d)?, int(dv)?, Arg::F32(scale), int(heads)?, stride(q_image), stride(k_image), stride(v_image)];
    let (kernels, launch) = match (bf16, io_bf16) {
        (true, true) => (INFER_BF16_IO, bf16_launch(batch, lq)),
        (true, false) => (INFER_BF16, bf16_launch(batch, lq)),
        (false, _) => (INFER, fused_launch(batch, lq)),
    };
    backend.launch(for_head(kernels, dims), launch, &args)?;
    Ok((o, lse))
}

/// The bf16-product backward kernels per head size (16 queries, or keys, a warp).
const BACKWARD_QUERY_BF16: [&str; 3] =
    ["attention_columns_backward_query_bf16_h8", "attention_columns_backward_query_bf16_h16", "attention_columns_backward_query_bf16_h32"];
const BACKWARD_KEY_BF16: [&str; 3] =
    ["attention_columns_backward_key_bf16_h8", "attention_columns_backward_key_bf16_h16", "attention_columns_backward_key_bf16_h32"];

/// (dQ, dK, dV) from the forward's output O and log-sum-exp of
/// [`forward_lse`] (requires [`fused`]) by the fused backward kernels: P is
/// recomputed on the fly, for δ (from O and dO) and dQ by query, then for dK
/// and dV by key — a position a thread at f32, 16 a warp on the tensor cores
/// with `bf16` (the CPU twin's `backward_bf16`, L in base 2); nothing of size
/// [batch, Lq, Lk] is written (the GEMM path [`backward`] writes P, dP and dS).
#[allow(clippy::too_many_arguments)]
pub fn backward_lse(
    q: &CudaBuffer,
    k: &CudaBuffer,
    v: &CudaBuffer,
    o: &CudaBuffer,
    lse: &CudaBuffer,
    d_o: &CudaBuffer,
    dims: Dims,
    scale: f32,
    bf16: bool,
) -> Result<(CudaBuffer, CudaBuffer, CudaBuffer)> {
    // `launch` places `batch` entries of L positions (Lq, then Lk)
    let ([by_query, by_key], launch): ([[&'static str; 3]; 2], fn(usize, usize) -> LaunchConfig) =
        if bf16 { ([BACKWARD_QUERY_BF16, BACKWARD_KEY_BF16], bf16_launch) } else { ([BACKWARD_QUERY, BACKWARD_KEY], fused_launch) };
    let Dims { batch, lq, lk, d, dv } = dims;
    let backend = q.backend();
    if batch * lq == 0 {
        // no queries: dQ is empty and nothing reaches K or V
        return Ok((backend.alloc(0)?, backend.zeros(batch * lk * d)?, backend.zeros(batch * lk * dv)?));
    }
    let (dq, dk, dvv) = (backend.alloc(batch * lq * d)?, backend.alloc(batch * lk * d)?, backend.alloc(batch * lk * dv)?);
    let delta = backend.alloc(batch * lq)?;
    let int = |n: usize| elems("attention", n).map(Arg::I32);
    elems("attention", batch * d.max(dv).max(1) * lq.max(lk))?;
    let args = [dq.arg(), delta.arg(), q.arg(), k.arg(), v.arg(), o.arg(), d_o.arg(), lse.arg(), int(lq)?, int(lk)?, int(d)?, int(dv)?, Arg::F32(scale)];
    backend.launch(for_head(by_query, dims), launch(batch, lq), &args)?;
    let args = [dk.arg(), dvv.arg(), q.arg(), k.arg(), v.arg(), d_o.arg(), lse.arg(), delta.arg(), int(lq)?, int(lk)?, int(d)?, int(dv)?, Arg::F32(scale)];
    backend.launch(for_head(by_key, dims), launch(batch, lk), &args)?;
    Ok((dq, dk, dvv))
}

/// Gradients (dQ, dK, dV) from dO and the saved P:
///   dV = Pᵀ·dO;  dP = dO·Vᵀ;  dS = scale·P ⊙ (dP − rowsum(dP ⊙ P));
///   dQ = dS·K;  dK = dSᵀ·Q   (scale folded into dS once, as the CPU twin does).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &CudaBuffer,
    k: &CudaBuffer,
    v: &CudaBuffer,
    p: &CudaBuffer,
    d_o: &CudaBuffer,
    dims: Dims,
    layout: Layout,
    scale: f32,
) -> Result<(CudaBuffer, CudaBuffer, CudaBuffer)> {
    let Dims { batch, lq, lk, d, dv } = dims;
    let backend = q.backend();
    let (dq, dk, dvv, dp) =
        (backend.alloc(batch * lq * d)?, backend.alloc(batch * lk * d)?, backend.alloc(batch * lk * dv)?, backend.alloc(batch * lq * lk)?);
    let p_view = MatView::rows(p, lq, lk);
    let do_view = view(layout, d_o, lq, dv);
    // dV = Pᵀ·dO
    product(layout, p_view.t(), do_view, &dvv, batch, 1.0)?;
    // dP = dO·Vᵀ
    gemm(do_view, view(layout, v, lk, dv).t(), MatView::rows(&dp, lq, lk), batch, 1.0, false)?;
    // dS = scale·P ⊙ (dP − rowsum(dP ⊙ P))
    let ds = softmax::backward_scaled(p, &dp, lk, scale)?;
    let ds_view = MatView::rows(&ds, lq, lk);
    // dQ = dS·K,  dK = dSᵀ·Q
    product(layout, ds_view, view(layout, k, lk, d), &dq, batch, 1.0)?;
    product(layout, ds_view.t(), view(layout, q, lq, d), &dk, batch, 1.0)?;
    Ok((dq, dk, dvv))
}
