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

pub fn softmax_row_in_place(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut total = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        total += *v;
    }
    let inv = 1.0 / total;
    row.iter_mut().for_each(|v| *v *= inv);
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
