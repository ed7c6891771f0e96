//! Vectorisable f32 math for the CPU twins' hot loops: a branch-free `exp`
//! (libm's `expf` is a scalar call, 10 % of a CPU sampling step) and slice
//! maps compiled again for AVX-512 and for AVX2 + FMA, the widest picked at
//! run time (the default x86-64 target has only SSE2).

/// e^x to within 2 ulp for |x| ≤ 87 (0 below −87.3, +∞ above 88.7, NaN kept).
///
/// Cephes' expf: n = round(x·log₂e), r = x − n·ln 2 (ln 2 in two parts so r is
/// exact), e^r by its degree-7 Taylor-like minimax polynomial on |r| ≤ ln2/2,
/// then 2ⁿ put straight into the exponent bits. No branches, so loops over
/// slices vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    use exp_consts::*;
    let xc = x.clamp(LO, HI);
    // round(xc·log₂e) by the 1.5·2²³ trick: the sum's low mantissa bits hold
    // the integer (a float→int cast would not vectorise)
    let t = xc * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let n_int = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // plain multiplies and adds (no FMA): the same bits with or without AVX2
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = p * r + c;
    }
    let e_r = p * r * r + r + 1.0;
    // 2ⁿ for n in [−126, 127]; the clamp keeps n ≥ −126, so e^−87.3 is the smallest normal
    let two_n = f32::from_bits(((n_int + 127) as u32) << 23);
    let y = e_r * two_n;
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// The constants of [`exp`] (shared with the attention kernel's 16-lane copy).
#[allow(clippy::excessive_precision)]
pub mod exp_consts {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const SHIFTER: f32 = 12_582_912.0;
    /// Inputs are clamped to [LO, HI]; outside, e^x is 0 or +∞.
    pub const LO: f32 = -87.336_55;
    pub const HI: f32 = 88.722_83;
    /// Horner coefficients of (e^r − 1 − r)/r², highest degree first.
    pub const POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
}

/// σ(x) = 1 / (1 + e^−x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Compiles `$plain` (an `#[inline(always)]` fn) three times: for AVX-512,
/// for AVX2 + FMA, and for the default target; `$name` picks the widest the
/// CPU has at run time. Plain multiplies and adds only (Rust never fuses them),
/// so every version gives the same bits.
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident $(<$g:ident: $bound:path>)? ($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $plain:ident) => {
        $(#[$doc])*
        #[inline]
        $vis fn $name $(<$g: $bound>)? ($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide $(<$g: $bound>)? ($($arg: $ty),*) $(-> $ret)? { $plain($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow $(<$g: $bound>)? ($($arg: $ty),*) $(-> $ret)? { $plain($($arg),*) }
                use $crate::ops::fast_math::{SimdLevel, simd_level};
                match simd_level() {
                    // SAFETY: the CPU has the features (checked by simd_level).
                    SimdLevel::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: as above.
                    SimdLevel::Avx2 => return unsafe { narrow($($arg),*) },
                    SimdLevel::Plain => {}
                }
            }
            $plain($($arg),*)
        }
    };
}

pub(crate) use dispatch;

dispatch! {
    /// dst[i] = f(src[i]).
    pub fn map<F: MapFn>(dst: &mut [f32], src: &[f32], f: F) => map_plain
}

dispatch! {
    /// dst[i] = f(a[i], b[i]).
    pub fn map2<F: Map2Fn>(dst: &mut [f32], a: &[f32], b: &[f32], f: F) => map2_plain
}

dispatch! {
    /// buf[i] = f(buf[i]).
    pub fn map_in_place<F: MapFn>(buf: &mut [f32], f: F) => map_in_place_plain
}

dispatch! {
    /// buf[i] = f(buf[i]), returning Σ buf[i] afterwards with the bits of
    /// [`sum`] (one pass where map then sum would read the buffer twice).
    pub fn map_in_place_sum<F: MapFn>(buf: &mut [f32], f: F) -> f32 => map_in_place_sum_lanes
}

dispatch! {
    /// Largest entry (−∞ for none; NaNs are skipped), in 16 lanes so it vectorises.
    pub fn max(v: &[f32]) -> f32 => max_lanes
}

dispatch! {
    /// Σ v in 16 interleaved partial sums (then added pairwise): the same bits
    /// on every CPU.
    pub fn sum(v: &[f32]) -> f32 => sum_lanes
}

dispatch! {
    /// Σ v accumulated in f64 (blocks of f32 lane sums; see `sum_blocks_f64`).
    pub fn sum_f64(v: &[f32]) -> f64 => sum_f64_lanes
}

dispatch! {
    /// Σ (v − c)² accumulated in f64 (c rounded to f32, the deviations in f32).
    pub fn sum_sq_dev_f64(v: &[f32], c: f64) -> f64 => sum_sq_dev_f64_lanes
}

dispatch! {
    /// (Σ a, Σ a·(b − c)·r) accumulated in f64 as [`sum_f64`] accumulates
    /// (each product in f32): the group norm backward's per-channel sums of
    /// dy and dy·x̂, x̂ = (x − μ)·rstd.
    pub fn sum_and_dot_centred_f64(a: &[f32], b: &[f32], c: f32, r: f32) -> (f64, f64) => sum_and_dot_centred_lanes
}

/// `Fn(f32) -> f32 + Copy`, nameable in the dispatch macro.
pub trait MapFn: Fn(f32) -> f32 + Copy {}
impl<F: Fn(f32) -> f32 + Copy> MapFn for F {}
/// `Fn(f32, f32) -> f32 + Copy`, nameable in the dispatch macro.
pub trait Map2Fn: Fn(f32, f32) -> f32 + Copy {}
impl<F: Fn(f32, f32) -> f32 + Copy> Map2Fn for F {}

/// The widest vectors the CPU kernels use: AVX-512 (the direct
/// convolutions, attention's lanes, 16-lane elementwise loops), AVX2 + FMA
/// (elementwise loops; convolutions by im2col + gemm) or plain Rust.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum SimdLevel {
    Plain,
    Avx2,
    Avx512,
}

impl SimdLevel {
    /// `MINIDIFFUSION_SIMD`'s names.
    fn named(name: &str) -> Option<SimdLevel> {
        Some(match name {
            "avx512" => SimdLevel::Avx512,
            "avx2" => SimdLevel::Avx2,
            "plain" => SimdLevel::Plain,
            _ => return None,
        })
    }
}

/// What this CPU has, capped by `MINIDIFFUSION_SIMD` (avx512, avx2 or
/// plain): a CPU without AVX-512 runs the other paths, and so do the tests
/// that set it (tests/portable.rs). Read once a process.
pub(crate) fn simd_level() -> SimdLevel {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = std::env::var("MINIDIFFUSION_SIMD").ok().and_then(|v| {
            let named = SimdLevel::named(&v);
            if named.is_none() {
                eprintln!("warning: MINIDIFFUSION_SIMD={v} is not avx512, avx2 or plain; ignored");
            }
            named
        });
        detected().min(cap.unwrap_or(SimdLevel::Avx512))
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> SimdLevel {
    SimdLevel::Plain
}

#[cfg(target_arch = "x86_64")]
fn detected() -> SimdLevel {
    let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
        SimdLevel::Avx512
    } else if avx2 {
        SimdLevel::Avx2
    } else {
        SimdLevel::Plain
    }
}

/// Whether the AVX-512 kernels run ([`simd_level`]).
pub(crate) fn avx512() -> bool {
    simd_level() == SimdLevel::Avx512
}

const LANES: usize = 16;

#[inline(always)]
fn max_lanes(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |m, &a| if a > m { a } else { m });
    for &x in tail {
        m = if x > m { x } else { m };
    }
    m
}

#[inline(always)]
fn sum_lanes(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    finish_sum(acc, tail)
}

/// The 16 lane sums added pairwise, then the tail in order.
#[inline(always)]
fn finish_sum(acc: [f32; LANES], tail: &[f32]) -> f32 {
    tail.iter().fold(pairwise(acc), |s, &x| s + x)
}

/// The lanes added pairwise: lane i + width into lane i, width halving.
#[inline(always)]
fn pairwise<T: Copy + std::ops::AddAssign>(mut acc: [T; LANES]) -> T {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

#[inline(always)]
fn sum_f64_lanes(v: &[f32]) -> f64 {
    sum_blocks_f64(v, |x| x)
}

#[inline(always)]
fn sum_sq_dev_f64_lanes(v: &[f32], c: f64) -> f64 {
    let c = c as f32;
    sum_blocks_f64(v, |x| {
        let d = x - c;
        d * d
    })
}

/// Σ f(v): f32 lane sums over blocks of 16 values per lane (256 values),
/// each block's lanes then added into f64 lanes (f32 arithmetic at full
/// width; the rounding of a 16-term f32 sum, ~1e-6 of the block, never
/// accumulates across blocks), added pairwise, then the tail in f64.
#[inline(always)]
fn sum_blocks_f64(v: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    const BLOCK: usize = 16 * LANES;
    let mut acc = [0f64; LANES];
    let blocks = v.chunks_exact(BLOCK);
    let rest = blocks.remainder();
    for block in blocks {
        let mut partial = [0f32; LANES];
        for c in block.chunks_exact(LANES) {
            for (p, &x) in partial.iter_mut().zip(c) {
                *p += f(x);
            }
        }
        for (a, &p) in acc.iter_mut().zip(&partial) {
            *a += p as f64;
        }
    }
    rest.iter().fold(pairwise(acc), |s, &x| s + f(x) as f64)
}

/// [`sum_and_dot_centred_f64`]: `sum_blocks_f64`'s scheme for both sums.
#[inline(always)]
fn sum_and_dot_centred_lanes(a: &[f32], b: &[f32], c: f32, r: f32) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    const BLOCK: usize = 16 * LANES;
    let (mut acc_a, mut acc_b) = ([0f64; LANES], [0f64; LANES]);
    let (blocks_a, blocks_b) = (a.chunks_exact(BLOCK), b.chunks_exact(BLOCK));
    let (rest_a, rest_b) = (blocks_a.remainder(), blocks_b.remainder());
    for (block_a, block_b) in blocks_a.zip(blocks_b) {
        let (mut part_a, mut part_b) = ([0f32; LANES], [0f32; LANES]);
        for (ca, cb) in block_a.chunks_exact(LANES).zip(block_b.chunks_exact(LANES)) {
            for i in 0..LANES {
                part_a[i] += ca[i];
                part_b[i] += ca[i] * ((cb[i] - c) * r);
            }
        }
        for i in 0..LANES {
            acc_a[i] += part_a[i] as f64;
            acc_b[i] += part_b[i] as f64;
        }
    }
    rest_a.iter().zip(rest_b).fold((pairwise(acc_a), pairwise(acc_b)), |(sa, sb), (&x, &y)| (sa + x as f64, sb + (x * ((y - c) * r)) as f64))
}

#[inline(always)]
fn map_in_place_sum_lanes(buf: &mut [f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = buf.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *x = f(*x);
            *a += *x;
        }
    }
    let tail = chunks.into_remainder();
    tail.iter_mut().for_each(|x| *x = f(*x));
    finish_sum(acc, tail)
}

#[inline(always)]
fn map_plain(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(s);
    }
}

#[inline(always)]
fn map2_plain(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    assert!(dst.len() == a.len() && a.len() == b.len());
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

#[inline(always)]
fn map_in_place_plain(buf: &mut [f32], f: impl Fn(f32) -> f32) {
    buf.iter_mut().for_each(|v| *v = f(*v));
}

/// The largest error, in ulp of the f32 nearest e^x, of `exp_of` (N lanes
/// at a time) against f64 over x in [−87, 88) in steps of 0.000731 (the
/// vector exps' tests share it).
#[cfg(test)]
pub(crate) fn worst_exp_ulp<const N: usize>(exp_of: impl Fn(&[f32; N]) -> [f32; N]) -> f64 {
    let mut worst = 0f64;
    let mut x = -87.0f32;
    while x < 88.0 {
        let lanes: [f32; N] = std::array::from_fn(|i| x + i as f32 * 0.000_731);
        for (&xi, &g) in lanes.iter().zip(&exp_of(&lanes)) {
            let want = (xi as f64).exp();
            let ulp = (want as f32).next_up() as f64 - want as f32 as f64;
            worst = worst.max((g as f64 - want).abs() / ulp);
        }
        x += N as f32 * 0.000_731;
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulp_of_f64() {
        let worst = worst_exp_ulp(|[x]: &[f32; 1]| [exp(*x)]);
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn lane_reductions() {
        let v: Vec<f32> = (0..1003).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.25).collect();
        assert_eq!(max(&v), v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(max(&[f32::NAN, -3.0, f32::NAN]), -3.0);
        let exact: f64 = v.iter().map(|&x| x as f64).sum();
        assert!((sum(&v) as f64 - exact).abs() <= 1e-6 * exact.abs().max(1.0));
        assert_eq!(sum(&v), sum_lanes(&v));
        assert_eq!(sum(&[1.5, 2.0]), 3.5);
        let mut mapped = v.clone();
        let s = map_in_place_sum(&mut mapped, |x| exp(x * 0.1));
        let want: Vec<f32> = v.iter().map(|&x| exp(x * 0.1)).collect();
        assert_eq!(mapped, want);
        assert_eq!(s, sum(&want));
        assert_eq!(s, sum_lanes(&want));
    }

    #[test]
    fn f64_lane_sums() {
        let v: Vec<f32> = (0..1003).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.25 + 1e3).collect();
        let exact: f64 = v.iter().map(|&x| x as f64).sum();
        assert!((sum_f64(&v) - exact).abs() <= 1e-9 * exact.abs());
        let mean = exact / v.len() as f64;
        let dev: f64 = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum();
        assert!((sum_sq_dev_f64(&v, mean) - dev).abs() <= 1e-6 * dev);
        assert_eq!(sum_f64(&[]), 0.0);
        // the group norm backward's two sums, against f64 (sums of both signs: within 1e-6 of Σ|terms|)
        let b: Vec<f32> = (0..1003).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.1).collect();
        let (c, r) = (0.3f32, 1.7f32);
        let (sa, sb) = sum_and_dot_centred_f64(&v, &b, c, r);
        let terms = |i: usize| v[i] as f64 * ((b[i] as f64 - c as f64) * r as f64);
        let (want_b, scale_b): (f64, f64) = (0..v.len()).map(|i| (terms(i), terms(i).abs())).fold((0.0, 0.0), |(s, m), (t, a)| (s + t, m + a));
        assert!((sa - exact).abs() <= 1e-9 * exact.abs(), "{sa} {exact}");
        assert!((sb - want_b).abs() <= 1e-6 * scale_b, "{sb} {want_b}");
        assert_eq!((sa, sb), sum_and_dot_centred_lanes(&v, &b, c, r));
        assert_eq!(sum_and_dot_centred_f64(&[], &[], c, r), (0.0, 0.0));
    }

    #[test]
    fn every_simd_level_gives_the_same_bits() {
        let a: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.177).collect();
        let mut plain = vec![0.0; a.len()];
        map_plain(&mut plain, &a, |x| x / (1.0 + exp(-x)));
        let mut dispatched = vec![0.0; a.len()];
        map(&mut dispatched, &a, |x| x / (1.0 + exp(-x)));
        assert_eq!(plain, dispatched, "at {:?}", simd_level());
    }

    #[test]
    fn maps_match_scalar_loops() {
        let a: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let b: Vec<f32> = a.iter().map(|v| v * 0.5 - 1.0).collect();
        let mut d = vec![0.0; a.len()];
        map(&mut d, &a, sigmoid);
        for (i, (&got, &x)) in d.iter().zip(&a).enumerate() {
            assert_eq!(got, sigmoid(x), "entry {i}");
        }
        map2(&mut d, &a, &b, |x, y| x * exp(y));
        for (i, ((&got, &x), &y)) in d.iter().zip(&a).zip(&b).enumerate() {
            assert_eq!(got, x * exp(y), "entry {i}");
        }
    }
}
