//! The f32 attention backward of the Columns layout (the UNet's) on AVX-512,
//! in one pass that keeps nothing [Lq, Lk] (`cpu::backward`, its reference,
//! recomputes P and multiplies [Lq, Lk] matrices through gemm):
//!
//!   s_ij = scale·Σ_f Q[f, i]·K[f, j],   p_ij = e^(s_ij − L_i)   (L: the forward's log-sum-exp)
//!   δ_i = Σ_c dO[c, i]·O[c, i]                                  (= Σ_j p_ij·dP_ij)
//!   dP_ij = Σ_c dO[c, i]·V[c, j],       dS_ij = scale·p_ij·(dP_ij − δ_i)
//!   dQ[f, i] = Σ_j dS_ij·K[f, j],   dK[f, j] = Σ_i dS_ij·Q[f, i],   dV[c, j] = Σ_i p_ij·dO[c, i]
//!
//! One batch entry per rayon task, 16 queries at a time in the vector lanes
//! and 16 keys at a time: a tile's p and dS come out lane-wise in the
//! queries, as dQ wants them (D accumulators over the keys); transposed in
//! registers they are lane-wise in the keys, as dK and dV want them (rows of
//! 16 keys, contiguous in the Columns layout, accumulated in place). Each sum
//! runs in one order — keys in turn for dQ, queries in turn for dK and dV —
//! whatever the thread count. Heads of D = Dv ∈ {8, 16} features are
//! compiled for (the UNet's attention_head_dim is 8), so a query block's Q,
//! dO and dQ sit in registers; other heads take the reference.

use super::cpu::Dims;
use rayon::prelude::*;

/// Whether [`backward`] takes attention of these dims: this CPU has
/// AVX-512, the heads have D = Dv ∈ {8, 16} features, and there are queries
/// and keys.
pub fn takes(dims: Dims) -> bool {
    avx512_available() && dims.d == dims.dv && matches!(dims.d, 8 | 16) && dims.lq > 0 && dims.lk > 0
}

fn avx512_available() -> bool {
    crate::ops::fast_math::avx512()
}

/// (dQ, dK, dV) of the Columns-layout attention O = softmax(scale·QᵀK)·Vᵀ
/// (per batch entry q [D, Lq], k [D, Lk], v [Dv, Lk], o and d_o [Dv, Lq],
/// lse [Lq] the rows' natural log-sum-exp), as `cpu::backward` computes
/// them. Call only where [`takes`].
#[allow(clippy::too_many_arguments)]
pub fn backward(q: &[f32], k: &[f32], v: &[f32], o: &[f32], lse: &[f32], d_o: &[f32], dims: Dims, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(takes(dims), "the lane attention backward does not take {dims:?}");
    let Dims { batch, lq, lk, d, .. } = dims;
    assert!(q.len() >= batch * d * lq && o.len() >= batch * d * lq && d_o.len() >= batch * d * lq && lse.len() >= batch * lq);
    assert!(k.len() >= batch * d * lk && v.len() >= batch * d * lk);
    let (mut dq, mut dk, mut dv) = (crate::ops::zeros(batch * d * lq), crate::ops::zeros(batch * d * lk), crate::ops::zeros(batch * d * lk));
    dq.par_chunks_mut(d * lq).zip(dk.par_chunks_mut(d * lk)).zip(dv.par_chunks_mut(d * lk)).enumerate().for_each_init(|| std::array::from_fn(|_| Vec::new()), |scratch, (b, ((dq, dk), dv))| {
        let (sq, sk) = (b * d * lq, b * d * lk);
        let entry = Entry {
            q: &q[sq..][..d * lq],
            k: &k[sk..][..d * lk],
            v: &v[sk..][..d * lk],
            o: &o[sq..][..d * lq],
            d_o: &d_o[sq..][..d * lq],
            lse: &lse[b * lq..][..lq],
            lq,
            lk,
        };
        // SAFETY: `takes` checked AVX-512F; every slice is as long as Entry
        // and the outputs say (D·Lq, D·Lk), asserted above by their sources
        unsafe {
            match d {
                8 => avx512::entry::<8>(&entry, scale, dq, dk, dv, scratch),
                _ => avx512::entry::<16>(&entry, scale, dq, dk, dv, scratch),
            }
        }
    });
    (dq, dk, dv)
}

/// One batch entry's inputs: q, o, d_o [D, Lq], k, v [D, Lk], lse [Lq].
struct Entry<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    o: &'a [f32],
    d_o: &'a [f32],
    lse: &'a [f32],
    lq: usize,
    lk: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Entry;
    use crate::ops::avx512::{exp16, transpose16};
    use std::arch::x86_64::*;

    /// The first n of 16 lanes.
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 { !0 } else { (1u16 << n) - 1 }
    }

    /// x [D, L] as [L][D] (one position's D values together), 16 positions
    /// at a time through the register transpose (D ≤ 16 rows, the rest zero).
    ///
    /// # Safety
    /// AVX-512F; x holds D·len values; D ≤ 16.
    #[target_feature(enable = "avx512f")]
    unsafe fn positions_major<const D: usize>(x: &[f32], len: usize, out: &mut Vec<f32>) {
        debug_assert!(D <= 16 && x.len() >= D * len);
        out.clear();
        out.resize(len * D, 0.0);
        for p0 in (0..len).step_by(16) {
            let n = 16.min(len - p0);
            let mask = lanes(n);
            // SAFETY: row f < D is read at f·len + p0 … under the mask of
            // the n positions left; position p0 + i < len is written at
            // (p0 + i)·D, its D lanes
            unsafe {
                let rows: [__m512; 16] = std::array::from_fn(|f| if f < D { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(f * len + p0)) } else { _mm512_setzero_ps() });
                for (i, col) in transpose16(rows).iter().enumerate().take(n) {
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add((p0 + i) * D), lanes(D), *col);
                }
            }
        }
    }

    /// dq [D, Lq], dk and dv [D, Lk] (dk, dv zero on entry) of one batch
    /// entry. K, V, Q and dO are first copied position-major (`scratch`), so
    /// a key's or a query's D values are broadcast from one line. Each
    /// 16 × 16 tile runs in phases, each its own function so that its
    /// operands get the registers: scores and dP (from the query block's Q
    /// and dO), then p and dS (the exponential's constants), then dQ's
    /// accumulators, then dV's and dK's.
    ///
    /// # Safety
    /// AVX-512F; the entry's slices and the outputs hold D·Lq or D·Lk values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn entry<const D: usize>(e: &Entry, scale: f32, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32], scratch: &mut [Vec<f32>; 4]) {
        let Entry { q, k, v, o, d_o, lse, lq, lk } = *e;
        debug_assert!(q.len() >= D * lq && o.len() >= D * lq && d_o.len() >= D * lq && lse.len() >= lq && dq.len() >= D * lq);
        debug_assert!(k.len() >= D * lk && v.len() >= D * lk && dk.len() >= D * lk && dv.len() >= D * lk);
        let [kt, vt, qt, gt] = scratch;
        // SAFETY (all blocks below): row r of a [D, L] operand is read or
        // written at r·L + i0 … + 15 under a mask of the lanes < L − i0
        // (queries) or L − j0 (keys); the position-major copies at
        // position·D + f < L·D.
        unsafe {
            positions_major::<D>(k, lk, kt);
            positions_major::<D>(v, lk, vt);
            positions_major::<D>(q, lq, qt);
            positions_major::<D>(d_o, lq, gt);
            // a tile's scores then p, and dP then dS: one vector of 16
            // queries per key (keys past Lk: stale, never stored)
            let mut p_tile = [_mm512_setzero_ps(); 16];
            let mut ds_tile = [_mm512_setzero_ps(); 16];
            for i0 in (0..lq).step_by(16) {
                let n = 16.min(lq - i0);
                let qmask = lanes(n);
                let block = |x: &[f32], row: usize| _mm512_maskz_loadu_ps(qmask, x.as_ptr().add(row * lq + i0));
                let qb: [__m512; D] = std::array::from_fn(|f| block(q, f));
                let gb: [__m512; D] = std::array::from_fn(|c| block(d_o, c));
                // δ_i and L_i (lanes past Lq: 0)
                let delta = (0..D).fold(_mm512_setzero_ps(), |acc, c| _mm512_fmadd_ps(gb[c], block(o, c), acc));
                let l = _mm512_maskz_loadu_ps(qmask, lse.as_ptr().add(i0));
                let mut dq_acc = [_mm512_setzero_ps(); D];
                for j0 in (0..lk).step_by(16) {
                    let nk = 16.min(lk - j0);
                    let (kj, vj) = (&kt[j0 * D..][..nk * D], &vt[j0 * D..][..nk * D]);
                    scores_and_dp::<D>(&qb, &gb, kj, vj, &mut p_tile, &mut ds_tile);
                    probs_and_ds(scale, l, delta, nk, &mut p_tile, &mut ds_tile);
                    add_dq::<D>(kj, &ds_tile, &mut dq_acc);
                    // row ii: query i0 + ii's p (dS) over the tile's 16 keys
                    let (p_keys, ds_keys) = (transpose16(p_tile), transpose16(ds_tile));
                    let kmask = lanes(nk);
                    add_rows::<D>(dv.as_mut_ptr().add(j0), lk, kmask, &p_keys, &gt[i0 * D..][..n * D]);
                    add_rows::<D>(dk.as_mut_ptr().add(j0), lk, kmask, &ds_keys, &qt[i0 * D..][..n * D]);
                }
                for (f, acc) in dq_acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(dq.as_mut_ptr().add(f * lq + i0), qmask, *acc);
                }
            }
        }
    }

    /// s[jj] = Σ_f K[f, j]·Q[f, ·] and dp[jj] = Σ_c V[c, j]·dO[c, ·] for the
    /// tile's keys j = j0 + jj (kj, vj: their D values each, position-major).
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    fn scores_and_dp<const D: usize>(qb: &[__m512; D], gb: &[__m512; D], kj: &[f32], vj: &[f32], s: &mut [__m512; 16], dp: &mut [__m512; 16]) {
        for ((s, dp), (k, v)) in s.iter_mut().zip(dp.iter_mut()).zip(kj.chunks_exact(D).zip(vj.chunks_exact(D))) {
            *s = (0..D).fold(_mm512_setzero_ps(), |acc, f| _mm512_fmadd_ps(_mm512_set1_ps(k[f]), qb[f], acc));
            *dp = (0..D).fold(_mm512_setzero_ps(), |acc, c| _mm512_fmadd_ps(_mm512_set1_ps(v[c]), gb[c], acc));
        }
    }

    /// In place, for the tile's first nk keys: p = e^(scale·s − L) and
    /// dS = scale·p·(dP − δ). (p is 1 in the lanes past Lq, where Q, dO and L
    /// loaded as 0, and dS 0; their rows of the transposed tile are never read.)
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    fn probs_and_ds(scale: f32, l: __m512, delta: __m512, nk: usize, p: &mut [__m512; 16], ds: &mut [__m512; 16]) {
        let scale_v = _mm512_set1_ps(scale);
        for (p, ds) in p.iter_mut().zip(ds.iter_mut()).take(nk) {
            *p = exp16(_mm512_fmsub_ps(*p, scale_v, l));
            *ds = _mm512_mul_ps(_mm512_mul_ps(*p, scale_v), _mm512_sub_ps(*ds, delta));
        }
    }

    /// dq[f] += Σ_jj K[f, j0 + jj]·dS[jj] over the tile's keys.
    #[inline(never)]
    #[target_feature(enable = "avx512f")]
    fn add_dq<const D: usize>(kj: &[f32], ds: &[__m512; 16], dq: &mut [__m512; D]) {
        let mut acc = *dq;
        for (k, &ds) in kj.chunks_exact(D).zip(ds) {
            for (a, &kf) in acc.iter_mut().zip(k) {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(kf), ds, *a);
            }
        }
        *dq = acc;
    }

    /// out[r·ld_out + lane] += Σ_ii x[ii·D + r] · w[ii][lane] for the D rows
    /// r, the lanes in `mask` and the x.len()/D ≤ 16 queries ii: D
    /// accumulators, queries in turn.
    ///
    /// # Safety
    /// AVX-512F; out's D rows hold the masked lanes.
    #[target_feature(enable = "avx512f")]
    unsafe fn add_rows<const D: usize>(out: *mut f32, ld_out: usize, mask: __mmask16, w: &[__m512; 16], x: &[f32]) {
        // SAFETY: the caller's bounds
        unsafe {
            let mut acc: [__m512; D] = std::array::from_fn(|r| _mm512_maskz_loadu_ps(mask, out.add(r * ld_out)));
            for (xi, &w_ii) in x.chunks_exact(D).zip(w) {
                for (a, &x) in acc.iter_mut().zip(xi) {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(x), w_ii, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(r * ld_out), mask, *a);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod avx512 {
    use super::Entry;

    /// Never called: `takes` is false without AVX-512.
    pub unsafe fn entry<const D: usize>(_: &Entry, _: f32, _: &mut [f32], _: &mut [f32], _: &mut [f32], _: &mut [Vec<f32>; 4]) {
        unreachable!("the lane attention backward runs on AVX-512 only")
    }
}
