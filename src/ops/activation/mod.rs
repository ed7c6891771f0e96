//! SiLU, ReLU, leaky ReLU, miniai's GeneralRelu, Mish and GELU (the
//! activations diffusers' `act_fn` names). Backward: dx = dy·f'(x).

pub mod cpu;
pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::Result;
use crate::tensor::{Storage, Tensor, cpu_f32_storage};

/// A pointwise nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Silu,
    Relu,
    LeakyRelu { slope: f32 },
    /// leaky_relu(x, leak) − sub (the lesson's classifier uses leak 0.1, sub 0.4).
    GeneralRelu { leak: f32, sub: f32 },
    /// x·tanh(softplus(x)) (PyTorch's nn.Mish).
    Mish,
    /// x·Φ(x), the exact (erf) GELU (PyTorch's nn.GELU()).
    Gelu,
}

impl Activation {
    /// diffusers' `act_fn` names (`get_activation`): swish and silu are SiLU.
    pub fn from_diffusers(name: &str) -> Option<Activation> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "mish" => Activation::Mish,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }
}

/// y = f(x) elementwise.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("activation");
    let storage = match x.device() {
        Device::Cpu => cpu_f32_storage(cpu::forward(act, x.storage().cpu_f32("activation")?)),
        Device::Cuda(_) => Storage::Cuda(cuda::forward(act, x.storage().cuda("activation")?)?),
    };
    Ok(Tensor::from_op(storage, x.shape().clone(), |_| {
        let input = x.clone();
        Node::new("activation", vec![x.clone()], move |g| Ok(vec![Some(activation_backward(&input, g, act)?)]))
    }))
}

/// dy·f'(x) (not itself recorded).
fn activation_backward(x: &Tensor, dy: &Tensor, act: Activation) -> Result<Tensor> {
    let storage = match Tensor::common_device("activation_backward", &[x, dy])? {
        Device::Cpu => {
            let (sx, sg) = (x.storage(), dy.storage());
            cpu_f32_storage(cpu::backward(act, sx.cpu_f32("activation")?, sg.cpu_f32("activation")?))
        }
        Device::Cuda(_) => {
            let (sx, sg) = (x.storage(), dy.storage());
            Storage::Cuda(cuda::backward(act, sx.cuda("activation")?, sg.cuda("activation")?)?)
        }
    };
    Ok(Tensor::from_storage(storage, x.shape().clone()))
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Silu)
}
pub fn relu(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Relu)
}
pub fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    activation(x, Activation::LeakyRelu { slope })
}
pub fn general_relu(x: &Tensor, leak: f32, sub: f32) -> Result<Tensor> {
    activation(x, Activation::GeneralRelu { leak, sub })
}
pub fn mish(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Mish)
}
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    activation(x, Activation::Gelu)
}
