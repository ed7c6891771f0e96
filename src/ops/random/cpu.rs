//! The CPU twins of kernels/random.cu: straight fills from [`PhiloxStream`].

use crate::rng::PhiloxStream;

/// Normals start..start+n of stream (seed, offset).
pub fn normal(seed: u64, offset: u64, start: u64, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    PhiloxStream::new(seed, offset).fill_normal(start, &mut out);
    out
}

/// `lo + (hi − lo)·u` for uniforms u start..start+n (f32, no fused multiply-add).
pub fn uniform(lo: f32, hi: f32, seed: u64, offset: u64, start: u64, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    PhiloxStream::new(seed, offset).fill_uniform(start, &mut out);
    let scale = hi - lo;
    out.iter_mut().for_each(|x| *x = lo + scale * *x);
    out
}

/// u32 elements start..start+n of stream (seed, offset).
pub fn u32s(seed: u64, offset: u64, start: u64, n: usize) -> Vec<u32> {
    let mut out = vec![0; n];
    PhiloxStream::new(seed, offset).fill_u32(start, &mut out);
    out
}
