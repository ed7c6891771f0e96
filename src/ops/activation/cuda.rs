//! CUDA launches of the activation kernels in kernels/elementwise.cu.

use super::Activation;
use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;

const THREADS: u32 = 256;

impl Activation {
    /// (kernel code, leak, sub) as elementwise.cu's ACT_* expect them.
    fn kernel_params(self) -> (i32, f32, f32) {
        match self {
            Activation::Silu => (0, 0.0, 0.0),
            Activation::Relu => (1, 0.0, 0.0),
            Activation::LeakyRelu { slope } => (2, slope, 0.0),
            Activation::GeneralRelu { leak, sub } => (3, leak, sub),
            Activation::Mish => (4, 0.0, 0.0),
            Activation::Gelu => (5, 0.0, 0.0),
        }
    }
}

pub fn forward(act: Activation, x: &CudaBuffer) -> Result<CudaBuffer> {
    let out = x.backend().alloc(x.len())?;
    if !x.is_empty() {
        let (code, leak, sub) = act.kernel_params();
        let args = [out.arg(), x.arg(), Arg::I32(code), Arg::F32(leak), Arg::F32(sub), Arg::I32(elems("activation", x.len())?)];
        x.backend().launch("activation_forward", LaunchConfig::for_elems(x.len(), THREADS), &args)?;
    }
    Ok(out)
}

pub fn backward(act: Activation, x: &CudaBuffer, dy: &CudaBuffer) -> Result<CudaBuffer> {
    let dx = x.backend().alloc(x.len())?;
    if !x.is_empty() {
        let (code, leak, _) = act.kernel_params();
        let args = [dx.arg(), x.arg(), dy.arg(), Arg::I32(code), Arg::F32(leak), Arg::I32(elems("activation", x.len())?)];
        x.backend().launch("activation_backward", LaunchConfig::for_elems(x.len(), THREADS), &args)?;
    }
    Ok(dx)
}
