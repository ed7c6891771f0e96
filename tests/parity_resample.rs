//! CUDA against the CPU twin: nearest 2× upsampling and 2×2 ceil-mode average
//! pooling (kernels/resample.cu), forward and backward, on odd sizes (5×4,
//! 3×3, 1×1, 7×9). On a machine without a GPU these run on the CPU emulation
//! of CUDA (kernels/emu).
//!
//! Tolerance: ParityTol::EXACTISH — the kernels add the same (at most four)
//! terms in the CPU twin's order and divide by the same count, so the results
//! agree to the last bit; EXACTISH leaves a few ulp for a GPU's fma contraction.

use minidiffusion::ops::{avg_pool2x2, upsample_nearest2x};
use minidiffusion::testing::{ParityTol, parity_check};

const SHAPES: [[usize; 4]; 4] = [[2, 3, 5, 4], [1, 2, 3, 3], [3, 1, 1, 1], [1, 2, 7, 9]];

#[test]
fn upsample_nearest2x_parity() {
    for s in SHAPES {
        parity_check(&format!("upsample_nearest2x {s:?}"), &[&s], |x| upsample_nearest2x(&x[0]), ParityTol::EXACTISH);
    }
}

#[test]
fn avg_pool2x2_parity() {
    for s in SHAPES {
        parity_check(&format!("avg_pool2x2 {s:?}"), &[&s], |x| avg_pool2x2(&x[0]), ParityTol::EXACTISH);
    }
}

#[test]
fn pool_then_upsample_parity() {
    // the UNet's down and up path around one level, on an odd size
    parity_check("avg_pool2x2 ∘ upsample_nearest2x", &[&[2, 3, 5, 7]], |x| upsample_nearest2x(&avg_pool2x2(&x[0])?), ParityTol::EXACTISH);
}
