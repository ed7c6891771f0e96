//! Row-wise softmax over the last axis (CPU reference).

use rayon::prelude::*;

/// y = exp(x − max) / Σ exp(x − max) for each row of length `cols`.
pub fn forward(x: &[f32], cols: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    if cols > 0 {
        y.par_chunks_mut(cols).for_each(softmax_row_in_place);
    }
    y
}

/// row = e^(scale·row − m) in place with m = max(scale·row), the numerator of
/// softmax(scale·row); returns (m, Σ row), so the denominator is the sum and
/// log Σ e^(scale·row) = m + ln Σ. Any scale: it is applied before the max.
pub fn exp_row_scaled_in_place(row: &mut [f32], scale: f32) -> (f32, f32) {
    use crate::ops::fast_math;
    fast_math::map_in_place(row, |v| v * scale);
    let max = fast_math::max(row);
    (max, fast_math::map_in_place_sum(row, |v| fast_math::exp(v - max)))
}

pub fn softmax_row_in_place(row: &mut [f32]) {
    use crate::ops::fast_math;
    let max = fast_math::max(row);
    let inv = 1.0 / fast_math::map_in_place_sum(row, |v| fast_math::exp(v - max));
    fast_math::map_in_place(row, |v| v * inv);
}

/// dx = y ⊙ (dy − Σ_j dy_j·y_j), row-wise.
pub fn backward(y: &[f32], dy: &[f32], cols: usize) -> Vec<f32> {
    let mut dx = vec![0.0; y.len()];
    if cols > 0 {
        dx.par_chunks_mut(cols).zip(y.par_chunks(cols).zip(dy.par_chunks(cols))).for_each(|(dx, (y, dy))| {
            softmax_row_backward(y, dy, dx);
        });
    }
    dx
}

pub fn softmax_row_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let dot: f32 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
    for ((d, &yv), &g) in dx.iter_mut().zip(y).zip(dy) {
        *d = yv * (g - dot);
    }
}
