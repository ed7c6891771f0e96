//! Where the same-conv weight gradient (kernels/conv2d_same.cu,
//! `same::weight_grad`) keeps its staged input patch in shared memory, chosen
//! per shape so that a warp's B-fragment loads hit 32 distinct banks.
//!
//! A block stages CT input channels of the patch (the tile's rows plus the
//! halo) as words: one pixel (f32) or a bf16 pair of neighbouring pixels,
//! twice at bf16 (pairs from even positions, and from odd ones in a second
//! plane). Word (parity, c, segment, row, col) sits at
//!   parity·plane + c·chan + segment·seg + row·row_words + col / PER_WORD.
//! A B fragment is 8 (channel, tap) columns × 4 pixel words; each column
//! reads at its tap's shift (dy rows, dx pixels) from the pixel words'
//! positions. With rows packed back to back, the taps' rows fell on the same
//! banks: 2.0 wavefronts a load at 32×32, 8×8 and 4×4 (GPU run 7's ncu:
//! 5.5 M bank conflicts a launch at 32×32). The row, segment, channel and
//! plane strides are free (padding the kernel never reads), so the host
//! searches them once per shape by simulating a block's pass over a tile:
//! its B-fragment loads and its staging stores (padded rows cost the stores
//! some — a warp's 32 items wrap past a row end onto banks its first items
//! took — but a tile loads each word ~6 times for each store). At the seed
//! UNet's shapes every load takes one wavefront; at 32×32 a tile's shared
//! accesses take 1,560 wavefronts against the fixed layout's 2,568 (bf16;
//! 8×8: 1,280 against 2,432).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::cpu::ConvGeom;

/// The patch strides in 32-bit words; mirrors `same::WgLayout`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct WgLayout {
    /// Words from one patch row to the next (≥ the row's words).
    pub row: i32,
    /// Words from one segment (an image of a multi-image tile) to the next.
    pub seg: i32,
    /// Words from one channel to the next.
    pub chan: i32,
    /// Words from the even-pair plane to the odd-pair one (bf16; unused at f32).
    pub plane: i32,
}

/// Pixels per block tile (BN).
const TILE_PIXELS: usize = 128;
/// dY words a phase stages (WG_PHASE).
const PHASE_WORDS: usize = 64;
/// Shared words the kernel holds for the patch, by block rows (WG_WORDS_M32,
/// WG_WORDS_M64): what 48 KB of static shared memory leaves beside the dY
/// tile and the geometry tables.
pub const WORDS_M32: usize = 8952;
pub const WORDS_M64: usize = 5664;

/// The geometry of a same conv's 128-pixel tile: whole output rows of one
/// image, or whole images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tile {
    ks: usize,
    ow: usize,
    /// Output rows a segment spans.
    rows: usize,
    segments: usize,
}

impl Tile {
    fn of(g: &ConvGeom) -> Tile {
        let p = g.oh * g.ow;
        let rows = if p >= TILE_PIXELS { TILE_PIXELS / g.ow } else { g.oh };
        Tile { ks: g.kh, ow: g.ow, rows, segments: TILE_PIXELS / (rows * g.ow) }
    }
    fn pad(&self) -> usize {
        self.ks / 2
    }
    fn patch_cols(&self) -> usize {
        self.ow + 2 * self.pad()
    }
    fn patch_rows(&self) -> usize {
        self.rows + 2 * self.pad()
    }
}

/// The shape of the block the search simulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Block {
    tile: Tile,
    /// Block rows (output channels): 32 or 64.
    bm: usize,
    /// Pixels a word holds: 1 (f32) or 2 (bf16 pairs).
    per_word: usize,
}

impl Block {
    fn channels(&self) -> usize {
        if self.bm == 64 { 16 } else { 32 }
    }
    fn capacity(&self) -> usize {
        if self.bm == 64 { WORDS_M64 } else { WORDS_M32 }
    }
    /// Words a patch row holds (its pixels, or their pairs).
    fn row_words(&self) -> usize {
        self.tile.patch_cols() / self.per_word
    }
    /// The smallest channel stride holding the patch under `l`.
    fn chan_needed(&self, l: &WgLayout) -> usize {
        let t = &self.tile;
        (t.segments - 1) * l.seg as usize + (t.patch_rows() - 1) * l.row as usize + self.row_words()
    }
    fn words_used(&self, l: &WgLayout) -> usize {
        if self.per_word == 2 { l.plane as usize + self.channels() * l.chan as usize } else { self.channels() * l.chan as usize }
    }

    /// The word offset of each B column's tap, per n8 tile of each warp
    /// column: `same::weight_grad`'s col_off.
    fn column_offsets(&self, l: &WgLayout) -> Vec<[i64; 8]> {
        let kk = self.tile.ks * self.tile.ks;
        let warps_n = 8 / (self.bm / 16);
        let nt = self.channels() * kk / 8 / warps_n;
        (0..warps_n * nt)
            .map(|tile| {
                std::array::from_fn(|g| {
                    let col = 8 * tile + g;
                    let (c, tap) = (col / kk, col % kk);
                    let (dy, dx) = (tap / self.tile.ks, tap % self.tile.ks);
                    let parity = if self.per_word == 2 { (dx % 2) as i64 * l.plane as i64 } else { 0 };
                    parity + (c as i64) * l.chan as i64 + (dy as i64) * l.row as i64 + (dx / self.per_word) as i64
                })
            })
            .collect()
    }

    /// The patch word of each tile word's first pixel for tap (0, 0): the
    /// kernel's word_patch.
    fn word_positions(&self, l: &WgLayout) -> Vec<i64> {
        let t = &self.tile;
        let seg_pix = t.rows * t.ow;
        (0..TILE_PIXELS / self.per_word)
            .map(|j| {
                let n = self.per_word * j;
                let (seg, local) = (n / seg_pix, n % seg_pix);
                let (r, col) = (local / t.ow, local % t.ow);
                (seg as i64) * l.seg as i64 + (r as i64) * l.row as i64 + (col / self.per_word) as i64
            })
            .collect()
    }

    /// Wavefronts of every B-fragment load of a block's pass over one tile
    /// (each distinct address in the busiest bank costs one), summed; stops
    /// early once the sum passes `give_up`.
    fn wavefronts(&self, l: &WgLayout, give_up: usize) -> usize {
        let columns = self.column_offsets(l);
        let words = self.word_positions(l);
        let mut total = 0;
        for offsets in &columns {
            for phase_start in (0..words.len()).step_by(PHASE_WORDS) {
                for step in 0..PHASE_WORDS / 8 {
                    for second in [0, 4] {
                        let mut banks: [[i64; 4]; 32] = [[i64::MIN; 4]; 32];
                        let mut worst = 1;
                        for lane in 0..32 {
                            let at = offsets[lane / 4] + words[phase_start + 8 * step + lane % 4 + second];
                            worst = worst.max(bank_slot(&mut banks[at.rem_euclid(32) as usize], at));
                        }
                        total += worst;
                        if total > give_up {
                            return total;
                        }
                    }
                }
            }
        }
        total
    }

    /// Wavefronts of the staging stores of one tile (each warp's store of
    /// 32 consecutive items, per plane: item e = tid + 256·pass is channel
    /// e / row_items, patch word e % row_items), summed; stops early once the
    /// sum passes `give_up`. Padded rows cost some: a warp's items cross a
    /// row end and wrap onto banks its first items took.
    fn staging_wavefronts(&self, l: &WgLayout, give_up: usize) -> usize {
        let t = &self.tile;
        let (cols, seg_pixels) = (t.patch_cols(), t.patch_rows() * t.patch_cols());
        let row_items = t.segments * seg_pixels / self.per_word;
        let items = self.channels() * row_items;
        let mut total = 0;
        for warp_start in (0..items).step_by(32) {
            for parity in 0..self.per_word {
                let mut banks: [[i64; 4]; 32] = [[i64::MIN; 4]; 32];
                let mut worst = 1;
                for e in warp_start..(warp_start + 32).min(items) {
                    let (c, pix) = (e / row_items, self.per_word * (e % row_items));
                    let (seg, rest) = (pix / seg_pixels, pix % seg_pixels);
                    let at = (parity as i64) * l.plane as i64
                        + (c as i64) * l.chan as i64
                        + (seg as i64) * l.seg as i64
                        + ((rest / cols) as i64) * l.row as i64
                        + ((rest % cols) / self.per_word) as i64;
                    worst = worst.max(bank_slot(&mut banks[at.rem_euclid(32) as usize], at));
                }
                total += worst;
                if total > give_up {
                    return total;
                }
            }
        }
        total
    }

    /// Store instructions a tile's staging issues (the fewest wavefronts).
    fn stores(&self) -> usize {
        let t = &self.tile;
        (self.channels() * t.segments * t.patch_rows() * t.patch_cols() / self.per_word).div_ceil(32) * self.per_word
    }

    /// Loads a pass simulates (the fewest wavefronts possible).
    fn loads(&self) -> usize {
        let kk = self.tile.ks * self.tile.ks;
        (self.channels() * kk / 8) * (TILE_PIXELS / self.per_word / 8) * 2
    }

    /// Rows packed back to back: the layout before the search, and the
    /// fallback.
    fn packed(&self) -> WgLayout {
        let row = self.row_words() as i32;
        let mut l = WgLayout { row, seg: row * self.tile.patch_rows() as i32, chan: 0, plane: 0 };
        l.chan = self.chan_needed(&l) as i32;
        l.plane = if self.per_word == 2 { self.channels() as i32 * l.chan } else { 0 };
        l
    }

    /// Shared-memory wavefronts of a block's pass over one tile: every warp
    /// row's B-fragment loads and the staging stores (stops early past
    /// `give_up`).
    fn tile_wavefronts(&self, l: &WgLayout, give_up: usize) -> usize {
        let warps_m = self.bm / 16;
        let loads = warps_m * self.wavefronts(l, give_up / warps_m);
        if loads > give_up { loads } else { loads + self.staging_wavefronts(l, give_up - loads) }
    }

    /// The fewest wavefronts a block's pass over one tile can take.
    fn ideal(&self) -> usize {
        self.bm / 16 * self.loads() + self.stores()
    }

    /// The layout whose tile takes the fewest wavefronts and fits (ties: fewer
    /// words): rows and segments padded by up to 8 words, every channel
    /// stride and plane offset modulo 32 (the banks) above what the patch
    /// needs.
    fn search(&self) -> WgLayout {
        let packed = self.packed();
        let mut best = (self.tile_wavefronts(&packed, usize::MAX), self.words_used(&packed), packed);
        let ideal = self.ideal();
        let (row0, rows_pad) = (self.row_words(), 0..=8);
        'search: for row_pad in rows_pad {
            let row = row0 + row_pad;
            let seg_pads = if self.tile.segments > 1 { 0..=8 } else { 0..=0 };
            for seg_pad in seg_pads {
                let seg = row * self.tile.patch_rows() + seg_pad;
                let mut l = WgLayout { row: row as i32, seg: seg as i32, chan: 0, plane: 0 };
                let chan0 = self.chan_needed(&l);
                for chan in chan0..chan0 + 32 {
                    l.chan = chan as i32;
                    let plane_pads = if self.per_word == 2 { 0..32 } else { 0..1 };
                    for plane_pad in plane_pads {
                        l.plane = if self.per_word == 2 { (self.channels() * chan + plane_pad) as i32 } else { 0 };
                        let used = self.words_used(&l);
                        if used > self.capacity() {
                            continue;
                        }
                        let w = self.tile_wavefronts(&l, best.0);
                        if (w, used) < (best.0, best.1) {
                            best = (w, used, l);
                            if w == ideal {
                                break 'search;
                            }
                        }
                    }
                }
            }
        }
        best.2
    }
}

/// Enters `at` among a bank's distinct addresses (up to 4 tracked; more
/// count as 5) and returns how many that bank now serves: its wavefronts.
fn bank_slot(bank: &mut [i64; 4], at: i64) -> usize {
    match bank.iter().position(|&a| a == at || a == i64::MIN) {
        Some(free) => {
            bank[free] = at;
            free + 1
        }
        None => 5,
    }
}

/// The patch layout of the weight-gradient kernel for `g` with `bm` block
/// rows and `per_word` pixels a word (1: f32, 2: bf16), searched once per
/// tile geometry and kept. `g` must be a shape the kernel takes.
pub fn layout(g: &ConvGeom, bm: usize, per_word: usize) -> WgLayout {
    static CHOSEN: OnceLock<Mutex<HashMap<Block, WgLayout>>> = OnceLock::new();
    let block = Block { tile: Tile::of(g), bm, per_word };
    let chosen = CHOSEN.get_or_init(Default::default);
    if let Some(&l) = chosen.lock().unwrap_or_else(|e| e.into_inner()).get(&block) {
        return l;
    }
    let l = block.search();
    chosen.lock().unwrap_or_else(|e| e.into_inner()).insert(block, l);
    l
}

/// Whether the patch of `g` fits the kernel's shared words with rows packed
/// (the least any layout needs).
pub fn fits(g: &ConvGeom, bm: usize, per_word: usize) -> bool {
    let block = Block { tile: Tile::of(g), bm, per_word };
    block.words_used(&block.packed()) <= block.capacity()
}

/// Rows packed, then every stride padded by `pads` words (row, segment,
/// channel, plane), if that fits: a layout for tests that each stride is
/// honoured.
#[cfg(test)]
pub fn padded(g: &ConvGeom, bm: usize, per_word: usize, pads: [usize; 4]) -> Option<WgLayout> {
    let block = Block { tile: Tile::of(g), bm, per_word };
    let row = block.row_words() + pads[0];
    let mut l = WgLayout { row: row as i32, seg: (row * block.tile.patch_rows() + pads[1]) as i32, chan: 0, plane: 0 };
    l.chan = (block.chan_needed(&l) + pads[2]) as i32;
    l.plane = if per_word == 2 { (block.channels() * l.chan as usize + pads[3]) as i32 } else { 0 };
    (block.words_used(&l) <= block.capacity()).then_some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(n: usize, hw: (usize, usize), k: usize) -> ConvGeom {
        ConvGeom { n, c: 8, h: hw.0, w: hw.1, oc: 8, kh: k, kw: k, stride: 1, pad: k / 2, oh: hw.0, ow: hw.1 }
    }

    /// The layout the kernel used before the search (session 22): rows
    /// packed, channel rows of ≥ the largest patch's words ≡ 12 (mod 16),
    /// the odd-pair plane 28 words past the even one.
    fn fixed_layout(block: &Block) -> WgLayout {
        let px_max = if block.bm == 64 { 288 } else { 256 };
        let words = if block.per_word == 2 { px_max / 2 + 1 } else { px_max };
        let row = block.row_words() as i32;
        let chan = ((words + 3) / 8 * 8 + 12) as i32;
        let plane = if block.per_word == 2 { block.channels() as i32 * chan + 28 } else { 0 };
        WgLayout { row, seg: row * block.tile.patch_rows() as i32, chan, plane }
    }

    /// The seed UNet's shapes at both precisions: every B load one
    /// wavefront (the fixed layout took 2.0 at 32×32, 8×8 and 4×4 at bf16),
    /// and a tile's loads and staging stores together fewer wavefronts than
    /// the fixed layout's wherever its loads conflicted (padded rows cost
    /// the stores some: 2.0 a store at 32×32, against 1.0).
    #[test]
    fn seed_shapes_load_without_bank_conflicts() {
        let shapes = [(32, 3, 32), (64, 3, 32), (64, 3, 16), (64, 3, 8), (64, 3, 4), (32, 1, 32), (64, 1, 16), (64, 1, 8), (64, 1, 4)];
        for per_word in [2, 1] {
            for &(bm, k, hw) in &shapes {
                let g = same(512, (hw, hw), k);
                let block = Block { tile: Tile::of(&g), bm, per_word };
                let (l, fixed) = (layout(&g, bm, per_word), fixed_layout(&block));
                let per_load = |l: &WgLayout| block.wavefronts(l, usize::MAX) as f64 / block.loads() as f64;
                let name = format!("{bm} {k}×{k} {hw}² per_word {per_word}: {l:?}");
                assert_eq!(per_load(&l), 1.0, "{name}");
                let tile = |l: &WgLayout| block.tile_wavefronts(l, usize::MAX);
                if per_load(&fixed) > 1.0 {
                    assert!(tile(&l) < tile(&fixed), "{name}: {} vs {}", tile(&l), tile(&fixed));
                } else {
                    assert!(tile(&l) <= tile(&fixed), "{name}: {} vs {}", tile(&l), tile(&fixed));
                }
                if per_word == 2 && k == 3 && hw != 16 {
                    assert_eq!(per_load(&fixed), 2.0, "{name}");
                }
                assert!(block.words_used(&l) <= block.capacity() && block.chan_needed(&l) <= l.chan as usize);
                if per_word == 2 {
                    assert!(l.plane >= block.channels() as i32 * l.chan, "{l:?}");
                }
            }
        }
    }

    /// Shapes beyond the seed's (other widths, multi-image tiles of non-square
    /// maps): the layout fits, holds the patch and takes no more wavefronts
    /// than packed rows.
    #[test]
    fn layouts_fit_and_never_lose_to_packed_rows() {
        for &(hw, k) in &[((8, 16), 3), ((4, 8), 3), ((16, 8), 3), ((64, 64), 3), ((2, 64), 3), ((4, 4), 1), ((16, 16), 1)] {
            for bm in [32, 64] {
                for per_word in [1, 2] {
                    let g = same(4, hw, k);
                    if !fits(&g, bm, per_word) {
                        continue;
                    }
                    let block = Block { tile: Tile::of(&g), bm, per_word };
                    let l = layout(&g, bm, per_word);
                    assert!(block.words_used(&l) <= block.capacity() && block.chan_needed(&l) <= l.chan as usize, "{hw:?} {l:?}");
                    assert!(block.tile_wavefronts(&l, usize::MAX) <= block.tile_wavefronts(&block.packed(), usize::MAX), "{hw:?} {bm} {per_word}");
                }
            }
        }
    }
}
