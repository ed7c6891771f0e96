//! CUDA launches of kernels/batchnorm.cu: batch norm forward (train: batch
//! statistics and the in-place running-statistics update; eval: running
//! statistics) and backward, one block per channel each.

use super::cpu::BatchNormDims;
use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;

const OP: &str = "batch_norm";
/// Threads per block (BN_THREADS).
const THREADS: u32 = 256;
/// Most blocks launched; the kernels grid-stride over the remaining channels.
const MAX_BLOCKS: usize = 65_535;

fn opt_arg(b: Option<&CudaBuffer>) -> Arg {
    b.map_or(Arg::Ptr(0), |b| b.arg())
}

/// Per-channel mean and rstd the forward pass normalised with, kept for backward.
pub struct SavedStats {
    pub mean: CudaBuffer,
    pub rstd: CudaBuffer,
}

/// y = (x − μ)·rstd·γ + β. `train = Some(momentum)`: batch statistics, and
/// `running_mean`/`running_var` are updated in place on the device; `None`:
/// the running statistics are used (and left alone).
#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &CudaBuffer,
    d: BatchNormDims,
    running_mean: &CudaBuffer,
    running_var: &CudaBuffer,
    weight: Option<&CudaBuffer>,
    bias: Option<&CudaBuffer>,
    train: Option<f32>,
    eps: f32,
) -> Result<(CudaBuffer, SavedStats)> {
    let backend = x.backend();
    let y = backend.alloc(x.len())?;
    let (mean, rstd) = (backend.alloc(d.c)?, backend.alloc(d.c)?);
    if d.c == 0 {
        return Ok((y, SavedStats { mean, rstd }));
    }
    elems(OP, x.len())?;
    let args = [
        y.arg(),
        mean.arg(),
        rstd.arg(),
        x.arg(),
        opt_arg(weight),
        opt_arg(bias),
        running_mean.arg(),
        running_var.arg(),
        Arg::I32(d.n as i32),
        Arg::I32(d.c as i32),
        Arg::I32(d.s as i32),
        Arg::F32(eps),
        Arg::F32(train.unwrap_or(0.0)),
        Arg::I32(train.is_some() as i32),
    ];
    backend.launch("batchnorm_forward", LaunchConfig::blocks(d.c.min(MAX_BLOCKS), THREADS), &args)?;
    Ok((y, SavedStats { mean, rstd }))
}

/// Gradients (dx if `need_dx`, dγ, dβ); `train` says whether the statistics
/// were the batch's (then they depend on x).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dy: &CudaBuffer,
    x: &CudaBuffer,
    stats: &SavedStats,
    weight: Option<&CudaBuffer>,
    d: BatchNormDims,
    train: bool,
    need_dx: bool,
) -> Result<(Option<CudaBuffer>, CudaBuffer, CudaBuffer)> {
    let backend = x.backend();
    let dx = need_dx.then(|| backend.alloc(x.len())).transpose()?;
    let (dw, db) = (backend.alloc(d.c)?, backend.alloc(d.c)?);
    if d.c == 0 {
        return Ok((dx, dw, db));
    }
    elems(OP, x.len())?;
    let args = [
        opt_arg(dx.as_ref()),
        dw.arg(),
        db.arg(),
        dy.arg(),
        x.arg(),
        stats.mean.arg(),
        stats.rstd.arg(),
        opt_arg(weight),
        Arg::I32(d.n as i32),
        Arg::I32(d.c as i32),
        Arg::I32(d.s as i32),
        Arg::I32(train as i32),
    ];
    backend.launch("batchnorm_backward", LaunchConfig::blocks(d.c.min(MAX_BLOCKS), THREADS), &args)?;
    Ok((dx, dw, db))
}
