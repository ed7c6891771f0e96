//! CUDA launches of kernels/diffusion.cu.

use super::{LearnedSigma, StepCoefs, StepParams};
use crate::device::cuda::{Arg, CudaBackend, CudaBuffer, LaunchConfig};
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

#[allow(clippy::too_many_arguments)]
pub fn step(
    xt: &CudaBuffer,
    eps: &CudaBuffer,
    k: StepCoefs,
    learned: Option<(&CudaBuffer, LearnedSigma)>,
    seed: u64,
    offset: u64,
    start: u64,
    want_x0: bool,
) -> Result<(CudaBuffer, Option<CudaBuffer>)> {
    let backend = xt.backend();
    let n = xt.len();
    let prev = backend.alloc(n)?;
    let x0 = if want_x0 { Some(backend.alloc(n)?) } else { None };
    if n > 0 {
        let x0_arg = x0.as_ref().map_or(Arg::Ptr(0), |b| b.arg());
        let tail = [Arg::U64(seed), Arg::U64(offset), Arg::U64(start), Arg::I32(elems("step", n)?)];
        match learned {
            None => {
                let args = [prev.arg(), x0_arg, xt.arg(), eps.arg(), Arg::pod(&k)];
                backend.launch("diffusion_step", config(start, n), &[&args[..], &tail].concat())?;
            }
            Some((var, ls)) => {
                let args = [prev.arg(), x0_arg, xt.arg(), eps.arg(), var.arg(), Arg::pod(&k), Arg::pod(&ls)];
                backend.launch("diffusion_step_learned", config(start, n), &[&args[..], &tail].concat())?;
            }
        }
    }
    Ok((prev, x0))
}

/// *params = value and timesteps[..] = value.t (one launch).
pub fn set_step(params: &CudaBuffer, timesteps: &CudaBuffer, value: &StepParams) -> Result<()> {
    let batch = timesteps.len();
    let args = [params.arg(), timesteps.arg(), Arg::I32(elems("set_step", batch)?), Arg::pod(value)];
    params.backend().launch("diffusion_set_step", LaunchConfig::for_elems(batch.max(1), THREADS), &args)
}

/// x ← the update of x with ε̂ and the values in `params`, in place.
pub fn step_in_place(x: &CudaBuffer, eps: &CudaBuffer, params: &CudaBuffer) -> Result<()> {
    let n = x.len();
    if n > 0 {
        let args = [x.arg(), eps.arg(), params.arg(), Arg::I32(elems("step", n)?)];
        // the start (so the first Philox block) is on the device: cover any
        x.backend().launch("diffusion_step_in_place", config(3, n), &args)?;
    }
    Ok(())
}

/// A device buffer that holds one `StepParams`.
pub fn params_buffer(backend: &std::sync::Arc<CudaBackend>) -> Result<CudaBuffer> {
    backend.zeros(std::mem::size_of::<StepParams>() / 4)
}

/// Dynamic thresholding of x̂0, `per` values a sample (kernels/diffusion.cu:
/// one block a sample); 0 ≤ ratio ≤ 1.
pub fn threshold(x0: &CudaBuffer, per: usize, ratio: f32, max: f32) -> Result<CudaBuffer> {
    let backend = x0.backend();
    let out = backend.alloc(x0.len())?;
    if per > 0 && x0.len() > 0 {
        let samples = x0.len() / per;
        let args = [out.arg(), x0.arg(), Arg::I32(elems("threshold", per)?), Arg::F32(ratio), Arg::F32(max)];
        backend.launch("diffusion_threshold", LaunchConfig::grid([samples, 1, 1], THREADS), &args)?;
    }
    Ok(out)
}
