//! Dropout (PyTorch's nn.Dropout in training): each element is zeroed with
//! probability p and the rest scaled by 1/(1 − p). The mask comes from the
//! Philox stream (seed, offset): element i is kept when its uniform u_i ≥ p,
//! so the CPU twin and kernels/dropout.cu keep the same elements, and the
//! backward (dx = dy through the same mask and scale) draws the mask again
//! instead of storing it.

pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, arg_err};
use crate::rng::PhiloxStream;
use crate::tensor::{Storage, Tensor, cpu_f32_storage};

const OP: &str = "dropout";

/// y = x masked (probability p of a zero) and scaled by 1/(1 − p); p = 0 is x itself.
pub fn dropout(x: &Tensor, p: f32, seed: u64, offset: u64) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range(OP);
    if !(0.0..1.0).contains(&p) {
        return arg_err(OP, format!("probability {p} is outside [0, 1)"));
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let storage = masked(x, p, seed, offset)?;
    Ok(Tensor::from_op(storage, x.shape().clone(), |_| {
        Node::new(OP, vec![x.clone()], move |g| Ok(vec![Some(Tensor::from_storage(masked(g, p, seed, offset)?, g.shape().clone()))]))
    }))
}

/// The masked and scaled values of `x` (not recorded).
fn masked(x: &Tensor, p: f32, seed: u64, offset: u64) -> Result<Storage> {
    let scale = 1.0 / (1.0 - p);
    Ok(match x.device() {
        Device::Cpu => {
            let s = x.storage();
            let v = s.cpu_f32(OP)?;
            let mut u = vec![0.0f32; v.len()];
            PhiloxStream::new(seed, offset).fill_uniform(0, &mut u);
            cpu_f32_storage(v.iter().zip(&u).map(|(&x, &u)| if u >= p { x * scale } else { 0.0 }).collect())
        }
        Device::Cuda(_) => Storage::Cuda(cuda::dropout(x.storage().cuda(OP)?, p, scale, seed, offset)?),
    })
}
