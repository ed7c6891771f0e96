//! The CPU forward of stride-1 3×3 same convolutions over small maps (rows of
//! 4 or 8 pixels: the UNet's 8×8 and 4×4 levels) on AVX-512, and with the
//! flipped weight their input gradient, the output channels in the vector
//! lanes:
//!
//!   y[o, oy, ox] = Σ_{tap = (ki, kj), c} W[o, c, ki, kj] · xpad[c, oy + ki, ox + kj]
//!
//! - W is packed per tile of 16·NV output channels (NV ≤ 3) as
//!   Wᵀ_u [K][16·NV], k = tap·C + c (the lanes past OC zero);
//! - each image is copied once with its zero border, 16 channels a pixel
//!   ([C/16][H + 2][W + 2][16]): 16 consecutive k read one cache line, and
//!   the 8 pixels of a segment (a row of 8, or two rows of 4) sit at fixed
//!   steps from one pointer per k;
//! - the microkernel keeps y[16·NV channels][8 pixels] in 8·NV zmm
//!   accumulators over a block of K: per k, NV vector loads of Wᵀ_u[k], 8
//!   broadcasts of x and 8·NV fused multiply-adds (12 loads for 24 FMAs,
//!   where the pixel-lane kernel's 24 × 1 tile of a 16-pixel map needs 25);
//!   the block's Wᵀ_u rows (≤ 24 KB) stay in L1 while every segment of the
//!   task's images runs over them, the sums added up in memory between
//!   blocks; at the end they are transposed into y [OC][P] with the bias,
//!   time embedding and residual added.
//!
//! Tasks take groups of images. Each output is summed in one order (k in
//! blocks, each block's terms in order with FMA) whatever the thread count.

use super::cpu::{ConvGeom, Epilogue};
use rayon::prelude::*;

/// Whether [`forward`] takes the convolution `g`: AVX-512, 3×3, stride 1,
/// padding 1, output H × W with rows of 4 or 8 pixels.
pub fn takes(g: &ConvGeom) -> bool {
    available()
        && (g.kh, g.kw, g.stride, g.pad) == (3, 3, 1, 1)
        && (g.oh, g.ow) == (g.h, g.w)
        && matches!(g.w, 4 | 8)
        && (g.h * g.w).is_multiple_of(R)
        && g.n * g.c * g.oc > 0
}

/// True when this CPU runs the kernel (AVX-512).
pub fn available() -> bool {
    crate::ops::fast_math::avx512()
}

/// Output pixels a microkernel call covers (one row of 8, two of 4) and
/// the widest channel tile, in vectors.
const R: usize = 8;
const MAX_NV: usize = 3;

/// The vectors of each channel tile: ceil(OC/16) vectors in as few tiles of
/// at most [`MAX_NV`] as fit, spread evenly (16: 3 3 3 3 2 2).
fn channel_tiles(oc: usize) -> Vec<usize> {
    let vectors = oc.div_ceil(16);
    let tiles = vectors.div_ceil(MAX_NV);
    (0..tiles).map(|i| vectors / tiles + usize::from(i < vectors % tiles)).collect()
}

/// W [OC, C, 3, 3] packed as Wᵀ_u [K][16·NV] for each channel tile u, one
/// after another.
pub struct Packed {
    w: Vec<f32>,
    oc: usize,
    k: usize,
    /// Vectors per channel tile.
    tiles: Vec<usize>,
}

impl Packed {
    pub fn new(weight: &[f32], g: &ConvGeom) -> Packed {
        assert!(takes(g), "channel-lane convolution of a shape it does not take: {g:?}");
        assert_eq!(weight.len(), g.oc * g.k(), "weight must be [OC, C, 3, 3]");
        // column o, row tap·C + c: W[o, c, tap]
        let source = Source { rows: g.c, cols: g.oc, row_step: 9, col_step: g.k(), tap: |t| t };
        let tiles = channel_tiles(g.oc);
        Packed { w: pack(weight, &source, &tiles), oc: g.oc, k: g.k(), tiles }
    }

    /// The weight of the input gradient's convolution (`cpu.rs`: dY with W
    /// flipped, W'[c, o, tap] = W[o, c, 8 − tap], C outputs from OC inputs),
    /// packed straight from the forward's W [OC, C, 3, 3]; `g` is the
    /// forward's geometry.
    pub fn for_input_grad(weight: &[f32], g: &ConvGeom) -> Packed {
        let gt = input_grad_geom(g);
        assert!(takes(&gt), "channel-lane convolution of a shape it does not take: {gt:?}");
        assert_eq!(weight.len(), g.oc * g.k(), "weight must be [OC, C, 3, 3]");
        // column c, row tap·OC + o: W[o, c, 8 − tap]
        let source = Source { rows: g.oc, cols: g.c, row_step: g.k(), col_step: 9, tap: |t| 8 - t };
        let tiles = channel_tiles(gt.oc);
        Packed { w: pack(weight, &source, &tiles), oc: gt.oc, k: gt.k(), tiles }
    }

    /// Whether these panels were packed for `g`.
    fn fits(&self, g: &ConvGeom) -> bool {
        (self.oc, self.k) == (g.oc, g.k()) && self.tiles == channel_tiles(g.oc)
    }
}

/// The 3×3 same convolution that is the input gradient of `g`'s (stride 1):
/// dY [N, OC, H, W] in, C channels out.
pub fn input_grad_geom(g: &ConvGeom) -> ConvGeom {
    ConvGeom { c: g.oc, oc: g.c, ..*g }
}

/// Where the packed rows' values lie in a weight: row tap·rows + r, column j
/// of the output channels at r·row_step + j·col_step + tap(tap).
struct Source<T: Fn(usize) -> usize> {
    rows: usize,
    cols: usize,
    row_step: usize,
    col_step: usize,
    tap: T,
}

/// Wᵀ_u [9·rows][16·NV] for each channel tile (`tiles`: NV of each), the
/// columns past `cols` zero: a task per tile and tap, 16 columns of a row
/// gathered at once (rows are contiguous in neither weight layout).
fn pack<T: Fn(usize) -> usize + Sync>(weight: &[f32], src: &Source<T>, tiles: &[usize]) -> Vec<f32> {
    let rows = src.rows;
    let len = 9 * rows * 16 * tiles.iter().sum::<usize>();
    // every entry is written below (the columns past `cols` as zeros)
    let mut w: Vec<f32> = Vec::with_capacity(len);
    let mut chunks: Vec<(usize, usize, usize, &mut [std::mem::MaybeUninit<f32>])> = Vec::new();
    let (mut rest, mut o0) = (&mut w.spare_capacity_mut()[..len], 0);
    for &nv in tiles {
        for tap in 0..9 {
            let (head, tail) = rest.split_at_mut(rows * 16 * nv);
            chunks.push((o0, nv, tap, head));
            rest = tail;
        }
        o0 += 16 * nv;
    }
    // the farthest read, (rows − 1)·row_step + (cols − 1)·col_step + 8, is inside the weight
    assert!(rows * src.cols > 0 && (rows - 1) * src.row_step + (src.cols - 1) * src.col_step + 8 < weight.len());
    assert!(16 * src.col_step < i32::MAX as usize);
    chunks.into_par_iter().for_each(|(o0, nv, tap, dst)| {
        let width = 16 * nv;
        for (r, row) in dst.chunks_mut(width).enumerate() {
            for j0 in (0..width).step_by(16) {
                let n = src.cols.saturating_sub(o0 + j0).min(16);
                let at = if n > 0 { r * src.row_step + (o0 + j0) * src.col_step + (src.tap)(tap) } else { 0 };
                // SAFETY: takes() (asserted by the callers) means AVX-512;
                // the n lanes read at + i·col_step ≤ the farthest read
                // (asserted); row[j0..] holds 16 floats, all written
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::gather16(weight.as_ptr().add(at), src.col_step, n, row.as_mut_ptr().add(j0).cast())
                };
            }
        }
    });
    // SAFETY: the tasks wrote all `len` entries (16 per block of every row)
    unsafe { w.set_len(len) };
    w
}

/// y [N, OC, H, W] = conv(x, weight) + epilogue for a convolution [`takes`] takes.
pub fn forward(x: &[f32], weight: &[f32], epi: &Epilogue, g: &ConvGeom) -> Vec<f32> {
    forward_packed(x, &Packed::new(weight, g), epi, g)
}

/// k values a microkernel call sums in registers (its Wᵀ_u block, ≤ 24 KB,
/// stays in L1 while every segment of the task's images runs over it); the
/// calls' sums add up in memory.
const KC: usize = 128;

/// Images a task pads and runs every weight tile over, at most.
const GROUP: usize = 8;

/// [`forward`] with the weight packed beforehand.
pub fn forward_packed(x: &[f32], packed: &Packed, epi: &Epilogue, g: &ConvGeom) -> Vec<f32> {
    assert!(takes(g) && packed.fits(g), "channel-lane weights packed for another shape");
    let (p, x_len) = (g.p(), g.c * g.p());
    let y_len = g.oc * p;
    assert!(x.len() >= g.n * x_len && epi.residual.is_none_or(|r| r.len() >= g.n * y_len));
    let layout = Layout::new(g);
    let mut y = crate::ops::zeros(g.n * y_len);
    let threads = rayon::current_num_threads();
    if g.n >= 2 * threads {
        // groups of images, at least two tasks a thread
        let group = g.n.div_ceil(2 * threads).min(GROUP);
        y.par_chunks_mut(group * y_len).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(xpad, sums), (gi, y_g)| {
                let i0 = gi * group;
                let images = y_g.len() / y_len;
                layout.pad(&x[i0 * x_len..(i0 + images) * x_len], g, xpad);
                let mut o0 = 0;
                for &nv in &packed.tiles {
                    let rows = (16 * nv).min(g.oc - o0);
                    let tile = Tile { images: i0..i0 + images, o0, nv };
                    let out = &mut y_g[o0 * p..(images - 1) * y_len + (o0 + rows) * p];
                    run_tile(&layout, xpad, &packed.w[o0 * packed.k..], &tile, epi, g, out, sums);
                    o0 += 16 * nv;
                }
            },
        );
    } else {
        // few images: each image's channel tiles split across the threads
        let mut xpad = Vec::new();
        for (i, y_n) in y.chunks_mut(y_len).enumerate() {
            layout.pad(&x[i * x_len..(i + 1) * x_len], g, &mut xpad);
            let mut tiles = Vec::new();
            let (mut rest, mut o0) = (y_n, 0);
            for &nv in &packed.tiles {
                let rows = (16 * nv).min(g.oc - o0);
                let (head, tail) = rest.split_at_mut(rows * p);
                tiles.push((Tile { images: i..i + 1, o0, nv }, head));
                (rest, o0) = (tail, o0 + 16 * nv);
            }
            let xpad = &xpad;
            tiles.into_par_iter().for_each_init(Vec::new, |sums, (tile, out)| {
                run_tile(&layout, xpad, &packed.w[tile.o0 * packed.k..], &tile, epi, g, out, sums);
            });
        }
    }
    y
}

/// Each image copied with its zero border, 16 channels a pixel
/// ([C/16][H + 2][W + 2][16]), and the K offsets, tap-major, of what k reads
/// from an output row's first pixel (pixel px at + 16·px).
struct Layout {
    wp: usize,
    /// Floats per 16-channel block of an image.
    plane: usize,
    image_len: usize,
    offs: Vec<isize>,
}

impl Layout {
    fn new(g: &ConvGeom) -> Layout {
        let wp = g.w + 2;
        let plane = (g.h + 2) * wp * 16;
        let offs = (0..9).flat_map(|t| (0..g.c).map(move |c| (c / 16 * plane + (t / 3 * wp + t % 3) * 16 + c % 16) as isize)).collect();
        Layout { wp, plane, image_len: g.c.div_ceil(16) * plane, offs }
    }

    /// dst = the images of x [images, C, H, W] in this layout: 16 channels
    /// × 16 pixels at a time transposed in registers.
    fn pad(&self, x: &[f32], g: &ConvGeom, dst: &mut Vec<f32>) {
        let (p, x_len) = (g.h * g.w, g.c * g.h * g.w);
        let images = x.len() / x_len;
        dst.clear();
        dst.resize(images * self.image_len, 0.0);
        // where pixel q of a 16-channel block lands
        let at: Vec<usize> = (0..p).map(|q| ((q / g.w + 1) * self.wp + q % g.w + 1) * 16).collect();
        for (image, x_n) in dst.chunks_mut(self.image_len).zip(x.chunks(x_len)) {
            for (c0, block) in (0..g.c).step_by(16).zip(image.chunks_mut(self.plane)) {
                // SAFETY: takes() checked AVX-512; rows c0 + i < C are read at
                // pixels q0 .. q0 + n ≤ P; block holds the plane, at[q] + 16 ≤ plane
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::to_channel_blocks(&x_n[c0 * p..], (g.c - c0).min(16), p, &at, block)
                };
            }
        }
    }
}

/// One channel tile (channels o0 .. o0 + 16·nv, those below OC) of a run of images.
struct Tile {
    images: std::ops::Range<usize>,
    o0: usize,
    nv: usize,
}

/// One channel tile of the task's images: `xpad` their padded copies, `w_u`
/// from Wᵀ_u on, `out` from the tile's first row of the first image (images
/// OC·P apart, the tile's rows P apart). Per K block, every segment of R
/// output pixels (a row of 8, two rows of 4) of every image adds its
/// microkernel sums to `sums` [image][segment][R][16·NV]; then those are
/// stored transposed with the epilogue.
#[allow(clippy::too_many_arguments)]
fn run_tile(layout: &Layout, xpad: &[f32], w_u: &[f32], tile: &Tile, epi: &Epilogue, g: &ConvGeom, out: &mut [f32], sums: &mut Vec<f32>) {
    let (p, k, y_len) = (g.p(), g.k(), g.oc * g.p());
    let (width, images, segments) = (16 * tile.nv, tile.images.len(), g.p() / R);
    let rows = width.min(g.oc - tile.o0);
    let block = R * width;
    // pixel px of a segment: row px / W of it, column px % W
    let row_stride = layout.wp * 16;
    assert!(xpad.len() >= images * layout.image_len && w_u.len() >= k * width && out.len() == (images - 1) * y_len + rows * p);
    sums.resize(images * segments * block, 0.0);
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for j in 0..images {
            for seg in 0..segments {
                let base = xpad[j * layout.image_len + seg * R / g.w * row_stride..].as_ptr();
                let at = (j * segments + seg) * block;
                // SAFETY: takes() checked AVX-512; for k0 + kk < K the tap
                // offsets plus the segment's pixels stay inside image j's
                // padded copy (rows ≤ H + 1, columns ≤ W + 1); w_u holds K
                // rows of 16·NV floats and sums[at..] R·16·NV (asserted, sized).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    use avx512::micro;
                    let (offs, w, s, first) = (layout.offs[k0..].as_ptr(), w_u[k0 * width..].as_ptr(), sums[at..].as_mut_ptr(), k0 == 0);
                    match (g.w, tile.nv) {
                        (8, 1) => micro::<8, 1>(kc, offs, base, row_stride, w, s, first),
                        (8, 2) => micro::<8, 2>(kc, offs, base, row_stride, w, s, first),
                        (8, 3) => micro::<8, 3>(kc, offs, base, row_stride, w, s, first),
                        (4, 1) => micro::<4, 1>(kc, offs, base, row_stride, w, s, first),
                        (4, 2) => micro::<4, 2>(kc, offs, base, row_stride, w, s, first),
                        (4, 3) => micro::<4, 3>(kc, offs, base, row_stride, w, s, first),
                        _ => unreachable!("rows of {} × {} vectors", g.w, tile.nv),
                    }
                }
            }
        }
    }
    // y[o, seg·R + px] = sums[seg][px][o] + bias etc. (+ residual)
    for (j, image) in tile.images.clone().enumerate() {
        let add: Vec<f32> = epi.row_add(image, g.oc)[tile.o0..tile.o0 + rows].to_vec();
        let residual = epi.residual.map(|res| &res[(image * g.oc + tile.o0) * p..][..rows * p]);
        let y_j = &mut out[j * y_len..][..rows * p];
        let mut seg = 0;
        while seg < segments {
            let pix0 = seg * R;
            if seg + 1 < segments {
                // two segments' sums are 16 pixel rows of `width`: transposed in registers
                let pair = &sums[(j * segments + seg) * block..][..2 * block];
                // SAFETY: takes() checked AVX-512; pair holds 16 rows of width
                // floats; y_j and residual hold rows channel rows of P from
                // pix0, pix0 + 16 ≤ P
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::store_transposed(pair, width, &add, residual.map(|r| &r[pix0..]), &mut y_j[pix0..], p)
                };
                seg += 2;
                continue;
            }
            let block = &sums[(j * segments + seg) * block..][..block];
            for o in 0..rows {
                let y_seg = &mut y_j[o * p + pix0..][..R];
                for (px, y) in y_seg.iter_mut().enumerate() {
                    *y = block[px * width + o] + add[o];
                }
                if let Some(res) = residual {
                    y_seg.iter_mut().zip(&res[o * p + pix0..][..R]).for_each(|(y, v)| *y += v);
                }
            }
            seg += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::R;
    use std::arch::x86_64::*;

    /// block[at[q] + i] = x[i·p + q] for the `rows` (≤ 16) channel rows of x
    /// and every pixel q < p.
    ///
    /// # Safety
    /// AVX-512F; x holds rows·p values, at[q] + 16 ≤ block.len().
    #[target_feature(enable = "avx512f")]
    pub unsafe fn to_channel_blocks(x: &[f32], rows: usize, p: usize, at: &[usize], block: &mut [f32]) {
        debug_assert!(x.len() >= rows * p && at.len() == p && at.iter().all(|&a| a + 16 <= block.len()));
        for q0 in (0..p).step_by(16) {
            let n = (p - q0).min(16);
            let mask: __mmask16 = if n == 16 { !0 } else { (1u16 << n) - 1 };
            // SAFETY: row i < rows is read at q0 .. q0 + n ≤ p
            let lanes: [__m512; 16] =
                std::array::from_fn(|i| if i < rows { unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i * p + q0)) } } else { _mm512_setzero_ps() });
            let pixels = crate::ops::avx512::transpose16(lanes);
            for (j, v) in pixels.iter().enumerate().take(n) {
                // SAFETY: at[q0 + j] + 16 ≤ block.len()
                unsafe { _mm512_storeu_ps(block.as_mut_ptr().add(at[q0 + j]), *v) };
            }
        }
    }

    /// y[o·p + i] = pair[i·width + o] + add[o] (+ residual[o·p + i]) for
    /// 16 pixels i and the add.len() channels o: 16 channels at a time
    /// transposed in registers.
    ///
    /// # Safety
    /// AVX-512F; pair holds 16·width floats, width ≥ add.len() a multiple
    /// of 16; y (and residual) add.len() rows of p from their start, p ≥ 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn store_transposed(pair: &[f32], width: usize, add: &[f32], residual: Option<&[f32]>, y: &mut [f32], p: usize) {
        let rows = add.len();
        debug_assert!(pair.len() >= 16 * width && width >= rows && p >= 16 && y.len() >= (rows - 1) * p + 16);
        debug_assert!(residual.is_none_or(|r| r.len() >= (rows - 1) * p + 16));
        for o0 in (0..rows).step_by(16) {
            // SAFETY: pixel row i < 16 at columns o0 .. o0 + 16 ≤ width
            let pixels: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(pair.as_ptr().add(i * width + o0)) });
            let channels = crate::ops::avx512::transpose16(pixels);
            for (l, &v) in channels.iter().enumerate().take(rows - o0) {
                let o = o0 + l;
                // SAFETY: o < rows: 16 floats of row o inside y and residual
                unsafe {
                    let mut val = _mm512_add_ps(v, _mm512_set1_ps(add[o]));
                    if let Some(r) = residual {
                        val = _mm512_add_ps(val, _mm512_loadu_ps(r.as_ptr().add(o * p)));
                    }
                    _mm512_storeu_ps(y.as_mut_ptr().add(o * p), val);
                }
            }
        }
    }

    /// dst[i] = src[i·step] for i < n (≤ 16), the rest of the 16 zero.
    ///
    /// # Safety
    /// AVX-512F; src[i·step] readable for i < n, dst 16 floats, 16·step < 2³¹.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gather16(src: *const f32, step: usize, n: usize, dst: *mut f32) {
        let index = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(step as i32));
        let mask: __mmask16 = if n >= 16 { !0 } else { (1u16 << n) - 1 };
        // SAFETY: only the n masked lanes are read; dst holds 16 floats
        unsafe {
            let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, index, src);
            _mm512_storeu_ps(dst, v);
        }
    }

    /// block[px][16v + l] (+)= Σ_k w[k·16NV + 16v + l] · x_k[px] for px < R,
    /// v < NV, where pixel px of rows of RW lies at
    /// x_k[px] = row[offs[k] + (px / RW)·row_stride + 16·(px % RW)]:
    /// written when `first`, else added to.
    ///
    /// # Safety
    /// AVX-512F; offs holds k offsets with every x_k[px] readable,
    /// w k·16·NV floats, block R·16·NV.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn micro<const RW: usize, const NV: usize>(k: usize, offs: *const isize, row: *const f32, row_stride: usize, w: *const f32, block: *mut f32, first: bool) {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for kk in 0..k {
            // SAFETY: kk < k, the caller's bounds
            unsafe {
                let x = row.offset(*offs.add(kk));
                // the second row of 4 (past the copy's end for rows of 8: never read)
                let x2 = x.wrapping_add(row_stride);
                let wk = w.add(kk * 16 * NV);
                let wv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(wk.add(16 * v)));
                for (px, acc_px) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(if px < RW { *x.add(16 * px) } else { *x2.add(16 * (px - RW)) });
                    for (a, &wvv) in acc_px.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(wvv, b, *a);
                    }
                }
            }
        }
        for (px, acc_px) in acc.iter().enumerate() {
            for (v, &a) in acc_px.iter().enumerate() {
                // SAFETY: px < R, v < NV: inside block
                unsafe {
                    let at = block.add(px * 16 * NV + 16 * v);
                    _mm512_storeu_ps(at, if first { a } else { _mm512_add_ps(_mm512_loadu_ps(at), a) });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_tiles_spread_the_vectors() {
        assert_eq!(super::channel_tiles(256), [3, 3, 3, 3, 2, 2]);
        assert_eq!(super::channel_tiles(128), [3, 3, 2]);
        assert_eq!(super::channel_tiles(40), [3]);
        assert_eq!(super::channel_tiles(1), [1]);
    }
}
