//! Storage casts between f32 and bf16 on the tensor's own device, as
//! `Tensor.to(torch.bfloat16)`: f32 → bf16 rounds to nearest even (NaN stays
//! NaN), bf16 → f32 is exact. Storage only — every op computes in f32; the
//! bf16 compute path can store the activations only convolutions read in
//! bf16 (`ops::precision::conv_input_storage`).
//! Differentiable as PyTorch's `.to(dtype)`: the gradient passes through
//! unchanged (gradients stay f32).

pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{DType, Storage, Tensor};

/// `x` with its values stored as `dtype`, on x's device. F16 is a host-only
/// storage type (checkpoints); on CUDA f32 and bf16 are supported.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("cast");
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let storage = match x.device() {
        Device::Cpu => x.storage().to_dtype(dtype)?,
        Device::Cuda(_) => {
            let s = x.storage();
            let src = s.cuda_any("cast")?;
            match (src.dtype(), dtype) {
                (DType::F32, DType::BF16) | (DType::BF16, DType::F32) => Storage::Cuda(cuda::cast(src, dtype)?),
                (from, to) => return Err(Error::Cuda(format!("cast from {from:?} to {to:?} is not supported on CUDA"))),
            }
        }
    };
    Ok(Tensor::from_op(storage, x.shape().clone(), |_| {
        let x = x.clone();
        Node::new("cast", vec![x], |g| Ok(vec![Some(g.clone())]))
    }))
}
