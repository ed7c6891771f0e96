//! AVX-512 building blocks shared by the CPU kernels: e^x and a 16 × 16
//! transpose on zmm registers. Callers check `is_x86_feature_detected!("avx512f")`.

use std::arch::x86_64::*;

/// e^x on 16 lanes within 2 ulp (tested against f64), in about half the
/// operations of `fast_math::exp`: n = round(x·log₂e) by `roundscale`,
/// r = x − n·ln 2 by two FMAs, e^r by `fast_math`'s polynomial in FMAs,
/// and 2ⁿ·e^r by `scalef`, which also gives 0 and +∞ past the f32
/// range. NaN stays NaN; −∞ gives 0.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn exp16(x: __m512) -> __m512 {
    use crate::ops::fast_math::exp_consts::*;
    // max/min return their second operand for a NaN: x's NaN survives
    let xc = _mm512_min_ps(_mm512_set1_ps(HI + 1.0), _mm512_max_ps(_mm512_set1_ps(-104.0), x));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(POLY[0]);
    for &c in &POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let e_r = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    _mm512_scalef_ps(e_r, n)
}

/// The 16 × 16 transpose: out[c][r] = rows[r][c]. 32-bit then 64-bit
/// interleaves within 128-bit lanes leave u[4i + j]'s lane L holding
/// column 4L + j of rows 4i … 4i + 3; two rounds of 128-bit lane
/// shuffles gather each column's four lanes.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let t: [__m512; 16] = std::array::from_fn(|k| {
        let (a, b) = (r[k & !1], r[k | 1]);
        if k % 2 == 0 { _mm512_unpacklo_ps(a, b) } else { _mm512_unpackhi_ps(a, b) }
    });
    let u: [__m512; 16] = std::array::from_fn(|k| {
        // u[4i + j]: t[4i + j/2] with t[4i + 2 + j/2], low (j even) or high 64-bit halves
        let (i, j) = (k / 4, k % 4);
        let (a, b) = (_mm512_castps_pd(t[4 * i + j / 2]), _mm512_castps_pd(t[4 * i + 2 + j / 2]));
        _mm512_castpd_ps(if j % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
    });
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        // v0 = (u[j]: lanes 0, 2; u[4+j]: 0, 2), v1 = the same of lanes 1, 3; v2, v3 of u[8+j], u[12+j]
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        let v3 = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[8 + j] = _mm512_shuffle_f32x4::<0xdd>(v0, v2);
        out[4 + j] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[12 + j] = _mm512_shuffle_f32x4::<0xdd>(v1, v3);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp16_is_within_2_ulp_of_f64() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("SKIPPED exp16: this CPU has no AVX-512");
            return;
        }
        let exp16_of = |lanes: &[f32; 16]| -> [f32; 16] {
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512F checked above.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(_mm512_loadu_ps(lanes.as_ptr()))) };
            got
        };
        let worst = crate::ops::fast_math::worst_exp_ulp(exp16_of);
        assert!(worst <= 2.0, "worst error {worst} ulp");
        let specials = [0.0, -0.0, -100.0, 100.0, f32::NEG_INFINITY, f32::INFINITY, f32::NAN, -200.0, 89.0, -87.5, 1.0, -1.0, 0.5, 2.0, -2.0, 88.7];
        let got = exp16_of(&specials);
        // e^−100 ≈ 3.7e−44 comes out subnormal (fast_math::exp flushes it to 0)
        assert!((got[2] as f64 - (-100f64).exp()).abs() <= 1.5e-45, "{}", got[2]);
        assert_eq!([got[0], got[1], got[3], got[4], got[5]], [1.0, 1.0, f32::INFINITY, 0.0, f32::INFINITY]);
        assert!(got[6].is_nan() && got[7] == 0.0 && got[8] == f32::INFINITY);
    }

    #[test]
    fn transpose16_swaps_rows_and_columns() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("SKIPPED transpose16: this CPU has no AVX-512");
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        let mut out = [[0.0f32; 16]; 16];
        // SAFETY: AVX-512F checked above; m holds 16 rows of 16
        unsafe {
            let rows: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(m.as_ptr().add(16 * r)));
            for (o, c) in out.iter_mut().zip(transpose16(rows)) {
                _mm512_storeu_ps(o.as_mut_ptr(), c);
            }
        }
        for (c, col) in out.iter().enumerate() {
            for (r, &x) in col.iter().enumerate() {
                assert_eq!(x, m[16 * r + c], "out[{c}][{r}]");
            }
        }
    }
}
