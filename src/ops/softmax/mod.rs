//! Softmax over the last axis. Backward: dx = y ⊙ (dy − Σ dy⊙y), from the saved output.

pub mod cpu;
pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, shape_err};
use crate::tensor::{Storage, Tensor, cpu_f32_storage};

pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("softmax");
    if x.rank() == 0 {
        return shape_err("softmax", "needs at least one axis");
    }
    let cols = x.dims()[x.rank() - 1];
    let storage = match x.device() {
        Device::Cpu => cpu_f32_storage(cpu::forward(x.storage().cpu_f32("softmax")?, cols)),
        Device::Cuda(_) => Storage::Cuda(cuda::forward(x.storage().cuda("softmax")?, cols)?),
    };
    Ok(Tensor::from_op(storage, x.shape().clone(), |y| {
        Node::new("softmax", vec![x.clone()], move |g| {
            let storage = match Tensor::common_device("softmax_backward", &[&y, g])? {
                Device::Cpu => {
                    let (sy, sg) = (y.storage(), g.storage());
                    cpu_f32_storage(cpu::backward(sy.cpu_f32("softmax")?, sg.cpu_f32("softmax")?, cols))
                }
                Device::Cuda(_) => {
                    let (sy, sg) = (y.storage(), g.storage());
                    Storage::Cuda(cuda::backward(sy.cuda("softmax")?, sg.cuda("softmax")?, cols)?)
                }
            };
            Ok(vec![Some(Tensor::from_storage(storage, y.shape().clone()))])
        })
    }))
}
