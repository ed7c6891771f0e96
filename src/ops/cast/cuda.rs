//! CUDA launches of the storage casts (kernels/elementwise.cu).

use crate::device::cuda::{CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;
use crate::tensor::DType;

/// `x` (f32 or bf16) stored as `dtype` (the other one).
pub fn cast(x: &CudaBuffer, dtype: DType) -> Result<CudaBuffer> {
    let n = x.len();
    let out = x.backend().alloc_as(n, dtype)?;
    if n > 0 {
        let kernel = if dtype == DType::BF16 { "cast_f32_to_bf16" } else { "cast_bf16_to_f32" };
        x.backend().launch(kernel, LaunchConfig::for_elems(n, 256), &[out.arg(), x.arg(), crate::device::cuda::Arg::I32(elems("cast", n)?)])?;
    }
    Ok(out)
}
