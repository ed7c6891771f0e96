//! Scaled dot-product attention, one (batch, head) slice per rayon task (CPU reference).
//! Shapes per slice: q [Lq, D], k [Lk, D], v [Lk, Dv], p [Lq, Lk], o [Lq, Dv].

use crate::ops::matmul::cpu::{MatRef, gemm};
use crate::ops::softmax::cpu::{softmax_row_backward, softmax_row_in_place};
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

/// P = softmax(scale·Q·Kᵀ) row-wise, O = P·V. Returns (O, P); P is kept for backward.
pub fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let Dims { batch, lq, lk, d, dv } = dims;
    let mut o = vec![0.0; batch * lq * dv];
    let mut p = vec![0.0; batch * lq * lk];
    o.par_chunks_mut(lq * dv).zip(p.par_chunks_mut(lq * lk)).enumerate().for_each(|(b, (o, p))| {
        let qb = MatRef::rows(&q[b * lq * d..(b + 1) * lq * d], lq, d);
        let kb = MatRef::rows(&k[b * lk * d..(b + 1) * lk * d], lk, d);
        let vb = MatRef::rows(&v[b * lk * dv..(b + 1) * lk * dv], lk, dv);
        gemm(qb, kb.t(), p, lk, false, false);
        for row in p.chunks_mut(lk) {
            row.iter_mut().for_each(|s| *s *= scale);
            softmax_row_in_place(row);
        }
        gemm(MatRef::rows(p, lq, lk), vb, o, dv, false, false);
    });
    (o, p)
}

/// Gradients (dQ, dK, dV) from dO and the saved P:
///   dV = Pᵀ·dO;  dP = dO·Vᵀ;  dS = P ⊙ (dP − rowsum(dP ⊙ P));
///   dQ = scale·dS·K;  dK = scale·dSᵀ·Q.
pub fn backward(q: &[f32], k: &[f32], v: &[f32], p: &[f32], d_o: &[f32], dims: Dims, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { batch, lq, lk, d, dv } = dims;
    let mut dq = vec![0.0; batch * lq * d];
    let mut dk = vec![0.0; batch * lk * d];
    let mut dvv = vec![0.0; batch * lk * dv];
    dq.par_chunks_mut(lq * d)
        .zip(dk.par_chunks_mut(lk * d))
        .zip(dvv.par_chunks_mut(lk * dv))
        .enumerate()
        .for_each(|(b, ((dq, dk), dvb))| {
            let qb = MatRef::rows(&q[b * lq * d..(b + 1) * lq * d], lq, d);
            let kb = MatRef::rows(&k[b * lk * d..(b + 1) * lk * d], lk, d);
            let vb = MatRef::rows(&v[b * lk * dv..(b + 1) * lk * dv], lk, dv);
            let pb = &p[b * lq * lk..(b + 1) * lq * lk];
            let dob = MatRef::rows(&d_o[b * lq * dv..(b + 1) * lq * dv], lq, dv);
            gemm(MatRef::rows(pb, lq, lk).t(), dob, dvb, dv, false, false);
            let mut dp = vec![0.0; lq * lk];
            gemm(dob, vb.t(), &mut dp, lk, false, false);
            let mut ds = vec![0.0; lq * lk];
            for ((ds, dp), p) in ds.chunks_mut(lk).zip(dp.chunks(lk)).zip(pb.chunks(lk)) {
                softmax_row_backward(p, dp, ds);
                ds.iter_mut().for_each(|x| *x *= scale);
            }
            let ds = MatRef::rows(&ds, lq, lk);
            gemm(ds, kb, dq, d, false, false);
            gemm(ds.t(), qb, dk, d, false, false);
        });
    (dq, dk, dvv)
}
