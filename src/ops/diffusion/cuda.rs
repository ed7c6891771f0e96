//! CUDA launches of kernels/diffusion.cu.

use super::StepCoefs;
use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;

const THREADS: u32 = 256;

/// One thread per Philox block of 4 elements overlapping start..start+n.
fn config(start: u64, n: usize) -> LaunchConfig {
    LaunchConfig::for_elems(((start % 4) as usize + n).div_ceil(4), THREADS)
}

pub fn noisify(x0: &CudaBuffer, a: &[f32], b: &[f32], per_sample: usize, seed: u64, offset: u64, start: u64) -> Result<(CudaBuffer, CudaBuffer)> {
    let backend = x0.backend();
    let n = x0.len();
    let (xt, eps) = (backend.alloc(n)?, backend.alloc(n)?);
    let (a, b) = (backend.upload(a)?, backend.upload(b)?);
    if n > 0 {
        let args = [
            xt.arg(),
            eps.arg(),
            x0.arg(),
            a.arg(),
            b.arg(),
            Arg::I32(elems("noisify", per_sample)?),
            Arg::U64(seed),
            Arg::U64(offset),
            Arg::U64(start),
            Arg::I32(elems("noisify", n)?),
        ];
        backend.launch("diffusion_noisify", config(start, n), &args)?;
    }
    Ok((xt, eps))
}

pub fn step(xt: &CudaBuffer, eps: &CudaBuffer, k: StepCoefs, seed: u64, offset: u64, start: u64, want_x0: bool) -> Result<(CudaBuffer, Option<CudaBuffer>)> {
    let backend = xt.backend();
    let n = xt.len();
    let prev = backend.alloc(n)?;
    let x0 = if want_x0 { Some(backend.alloc(n)?) } else { None };
    if n > 0 {
        let x0_arg = x0.as_ref().map_or(Arg::Ptr(0), |b| b.arg());
        let args = [prev.arg(), x0_arg, xt.arg(), eps.arg(), Arg::pod(&k), Arg::U64(seed), Arg::U64(offset), Arg::U64(start), Arg::I32(elems("step", n)?)];
        backend.launch("diffusion_step", config(start, n), &args)?;
    }
    Ok((prev, x0))
}
