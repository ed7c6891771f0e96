//! CUDA launches of kernels/random.cu: Philox u32, uniform and normal fills.
//! One thread per Philox block (4 elements); u32 values travel in an f32
//! buffer as bits and are reinterpreted on the host.

use crate::device::cuda::{Arg, CudaBackend, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;
use std::sync::Arc;

const THREADS: u32 = 256;

/// Launch geometry: one thread per Philox block overlapping start..start+n.
fn config(start: u64, n: usize) -> LaunchConfig {
    LaunchConfig::for_elems(((start % 4) as usize + n).div_ceil(4), THREADS)
}

/// Normals start..start+n of stream (seed, offset), on the device.
pub fn normal(backend: &Arc<CudaBackend>, seed: u64, offset: u64, start: u64, n: usize) -> Result<CudaBuffer> {
    let out = backend.alloc(n)?;
    if n > 0 {
        let args = [out.arg(), Arg::U64(seed), Arg::U64(offset), Arg::U64(start), Arg::I32(elems("randn", n)?)];
        backend.launch("philox_fill_normal", config(start, n), &args)?;
    }
    Ok(out)
}

/// `lo + (hi − lo)·u` for uniforms start..start+n, on the device.
pub fn uniform(backend: &Arc<CudaBackend>, lo: f32, hi: f32, seed: u64, offset: u64, start: u64, n: usize) -> Result<CudaBuffer> {
    let out = backend.alloc(n)?;
    if n > 0 {
        let args = [
            out.arg(),
            Arg::U64(seed),
            Arg::U64(offset),
            Arg::U64(start),
            Arg::F32(lo),
            Arg::F32(hi - lo),
            Arg::I32(elems("rand_uniform", n)?),
        ];
        backend.launch("philox_fill_uniform", config(start, n), &args)?;
    }
    Ok(out)
}

/// u32 elements start..start+n, drawn on the device and copied to the host.
pub fn u32s(backend: &Arc<CudaBackend>, seed: u64, offset: u64, start: u64, n: usize) -> Result<Vec<u32>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let out = backend.alloc(n)?;
    let args = [out.arg(), Arg::U64(seed), Arg::U64(offset), Arg::U64(start), Arg::I32(elems("random_u32", n)?)];
    backend.launch("philox_fill_u32", config(start, n), &args)?;
    // The buffer holds u32 bits; f32::to_bits returns them unchanged (NaN patterns included).
    Ok(out.download()?.into_iter().map(f32::to_bits).collect())
}
