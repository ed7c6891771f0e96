//! The CPU weight gradient of stride-1 3×3 convolutions with padding 1 (the
//! UNet's) on AVX-512 or AVX2, without an im2col matrix:
//!
//!   dW[o, c, ki, kj] = Σ_n Σ_p dY[n, o, p] · x[n, c, oy + ki − 1, ox + kj − 1]
//!
//! (p = oy·W + ox; 0 outside the image), vectorised over 16 output channels:
//!
//! - dYᵀ_n [P][OC16] (OC rounded up to 16, the lanes past OC zero) is the
//!   vector operand;
//! - x is read as scalars from three zero-padded copies of each channel
//!   plane, W + 1 zeros before and after it, the copy for kj = 0 with its
//!   last column zeroed and the one for kj = 2 with its first: tap (ki, kj)
//!   of pixel p reads element p + ki·W + kj of its copy with no bounds test
//!   (a step off the left or right edge lands on the zeroed column of the
//!   neighbouring row, one off the top or bottom row in the padding);
//! - the microkernel holds dWᵀ[c·9 + tap][16·NV output channels] of one
//!   input channel in 9·NV zmm accumulators (on AVX2 8 output channels in 9
//!   ymm) over one image's pixels: per pixel, NV vector loads of dYᵀ, 9
//!   broadcasts of x and 9·NV fused multiply-adds; then it adds them to dWᵀ.
//!
//! Where im2col + gemm wrote the K × P matrix per image and the gemm
//! packed it again, this reads x in place; dY is transposed instead, 16 × 16 blocks
//! in registers, by each task for each image (OC·P values, a ninth of
//! im2col's 9·C·P at C = OC). Small maps run a group of images a
//! microkernel call (at least 128 pixels in its loop). Tasks take ranges of
//! input channels, each over every image in order, so each dW entry is
//! summed in one order — images in turn, each image's pixels in turn with
//! FMA, a group's products in one register chain — whatever the thread
//! count, and whatever the vector width (each lane's chain is the same on
//! AVX-512 and AVX2).

use super::cpu::ConvGeom;
use crate::ops::fast_math::{SimdLevel, avx512, simd_level};
use rayon::prelude::*;

/// True when this CPU runs the kernel (AVX-512, or AVX2 with FMA).
pub fn available() -> bool {
    simd_level() >= SimdLevel::Avx2
}

/// Whether [`backward_weight`] takes the convolution `g`: this CPU has
/// AVX-512 or AVX2, a stride-1 3×3 kernel with padding 1 (output H × W), and at
/// least 8 output channels (fewer leave most of a vector's lanes idle: the
/// im2col + gemm path keeps those).
pub fn takes(g: &ConvGeom) -> bool {
    available()
        && (g.kh, g.kw, g.stride, g.pad) == (3, 3, 1, 1)
        && (g.oh, g.ow) == (g.h, g.w)
        && g.oc >= 8
        && g.n * g.c * g.p() > 0
}

/// dW [OC, C, 3, 3] = Σ_n dY_n · col_nᵀ for dY [N, OC, H, W] and x [N, C, H, W]
/// (see the module docs); `g` must be one [`takes`] takes.
pub fn backward_weight(dy: &[f32], x: &[f32], g: &ConvGeom) -> Vec<f32> {
    assert!(takes(g), "direct weight gradient of a convolution it does not take: {g:?}");
    let (p, oc16) = (g.p(), g.oc.next_multiple_of(16));
    assert_eq!((dy.len(), x.len()), (g.n * g.oc * p, g.n * g.c * p), "dY and x must be [N, OC, H, W] and [N, C, H, W]");
    // dWᵀ [C·9][OC16], a task's input channels a contiguous range; each task
    // transposes each image's dY into its own dYᵀ_n (in its L2 while its
    // channels read it)
    let mut dwt = vec![0.0f32; g.c * 9 * oc16];
    let per_task = g.c.div_ceil(rayon::current_num_threads().clamp(1, g.c));
    // small maps run several images a microkernel call, its pixel loop ≥ 128
    // long (4 × 4: 5.8 → 4.4 ms at batch 64, 8 × 8: 17.2 → 14.7 ms)
    let group = 128usize.div_ceil(p).min(g.n);
    let wide = avx512();
    dwt.par_chunks_mut(per_task * 9 * oc16).enumerate().for_each(|(task, out)| {
        let mut planes = Planes::new(g.h, g.w, group);
        let mut dyt = vec![0.0f32; group * p * oc16];
        for (dy_g, x_g) in dy.chunks(group * g.oc * p).zip(x.chunks(group * g.c * p)) {
            let images = dy_g.len() / (g.oc * p);
            for (dy_n, dyt_n) in dy_g.chunks(g.oc * p).zip(dyt.chunks_mut(p * oc16)) {
                // SAFETY: takes() checked the features; dy_n holds OC·P values, dyt_n P·OC16
                unsafe { transpose(wide, dy_n, g.oc, p, dyt_n, oc16) };
            }
            for (cc, out_c) in out.chunks_mut(9 * oc16).enumerate() {
                let c = task * per_task + cc;
                for (j, x_n) in x_g.chunks(g.c * p).enumerate() {
                    planes.fill(j, &x_n[c * p..(c + 1) * p]);
                }
                // SAFETY: as above; each image's planes hold P + 2(W + 1)
                // values, dyt images·P rows of OC16, out_c 9·OC16
                unsafe { accumulate(wide, p, images, planes.len, &planes.taps(), &dyt, oc16, out_c) };
            }
        }
    });
    // dW = dWᵀᵀ, 16 output channels (one line of a dWᵀ row) a task, so
    // each row of dWᵀ is read a line at a time and 16 rows of dW written
    let k = g.c * 9;
    let mut dw = vec![0.0f32; g.oc * k];
    dw.par_chunks_mut(16 * k).enumerate().for_each(|(block, rows)| {
        let o0 = 16 * block;
        for (r, line) in dwt.chunks(oc16).enumerate() {
            for (o, &v) in line[o0..].iter().take(rows.len() / k).enumerate() {
                rows[o * k + r] = v;
            }
        }
    });
    dw
}

/// The three zero-padded copies of a channel plane (see the module docs) of
/// each image of a group, one buffer: copy kj of image j at (kj·images + j)·len.
struct Planes {
    buf: Vec<f32>,
    w: usize,
    len: usize,
    images: usize,
}

impl Planes {
    fn new(h: usize, w: usize, images: usize) -> Planes {
        let len = h * w + 2 * (w + 1);
        Planes { buf: vec![0.0; 3 * images * len], w, len, images }
    }

    /// Copies image j's plane [H·W] into its three copies' interiors (the padding stays zero).
    fn fill(&mut self, j: usize, plane: &[f32]) {
        let (w, len) = (self.w, self.len);
        for kj in 0..3 {
            let inner = &mut self.buf[(kj * self.images + j) * len + w + 1..][..plane.len()];
            inner.copy_from_slice(plane);
            // kj = 0 reads column ox − 1: its copy's last column stands for column −1 of the next row
            let zeroed = match kj {
                0 => Some(w - 1),
                2 => Some(0),
                _ => None,
            };
            if let Some(col) = zeroed {
                inner.iter_mut().skip(col).step_by(w).for_each(|v| *v = 0.0);
            }
        }
    }

    /// The first element each tap (ki, kj), in order ki·3 + kj, reads:
    /// pixel p of image j is at offset j·len + p from it.
    fn taps(&self) -> [&[f32]; 9] {
        std::array::from_fn(|t| {
            let (ki, kj) = (t / 3, t % 3);
            &self.buf[kj * self.images * self.len + ki * self.w + kj..(kj + 1) * self.images * self.len]
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::ops::avx512::transpose16;
    use std::arch::x86_64::*;

    /// out[tap][o] += Σ_{j, q} dyt[j·p + q][o] · taps[tap][j·stride + q] over
    /// `images` images of p pixels, for every tap and every o < OC16, 16·NV
    /// output channels a microkernel call (NV 3, then 2 or 1).
    ///
    /// # Safety
    /// AVX-512F; taps[t].len() ≥ (images − 1)·stride + p, dyt.len() ≥
    /// images·p·oc16, out.len() ≥ 9·oc16, oc16 a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn accumulate(p: usize, images: usize, stride: usize, taps: &[&[f32]; 9], dyt: &[f32], oc16: usize, out: &mut [f32]) {
        debug_assert!(taps.iter().all(|t| t.len() >= (images - 1) * stride + p) && dyt.len() >= images * p * oc16 && out.len() >= 9 * oc16);
        let bases: [*const f32; 9] = std::array::from_fn(|t| taps[t].as_ptr());
        let mut o = 0;
        while o < oc16 {
            let left = (oc16 - o) / 16;
            // (four vectors as 2 + 2 rather than 3 + 1)
            let nv = if left == 4 { 2 } else { left.min(3) };
            // SAFETY: as this function's, for the columns o … o + 16·nv
            unsafe {
                let (d, y) = (dyt.as_ptr().add(o), out.as_mut_ptr().add(o));
                match nv {
                    3 => micro::<3>(p, images, stride, &bases, d, oc16, y),
                    2 => micro::<2>(p, images, stride, &bases, d, oc16, y),
                    _ => micro::<1>(p, images, stride, &bases, d, oc16, y),
                }
            }
            o += 16 * nv;
        }
    }

    /// dyt [P][OC16] = d [OC][P]ᵀ, the columns past OC zero: 16 × 16 blocks
    /// transposed in registers (a scalar transpose stores each value to
    /// another cache line: as slow as the products it feeds).
    ///
    /// # Safety
    /// AVX-512F; d.len() ≥ oc·p, dyt.len() ≥ p·oc16, oc16 ≥ oc a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose(d: &[f32], oc: usize, p: usize, dyt: &mut [f32], oc16: usize) {
        debug_assert!(d.len() >= oc * p && dyt.len() >= p * oc16 && oc16 >= oc && oc16.is_multiple_of(16));
        for q0 in (0..p).step_by(16) {
            let lanes = (p - q0).min(16);
            let mask: __mmask16 = if lanes == 16 { !0 } else { (1u16 << lanes) - 1 };
            for o0 in (0..oc16).step_by(16) {
                // SAFETY: row o0 + i < oc is read at q0 … q0 + lanes − 1 < p; rows past oc are zero
                let rows: [__m512; 16] = std::array::from_fn(|i| {
                    if o0 + i < oc { unsafe { _mm512_maskz_loadu_ps(mask, d.as_ptr().add((o0 + i) * p + q0)) } } else { _mm512_setzero_ps() }
                });
                let cols = transpose16(rows);
                for (j, col) in cols.iter().enumerate().take(lanes) {
                    // SAFETY: q0 + j < p, o0 + 16 ≤ oc16
                    unsafe { _mm512_storeu_ps(dyt.as_mut_ptr().add((q0 + j) * oc16 + o0), *col) };
                }
            }
        }
    }

    /// acc[t][v] = Σ_{j, q} dyt[(j·p + q)·ld + 16v ..] · bases[t][j·stride + q],
    /// added to out[t·ld + 16v ..].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn micro<const NV: usize>(p: usize, images: usize, stride: usize, bases: &[*const f32; 9], dyt: *const f32, ld: usize, out: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); NV]; 9];
        for j in 0..images {
            for q in 0..p {
                // SAFETY: j < images, q < p: the caller's bounds
                unsafe {
                    let row = dyt.add((j * p + q) * ld);
                    let d: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(row.add(16 * v)));
                    for (t, acc_t) in acc.iter_mut().enumerate() {
                        let b = _mm512_set1_ps(*bases[t].add(j * stride + q));
                        for (a, &dv) in acc_t.iter_mut().zip(&d) {
                            *a = _mm512_fmadd_ps(dv, b, *a);
                        }
                    }
                }
            }
        }
        for (t, acc_t) in acc.iter().enumerate() {
            for (v, &a) in acc_t.iter().enumerate() {
                // SAFETY: t < 9, 16v + 16 ≤ 16·NV ≤ the columns left
                unsafe {
                    let at = out.add(t * ld + 16 * v);
                    _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), a));
                }
            }
        }
    }
}

/// `avx512::transpose` (`wide`) or `avx2::transpose`.
///
/// # Safety
/// The CPU has the module's features; the sizes of `avx512::transpose`.
#[cfg(target_arch = "x86_64")]
unsafe fn transpose(wide: bool, d: &[f32], oc: usize, p: usize, dyt: &mut [f32], oc16: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        if wide {
            avx512::transpose(d, oc, p, dyt, oc16)
        } else {
            avx2::transpose(d, oc, p, dyt, oc16)
        }
    }
}

/// `avx512::accumulate` (`wide`) or `avx2::accumulate`.
///
/// # Safety
/// The CPU has the module's features; the sizes of `avx512::accumulate`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate(wide: bool, p: usize, images: usize, stride: usize, taps: &[&[f32]; 9], dyt: &[f32], oc16: usize, out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe {
        if wide {
            avx512::accumulate(p, images, stride, taps, dyt, oc16, out)
        } else {
            avx2::accumulate(p, images, stride, taps, dyt, oc16, out)
        }
    }
}

/// The same steps on AVX2: 8 output channels a microkernel call, 8 × 8
/// transposes.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use crate::ops::avx2::{lane_mask, transpose8};
    use std::arch::x86_64::*;

    /// As `avx512::accumulate`, 8 output channels a call in 9 ymm accumulators.
    ///
    /// # Safety
    /// AVX2 and FMA; the sizes of `avx512::accumulate`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn accumulate(p: usize, images: usize, stride: usize, taps: &[&[f32]; 9], dyt: &[f32], oc16: usize, out: &mut [f32]) {
        debug_assert!(taps.iter().all(|t| t.len() >= (images - 1) * stride + p) && dyt.len() >= images * p * oc16 && out.len() >= 9 * oc16);
        let bases: [*const f32; 9] = std::array::from_fn(|t| taps[t].as_ptr());
        for o in (0..oc16).step_by(8) {
            // SAFETY: as this function's, for the columns o … o + 8
            unsafe { micro(p, images, stride, &bases, dyt.as_ptr().add(o), oc16, out.as_mut_ptr().add(o)) };
        }
    }

    /// As `avx512::transpose`, in 8 × 8 blocks.
    ///
    /// # Safety
    /// AVX2; the sizes of `avx512::transpose`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn transpose(d: &[f32], oc: usize, p: usize, dyt: &mut [f32], oc16: usize) {
        debug_assert!(d.len() >= oc * p && dyt.len() >= p * oc16 && oc16 >= oc && oc16.is_multiple_of(16));
        for q0 in (0..p).step_by(8) {
            let lanes = (p - q0).min(8);
            let mask = lane_mask((1 << lanes) - 1);
            for o0 in (0..oc16).step_by(8) {
                // SAFETY: row o0 + i < oc is read at q0 … q0 + lanes − 1 < p; rows past oc are zero
                let rows: [__m256; 8] = std::array::from_fn(|i| {
                    if o0 + i < oc { unsafe { _mm256_maskload_ps(d.as_ptr().add((o0 + i) * p + q0), mask) } } else { _mm256_setzero_ps() }
                });
                for (j, col) in transpose8(rows).iter().enumerate().take(lanes) {
                    // SAFETY: q0 + j < p, o0 + 8 ≤ oc16
                    unsafe { _mm256_storeu_ps(dyt.as_mut_ptr().add((q0 + j) * oc16 + o0), *col) };
                }
            }
        }
    }

    /// acc[t] = Σ_{j, q} dyt[(j·p + q)·ld ..][..8] · bases[t][j·stride + q],
    /// added to out[t·ld ..][..8].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn micro(p: usize, images: usize, stride: usize, bases: &[*const f32; 9], dyt: *const f32, ld: usize, out: *mut f32) {
        let mut acc = [_mm256_setzero_ps(); 9];
        for j in 0..images {
            for q in 0..p {
                // SAFETY: j < images, q < p: the caller's bounds
                unsafe {
                    let d = _mm256_loadu_ps(dyt.add((j * p + q) * ld));
                    for (t, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(d, _mm256_set1_ps(*bases[t].add(j * stride + q)), *a);
                    }
                }
            }
        }
        for (t, &a) in acc.iter().enumerate() {
            // SAFETY: t < 9, 8 columns left
            unsafe {
                let at = out.add(t * ld);
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), a));
            }
        }
    }
}

/// Never called: `takes` is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose(_: bool, _: &[f32], _: usize, _: usize, _: &mut [f32], _: usize) {
    unreachable!("the direct weight gradient runs on x86-64 only")
}

/// Never called: `takes` is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate(_: bool, _: usize, _: usize, _: usize, _: &[&[f32]; 9], _: &[f32], _: usize, _: &mut [f32]) {
    unreachable!("the direct weight gradient runs on x86-64 only")
}
