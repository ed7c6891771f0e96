//! Counter-based random numbers: Philox4x32-10 with Box–Muller normals.
//!
//! Everything here is a pure function of `(seed, offset, index)`, so any element of a
//! stream can be computed independently and in any order. The same stream is produced
//! bit for bit by the CUDA kernel in `kernels/philox.cuh`; the exact mapping is:
//!
//! ## Philox4x32-10 block (Random123)
//!
//! Constants: `M0 = 0xD2511F53`, `M1 = 0xCD9E8D57`, `W0 = 0x9E3779B9`, `W1 = 0xBB67AE85`.
//! One round on counter `c = [c0, c1, c2, c3]` with key `k = [k0, k1]`:
//!
//! ```text
//! p0 = M0 as u64 * c0 as u64      (hi0 = p0 >> 32, lo0 = p0 as u32)
//! p1 = M1 as u64 * c2 as u64      (hi1 = p1 >> 32, lo1 = p1 as u32)
//! c  = [hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0]
//! ```
//!
//! Ten rounds are applied; between consecutive rounds (9 times, not after the last)
//! the key is bumped with wrapping adds: `k0 += W0`, `k1 += W1`.
//!
//! ## Stream `(seed, offset)`
//!
//! * key = `[seed as u32, (seed >> 32) as u32]`
//! * block `b` (a `u64`) = Philox of counter
//!   `[b as u32, (b >> 32) as u32, offset as u32, (offset >> 32) as u32]`
//! * u32 element `j` = lane `j % 4` of block `j / 4`.
//!
//! ## Derived values for element `j` (x = u32 element j)
//!
//! * uniform `j` = `(x >> 8) as f32 * 2^-24`, exactly representable, in `[0, 1)`.
//! * below-n `j` = `((x as u64 * n as u64) >> 32) as u32`, in `0..n` (Lemire multiply-shift,
//!   no rejection: each result has `floor(2^32/n)` or `ceil(2^32/n)` preimages, so the
//!   relative bias per value is below `n / 2^32`, e.g. < 2.4e-7 for n = 1000).
//! * normals: block `b` gives normals `4b..4b+4`. Lanes `(x0, x1)` give normals
//!   `(4b, 4b+1)` and lanes `(x2, x3)` give `(4b+2, 4b+3)`, each pair by Box–Muller in f64:
//!
//!   ```text
//!   u1 = ((x_a >> 8) + 1) as f64 * 2^-24    in (0, 1], so ln(u1) is finite
//!   u2 = (x_b >> 8) as f64 * 2^-24          in [0, 1)
//!   r = sqrt(-2 ln u1);  theta = 2 pi u2
//!   z_a = (r cos theta) as f32;  z_b = (r sin theta) as f32
//!   ```
//!
//!   The largest magnitude possible is `sqrt(-2 ln 2^-24) ≈ 5.77`.
//!   Note: bit equality with CUDA relies on its f64 `log`/`cos`/`sin` agreeing with the
//!   host libm closely enough that the final rounding to f32 is identical (almost always).

/// Philox multiplier for lane 0.
const PHILOX_M0: u32 = 0xD251_1F53;
/// Philox multiplier for lane 2.
const PHILOX_M1: u32 = 0xCD9E_8D57;
/// Key increment for key word 0 (golden ratio).
const PHILOX_W0: u32 = 0x9E37_79B9;
/// Key increment for key word 1 (sqrt(3) - 1).
const PHILOX_W1: u32 = 0xBB67_AE85;
/// Number of Philox rounds.
const PHILOX_ROUNDS: usize = 10;

/// 2^-24 as an exact constant (f32 and f64).
const TWO_POW_MINUS_24_F32: f32 = 1.0 / 16_777_216.0;
const TWO_POW_MINUS_24_F64: f64 = 1.0 / 16_777_216.0;

/// Full 32x32 -> 64 bit product, split into (hi, lo).
#[inline(always)]
fn mul_hi_lo(a: u32, b: u32) -> (u32, u32) {
    let product = a as u64 * b as u64;
    ((product >> 32) as u32, product as u32)
}

/// One Philox4x32 round.
#[inline(always)]
fn philox_round(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mul_hi_lo(PHILOX_M0, counter[0]);
    let (hi1, lo1) = mul_hi_lo(PHILOX_M1, counter[2]);
    [
        hi1 ^ counter[1] ^ key[0],
        lo1,
        hi0 ^ counter[3] ^ key[1],
        lo0,
    ]
}

/// One Philox4x32-10 block: 10 rounds, Random123 constants
/// (M0=0xD2511F53, M1=0xCD9E8D57, W0=0x9E3779B9, W1=0xBB67AE85).
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut state = counter;
    let mut round_key = key;
    for round in 0..PHILOX_ROUNDS {
        if round > 0 {
            // Key schedule: bump before every round except the first.
            round_key[0] = round_key[0].wrapping_add(PHILOX_W0);
            round_key[1] = round_key[1].wrapping_add(PHILOX_W1);
        }
        state = philox_round(state, round_key);
    }
    state
}

/// Uniform in [0,1) from one u32: top 24 bits times 2^-24 (exact in f32).
#[inline(always)]
fn u32_to_uniform(x: u32) -> f32 {
    (x >> 8) as f32 * TWO_POW_MINUS_24_F32
}

/// Box–Muller on one pair of u32s, computed in f64 and rounded to f32.
/// `x_a` drives the radius, `x_b` the angle.
#[inline(always)]
fn box_muller_pair(x_a: u32, x_b: u32) -> (f32, f32) {
    let u1 = ((x_a >> 8) + 1) as f64 * TWO_POW_MINUS_24_F64; // (0, 1]
    let u2 = (x_b >> 8) as f64 * TWO_POW_MINUS_24_F64; // [0, 1)
    let radius = (-2.0 * u1.ln()).sqrt();
    let theta = 2.0 * std::f64::consts::PI * u2;
    ((radius * theta.cos()) as f32, (radius * theta.sin()) as f32)
}

/// The four normals of one Philox block.
#[inline(always)]
fn block_to_normals(x: [u32; 4]) -> [f32; 4] {
    let (z0, z1) = box_muller_pair(x[0], x[1]);
    let (z2, z3) = box_muller_pair(x[2], x[3]);
    [z0, z1, z2, z3]
}

/// A stream keyed by (seed, offset). Element j of the stream is lane j%4 of the block
/// with counter = [b as u32, (b>>32) as u32, offset as u32, (offset>>32) as u32], b = j/4,
/// key = [seed as u32, (seed>>32) as u32].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhiloxStream {
    pub seed: u64,
    pub offset: u64,
}

impl PhiloxStream {
    /// Stream for this seed and offset (offset selects an independent sub-stream).
    pub fn new(seed: u64, offset: u64) -> Self {
        Self { seed, offset }
    }

    /// The four u32s of block `b` (elements 4b..4b+4).
    #[inline]
    pub fn block(&self, b: u64) -> [u32; 4] {
        let counter = [
            b as u32,
            (b >> 32) as u32,
            self.offset as u32,
            (self.offset >> 32) as u32,
        ];
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        philox4x32_10(counter, key)
    }

    /// u32 element `j` of the stream: lane j%4 of block j/4.
    #[inline]
    pub fn u32_at(&self, j: u64) -> u32 {
        self.block(j / 4)[(j % 4) as usize]
    }

    /// Run `per_block` once for each block overlapping elements start..start+len, and
    /// copy its 4 outputs (only the overlapping lanes) into `out`. Each block is
    /// computed exactly once, whatever the alignment of `start`.
    #[inline(always)]
    fn fill_by_block<T: Copy>(
        &self,
        start: u64,
        out: &mut [T],
        per_block: impl Fn([u32; 4]) -> [T; 4],
    ) {
        let mut written = 0usize;
        while written < out.len() {
            let index = start + written as u64;
            let block_index = index / 4;
            let first_lane = (index % 4) as usize;
            let values = per_block(self.block(block_index));
            let count = (4 - first_lane).min(out.len() - written);
            out[written..written + count].copy_from_slice(&values[first_lane..first_lane + count]);
            written += count;
        }
    }

    /// Fill `out` with u32 elements start..start+out.len() of the stream.
    pub fn fill_u32(&self, start: u64, out: &mut [u32]) {
        self.fill_by_block(start, out, |x| x);
    }

    /// Uniform in [0,1): (x >> 8) * 2^-24 for element j, as f32 (exact).
    pub fn fill_uniform(&self, start: u64, out: &mut [f32]) {
        self.fill_by_block(start, out, |x| x.map(u32_to_uniform));
    }

    /// Standard normals; normal j comes from block j/4: lanes (0,1) give normals 4b, 4b+1 and
    /// lanes (2,3) give 4b+2, 4b+3, by Box–Muller computed in f64 and rounded to f32:
    ///   u1 = ((x_a >> 8) + 1) * 2^-24   in (0,1]   (never 0, so ln is finite)
    ///   u2 = (x_b >> 8) * 2^-24         in [0,1)
    ///   r = sqrt(-2 ln u1), theta = 2*pi*u2, z_a = r cos theta, z_b = r sin theta.
    /// `start` may be any index (not only a multiple of 4): results must equal those of a fill from 0.
    pub fn fill_normal(&self, start: u64, out: &mut [f32]) {
        self.fill_by_block(start, out, block_to_normals);
    }

    /// Integers uniform in 0..n (n > 0) for element j: ((x as u64 * n as u64) >> 32) as u32
    /// (Lemire's multiply-shift, no rejection). Bias: each value has floor(2^32/n) or
    /// ceil(2^32/n) preimages, a relative error below n/2^32 per value.
    pub fn fill_below(&self, start: u64, n: u32, out: &mut [u32]) {
        assert!(n > 0, "fill_below: n must be > 0");
        self.fill_by_block(start, out, |x| {
            x.map(|v| ((v as u64 * n as u64) >> 32) as u32)
        });
    }
}
