//! Attention on CUDA, the CPU twin's steps as launches: the products are the
//! tiled GEMM of kernels/gemm.cu (batched over the leading dims, transposes by
//! strides), the softmax is the warp-per-row kernel of kernels/attention.cu.
//! Shapes per batch entry: q [Lq, D], k [Lk, D], v [Lk, Dv], p [Lq, Lk], o [Lq, Dv].

use super::cpu::Dims;
use crate::device::cuda::CudaBuffer;
use crate::error::Result;
use crate::ops::matmul::cuda::{MatView, gemm};
use crate::ops::softmax::cuda as softmax;

/// P = softmax(scale·Q·Kᵀ) row-wise, O = P·V. Returns (O, P); P is kept for backward.
pub fn forward(q: &CudaBuffer, k: &CudaBuffer, v: &CudaBuffer, dims: Dims, scale: f32) -> Result<(CudaBuffer, CudaBuffer)> {
    let Dims { batch, lq, lk, d, dv } = dims;
    let backend = q.backend();
    let p = backend.alloc(batch * lq * lk)?;
    let o = backend.alloc(batch * lq * dv)?;
    // S = scale·Q·Kᵀ, into P's buffer
    gemm(MatView::rows(q, lq, d), MatView::rows(k, lk, d).t(), MatView::rows(&p, lq, lk), batch, scale, false)?;
    // P = softmax(S), in place
    softmax::forward_into(&p, &p, lk)?;
    // O = P·V
    gemm(MatView::rows(&p, lq, lk), MatView::rows(v, lk, dv), MatView::rows(&o, lq, dv), batch, 1.0, false)?;
    Ok((o, p))
}

/// Gradients (dQ, dK, dV) from dO and the saved P:
///   dV = Pᵀ·dO;  dP = dO·Vᵀ;  dS = scale·P ⊙ (dP − rowsum(dP ⊙ P));
///   dQ = dS·K;  dK = dSᵀ·Q   (scale folded into dS once, as the CPU twin does).
pub fn backward(
    q: &CudaBuffer,
    k: &CudaBuffer,
    v: &CudaBuffer,
    p: &CudaBuffer,
    d_o: &CudaBuffer,
    dims: Dims,
    scale: f32,
) -> Result<(CudaBuffer, CudaBuffer, CudaBuffer)> {
    let Dims { batch, lq, lk, d, dv } = dims;
    let backend = q.backend();
    let (dq, dk, dvv, dp) =
        (backend.alloc(batch * lq * d)?, backend.alloc(batch * lk * d)?, backend.alloc(batch * lk * dv)?, backend.alloc(batch * lq * lk)?);
    let p_view = MatView::rows(p, lq, lk);
    let do_view = MatView::rows(d_o, lq, dv);
    // dV = Pᵀ·dO
    gemm(p_view.t(), do_view, MatView::rows(&dvv, lk, dv), batch, 1.0, false)?;
    // dP = dO·Vᵀ
    gemm(do_view, MatView::rows(v, lk, dv).t(), MatView::rows(&dp, lq, lk), batch, 1.0, false)?;
    // dS = scale·P ⊙ (dP − rowsum(dP ⊙ P))
    let ds = softmax::backward_scaled(p, &dp, lk, scale)?;
    let ds_view = MatView::rows(&ds, lq, lk);
    // dQ = dS·K,  dK = dSᵀ·Q
    gemm(ds_view, MatView::rows(k, lk, d), MatView::rows(&dq, lq, d), batch, 1.0, false)?;
    gemm(ds_view.t(), MatView::rows(q, lq, d), MatView::rows(&dk, lk, d), batch, 1.0, false)?;
    Ok((dq, dk, dvv))
}
