//! AVX2 building blocks shared by the CPU kernels: e^x on 8 lanes, lane
//! masks and an 8 × 8 transpose. Callers check `fast_math::simd_level()`
//! (AVX2 and FMA).

use std::arch::x86_64::*;

/// The maskload/maskstore mask of the low 8 bits of `bits`: lane j all
/// ones where bit j is set.
#[inline]
#[target_feature(enable = "avx2")]
pub fn lane_mask(bits: u32) -> __m256i {
    let select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bits as i32), select), select)
}

/// The 8 × 8 transpose: out[c][r] = rows[r][c]. 32-bit interleaves of row
/// pairs, then 64-bit shuffles, leave s_i holding column i (i < 4) of four
/// rows in its low 128 bits and column i + 4 in its high; 128-bit lane
/// permutes join the two row quartets.
#[inline]
#[target_feature(enable = "avx2")]
pub fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let quartet = |a: &[__m256]| {
        let (t0, t1) = (_mm256_unpacklo_ps(a[0], a[1]), _mm256_unpackhi_ps(a[0], a[1]));
        let (t2, t3) = (_mm256_unpacklo_ps(a[2], a[3]), _mm256_unpackhi_ps(a[2], a[3]));
        [_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xee>(t0, t2), _mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xee>(t1, t3)]
    };
    let (lo, hi) = (quartet(&r[..4]), quartet(&r[4..]));
    std::array::from_fn(|c| if c < 4 { _mm256_permute2f128_ps::<0x20>(lo[c], hi[c]) } else { _mm256_permute2f128_ps::<0x31>(lo[c - 4], hi[c - 4]) })
}

/// e^x on 8 lanes within 2 ulp (tested against f64): `fast_math::exp`'s
/// steps in intrinsics with FMAs — n = round(x·log₂e), r = x − n·ln 2,
/// e^r by its polynomial, 2ⁿ into the exponent bits — and its edges: 0
/// below −87.3 (and for −∞), +∞ above 88.7, NaN kept.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub fn exp8(x: __m256) -> __m256 {
    use crate::ops::fast_math::exp_consts::*;
    // NaN lanes become HI here (max/min return their second operand) and
    // are put back at the end
    let xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(LO)), _mm256_set1_ps(HI));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(POLY[0]);
    for &c in &POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e_r = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    // 2ⁿ: n + 127 in the exponent field (n ≥ −126 after the clamp)
    let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
    let y = _mm256_mul_ps(e_r, two_n);
    let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LO)));
    let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(HI)));
    _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avx2_or_skipped(test: &str) -> bool {
        let has = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        if !has {
            println!("SKIPPED {test}: this CPU has no AVX2 and FMA");
        }
        has
    }

    #[test]
    fn transpose8_swaps_rows_and_columns_and_lane_mask_picks_bits() {
        if !avx2_or_skipped("transpose8") {
            return;
        }
        let m: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let mut out = [[0.0f32; 8]; 8];
        let mut masked = [[0.0f32; 8]; 3];
        // SAFETY: AVX2 checked above; m holds 8 rows of 8
        unsafe {
            let rows: [__m256; 8] = std::array::from_fn(|r| _mm256_loadu_ps(m.as_ptr().add(8 * r)));
            for (o, c) in out.iter_mut().zip(transpose8(rows)) {
                _mm256_storeu_ps(o.as_mut_ptr(), c);
            }
            for (o, bits) in masked.iter_mut().zip([0b1011_0001u32, 0xff, 0x100]) {
                _mm256_storeu_ps(o.as_mut_ptr(), _mm256_maskload_ps(m.as_ptr(), lane_mask(bits)));
            }
        }
        for (c, col) in out.iter().enumerate() {
            for (r, &x) in col.iter().enumerate() {
                assert_eq!(x, m[8 * r + c], "out[{c}][{r}]");
            }
        }
        assert_eq!(masked, [[0.0, 0.0, 0.0, 0.0, 4.0, 5.0, 0.0, 7.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [0.0; 8]]);
    }

    #[test]
    fn exp8_is_within_2_ulp_of_f64_and_keeps_exps_edges() {
        if !avx2_or_skipped("exp8") {
            return;
        }
        let exp8_of = |lanes: &[f32; 8]| -> [f32; 8] {
            let mut got = [0.0f32; 8];
            // SAFETY: AVX2 and FMA checked above.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp8(_mm256_loadu_ps(lanes.as_ptr()))) };
            got
        };
        let worst = crate::ops::fast_math::worst_exp_ulp(exp8_of);
        assert!(worst <= 2.0, "worst error {worst} ulp");
        // the edges are fast_math::exp's
        for specials in [[0.0, -0.0, -100.0, 100.0, f32::NEG_INFINITY, f32::INFINITY, f32::NAN, -200.0], [89.0, -87.5, 1.0, -1.0, 0.5, -87.3, 88.7, 88.0]] {
            let got = exp8_of(&specials);
            for (&x, &g) in specials.iter().zip(&got) {
                let want = crate::ops::fast_math::exp(x);
                assert!(g == want || (g.is_nan() && want.is_nan()) || (g - want).abs() <= 2.0 * (want.next_up() - want), "e^{x}: {g} vs {want}");
            }
        }
        let got = exp8_of(&[-100.0, 100.0, f32::NEG_INFINITY, f32::INFINITY, f32::NAN, 0.0, -200.0, 89.0]);
        assert!(got[4].is_nan());
        assert_eq!([got[0], got[1], got[2], got[3], got[5], got[6], got[7]], [0.0, f32::INFINITY, 0.0, f32::INFINITY, 1.0, 0.0, f32::INFINITY]);
    }
}
