//! Scaled dot-product attention, one (batch, head) slice per rayon task (CPU reference).
//! Shapes per slice: q [Lq, D], k [Lk, D], v [Lk, Dv], p [Lq, Lk], o [Lq, Dv]
//! (Layout::Rows), or each sequence operand transposed, q [D, Lq], k [D, Lk],
//! v [Dv, Lk], o [Dv, Lq] (Layout::Columns: the UNet's channels-first feature
//! maps, no permutes); p is [Lq, Lk] either way.

use crate::ops::matmul::cpu::{MatRef, gemm};
use crate::ops::fast_math;
use crate::ops::softmax::cpu::{exp_row_scaled_in_place, softmax_row_backward};
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

/// P = softmax(scale·Q·Kᵀ) row-wise, O = P·V. Returns (O, L) with L [batch,
/// Lq] the rows' log-sum-exp, L_i = log Σ_j e^(scale·s_ij): what [`backward`]
/// needs to recompute P_ij = e^(scale·s_ij − L_i) per batch entry, so no
/// [batch, Lq, Lk] P is kept (67 MB per 16×16 attention block of the seed
/// UNet at batch 32, fresh pages each step). Layout::Columns (the UNet's)
/// runs [`columns_lanes`]; Rows keeps P in one scratch per task.
pub fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, layout: Layout, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let Dims { batch, lq, lk, d, dv } = dims;
    let mut o = crate::ops::zeros(batch * lq * dv);
    let mut lse = vec![0.0; batch * lq];
    if layout == Layout::Columns && lk > 0 && lq > 0 {
        // the inference lanes, each query's log-sum-exp kept as well
        o.par_chunks_mut(lq * dv).zip(lse.par_chunks_mut(lq)).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, q_block), (b, (o, lse))| {
                let (qb, kb, vb) = (&q[b * d * lq..][..d * lq], &k[b * d * lk..][..d * lk], &v[b * dv * lk..][..dv * lk]);
                columns_lanes(qb, kb, vb, o, Some(lse), dims, scale, scores, q_block);
            },
        );
        return (o, lse);
    }
    o.par_chunks_mut(lq * dv).zip(lse.par_chunks_mut(lq)).enumerate().for_each_init(
        || vec![0.0; lq * lk],
        |p, (b, (o, lse))| forward_one(q, k, v, dims, layout, scale, b, p, o, lse),
    );
    (o, lse)
}

/// [`forward`] without keeping P (inference). Layout::Columns (the UNet's)
/// runs [`columns_lanes`]; Rows reuses one [Lq, Lk] scratch per task, which
/// stays in cache between the two products.
pub fn forward_output(q: &[f32], k: &[f32], v: &[f32], dims: Dims, layout: Layout, scale: f32) -> Vec<f32> {
    let Dims { batch, lq, lk, dv, .. } = dims;
    let mut o = crate::ops::zeros(batch * lq * dv);
    if layout == Layout::Columns && lk > 0 {
        let Dims { d, .. } = dims;
        o.par_chunks_mut(lq * dv).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, q_block), (b, o)| {
                let (qb, kb, vb) = (&q[b * d * lq..][..d * lq], &k[b * d * lk..][..d * lk], &v[b * dv * lk..][..dv * lk]);
                columns_lanes(qb, kb, vb, o, None, dims, scale, scores, q_block);
            },
        );
        return o;
    }
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
                *inv = 1.0 / exp_row_scaled_in_place(row, scale).1;
            }
            layout.product(MatRef::rows(e, lq, lk), vb, o);
            o.chunks_mut(dv).zip(inv_sums.iter()).for_each(|(row, &inv)| row.iter_mut().for_each(|x| *x *= inv));
        },
    );
    o
}

/// Inference attention at the bf16 compute precision, Layout::Columns (the
/// twin of kernels/attention.cu's `attention_columns_infer_bf16_h*`): in base
/// 2, with c = scale·log2 e rounded into Q as the kernel folds it,
///   s_ij = Σ_d bf16(c·Q[d,i])·bf16(K[d,j]),   M_i = ⌈max_j s_ij⌉,
///   p_ij = 2^(s_ij − M_i),   l_i = Σ_j p_ij,
///   O[:, i] = Σ_j bf16(p_ij)·bf16(V[:, j]) · (1/l_i),
/// the products exact and summed in f32 (the kernel's mma sums in another
/// order). As the kernel, one pass over the keys 16 at a time with a running
/// maximum that is a whole number ([`OnlineRow`]): the sums are scaled by
/// 2^−d when it grows by d, which leaves each bf16(p_ij) as against the final
/// M_i. Lk ≥ 1.
pub fn forward_output_bf16(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32) -> Vec<f32> {
    forward_bf16(q, k, v, dims, scale).0
}

/// [`forward_output_bf16`] for training: (O, L) with L [batch, Lq] each
/// query's log-sum-exp in base 2, L_i = M_i + log2 l_i, from which
/// [`backward_bf16`] recomputes p_ij = 2^(s_ij − L_i).
pub fn forward_bf16(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32) -> (Vec<f32>, Vec<f32>) {
    use crate::ops::precision::round_bf16;
    let Dims { batch, lq, lk, d, dv } = dims;
    assert!(lk > 0 && q.len() >= batch * d * lq && k.len() >= batch * d * lk && v.len() >= batch * dv * lk);
    let c = scale * std::f32::consts::LOG2_E;
    let mut o = vec![0.0; batch * lq * dv];
    let mut lse = vec![0.0; batch * lq];
    o.par_chunks_mut((lq * dv).max(1)).zip(lse.par_chunks_mut(lq.max(1))).enumerate().for_each(|(b, (o, lse))| {
        // this entry's K key-major and V value-major, rounded once
        let (qb, kb, vb) = (&q[b * d * lq..][..d * lq], &k[b * d * lk..][..d * lk], &v[b * dv * lk..][..dv * lk]);
        let kr: Vec<f32> = (0..lk * d).map(|e| round_bf16(kb[(e % d) * lk + e / d])).collect();
        let vr: Vec<f32> = vb.iter().map(|&x| round_bf16(x)).collect();
        let (mut qi, mut s) = (vec![0.0f32; d], vec![0.0f32; lk]);
        let mut row = OnlineRow::new(dv);
        for i in 0..lq {
            qi.iter_mut().enumerate().for_each(|(f, x)| *x = round_bf16(c * qb[f * lq + i]));
            for (j, sj) in s.iter_mut().enumerate() {
                *sj = dot(&qi, &kr[j * d..][..d]);
            }
            row.reset();
            for (t, tile) in s.chunks_mut(ONLINE_TILE).enumerate() {
                row.add_tile(tile, t * ONLINE_TILE, &vr, lk);
            }
            lse[i] = row.m + row.l.log2();
            let inv = 1.0 / row.l;
            for ch in 0..dv {
                o[ch * lq + i] = row.acc[ch] * inv;
            }
        }
    });
    (o, lse)
}

/// Keys a step of the bf16 forward's pass (the kernel's mma tiles).
const ONLINE_TILE: usize = 16;

/// One query's sums in the bf16 forward's single pass: the running maximum
/// m (a whole number), l = Σ p and acc[ch] = Σ bf16(p)·bf16(V[ch, j]), all
/// against m.
struct OnlineRow {
    m: f32,
    l: f32,
    acc: Vec<f32>,
    first: bool,
}

impl OnlineRow {
    fn new(dv: usize) -> OnlineRow {
        OnlineRow { m: 0.0, l: 0.0, acc: vec![0.0; dv], first: true }
    }

    fn reset(&mut self) {
        self.m = 0.0;
        self.l = 0.0;
        self.acc.iter_mut().for_each(|a| *a = 0.0);
        self.first = true;
    }

    /// Adds keys j0 … j0 + s.len() − 1 with scores s (overwritten): x = s − m;
    /// the maximum grows by d = ⌈max x⌉ (≥ 0 after the first tile; the first
    /// tile sets it), the sums so far scaled by 2^−d; then p = 2^(x − d).
    fn add_tile(&mut self, s: &mut [f32], j0: usize, vr: &[f32], lk: usize) {
        use crate::ops::precision::round_bf16;
        let top = s.iter().fold(f32::NEG_INFINITY, |t, &x| t.max(x - self.m)).ceil();
        let d = if self.first { top } else { top.max(0.0) };
        if !self.first {
            let f = pow2_neg(d);
            self.l *= f;
            self.acc.iter_mut().for_each(|a| *a *= f);
        }
        self.first = false;
        for x in s.iter_mut() {
            let p = (*x - self.m - d).exp2();
            self.l += p;
            *x = round_bf16(p);
        }
        self.m += d;
        for (ch, a) in self.acc.iter_mut().enumerate() {
            *a += dot(s, &vr[ch * lk + j0..][..s.len()]);
        }
    }
}

/// 2^−d for a whole d ≥ 0 (0 past f32's normal range), as the kernel builds it.
fn pow2_neg(d: f32) -> f32 {
    if d > 126.0 { 0.0 } else { f32::from_bits(((127 - d as i32) << 23) as u32) }
}

/// Σ a_i·b_i in f32, in order (exact bf16 products: the kernels' mma terms).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |acc, (x, y)| acc + x * y)
}

/// The gradients of [`forward_bf16`] (the twin of kernels/attention.cu's
/// `attention_columns_backward_{query,key}_bf16_h*`), from O and the base-2
/// log-sum-exp L it returned; c = scale·log2 e:
///   s_ij = Σ_d bf16(c·Q[d,i])·bf16(K[d,j]),   p_ij = 2^(s_ij − L_i),
///   δ_i = Σ_c dO[c,i]·O[c,i]   (f32, fused multiply-adds in c order),
///   dP_ij = Σ_c bf16(dO[c,i])·bf16(V[c,j]),   dS_ij = p_ij·(dP_ij − δ_i),
///   dQ[:,i] = scale·Σ_j bf16(dS_ij)·bf16(K[:,j]),
///   dK[:,j] = scale·Σ_i bf16(dS_ij)·bf16(Q[:,i]),
///   dV[:,j] = Σ_i bf16(p_ij)·bf16(dO[:,i]),
/// exact products summed in f32 (the kernels' mma sum in another order).
#[allow(clippy::too_many_arguments)]
pub fn backward_bf16(q: &[f32], k: &[f32], v: &[f32], o: &[f32], lse: &[f32], d_o: &[f32], dims: Dims, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    use crate::ops::precision::round_bf16;
    let Dims { batch, lq, lk, d, dv } = dims;
    let c = scale * std::f32::consts::LOG2_E;
    let mut dq = vec![0.0; batch * lq * d];
    let mut dk = vec![0.0; batch * lk * d];
    let mut dvv = vec![0.0; batch * lk * dv];
    // [positions, features] rows of a [features, len] entry, each value mapped
    let rows = |x: &[f32], feats: usize, len: usize, f: &dyn Fn(f32) -> f32| -> Vec<f32> { (0..len * feats).map(|e| f(x[(e % feats) * len + e / feats])).collect() };
    dq.par_chunks_mut((lq * d).max(1)).zip(dk.par_chunks_mut((lk * d).max(1))).zip(dvv.par_chunks_mut((lk * dv).max(1))).enumerate().for_each(
        |(b, ((dq, dk), dvb))| {
            let (qb, kb, vb) = (&q[b * d * lq..][..d * lq], &k[b * d * lk..][..d * lk], &v[b * dv * lk..][..dv * lk]);
            let (ob, dob, lb) = (&o[b * dv * lq..][..dv * lq], &d_o[b * dv * lq..][..dv * lq], &lse[b * lq..][..lq]);
            let (qc, qr) = (rows(qb, d, lq, &|x| round_bf16(c * x)), rows(qb, d, lq, &round_bf16));
            let (kr, vr, dor) = (rows(kb, d, lk, &round_bf16), rows(vb, dv, lk, &round_bf16), rows(dob, dv, lq, &round_bf16));
            // bf16(p_ij) and bf16(dS_ij), [Lq, Lk]
            let (mut pr, mut dsr) = (vec![0.0f32; lq * lk], vec![0.0f32; lq * lk]);
            for i in 0..lq {
                let delta = (0..dv).fold(0.0f32, |acc, ch| dob[ch * lq + i].mul_add(ob[ch * lq + i], acc));
                for j in 0..lk {
                    let p = (dot(&qc[i * d..][..d], &kr[j * d..][..d]) - lb[i]).exp2();
                    let dp = dot(&dor[i * dv..][..dv], &vr[j * dv..][..dv]);
                    pr[i * lk + j] = round_bf16(p);
                    dsr[i * lk + j] = round_bf16(p * (dp - delta));
                }
            }
            for i in 0..lq {
                for f in 0..d {
                    dq[f * lq + i] = scale * (0..lk).fold(0.0f32, |acc, j| acc + dsr[i * lk + j] * kr[j * d + f]);
                }
            }
            for j in 0..lk {
                for f in 0..d {
                    dk[f * lk + j] = scale * (0..lq).fold(0.0f32, |acc, i| acc + dsr[i * lk + j] * qr[i * d + f]);
                }
                for ch in 0..dv {
                    dvb[ch * lk + j] = (0..lq).fold(0.0f32, |acc, i| acc + pr[i * lk + j] * dor[i * dv + ch]);
                }
            }
        },
    );
    (dq, dk, dvv)
}

/// Queries per block of [`columns_lanes`]: one 16-lane vector.
const QUERIES: usize = 16;

/// Attention of one batch entry in the Columns layout: Q [D, Lq], K [D, Lk],
/// V [Dv, Lk] → O [Dv, Lq], and with `lse` [Lq] each query's log-sum-exp
/// (what the backward needs), 16 queries at a time, one per vector lane, so
/// every step is lane-wise (no horizontal sums, no P matrix):
///   s_j = scale · Σ_d K[d, j] · Q[d, i]      for all keys j  (`scores`, Lk × 16)
///   m = max_j s_j,  e_j = exp(s_j − m),  l = Σ_j e_j
///   O[c, i] = (Σ_j V[c, j] · e_j) / l,  L_i = m + ln l
/// With AVX-512 each block runs `avx512::columns_block`, with AVX2
/// `avx2::columns_block`: the same steps in intrinsics; else
/// [`columns_lanes_plain`].
#[allow(clippy::too_many_arguments)]
fn columns_lanes(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], lse: Option<&mut [f32]>, dims: Dims, scale: f32, scores: &mut Vec<[f32; QUERIES]>, q_block: &mut Vec<[f32; QUERIES]>) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::ops::fast_math::{SimdLevel, simd_level};
        let block: ColumnsBlock = match simd_level() {
            SimdLevel::Avx512 => avx512::columns_block,
            SimdLevel::Avx2 => avx2::columns_block,
            SimdLevel::Plain => return columns_lanes_plain(q, k, v, o, lse, dims, scale, scores, q_block),
        };
        // SAFETY: simd_level() checked the block's features.
        unsafe { columns_blocks(block, q, k, v, o, lse, dims, scale, scores, q_block) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    columns_lanes_plain(q, k, v, o, lse, dims, scale, scores, q_block)
}

/// One 16-query block of [`columns_lanes`] in intrinsics (queries i0..;
/// scratch: scores Lk vectors, q_block D), returning each lane's maximum
/// score m and Σ e.
#[cfg(target_arch = "x86_64")]
type ColumnsBlock = unsafe fn(&[f32], &[f32], &[f32], &mut [f32], Dims, f32, usize, &mut [[f32; QUERIES]], &mut [[f32; QUERIES]]) -> ([f32; QUERIES], [f32; QUERIES]);

/// [`columns_lanes`] by `block`, 16 queries at a time.
///
/// # Safety
/// The CPU has the features `block` is compiled for.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn columns_blocks(block: ColumnsBlock, q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], mut lse: Option<&mut [f32]>, dims: Dims, scale: f32, scores: &mut Vec<[f32; QUERIES]>, q_block: &mut Vec<[f32; QUERIES]>) {
    let Dims { lq, lk, d, dv, .. } = dims;
    assert!(q.len() >= d * lq && k.len() >= d * lk && v.len() >= dv * lk && o.len() >= dv * lq);
    assert!(lse.as_ref().is_none_or(|l| l.len() >= lq));
    scores.resize(lk, [0.0; QUERIES]);
    q_block.resize(d, [0.0; QUERIES]);
    for i0 in (0..lq).step_by(QUERIES) {
        // SAFETY: the caller checked the features; the slices hold Q [D, Lq],
        // K [D, Lk], V [Dv, Lk], O [Dv, Lq] (asserted), the scratch Lk and
        // D vectors, and the block's n ≤ 16 lanes start at i0 < Lq.
        let (m, l) = unsafe { block(q, k, v, o, dims, scale, i0, scores, q_block) };
        if let Some(lse) = lse.as_deref_mut() {
            log_sum_exp(&m, &l, &mut lse[i0..(i0 + QUERIES).min(lq)]);
        }
    }
}

/// L_i = m_i + ln l_i for the block's queries.
fn log_sum_exp(max: &[f32; QUERIES], sum: &[f32; QUERIES], lse: &mut [f32]) {
    for ((out, &m), &l) in lse.iter_mut().zip(max).zip(sum) {
        *out = m + l.ln();
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn columns_lanes_plain(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], mut lse: Option<&mut [f32]>, dims: Dims, scale: f32, scores: &mut Vec<[f32; QUERIES]>, q_block: &mut Vec<[f32; QUERIES]>) {
    let Dims { lq, lk, d, dv, .. } = dims;
    assert!(q.len() >= d * lq && k.len() >= d * lk && v.len() >= dv * lk && o.len() >= dv * lq);
    scores.resize(lk, [0.0; QUERIES]);
    q_block.resize(d, [0.0; QUERIES]);
    for i0 in (0..lq).step_by(QUERIES) {
        let n = QUERIES.min(lq - i0);
        for (dd, lanes) in q_block.iter_mut().enumerate() {
            *lanes = [0.0; QUERIES];
            lanes[..n].copy_from_slice(&q[dd * lq + i0..][..n]);
        }
        let mut max = [f32::NEG_INFINITY; QUERIES];
        for (j, s) in scores.iter_mut().enumerate() {
            let mut acc = [0.0f32; QUERIES];
            for (dd, lanes) in q_block.iter().enumerate() {
                let kv = k[dd * lk + j];
                for (a, &x) in acc.iter_mut().zip(lanes) {
                    *a = kv.mul_add(x, *a);
                }
            }
            for (a, m) in acc.iter_mut().zip(max.iter_mut()) {
                *a *= scale;
                *m = if *a > *m { *a } else { *m };
            }
            *s = acc;
        }
        let mut sum = [0.0f32; QUERIES];
        for s in scores.iter_mut() {
            for ((e, &m), l) in s.iter_mut().zip(&max).zip(sum.iter_mut()) {
                *e = fast_math::exp(*e - m);
                *l += *e;
            }
        }
        if let Some(lse) = lse.as_deref_mut() {
            log_sum_exp(&max, &sum, &mut lse[i0..i0 + n]);
        }
        let mut c0 = 0;
        while c0 + 8 <= dv {
            weighted_values::<8>(v, scores, lk, c0, &sum, &mut o[c0 * lq + i0..], lq, n);
            c0 += 8;
        }
        while c0 < dv {
            weighted_values::<1>(v, scores, lk, c0, &sum, &mut o[c0 * lq + i0..], lq, n);
            c0 += 1;
        }
    }
}

/// O[c0 + c, lane] = Σ_j V[c0 + c, j] · e_j[lane] / l[lane] for C rows, the
/// first `n` lanes stored (rows of O `lq` apart).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn weighted_values<const C: usize>(v: &[f32], e: &[[f32; QUERIES]], lk: usize, c0: usize, sum: &[f32; QUERIES], o: &mut [f32], lq: usize, n: usize) {
    let mut acc = [[0.0f32; QUERIES]; C];
    // every slice lk long, so that the loop below has no bounds test (one
    // kept the accumulators in memory and the lanes scalar)
    let (e, rows): (_, [&[f32]; C]) = (&e[..lk], std::array::from_fn(|c| &v[(c0 + c) * lk..][..lk]));
    for j in 0..lk {
        for c in 0..C {
            let vv = rows[c][j];
            for (a, &x) in acc[c].iter_mut().zip(&e[j]) {
                *a = vv.mul_add(x, *a);
            }
        }
    }
    for (c, acc_c) in acc.iter().enumerate() {
        for (out, (&a, &l)) in o[c * lq..c * lq + n].iter_mut().zip(acc_c.iter().zip(sum)) {
            *out = a / l;
        }
    }
}

/// Batch entry b: p = softmax(scale·Q_b·K_bᵀ), o = p·V_b, lse = each row's
/// log Σ_j e^(scale·s_ij).
#[allow(clippy::too_many_arguments)]
fn forward_one(q: &[f32], k: &[f32], v: &[f32], dims: Dims, layout: Layout, scale: f32, b: usize, p: &mut [f32], o: &mut [f32], lse: &mut [f32]) {
    let Dims { lq, lk, d, dv, .. } = dims;
    let (qb, kb, vb) = (layout.view(q, b, lq, d), layout.view(k, b, lk, d), layout.view(v, b, lk, dv));
    gemm(qb, kb.t(), p, lk, false, false);
    for (row, lse) in p.chunks_mut(lk).zip(lse.iter_mut()) {
        let (max, sum) = exp_row_scaled_in_place(row, scale);
        *lse = max + sum.ln();
        let inv = 1.0 / sum;
        fast_math::map_in_place(row, |e| e * inv);
    }
    layout.product(MatRef::rows(p, lq, lk), vb, o);
}

/// P_b = e^(scale·Q_b·K_bᵀ − L) into `p` [Lq, Lk] (the softmax [`forward`] computed).
#[allow(clippy::too_many_arguments)]
fn recompute_probs(q: &[f32], k: &[f32], lse: &[f32], dims: Dims, layout: Layout, scale: f32, b: usize, p: &mut [f32]) {
    let Dims { lq, lk, d, .. } = dims;
    gemm(layout.view(q, b, lq, d), layout.view(k, b, lk, d).t(), p, lk, false, false);
    for (row, &l) in p.chunks_mut(lk).zip(&lse[b * lq..(b + 1) * lq]) {
        fast_math::map_in_place(row, |s| fast_math::exp(s * scale - l));
    }
}

/// Gradients (dQ, dK, dV) from dO and the saved log-sum-exp L (P recomputed
/// per batch entry, see [`forward`]):
///   dV = Pᵀ·dO;  dP = dO·Vᵀ;  dS = P ⊙ (dP − rowsum(dP ⊙ P));
///   dQ = scale·dS·K;  dK = scale·dSᵀ·Q.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lse: &[f32],
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
        .for_each_init(
            || (vec![0.0; lq * lk], vec![0.0; lq * lk], vec![0.0; lq * lk]),
            |(p, dp, ds), (b, ((dq, dk), dvb))| {
                recompute_probs(q, k, lse, dims, layout, scale, b, p);
                let (qb, kb, vb) = (layout.view(q, b, lq, d), layout.view(k, b, lk, d), layout.view(v, b, lk, dv));
                let pb = MatRef::rows(p, lq, lk);
                let dob = layout.view(d_o, b, lq, dv);
                layout.product(pb.t(), dob, dvb);
                gemm(dob, vb.t(), dp, lk, false, false);
                for ((ds, dp), p) in ds.chunks_mut(lk).zip(dp.chunks(lk)).zip(p.chunks(lk)) {
                    softmax_row_backward(p, dp, ds);
                    ds.iter_mut().for_each(|x| *x *= scale);
                }
                let ds = MatRef::rows(ds, lq, lk);
                layout.product(ds, kb, dq);
                layout.product(ds.t(), qb, dk);
            },
        );
    (dq, dk, dvv)
}

/// `avx512::columns_block` on AVX2: each 16-lane vector as two ymm halves.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Dims, QUERIES};
    use crate::ops::avx2::exp8;
    use std::arch::x86_64::*;

    /// The 16 queries from i0 of `super::columns_lanes_plain`, in registers:
    /// scores four keys at a time (eight accumulator chains), exp and sum in
    /// one pass, the weighted values four output rows at a time (the 16 ymm
    /// registers hold eight accumulators, the loaded halves and a broadcast).
    ///
    /// Returns each lane's maximum score m and Σ e (lanes past Lq unspecified).
    ///
    /// # Safety
    /// AVX2 and FMA; q [D, Lq], k [D, Lk], v [Dv, Lk], o [Dv, Lq] at least
    /// that long; scores Lk and q_block D vectors; i0 < Lq.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn columns_block(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], dims: Dims, scale: f32, i0: usize, scores: &mut [[f32; QUERIES]], q_block: &mut [[f32; QUERIES]]) -> ([f32; QUERIES], [f32; QUERIES]) {
        let Dims { lq, lk, d, dv, .. } = dims;
        let n = QUERIES.min(lq - i0);
        for (dd, lanes) in q_block.iter_mut().enumerate().take(d) {
            *lanes = [0.0; QUERIES];
            lanes[..n].copy_from_slice(&q[dd * lq + i0..][..n]);
        }
        let (kp, vp, sp) = (k.as_ptr(), v.as_ptr(), scores.as_mut_ptr().cast::<f32>());
        let load = |p: *const f32| -> [__m256; 2] {
            // SAFETY: p addresses 16 floats (the callers' vectors).
            unsafe { [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))] }
        };
        // SAFETY (all blocks below): every index stays inside the slices'
        // asserted sizes; lanes past Lq are never written to o.
        unsafe {
            let qp = q_block.as_ptr().cast::<f32>();
            let scale_v = _mm256_set1_ps(scale);
            let mut max = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
            let mut j = 0;
            while j + 4 <= lk {
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                for dd in 0..d {
                    let qv = load(qp.add(16 * dd));
                    let kr = kp.add(dd * lk + j);
                    for (key, acc_key) in acc.iter_mut().enumerate() {
                        let kv = _mm256_set1_ps(*kr.add(key));
                        for (a, &qh) in acc_key.iter_mut().zip(&qv) {
                            *a = _mm256_fmadd_ps(kv, qh, *a);
                        }
                    }
                }
                for (key, acc_key) in acc.iter().enumerate() {
                    for (h, (&a, m)) in acc_key.iter().zip(max.iter_mut()).enumerate() {
                        let s = _mm256_mul_ps(a, scale_v);
                        *m = _mm256_max_ps(s, *m);
                        _mm256_storeu_ps(sp.add(16 * (j + key) + 8 * h), s);
                    }
                }
                j += 4;
            }
            while j < lk {
                let mut acc = [_mm256_setzero_ps(); 2];
                for dd in 0..d {
                    let kv = _mm256_set1_ps(*kp.add(dd * lk + j));
                    for (a, qh) in acc.iter_mut().zip(load(qp.add(16 * dd))) {
                        *a = _mm256_fmadd_ps(kv, qh, *a);
                    }
                }
                for (h, (&a, m)) in acc.iter().zip(max.iter_mut()).enumerate() {
                    let s = _mm256_mul_ps(a, scale_v);
                    *m = _mm256_max_ps(s, *m);
                    _mm256_storeu_ps(sp.add(16 * j + 8 * h), s);
                }
                j += 1;
            }
            let mut sum = [_mm256_setzero_ps(); 2];
            for j in 0..lk {
                for (h, (l, &m)) in sum.iter_mut().zip(&max).enumerate() {
                    let at = sp.add(16 * j + 8 * h);
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(at), m));
                    *l = _mm256_add_ps(*l, e);
                    _mm256_storeu_ps(at, e);
                }
            }
            let mut c0 = 0;
            while c0 < dv {
                let rows = 4.min(dv - c0);
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                if rows == 4 {
                    for j in 0..lk {
                        let e = load(sp.add(16 * j));
                        for (c, acc_c) in acc.iter_mut().enumerate() {
                            let vv = _mm256_set1_ps(*vp.add((c0 + c) * lk + j));
                            for (a, &eh) in acc_c.iter_mut().zip(&e) {
                                *a = _mm256_fmadd_ps(vv, eh, *a);
                            }
                        }
                    }
                } else {
                    for j in 0..lk {
                        let e = load(sp.add(16 * j));
                        for (c, acc_c) in acc.iter_mut().enumerate().take(rows) {
                            let vv = _mm256_set1_ps(*vp.add((c0 + c) * lk + j));
                            for (a, &eh) in acc_c.iter_mut().zip(&e) {
                                *a = _mm256_fmadd_ps(vv, eh, *a);
                            }
                        }
                    }
                }
                for (c, acc_c) in acc.iter().enumerate().take(rows) {
                    let mut out = [0.0f32; QUERIES];
                    for (h, (&a, &l)) in acc_c.iter().zip(&sum).enumerate() {
                        _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), _mm256_div_ps(a, l));
                    }
                    o[(c0 + c) * lq + i0..][..n].copy_from_slice(&out[..n]);
                }
                c0 += rows;
            }
            let (mut m, mut l) = ([0.0f32; QUERIES], [0.0f32; QUERIES]);
            for h in 0..2 {
                _mm256_storeu_ps(m.as_mut_ptr().add(8 * h), max[h]);
                _mm256_storeu_ps(l.as_mut_ptr().add(8 * h), sum[h]);
            }
            (m, l)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Dims, QUERIES};
    use crate::ops::avx512::exp16;
    use std::arch::x86_64::*;

    /// The 16 queries from i0 of `super::columns_lanes_plain`, in registers:
    /// scores four keys at a time (four accumulator chains), exp and sum in
    /// one pass, the weighted values eight output rows at a time.
    ///
    /// Returns each lane's maximum score m and Σ e (lanes past Lq unspecified).
    ///
    /// # Safety
    /// AVX-512F; q [D, Lq], k [D, Lk], v [Dv, Lk], o [Dv, Lq] at least that
    /// long; scores Lk and q_block D vectors; i0 < Lq.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn columns_block(q: &[f32], k: &[f32], v: &[f32], o: &mut [f32], dims: Dims, scale: f32, i0: usize, scores: &mut [[f32; QUERIES]], q_block: &mut [[f32; QUERIES]]) -> ([f32; QUERIES], [f32; QUERIES]) {
        let Dims { lq, lk, d, dv, .. } = dims;
        let n = QUERIES.min(lq - i0);
        let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
        let (kp, vp, sp) = (k.as_ptr(), v.as_ptr(), scores.as_mut_ptr().cast::<f32>());
        // SAFETY (all blocks below): every index stays inside the slices'
        // asserted sizes; masked lanes past Lq are never read or written.
        unsafe {
            for (dd, lanes) in q_block.iter_mut().enumerate().take(d) {
                _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_maskz_loadu_ps(mask, q.as_ptr().add(dd * lq + i0)));
            }
            let qp = q_block.as_ptr().cast::<f32>();
            let scale_v = _mm512_set1_ps(scale);
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut j = 0;
            while j + 4 <= lk {
                let (mut a0, mut a1, mut a2, mut a3) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());
                for dd in 0..d {
                    let qv = _mm512_loadu_ps(qp.add(16 * dd));
                    let kr = kp.add(dd * lk + j);
                    a0 = _mm512_fmadd_ps(_mm512_set1_ps(*kr), qv, a0);
                    a1 = _mm512_fmadd_ps(_mm512_set1_ps(*kr.add(1)), qv, a1);
                    a2 = _mm512_fmadd_ps(_mm512_set1_ps(*kr.add(2)), qv, a2);
                    a3 = _mm512_fmadd_ps(_mm512_set1_ps(*kr.add(3)), qv, a3);
                }
                for (i, a) in [a0, a1, a2, a3].into_iter().enumerate() {
                    let s = _mm512_mul_ps(a, scale_v);
                    max = _mm512_max_ps(s, max);
                    _mm512_storeu_ps(sp.add(16 * (j + i)), s);
                }
                j += 4;
            }
            while j < lk {
                let mut a = _mm512_setzero_ps();
                for dd in 0..d {
                    a = _mm512_fmadd_ps(_mm512_set1_ps(*kp.add(dd * lk + j)), _mm512_loadu_ps(qp.add(16 * dd)), a);
                }
                let s = _mm512_mul_ps(a, scale_v);
                max = _mm512_max_ps(s, max);
                _mm512_storeu_ps(sp.add(16 * j), s);
                j += 1;
            }
            let mut sum = _mm512_setzero_ps();
            for j in 0..lk {
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(sp.add(16 * j)), max));
                sum = _mm512_add_ps(sum, e);
                _mm512_storeu_ps(sp.add(16 * j), e);
            }
            let mut c0 = 0;
            while c0 < dv {
                let rows = 8.min(dv - c0);
                let mut acc = [_mm512_setzero_ps(); 8];
                if rows == 8 {
                    for j in 0..lk {
                        let e = _mm512_loadu_ps(sp.add(16 * j));
                        for (c, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(*vp.add((c0 + c) * lk + j)), e, *a);
                        }
                    }
                } else {
                    for j in 0..lk {
                        let e = _mm512_loadu_ps(sp.add(16 * j));
                        for (c, a) in acc.iter_mut().enumerate().take(rows) {
                            *a = _mm512_fmadd_ps(_mm512_set1_ps(*vp.add((c0 + c) * lk + j)), e, *a);
                        }
                    }
                }
                for (c, a) in acc.iter().enumerate().take(rows) {
                    _mm512_mask_storeu_ps(o.as_mut_ptr().add((c0 + c) * lq + i0), mask, _mm512_div_ps(*a, sum));
                }
                c0 += rows;
            }
            let (mut m, mut l) = ([0.0f32; QUERIES], [0.0f32; QUERIES]);
            _mm512_storeu_ps(m.as_mut_ptr(), max);
            _mm512_storeu_ps(l.as_mut_ptr(), sum);
            (m, l)
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Each intrinsics block (whichever this CPU has, whatever the
    /// `MINIDIFFUSION_SIMD` cap) against the plain lanes: a partial last
    /// block of queries, keys past the four-key steps, output rows past the
    /// row groups.
    #[test]
    fn intrinsics_blocks_match_the_plain_lanes() {
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        let blocks: [(&str, bool, ColumnsBlock); 2] =
            [("avx512", std::arch::is_x86_feature_detected!("avx512f"), avx512::columns_block), ("avx2", avx2, avx2::columns_block)];
        for (name, available, block) in blocks {
            if !available {
                println!("SKIPPED the {name} attention block: this CPU lacks it");
                continue;
            }
            for (lq, lk, d, dv) in [(37, 23, 5, 11), (16, 4, 8, 4), (5, 1, 3, 3), (64, 70, 32, 34)] {
                let dims = Dims { batch: 1, lq, lk, d, dv };
                let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.0) - 1.0;
                let q: Vec<f32> = (0..d * lq).map(|i| val(i, 1)).collect();
                let k: Vec<f32> = (0..d * lk).map(|i| val(i, 2)).collect();
                let v: Vec<f32> = (0..dv * lk).map(|i| val(i, 3)).collect();
                let (mut want, mut got) = (vec![0.0; dv * lq], vec![f32::NAN; dv * lq]);
                let (mut s, mut qb) = (Vec::new(), Vec::new());
                let (mut lse_want, mut lse_got) = (vec![0.0; lq], vec![f32::NAN; lq]);
                columns_lanes_plain(&q, &k, &v, &mut want, Some(&mut lse_want), dims, 0.7, &mut s, &mut qb);
                // SAFETY: the CPU has the block's features (checked above).
                unsafe { columns_blocks(block, &q, &k, &v, &mut got, Some(&mut lse_got), dims, 0.7, &mut s, &mut qb) };
                for (i, (g, w)) in got.iter().zip(&want).chain(lse_got.iter().zip(&lse_want)).enumerate() {
                    assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{name} {dims:?} entry {i}: {g} vs {w}");
                }
            }
        }
    }
}
