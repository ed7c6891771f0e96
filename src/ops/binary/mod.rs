//! add, sub, mul, div with numpy broadcasting, and scalar affine maps.
//!
//! Backward (g = dL/dout, summed back to each input's shape over broadcast axes):
//!   add: (g, g)   sub: (g, −g)   mul: (g·b, g·a)   div: (g/b, −g·a/b²)
//!   affine y = s·x + c: g·s

pub mod cpu;
pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, shape_err};
use crate::ops::reduce::sum_to;
use crate::tensor::{Storage, Tensor, cpu_f32_storage};

/// Elementwise binary ops; the discriminants are the kernels' op codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum BinaryOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
}

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Add, a, b)
}
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Sub, a, b)
}
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Mul, a, b)
}
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Div, a, b)
}

/// `op` applied elementwise after broadcasting `a` and `b` to a common shape.
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("binary");
    let name = op.name();
    let device = Tensor::common_device(name, &[a, b])?;
    let Some(out_shape) = a.shape().broadcast(b.shape()) else {
        return shape_err(name, format!("shapes {} and {} do not broadcast", a.shape(), b.shape()));
    };
    let storage = match device {
        Device::Cpu => {
            let (sa, sb) = (a.storage(), b.storage());
            cpu_f32_storage(cpu::binary(op, sa.cpu_f32(name)?, a.shape(), sb.cpu_f32(name)?, b.shape(), &out_shape))
        }
        Device::Cuda(_) => {
            let (sa, sb) = (a.storage(), b.storage());
            Storage::Cuda(cuda::binary(op, sa.cuda(name)?, a.shape(), sb.cuda(name)?, b.shape(), &out_shape)?)
        }
    };
    Ok(Tensor::from_op(storage, out_shape, |_| {
        let (a, b) = (a.clone(), b.clone());
        Node::new(name, vec![a.clone(), b.clone()], move |g| {
            let (ga, gb) = match op {
                BinaryOp::Add => (g.clone(), g.clone()),
                BinaryOp::Sub => (g.clone(), mul_scalar(g, -1.0)?),
                BinaryOp::Mul => (mul(g, &b)?, mul(g, &a)?),
                BinaryOp::Div => {
                    let ga = div(g, &b)?;
                    let gb = mul_scalar(&div(&mul(&ga, &a)?, &b)?, -1.0)?;
                    (ga, gb)
                }
            };
            let ga = if a.requires_grad() { Some(sum_to(&ga, a.shape())?) } else { None };
            let gb = if b.requires_grad() { Some(sum_to(&gb, b.shape())?) } else { None };
            Ok(vec![ga, gb])
        })
    }))
}

/// y = x·scale + shift.
pub fn affine(x: &Tensor, scale: f32, shift: f32) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("affine");
    let storage = match x.device() {
        Device::Cpu => cpu_f32_storage(cpu::affine(x.storage().cpu_f32("affine")?, scale, shift)),
        Device::Cuda(_) => Storage::Cuda(cuda::affine(x.storage().cuda("affine")?, scale, shift)?),
    };
    Ok(Tensor::from_op(storage, x.shape().clone(), |_| {
        Node::new("affine", vec![x.clone()], move |g| Ok(vec![Some(mul_scalar(g, scale)?)]))
    }))
}

pub fn add_scalar(x: &Tensor, value: f32) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("add_scalar");
    affine(x, 1.0, value)
}

pub fn mul_scalar(x: &Tensor, value: f32) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("mul_scalar");
    affine(x, value, 0.0)
}
