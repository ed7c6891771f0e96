//! Sum reductions and broadcasts (CPU reference). Sums accumulate in f64.

use crate::tensor::{Shape, for_each_offset2};
use rayon::prelude::*;

/// Sum `x` (shape `in_shape`) into `keep_shape`: same rank, each dim equal or 1.
pub fn sum_keepdim(x: &[f32], in_shape: &Shape, keep_shape: &Shape) -> Vec<f32> {
    let out_n = keep_shape.numel();
    if out_n == 1 {
        let total: f64 = x.par_chunks(8192).map(|c| c.iter().map(|&v| v as f64).sum::<f64>()).sum();
        return vec![total as f32];
    }
    if let Some((inner, middle)) = keep_shape.middle_block_of(in_shape) {
        // the kept dims are one contiguous run: sum runs of `inner` (on the
        // rayon threads, in f64 lanes) into slot (k % middle), in order of k
        let runs: Vec<f64> = x.par_chunks(inner.max(1)).with_min_len(((1 << 14) / inner.max(1)).max(1)).map(crate::ops::fast_math::sum_f64).collect();
        let mut acc = vec![0f64; middle];
        for (k, run) in runs.into_iter().enumerate() {
            acc[k % middle] += run;
        }
        return acc.into_iter().map(|v| v as f32).collect();
    }
    let mut acc = vec![0f64; out_n];
    let in_strides = in_shape.strides();
    let out_strides = keep_shape.broadcast_strides(in_shape);
    for_each_offset2(in_shape.dims(), &in_strides, &out_strides, |_, i, o| acc[o] += x[i] as f64);
    acc.into_iter().map(|v| v as f32).collect()
}

/// Repeat `x` (shape `from`, same rank as `to`, dims equal or 1) to shape `to`.
pub fn broadcast(x: &[f32], from: &Shape, to: &Shape) -> Vec<f32> {
    if let Some((inner, middle)) = from.middle_block_of(to) {
        let mut out = vec![0.0; to.numel()];
        out.par_chunks_mut(inner.max(1)).enumerate().for_each(|(k, o)| o.fill(x[k % middle]));
        return out;
    }
    let mut out = vec![0.0; to.numel()];
    let out_strides = to.strides();
    let in_strides = from.broadcast_strides(to);
    for_each_offset2(to.dims(), &out_strides, &in_strides, |_, o, i| out[o] = x[i]);
    out
}
