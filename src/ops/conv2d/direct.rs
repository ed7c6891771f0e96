//! The CPU forward convolution on AVX-512 or AVX2: im2col packed straight
//! into pixel panels, a register-blocked microkernel, the epilogue added as it
//! stores.
//!
//! Per image (notation of `cpu.rs`: y_n [OC, P] = W [OC, K] · col_n [K, P]):
//!
//! - W is packed into channel panels A_u [K][MR] (zeros past OC), once per
//!   call or kept with the weight ([`Panels`], `ops::conv2d`);
//! - col_n, as pixel panels B_t [K][T] of T = 16·NV pixels, comes one of three
//!   ways: stride 1 with output rows of whole 16-pixel vectors (16×16, 32×32
//!   maps) reads a zero-padded copy of the image in place through per-tap
//!   offsets; other stride-1 maps gather each KC × T block by masked loads
//!   just before use (it stays in L1); strided convolutions pack whole panels
//!   from im2col rows first;
//! - for each K block, pixel panel t and channel tile u the microkernel keeps
//!   the MR × T block of y in registers (MR·NV zmm, or MR·2NV ymm on AVX2):
//!   per k, the vector loads of B_t[k], MR broadcasts of A_u[k] and the fused
//!   multiply-adds acc[r][v] += A_u[k][r] · B_t[k][16v .. 16v + 16];
//!   the first K block writes y, later ones add to it, the last adds the
//!   epilogue (masked at the edges).
//!
//! Small maps are batched: a task takes a group of images so that each weight
//! block in cache serves several pixel panels.
//!
//! Sums run over k in order with FMA: not the bits of the gemm path, within
//! its rounding (tested against it and against an f64 sum). AVX-512 and AVX2
//! sum each output in the same order, so they agree bit for bit.

use super::cpu::{ConvGeom, Epilogue, im2col_row};
use crate::ops::fast_math::{SimdLevel, avx512};
use rayon::prelude::*;
use std::cell::RefCell;

/// True when this CPU runs the kernel: AVX-512, or AVX2 with FMA.
pub fn available() -> bool {
    crate::ops::fast_math::simd_level() >= SimdLevel::Avx2
}

/// (MR, NV): output channels × 16-pixel vectors per microkernel call. Picks
/// the shape with the least padded work; on AVX-512 (32 zmm) 24×16 for few
/// pixels and many channels, 8×32 for few channels, 1×128 for one; on AVX2
/// (16 ymm, a 16-pixel vector in two) 6×16 or 4×16, 1×64 for one.
fn tile_shape(oc: usize, p: usize) -> (usize, usize) {
    // (MR, NV, cost weight): 8×2 has 16 accumulators, a little less overlap;
    // 4×1 has 8, a third fewer FMAs to a broadcast than 6×1 (3×2 would need
    // 17 registers: its accumulators spilled); 1×NV (one output channel, the
    // UNet's conv_out) loads more than it computes
    const WIDE: [(usize, usize, f64); 4] = [(24, 1, 1.0), (12, 2, 1.0), (8, 2, 1.05), (1, 8, 2.0)];
    const NARROW: [(usize, usize, f64); 3] = [(6, 1, 1.0), (4, 1, 1.05), (1, 4, 2.0)];
    let cost = |&(mr, nv, weight): &(usize, usize, f64)| {
        (oc.next_multiple_of(mr) * p.next_multiple_of(16 * nv)) as f64 * weight
    };
    let shapes: &[_] = if avx512() { &WIDE } else { &NARROW };
    let best = shapes.iter().min_by(|a, b| cost(a).total_cmp(&cost(b))).expect("shapes");
    (best.0, best.1)
}

/// 64-byte aligned f32 scratch, one per thread, grown as needed (never zeroed:
/// the packers write every entry).
struct Scratch {
    buf: Vec<f32>,
}

impl Scratch {
    fn get(&mut self, len: usize) -> &mut [f32] {
        if self.buf.len() < len + 16 {
            self.buf = vec![0.0; len + 16];
        }
        let offset = self.buf.as_ptr().align_offset(64).min(16);
        &mut self.buf[offset..offset + len]
    }
}

thread_local! {
    /// A task's padded image copies or packed panels.
    static PANELS: RefCell<Scratch> = const { RefCell::new(Scratch { buf: Vec::new() }) };
    /// One KC × T block packed just before use (stride 1).
    static BLOCK: RefCell<Scratch> = const { RefCell::new(Scratch { buf: Vec::new() }) };
}

/// A_u [K][MR] for every channel tile u, zero rows past OC. Read 16 k at a
/// time from each of the MR rows (one cache line each), written in order.
fn pack_weights(weight: &[f32], oc: usize, k: usize, mr: usize) -> Vec<f32> {
    let tiles = oc.div_ceil(mr);
    let len = tiles * k * mr;
    let mut a: Vec<f32> = Vec::with_capacity(len);
    a.spare_capacity_mut()[..len].par_chunks_mut(k * mr).enumerate().for_each(|(u, panel)| {
        let rows = mr.min(oc - u * mr);
        for (kk, dst) in panel.chunks_mut(mr).enumerate() {
            for (r, d) in dst.iter_mut().enumerate() {
                d.write(if r < rows { weight[(u * mr + r) * k + kk] } else { 0.0 });
            }
        }
    });
    // SAFETY: the loop above wrote all `len` entries.
    unsafe { a.set_len(len) };
    a
}

/// B_t [K][T] for every pixel panel t of image x_n (zeros past P): by masked
/// loads with the `runs` of a stride-1 geometry, else from im2col rows
/// (`row`: P floats of scratch).
fn pack_image(x_n: &[f32], g: &ConvGeom, t_len: usize, panels: &mut [f32], row: &mut [f32], runs: Option<&Runs>) {
    let (k, p) = (g.k(), g.p());
    let tiles = p.div_ceil(t_len);
    assert!(x_n.len() >= g.c * g.h * g.w && panels.len() >= tiles * k * t_len);
    #[cfg(target_arch = "x86_64")]
    if let Some(runs) = runs {
        for t in 0..tiles {
            // SAFETY: `available()` checked by `forward`; `runs` was built for
            // this geometry, its masked lanes read only inside x_n (see
            // Runs::new); panel t (K·T floats) is inside `panels` (asserted size).
            unsafe { pack_block(x_n.as_ptr(), g, t, 0, k, t_len, panels[t * k * t_len..].as_mut_ptr(), runs) };
        }
        return;
    }
    for kk in 0..k {
        im2col_row(x_n, g, kk, row);
        for t in 0..tiles {
            let dst = &mut panels[(t * k + kk) * t_len..][..t_len];
            let src = &row[t * t_len..p.min((t + 1) * t_len)];
            dst[..src.len()].copy_from_slice(src);
            dst[src.len()..].fill(0.0);
        }
    }
}

/// For a stride-1 convolution: the 16-lane groups of the pixel panels as runs
/// of consecutive output pixels along one output row, and per run and tap
/// (ki, kj) the lanes that see the image and where lane 0 would read.
///
/// Group q (lanes 16q.. of the panels' pixel order) holds pixels 16q + j;
/// a run covers lanes [lane, lane + len) = output pixels (oy, ox ..). For tap
/// (ki, kj) lane j of the run reads x[c, oy + ki − pad, ox + (j − lane) + kj − pad],
/// at offset c·H·W + `offset` + j from x_n, in the image when the row is
/// and the column lies in [0, W) (`mask`).
struct Runs {
    /// Runs of group q: `starts[q]..starts[q + 1]`.
    starts: Vec<usize>,
    /// (lane mask, offset of lane 0) of group q, tap t, its run r at
    /// starts[q]·taps + t·runs(q) + r: one tap's runs side by side.
    taps: Vec<(u16, isize)>,
    taps_per_run: usize,
}

impl Runs {
    fn new(g: &ConvGeom) -> Runs {
        let (p, taps_per_run) = (g.p(), g.kh * g.kw);
        let (mut starts, mut taps) = (vec![0], Vec::new());
        for q in 0..p.div_ceil(16) {
            // this group's runs, each with its taps in (ki, kj) order
            let mut runs: Vec<Vec<(u16, isize)>> = Vec::new();
            let mut pix = 16 * q;
            while pix < p.min(16 * q + 16) {
                let (oy, ox) = (pix / g.ow, pix % g.ow);
                let lane = pix - 16 * q;
                let len = (g.ow - ox).min(16 - lane);
                let mut run = Vec::with_capacity(taps_per_run);
                for ki in 0..g.kh {
                    for kj in 0..g.kw {
                        let iy = (oy + ki) as isize - g.pad as isize;
                        let ix0 = (ox + kj) as isize - g.pad as isize;
                        let mut mask = 0u16;
                        if iy >= 0 && iy < g.h as isize {
                            for j in 0..len {
                                let ix = ix0 + j as isize;
                                if ix >= 0 && ix < g.w as isize {
                                    mask |= 1 << (lane + j);
                                }
                            }
                        }
                        run.push((mask, iy * g.w as isize + ix0 - lane as isize));
                    }
                }
                runs.push(run);
                pix += len;
            }
            for t in 0..taps_per_run {
                taps.extend(runs.iter().map(|run| run[t]));
            }
            starts.push(starts[q] + runs.len());
        }
        Runs { starts, taps, taps_per_run }
    }

    /// The runs of group q at tap t.
    fn at(&self, q: usize, t: usize) -> &[(u16, isize)] {
        let (first, n) = (self.starts[q], self.starts[q + 1] - self.starts[q]);
        &self.taps[first * self.taps_per_run + t * n..][..n]
    }
}

/// Rows k0 .. k0 + kc of stride-1 pixel panel t into dst [kc][T], by the
/// vector width this CPU has (see the modules' `pack_block`).
///
/// # Safety
/// [`available`]; `runs` built for `g`; x holds C·H·W floats, dst kc·T;
/// k0 + kc ≤ K.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_block(x: *const f32, g: &ConvGeom, t: usize, k0: usize, kc: usize, t_len: usize, dst: *mut f32, runs: &Runs) {
    // SAFETY: the caller's contract; the module matches the CPU's level.
    unsafe {
        if avx512() {
            avx512::pack_block(x, g, t, k0, kc, t_len, dst, runs)
        } else {
            avx2::pack_block(x, g, t, k0, kc, t_len, dst, runs)
        }
    }
}

/// The walk both modules' `pack_block` share: for each row kk < kc (tap
/// k0 + kk = (c, ki, kj)) and 16-lane group v of pixel panel t,
/// `gather(plane, runs, out)` writes the group's 16 lanes at `out` =
/// dst + kk·T + 16v from channel plane c (x + c·H·W, not dereferenced
/// here) through the group's runs at that tap, or zeros for a group past P
/// (`runs` None). Inlined into each module, so `gather` is compiled with its
/// features.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn walk_groups(x: *const f32, g: &ConvGeom, t: usize, k0: usize, kc: usize, t_len: usize, dst: *mut f32, runs: &Runs, mut gather: impl FnMut(*const f32, Option<&[(u16, isize)]>, *mut f32)) {
    let taps = g.kh * g.kw;
    let groups = runs.starts.len() - 1;
    let nv = t_len / 16;
    let (mut c, mut tap) = (k0 / taps, k0 % taps);
    for kk in 0..kc {
        let plane = x.wrapping_add(c * g.h * g.w);
        for v in 0..nv {
            let q = t * nv + v;
            gather(plane, (q < groups).then(|| runs.at(q, tap)), dst.wrapping_add(kk * t_len + 16 * v));
        }
        tap += 1;
        if tap == taps {
            tap = 0;
            c += 1;
        }
    }
}

/// Geometry of [`Source::Padded`]: planes of hp × wp and the K tap offsets.
struct PaddedLayout {
    hp: usize,
    wp: usize,
    offs: Vec<isize>,
    /// A 1×1 kernel without padding over P = a multiple of 16 pixels: x
    /// itself is the layout (no copy; the last vector ends at the image's end).
    in_place: bool,
}

impl PaddedLayout {
    /// For stride-1 convolutions whose output rows are whole 16-pixel
    /// vectors, and for 1×1 ones whose pixel count is a multiple of 16.
    fn new(g: &ConvGeom) -> Option<PaddedLayout> {
        let in_place = g.is_pointwise() && g.p() > 0 && g.p().is_multiple_of(16);
        if !in_place && (g.stride != 1 || g.ow == 0 || !g.ow.is_multiple_of(16)) {
            return None;
        }
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        let offs = (0..g.c)
            .flat_map(|c| (0..g.kh).flat_map(move |ki| (0..g.kw).map(move |kj| ((c * hp + ki) * wp + kj) as isize)))
            .collect();
        Some(PaddedLayout { hp, wp, offs, in_place })
    }

    fn image_len(&self, g: &ConvGeom) -> usize {
        g.c * self.hp * self.wp
    }

    /// dst [C, hp, wp] = x_n with `pad` zeros on every side.
    fn pad(&self, x_n: &[f32], g: &ConvGeom, dst: &mut [f32]) {
        let (hp, wp, pad) = (self.hp, self.wp, g.pad);
        for (plane, src) in dst[..self.image_len(g)].chunks_mut(hp * wp).zip(x_n.chunks(g.h * g.w)) {
            plane[..pad * wp].fill(0.0);
            plane[(pad + g.h) * wp..].fill(0.0);
            for (row, src_row) in plane[pad * wp..(pad + g.h) * wp].chunks_mut(wp).zip(src.chunks(g.w)) {
                row[..pad].fill(0.0);
                row[pad..pad + g.w].copy_from_slice(src_row);
                row[pad + g.w..].fill(0.0);
            }
        }
    }

    fn source<'a>(&'a self, xpad: &'a [f32], g: &ConvGeom) -> Source<'a> {
        Source::Padded { xpad, image_len: self.image_len(g), wp: self.wp, ow: g.ow, offs: &self.offs }
    }
}

/// y [N, OC, OH, OW] = conv(x, weight) + epilogue, on AVX-512 (check [`available`]).
///
/// Images go to rayon tasks in groups: a group packs its images' pixel
/// panels together, so each weight block loaded into cache serves at least
/// [`MIN_PANELS`] panels (a 4×4 map has one; the weight, 2.4 MB at 256
/// channels, would otherwise stream from L3 once per image). One image alone
/// splits its channel tiles across the threads instead.
pub fn forward(x: &[f32], weight: &[f32], epi: &Epilogue, g: &ConvGeom) -> Vec<f32> {
    forward_packed(x, &Panels::new(weight, g), epi, g)
}

/// A weight packed for [`forward_packed`] for a convolution's shape: into the
/// channel panels A_u (their height MR depends on OC and the output pixels),
/// or for the small maps `channel_lanes` takes, into its Wᵀ tiles.
pub enum Panels {
    Pixels { a: Vec<f32>, mr: usize, oc: usize, k: usize },
    Channels(super::channel_lanes::Packed),
}

impl Panels {
    pub fn new(weight: &[f32], g: &ConvGeom) -> Panels {
        if super::channel_lanes::takes(g) {
            Panels::Channels(super::channel_lanes::Packed::new(weight, g))
        } else {
            Panels::pixel_lanes(weight, g)
        }
    }

    /// The pixel-lane panels whatever the shape (tests and benchmarks
    /// compare the two kernels on the maps both take).
    pub fn pixel_lanes(weight: &[f32], g: &ConvGeom) -> Panels {
        let mr = tile_shape(g.oc, g.p()).0;
        Panels::Pixels { a: pack_weights(weight, g.oc, g.k(), mr), mr, oc: g.oc, k: g.k() }
    }

    /// Which packing [`Panels::new`] makes for `g`: MR for channel panels,
    /// 0 for the channel-lane tiles.
    pub fn kind(g: &ConvGeom) -> usize {
        if super::channel_lanes::takes(g) { 0 } else { tile_shape(g.oc, g.p()).0 }
    }
}

/// [`forward`] with the weight packed beforehand (for this shape).
pub fn forward_packed(x: &[f32], panels: &Panels, epi: &Epilogue, g: &ConvGeom) -> Vec<f32> {
    assert!(available(), "direct convolution needs AVX-512 or AVX2");
    let (k, p) = (g.k(), g.p());
    let (mr, nv) = tile_shape(g.oc, p);
    let a = match panels {
        Panels::Channels(packed) => return super::channel_lanes::forward_packed(x, packed, epi, g),
        Panels::Pixels { a, mr: pmr, oc, k: pk } => {
            assert!((*pmr, *oc, *pk) == (mr, g.oc, k), "weight panels packed for another shape");
            a
        }
    };
    let y_len = g.oc * p;
    let total = g.n * y_len;
    if total == 0 {
        return Vec::new();
    }
    let mut y: Vec<f32> = Vec::with_capacity(total);
    let t_len = 16 * nv;
    let tiles = p.div_ceil(t_len);
    let image_panels = tiles * k * t_len;
    let x_len = g.c * g.h * g.w;
    let shape = Tiling { k, p, mr, nv, tiles };
    let y_out = &mut y.spare_capacity_mut()[..total];
    let padded = PaddedLayout::new(g);
    // the masked-load gather, for the stride-1 maps the padded layout does not take
    let runs = (g.stride == 1 && padded.is_none()).then(|| Runs::new(g));
    if g.n == 1 {
        let mut scratch = Vec::new();
        let source = match &padded {
            Some(layout) if layout.in_place => layout.source(x, g),
            Some(layout) => {
                scratch.resize(layout.image_len(g), 0.0);
                layout.pad(x, g, &mut scratch);
                layout.source(&scratch, g)
            }
            None => {
                scratch.resize(image_panels, 0.0);
                pack_image(x, g, t_len, &mut scratch, &mut vec![0.0; p], runs.as_ref());
                Source::Packed(&scratch)
            }
        };
        let row_add = epi.row_add(0, g.oc);
        let per_task = mr * p;
        y_out.par_chunks_mut(per_task).enumerate().for_each(|(u, y_u)| {
            let block = Block {
                a: &a[u * k * mr..],
                source: source.clone(),
                row_add: &row_add[u * mr..],
                residual: epi.residual.map(|r| &r[u * per_task..]),
                images: 1,
                image_stride: 0,
            };
            block_tiles(&block, y_u, &shape);
        });
        // SAFETY: block_tiles wrote every entry of y (all channels × all pixels).
        unsafe { y.set_len(total) };
        return y;
    }
    let spare = g.n.div_ceil(2 * rayon::current_num_threads()).max(1);
    let group = MIN_PANELS.div_ceil(tiles).clamp(1, spare);
    y_out.par_chunks_mut(group * y_len).enumerate().for_each(|(gi, y_g)| {
        let (i0, images) = (gi * group, y_g.len() / y_len);
        let row_add: Vec<f32> = (i0..i0 + images).flat_map(|i| epi.row_add(i, g.oc)).collect();
        let residual = epi.residual.map(|r| &r[i0 * y_len..(i0 + images) * y_len]);
        let x_g = &x[i0 * x_len..(i0 + images) * x_len];
        PANELS.with_borrow_mut(|scratch| {
            let source = match (&padded, &runs) {
                (Some(layout), _) if layout.in_place => layout.source(x_g, g),
                (Some(layout), _) => {
                    let image_len = layout.image_len(g);
                    let xpad = scratch.get(images * image_len);
                    for (j, dst) in xpad.chunks_mut(image_len).enumerate() {
                        layout.pad(&x_g[j * x_len..(j + 1) * x_len], g, dst);
                    }
                    layout.source(xpad, g)
                }
                (None, Some(runs)) => Source::Images { x: x_g, x_len, g, runs },
                (None, None) => {
                    let buf = scratch.get(images * image_panels + p);
                    let (panels, row) = buf.split_at_mut(images * image_panels);
                    for (j, panels_j) in panels.chunks_mut(image_panels).enumerate() {
                        pack_image(&x_g[j * x_len..(j + 1) * x_len], g, t_len, panels_j, row, None);
                    }
                    Source::Packed(panels)
                }
            };
            block_tiles(&Block { a: &a, source, row_add: &row_add, residual, images, image_stride: y_len }, y_g, &shape);
        })
    });
    // SAFETY: block_tiles wrote every entry of y (all images × channels × pixels).
    unsafe { y.set_len(total) };
    y
}

/// Pixel panels a task runs each weight block over, at least (when the batch allows).
const MIN_PANELS: usize = 8;

/// K values per block: one pixel panel's block (KC·T floats, 16–32 KB) stays
/// in L1 while every channel tile runs over it.
const KC: usize = 256;

/// Where the pixel panels come from.
#[derive(Clone)]
enum Source<'a> {
    /// Every image's panels, packed beforehand.
    Packed(&'a [f32]),
    /// Stride 1: each KC × T block packed from the images (x_len floats
    /// apart) just before the channel tiles use it, so it is written to and
    /// read from L1 instead of a panel matrix of up to K·P floats per image.
    Images { x: &'a [f32], x_len: usize, g: &'a ConvGeom, runs: &'a Runs },
    /// Stride 1 with whole rows of 16-pixel vectors (OW a multiple of 16):
    /// no panels at all. Each image is copied once with its zero padding
    /// (planes of (H + 2·pad) × `wp`, `image_len` floats apart); B_t[k] for
    /// vector v is then the padded row segment at `offs[k]` =
    /// (c·(H + 2·pad) + ki)·wp + kj from the vector's first output pixel.
    Padded { xpad: &'a [f32], image_len: usize, wp: usize, ow: usize, offs: &'a [isize] },
}

/// Sizes every task shares.
struct Tiling {
    k: usize,
    p: usize,
    mr: usize,
    nv: usize,
    /// Pixel panels per image.
    tiles: usize,
}

/// One task's operands: `images` images' pixel panels and, from some channel
/// tile on, the weight panels, row additions (image j's at j·OC... as laid
/// out by the caller: image_stride / P channels apart) and residual.
struct Block<'a> {
    a: &'a [f32],
    source: Source<'a>,
    row_add: &'a [f32],
    residual: Option<&'a [f32]>,
    images: usize,
    /// Offset between images in y and residual (OC·P); row_add uses OC.
    image_stride: usize,
}

/// y (rows of `images` images, from the block's first channel) for every
/// channel tile × pixel panel, in K blocks: the first block writes every
/// entry (y may start uninitialised), partial sums stay in y between blocks,
/// the epilogue is added after the last.
fn block_tiles(b: &Block, y: &mut [std::mem::MaybeUninit<f32>], s: &Tiling) {
    let Tiling { k, p, mr, nv, tiles } = *s;
    let t_len = 16 * nv;
    let image_rows = if b.images == 1 { y.len() } else { b.image_stride };
    let channels = image_rows / p;
    let row_add_stride = b.image_stride / p;
    assert!(b.images >= 1 && y.len() == (b.images - 1) * b.image_stride + channels * p);
    assert!(b.a.len() >= channels.div_ceil(mr) * k * mr);
    assert!(b.row_add.len() >= (b.images - 1) * row_add_stride + channels && b.residual.is_none_or(|r| r.len() >= y.len()));
    match b.source {
        Source::Packed(panels) => assert!(panels.len() >= b.images * tiles * k * t_len),
        Source::Images { x, x_len, g, .. } => assert!(g.stride == 1 && x_len >= g.c * g.h * g.w && x.len() >= b.images * x_len),
        Source::Padded { xpad, image_len, wp, ow, offs } => {
            // the farthest read: the last vector's first pixel, the largest offset, 16 lanes
            let far = offs.iter().copied().max().unwrap_or(0);
            // a vector's 16 pixels are consecutive: rows of whole vectors, or rows without padding
            assert!(offs.len() == k && (ow % 16 == 0 || wp == ow) && p % ow == 0 && xpad.len() >= b.images * image_len);
            let last_vector = (p - 1) / 16 * 16;
            assert!(offs.iter().all(|&o| o >= 0) && (last_vector / ow) * wp + last_vector % ow + 16 + far as usize <= image_len);
        }
    }
    let wide = avx512();
    BLOCK.with_borrow_mut(|scratch| {
        let buf = scratch.get(if matches!(b.source, Source::Images { .. }) { KC * t_len } else { 0 });
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let (first, last) = (k0 == 0, k0 + kc == k);
            for j in 0..b.images {
                for t in 0..tiles {
                    // where B_t[k] lies: a packed block, or rows of the padded image
                    let mut bases = [std::ptr::null::<f32>(); 8];
                    let b_rows = match b.source {
                        Source::Packed(panels) => BRows::Contiguous(panels[((j * tiles + t) * k + k0) * t_len..].as_ptr()),
                        Source::Images { x, x_len, g, runs } => {
                            // SAFETY: `available()` checked by `forward`; image j
                            // holds C·H·W floats and buf KC·T (asserted above).
                            #[cfg(target_arch = "x86_64")]
                            unsafe {
                                pack_block(x[j * x_len..].as_ptr(), g, t, k0, kc, t_len, buf.as_mut_ptr(), runs)
                            };
                            BRows::Contiguous(buf.as_ptr())
                        }
                        Source::Padded { xpad, image_len, wp, ow, offs } => {
                            for (v, base) in bases.iter_mut().take(nv).enumerate() {
                                // vectors past P read the tile's first (their lanes are not stored)
                                let pix = if t * t_len + 16 * v < p { t * t_len + 16 * v } else { t * t_len };
                                *base = xpad[j * image_len + (pix / ow) * wp + pix % ow..].as_ptr();
                            }
                            BRows::Offsets(offs[k0..].as_ptr())
                        }
                    };
                    for u in 0..channels.div_ceil(mr) {
                        let at = j * b.image_stride + u * mr * p + t * t_len;
                        let out = Store {
                            y: y[at..].as_mut_ptr().cast::<f32>(),
                            row_stride: p,
                            rows: mr.min(channels - u * mr),
                            cols: t_len.min(p - t * t_len),
                            accumulate: !first,
                            row_add: if last { b.row_add[j * row_add_stride + u * mr..].as_ptr() } else { std::ptr::null() },
                            residual: match b.residual {
                                Some(r) if last => r[at..].as_ptr(),
                                _ => std::ptr::null(),
                            },
                        };
                        let a_u = b.a[(u * k + k0) * mr..].as_ptr();
                        // SAFETY: `available()` was checked by `forward`; a_u holds
                        // kc·MR floats, bases[v] + offs[kk] for kk < kc address
                        // 16 floats inside the packed block or padded image
                        // (asserted sizes); Store's pointers address `rows`
                        // rows of `cols` entries at stride P inside y / residual.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            if wide {
                                avx512::tile(kc, a_u, b_rows, &bases, mr, nv, &out)
                            } else {
                                avx2::tile(kc, a_u, b_rows, &bases, mr, nv, &out)
                            }
                        }
                    }
                }
            }
        }
    })
}

/// B_t of one microkernel call: a packed block, or the tap offsets into a
/// padded image (with the vectors' base pointers beside it).
#[derive(Clone, Copy)]
enum BRows {
    Contiguous(*const f32),
    Offsets(*const isize),
}

/// The first N of eight vector base pointers.
fn first_bases<const N: usize>(bases: &[*const f32; 8]) -> [*const f32; N] {
    std::array::from_fn(|v| bases[v])
}

/// Where B_k[v], the 16 floats of pixel vector v at row k, lie.
trait PanelRows {
    /// # Safety
    /// k and v inside the panel this describes.
    unsafe fn at(&self, k: usize, v: usize) -> *const f32;
}

/// A packed panel: B_k[v] at base + (k·NV + v)·16.
#[derive(Clone, Copy)]
struct Contiguous<const NV: usize>(*const f32);

impl<const NV: usize> PanelRows for Contiguous<NV> {
    #[inline(always)]
    unsafe fn at(&self, k: usize, v: usize) -> *const f32 {
        // SAFETY: the caller keeps (k, v) inside the panel.
        unsafe { self.0.add((k * NV + v) * 16) }
    }
}

/// Rows of a padded image: B_k[v] at bases[v] + offs[k].
#[derive(Clone, Copy)]
struct Offsets<const NV: usize> {
    offs: *const isize,
    bases: [*const f32; NV],
}

impl<const NV: usize> PanelRows for Offsets<NV> {
    #[inline(always)]
    unsafe fn at(&self, k: usize, v: usize) -> *const f32 {
        // SAFETY: the caller keeps (k, v) inside the image.
        unsafe { self.bases[v].offset(*self.offs.add(k)) }
    }
}

/// `$module::tile`: the microkernel for a tile shape the module's
/// `tile_shape` picks, over packed rows or a padded image.
macro_rules! tiles {
    ($($mr:literal x $nv:literal),*) => {
        /// [`micro`] for tile shape MR × NV.
        ///
        /// # Safety
        /// As [`micro`], with `bases` (the first NV) the vectors' rows for
        /// [`BRows::Offsets`](super::BRows).
        pub unsafe fn tile(k: usize, a: *const f32, b: BRows, bases: &[*const f32; 8], mr: usize, nv: usize, out: &Store) {
            // SAFETY: the caller's contract.
            unsafe {
                match (b, mr, nv) {
                    $(
                        (BRows::Contiguous(b), $mr, $nv) => micro::<$mr, $nv, _>(k, a, Contiguous::<$nv>(b), out),
                        (BRows::Offsets(offs), $mr, $nv) => micro::<$mr, $nv, _>(k, a, Offsets::<$nv> { offs, bases: first_bases(bases) }, out),
                    )*
                    _ => unreachable!("tile shape {mr}×{nv}"),
                }
            }
        }
    };
}

/// Where one microkernel block goes: `rows` rows of `cols` (≤ T) outputs.
struct Store {
    y: *mut f32,
    row_stride: usize,
    rows: usize,
    cols: usize,
    /// Start from the partial sums in y (later K blocks) instead of 0.
    accumulate: bool,
    /// Added to every output of a row (bias + per-image bias), `rows` values;
    /// null before the last K block.
    row_add: *const f32,
    /// Added elementwise, laid out like y; null for none.
    residual: *const f32,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BRows, Contiguous, ConvGeom, Offsets, PanelRows, Runs, Store, first_bases, walk_groups};
    use std::arch::x86_64::*;

    /// Rows k0 .. k0 + kc of stride-1 pixel panel t, into dst [kc][T]: per
    /// tap k = (c, ki, kj) and 16-lane group, one masked load per run (lanes
    /// outside the image read nothing and are 0) and one store.
    ///
    /// # Safety
    /// AVX-512F; `runs` built for `g`; x holds C·H·W floats, dst kc·T;
    /// k0 + kc ≤ K.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn pack_block(x: *const f32, g: &ConvGeom, t: usize, k0: usize, kc: usize, t_len: usize, dst: *mut f32, runs: &Runs) {
        walk_groups(x, g, t, k0, kc, t_len, dst, runs, |plane, runs, out| {
            let mut lanes = _mm512_setzero_si512();
            for &(mask, offset) in runs.unwrap_or_default() {
                // runs own disjoint lanes: zero-masked loads ORed
                // together (independent, unlike a chain of merging loads)
                // SAFETY: only the lanes in `mask` are read, and
                // those lie inside the channel plane (Runs::new).
                let run = unsafe { _mm512_maskz_loadu_ps(mask, plane.wrapping_offset(offset)) };
                lanes = _mm512_or_si512(lanes, _mm512_castps_si512(run));
            }
            // SAFETY: row kk < kc, lanes 16v.. 16v + 16 ≤ T: inside dst.
            unsafe { _mm512_storeu_ps(out, _mm512_castsi512_ps(lanes)) };
        })
    }

    tiles!(24 x 1, 12 x 2, 8 x 2, 1 x 8);

    /// acc[r][v] = Σ_k a[k·MR + r] · B_k[v], then
    /// y[r, 16v + j] = (y[r, 16v + j] if accumulating) + acc[r][v][j]
    /// (+ row_add[r]) (+ residual[r, 16v + j]).
    ///
    /// # Safety
    /// AVX-512F; `a` holds K·MR floats and `b` K rows of NV vectors; `out` as
    /// documented.
    #[target_feature(enable = "avx512f")]
    unsafe fn micro<const MR: usize, const NV: usize, B: PanelRows + Copy>(k: usize, a: *const f32, b: B, out: &Store) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for kk in 0..k {
            // SAFETY (whole block): kk < K keeps every read inside the panels.
            unsafe {
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, lane) in bv.iter_mut().enumerate() {
                    *lane = _mm512_loadu_ps(b.at(kk, v));
                }
                let a_k = a.add(kk * MR);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_ps(*a_k.add(r));
                    for (acc_rv, &bvv) in acc_r.iter_mut().zip(&bv) {
                        *acc_rv = _mm512_fmadd_ps(w, bvv, *acc_rv);
                    }
                }
            }
        }
        // the epilogue indexes rows at run time: give it a copy, so that
        // `acc` itself is only ever indexed by constants and stays in registers
        let tile = std::hint::black_box(acc);
        for (r, acc_r) in tile.iter().enumerate().take(out.rows) {
            for (v, &acc_rv) in acc_r.iter().enumerate() {
                let start = 16 * v;
                if start >= out.cols {
                    break;
                }
                let n = (out.cols - start).min(16);
                let mask: __mmask16 = if n == 16 { 0xffff } else { (1u16 << n) - 1 };
                // SAFETY: row r < rows and columns start..start + n < cols are inside y / residual.
                unsafe {
                    let at = r * out.row_stride + start;
                    let mut val = acc_rv;
                    if out.accumulate {
                        val = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out.y.add(at)), val);
                    }
                    if !out.row_add.is_null() {
                        val = _mm512_add_ps(val, _mm512_set1_ps(*out.row_add.add(r)));
                    }
                    if !out.residual.is_null() {
                        val = _mm512_add_ps(val, _mm512_maskz_loadu_ps(mask, out.residual.add(at)));
                    }
                    _mm512_mask_storeu_ps(out.y.add(at), mask, val);
                }
            }
        }
    }
}

/// The same kernel on AVX2: a 16-pixel vector is two ymm halves (lanes 0–7,
/// 8–15), every sum taken in the same order as on AVX-512.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BRows, Contiguous, ConvGeom, Offsets, PanelRows, Runs, Store, first_bases, walk_groups};
    use crate::ops::avx2::lane_mask;
    use std::arch::x86_64::*;

    /// As `avx512::pack_block`, each 16-lane group as two masked 8-lane loads
    /// per run (a half without lanes in the run is not loaded).
    ///
    /// # Safety
    /// AVX2; `runs` built for `g`; x holds C·H·W floats, dst kc·T;
    /// k0 + kc ≤ K.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn pack_block(x: *const f32, g: &ConvGeom, t: usize, k0: usize, kc: usize, t_len: usize, dst: *mut f32, runs: &Runs) {
        walk_groups(x, g, t, k0, kc, t_len, dst, runs, |plane, runs, out| {
            let mut halves = [_mm256_setzero_ps(); 2];
            for &(mask, offset) in runs.unwrap_or_default() {
                for (h, half) in halves.iter_mut().enumerate() {
                    let bits = u32::from(mask) >> (8 * h) & 0xff;
                    if bits != 0 {
                        // SAFETY: only the lanes in `mask` are read, and
                        // those lie inside the channel plane (Runs::new).
                        let run = unsafe { _mm256_maskload_ps(plane.wrapping_offset(offset + 8 * h as isize), lane_mask(bits)) };
                        *half = _mm256_or_ps(*half, run);
                    }
                }
            }
            for (h, &half) in halves.iter().enumerate() {
                // SAFETY: row kk < kc, lanes 16v + 8h.. + 8 ≤ T: inside dst.
                unsafe { _mm256_storeu_ps(out.add(8 * h), half) };
            }
        })
    }

    tiles!(6 x 1, 4 x 1, 1 x 4);

    /// As `avx512::micro`, with acc[r][v] as two ymm halves.
    ///
    /// # Safety
    /// AVX2 and FMA; `a` holds K·MR floats and `b` K rows of NV vectors;
    /// `out` as documented.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn micro<const MR: usize, const NV: usize, B: PanelRows + Copy>(k: usize, a: *const f32, b: B, out: &Store) {
        let mut acc = [[[_mm256_setzero_ps(); 2]; NV]; MR];
        for kk in 0..k {
            // SAFETY (whole block): kk < K keeps every read inside the panels.
            unsafe {
                let mut bv = [[_mm256_setzero_ps(); 2]; NV];
                for (v, halves) in bv.iter_mut().enumerate() {
                    let row = b.at(kk, v);
                    *halves = [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))];
                }
                let a_k = a.add(kk * MR);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let w = _mm256_set1_ps(*a_k.add(r));
                    for (acc_rv, bvv) in acc_r.iter_mut().zip(&bv) {
                        for (acc_h, &b_h) in acc_rv.iter_mut().zip(bvv) {
                            *acc_h = _mm256_fmadd_ps(w, b_h, *acc_h);
                        }
                    }
                }
            }
        }
        // a copy for the epilogue, as in `avx512::micro`
        let tile = std::hint::black_box(acc);
        for (r, acc_r) in tile.iter().enumerate().take(out.rows) {
            for (start, &acc_h) in (0..).step_by(8).zip(acc_r.as_flattened()) {
                if start >= out.cols {
                    break;
                }
                let n = (out.cols - start).min(8);
                let mask = lane_mask((1 << n) - 1);
                // SAFETY: row r < rows and columns start..start + n < cols are
                // inside y / residual (the full-width loads only when n = 8).
                unsafe {
                    let load = |p: *const f32| if n == 8 { _mm256_loadu_ps(p) } else { _mm256_maskload_ps(p, mask) };
                    let at = r * out.row_stride + start;
                    let mut val = acc_h;
                    if out.accumulate {
                        val = _mm256_add_ps(load(out.y.add(at)), val);
                    }
                    if !out.row_add.is_null() {
                        val = _mm256_add_ps(val, _mm256_set1_ps(*out.row_add.add(r)));
                    }
                    if !out.residual.is_null() {
                        val = _mm256_add_ps(val, load(out.residual.add(at)));
                    }
                    if n == 8 {
                        _mm256_storeu_ps(out.y.add(at), val);
                    } else {
                        _mm256_maskstore_ps(out.y.add(at), mask, val);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_shapes_fit_the_unet() {
        if avx512() {
            assert_eq!(tile_shape(256, 16), (24, 1));
            assert_eq!(tile_shape(32, 1024), (8, 2));
            assert_eq!(tile_shape(1, 1024), (1, 8));
            assert_eq!(tile_shape(3, 1024), (1, 8));
            assert_eq!(tile_shape(6, 1024), (8, 2));
        } else {
            assert_eq!(tile_shape(256, 16), (6, 1));
            assert_eq!(tile_shape(32, 1024), (4, 1));
            assert_eq!(tile_shape(64, 256), (6, 1));
            assert_eq!(tile_shape(1, 1024), (1, 4));
            assert_eq!(tile_shape(3, 1024), (4, 1));
        }
    }
}
