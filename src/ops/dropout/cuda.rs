//! CUDA launch of kernels/dropout.cu: one thread per Philox block of 4 elements.

use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;

const THREADS: u32 = 256;

/// x masked (u_i ≥ p kept) and scaled by `scale`.
pub fn dropout(x: &CudaBuffer, p: f32, scale: f32, seed: u64, offset: u64) -> Result<CudaBuffer> {
    let n = elems("dropout", x.len())?;
    let out = x.backend().alloc(x.len())?;
    if n > 0 {
        let args = [out.arg(), x.arg(), Arg::F32(p), Arg::F32(scale), Arg::U64(seed), Arg::U64(offset), Arg::I32(n)];
        x.backend().launch("dropout_f32", LaunchConfig::for_elems(x.len().div_ceil(4), THREADS), &args)?;
    }
    Ok(out)
}
