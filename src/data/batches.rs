//! From u8 images to f32 batches: scaling to the model's data range, padding
//! 28→32, and a shuffled order per epoch drawn from the seed.

use super::Dataset;
use crate::error::{Error, Result};
use crate::rng::PhiloxStream;

/// The data range images are scaled to (the lesson's finding: centred, width 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InputRange {
    /// pixel/255 − 0.5 ∈ [−0.5, 0.5]
    #[default]
    Centered,
    /// 2·pixel/255 − 1 ∈ [−1, 1]
    Symmetric,
    /// pixel/255 ∈ [0, 1]
    Unit,
}

impl InputRange {
    pub fn parse(text: &str) -> Result<InputRange> {
        match text {
            "-0.5,0.5" | "centered" => Ok(InputRange::Centered),
            "-1,1" | "symmetric" => Ok(InputRange::Symmetric),
            "0,1" | "unit" => Ok(InputRange::Unit),
            _ => Err(Error::Argument { op: "--input-range", msg: format!("'{text}' is not one of -0.5,0.5 | -1,1 | 0,1") }),
        }
    }

    /// (low, high) of the range.
    pub fn bounds(self) -> (f32, f32) {
        match self {
            InputRange::Centered => (-0.5, 0.5),
            InputRange::Symmetric => (-1.0, 1.0),
            InputRange::Unit => (0.0, 1.0),
        }
    }

    /// A pixel value 0..=255 in this range.
    pub fn scale(self, pixel: u8) -> f32 {
        let (lo, hi) = self.bounds();
        lo + (hi - lo) * (pixel as f32 / 255.0)
    }

    pub fn name(self) -> &'static str {
        match self {
            InputRange::Centered => "-0.5,0.5",
            InputRange::Symmetric => "-1,1",
            InputRange::Unit => "0,1",
        }
    }
}

/// Images `indices` of `ds` as f32 N×C×(H+2·pad)×(W+2·pad) in `range`; the
/// border is black (pixel 0), as F.pad before scaling in the lesson.
pub fn images_f32(ds: &Dataset, indices: &[usize], pad: usize, range: InputRange) -> Vec<f32> {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    let black = range.scale(0);
    let mut out = vec![black; indices.len() * c * ph * pw];
    let table: Vec<f32> = (0..=255u8).map(|p| range.scale(p)).collect();
    for (slot, &i) in indices.iter().enumerate() {
        let src = &ds.images[i * c * h * w..(i + 1) * c * h * w];
        for ch in 0..c {
            for y in 0..h {
                let dst = ((slot * c + ch) * ph + y + pad) * pw + pad;
                let row = &src[(ch * h + y) * w..(ch * h + y + 1) * w];
                for (o, &p) in out[dst..dst + w].iter_mut().zip(row) {
                    *o = table[p as usize];
                }
            }
        }
    }
    out
}

/// A permutation of 0..n for `epoch`, by Fisher–Yates on the Philox stream
/// (seed, offset = epoch): the same seed gives the same order on any machine.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let stream = PhiloxStream::new(seed, 0x5eed_0000_0000 + epoch);
    let mut draws = vec![0u32; n];
    stream.fill_u32(0, &mut draws);
    for i in (1..n).rev() {
        // j uniform in 0..=i by multiply-shift
        let j = ((draws[i] as u64 * (i as u64 + 1)) >> 32) as usize;
        order.swap(i, j);
    }
    order
}
