//! Elementwise binary kernels with numpy broadcasting (CPU reference).

use super::BinaryOp;
use crate::ops::PARALLEL_THRESHOLD;
use crate::tensor::{Shape, for_each_offset2};
use rayon::prelude::*;

/// out[i] = a[i'] op b[i''] with i', i'' the broadcast positions of output index i.
pub fn binary(op: BinaryOp, a: &[f32], a_shape: &Shape, b: &[f32], b_shape: &Shape, out_shape: &Shape) -> Vec<f32> {
    // one closure per op: a match on the op inside the element loop kept it
    // scalar, with an indirect jump per element
    match op {
        BinaryOp::Add => binary_with(|x, y| x + y, a, a_shape, b, b_shape, out_shape),
        BinaryOp::Sub => binary_with(|x, y| x - y, a, a_shape, b, b_shape, out_shape),
        BinaryOp::Mul => binary_with(|x, y| x * y, a, a_shape, b, b_shape, out_shape),
        BinaryOp::Div => binary_with(|x, y| x / y, a, a_shape, b, b_shape, out_shape),
    }
}

fn binary_with(apply: impl Fn(f32, f32) -> f32 + Copy + Sync, a: &[f32], a_shape: &Shape, b: &[f32], b_shape: &Shape, out_shape: &Shape) -> Vec<f32> {
    let n = out_shape.numel();
    if a_shape == b_shape {
        return crate::ops::filled(n, 4096, |i, o| {
            let (a, b) = (&a[4096 * i..][..o.len()], &b[4096 * i..][..o.len()]);
            for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                *o = apply(x, y);
            }
        });
    }
    if b.len() == 1 {
        return a.iter().map(|&x| apply(x, b[0])).collect();
    }
    if a.len() == 1 {
        return b.iter().map(|&y| apply(a[0], y)).collect();
    }
    // one operand full, the other a contiguous block repeated (bias, per-channel scale)
    if a_shape == out_shape {
        if let Some((inner, middle)) = b_shape.middle_block_of(out_shape) {
            return with_block(a, b, inner, middle, |x, y| apply(x, y));
        }
    }
    if b_shape == out_shape {
        if let Some((inner, middle)) = a_shape.middle_block_of(out_shape) {
            return with_block(b, a, inner, middle, |y, x| apply(x, y));
        }
    }
    let sa = a_shape.broadcast_strides(out_shape);
    let sb = b_shape.broadcast_strides(out_shape);
    let mut out = crate::ops::zeros(n);
    for_each_offset2(out_shape.dims(), &sa, &sb, |i, ia, ib| out[i] = apply(a[ia], b[ib]));
    out
}

/// y = x * scale + shift.
pub fn affine(x: &[f32], scale: f32, shift: f32) -> Vec<f32> {
    if x.len() >= PARALLEL_THRESHOLD {
        x.par_iter().map(|&v| v * scale + shift).collect()
    } else {
        x.iter().map(|&v| v * scale + shift).collect()
    }
}

/// out[i] = f(full[i], block[(i / inner) % middle]).
fn with_block(full: &[f32], block: &[f32], inner: usize, middle: usize, f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = crate::ops::zeros(full.len());
    let run = |(k, (o, x)): (usize, (&mut [f32], &[f32]))| {
        let v = block[k % middle];
        for (o, &x) in o.iter_mut().zip(x) {
            *o = f(x, v);
        }
    };
    if full.len() >= PARALLEL_THRESHOLD {
        out.par_chunks_mut(inner).zip(full.par_chunks(inner)).enumerate().for_each(run);
    } else {
        out.chunks_mut(inner).zip(full.chunks(inner)).enumerate().for_each(run);
    }
    out
}
