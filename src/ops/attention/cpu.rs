//! Scaled dot-product attention, one (batch, head) slice per rayon task (CPU reference).
//! Shapes per slice: q [Lq, D], k [Lk, D], v [Lk, Dv], p [Lq, Lk], o [Lq, Dv]
//! (Layout::Rows), or each sequence operand transposed, q [D, Lq], k [D, Lk],
//! v [Dv, Lk], o [Dv, Lq] (Layout::Columns: the UNet's channels-first feature
//! maps, no permutes); p is [Lq, Lk] either way.

use crate::ops::matmul::cpu::{MatRef, gemm};
use crate::ops::fast_math;
use crate::ops::softmax::cpu::{exp_row_scaled_in_place, softmax_row_backward, softmax_row_scaled_in_place};
use rayon::prelude::*;

/// Sizes of one attention problem.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub lq: usize,
    pub lk: usize,
    pub d: usize,
    pub dv: usize,
}

/// How q, k, v, o (and their gradients) lie in memory per batch entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// [L, D]: one row per sequence position.
    Rows,
    /// [D, L]: one row per feature (channels-first).
    Columns,
}

impl Layout {
    /// Entry `b` of a batch of [l, d] sequence matrices, as an [l, d] view.
    fn view(self, data: &[f32], b: usize, l: usize, d: usize) -> MatRef<'_> {
        let slice = &data[b * l * d..(b + 1) * l * d];
        match self {
            Layout::Rows => MatRef::rows(slice, l, d),
            Layout::Columns => MatRef::rows(slice, d, l).t(),
        }
    }

    /// out = a·b for an [l, d] result stored in this layout (as (a·b)ᵀ = bᵀ·aᵀ
    /// into [d, l] for Columns).
    fn product(self, a: MatRef, b: MatRef, out: &mut [f32]) {
        match self {
            Layout::Rows => gemm(a, b, out, b.cols, false, false),
            Layout::Columns => gemm(b.t(), a.t(), out, a.rows, false, false),
        }
    }
}

/// P = softmax(scale·Q·Kᵀ) row-wise, O = P·V. Returns (O, P); P is kept for backward.
pub fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, layout: Layout, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let Dims { batch, lq, lk, dv, .. } = dims;
    let mut o = vec![0.0; batch * lq * dv];
    let mut p = vec![0.0; batch * lq * lk];
    o.par_chunks_mut(lq * dv).zip(p.par_chunks_mut(lq * lk)).enumerate().for_each(|(b, (o, p))| {
        forward_one(q, k, v, dims, layout, scale, b, p, o);
    });
    (o, p)
}

/// [`forward`] without keeping P (inference): each task reuses one [Lq, Lk]
/// scratch, which stays in cache between the two products.
pub fn forward_output(q: &[f32], k: &[f32], v: &[f32], dims: Dims, layout: Layout, scale: f32) -> Vec<f32> {
    let Dims { batch, lq, lk, dv, .. } = dims;
    let mut o = vec![0.0; batch * lq * dv];
    o.par_chunks_mut(lq * dv).enumerate().for_each_init(
        || (vec![0.0; lq * lk], vec![0.0; lq]),
        |(e, inv_sums), (b, o)| {
            let Dims { lq, lk, d, dv, .. } = dims;
            let (qb, kb, vb) = (layout.view(q, b, lq, d), layout.view(k, b, lk, d), layout.view(v, b, lk, dv));
            // E = exp(scale·(S − rowmax)) unnormalised, O = E·V, then each
            // row of O divided by its row's Σ E: a pass over [Lq, Dv]
            // instead of one over [Lq, Lk]
            gemm(qb, kb.t(), e, lk, false, false);
            for (row, inv) in e.chunks_mut(lk).zip(inv_sums.iter_mut()) {
                *inv = 1.0 / exp_row_scaled_in_place(row, scale);
            }
            layout.product(MatRef::rows(e, lq, lk), vb, o);
            match layout {
                Layout::Rows => o.chunks_mut(dv).zip(inv_sums.iter()).for_each(|(row, &inv)| row.iter_mut().for_each(|x| *x *= inv)),
                Layout::Columns => o.chunks_mut(lq).for_each(|row| fast_math::map2_in_place(row, inv_sums, |x, inv| x * inv)),
            }
        },
    );
    o
}

/// Batch entry b: p = softmax(scale·Q_b·K_bᵀ), o = p·V_b.
#[allow(clippy::too_many_arguments)]
fn forward_one(q: &[f32], k: &[f32], v: &[f32], dims: Dims, layout: Layout, scale: f32, b: usize, p: &mut [f32], o: &mut [f32]) {
    let Dims { lq, lk, d, dv, .. } = dims;
    let (qb, kb, vb) = (layout.view(q, b, lq, d), layout.view(k, b, lk, d), layout.view(v, b, lk, dv));
    gemm(qb, kb.t(), p, lk, false, false);
    p.chunks_mut(lk).for_each(|row| softmax_row_scaled_in_place(row, scale));
    layout.product(MatRef::rows(p, lq, lk), vb, o);
}

/// Gradients (dQ, dK, dV) from dO and the saved P:
///   dV = Pᵀ·dO;  dP = dO·Vᵀ;  dS = P ⊙ (dP − rowsum(dP ⊙ P));
///   dQ = scale·dS·K;  dK = scale·dSᵀ·Q.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    d_o: &[f32],
    dims: Dims,
    layout: Layout,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { batch, lq, lk, d, dv } = dims;
    let mut dq = vec![0.0; batch * lq * d];
    let mut dk = vec![0.0; batch * lk * d];
    let mut dvv = vec![0.0; batch * lk * dv];
    dq.par_chunks_mut(lq * d)
        .zip(dk.par_chunks_mut(lk * d))
        .zip(dvv.par_chunks_mut(lk * dv))
        .enumerate()
        .for_each(|(b, ((dq, dk), dvb))| {
            let (qb, kb, vb) = (layout.view(q, b, lq, d), layout.view(k, b, lk, d), layout.view(v, b, lk, dv));
            let pb = MatRef::rows(&p[b * lq * lk..(b + 1) * lq * lk], lq, lk);
            let dob = layout.view(d_o, b, lq, dv);
            layout.product(pb.t(), dob, dvb);
            let mut dp = vec![0.0; lq * lk];
            gemm(dob, vb.t(), &mut dp, lk, false, false);
            let mut ds = vec![0.0; lq * lk];
            for ((ds, dp), p) in ds.chunks_mut(lk).zip(dp.chunks(lk)).zip(pb.data.chunks(lk)) {
                softmax_row_backward(p, dp, ds);
                ds.iter_mut().for_each(|x| *x *= scale);
            }
            let ds = MatRef::rows(&ds, lq, lk);
            layout.product(ds, kb, dq);
            layout.product(ds.t(), qb, dk);
        });
    (dq, dk, dvv)
}
