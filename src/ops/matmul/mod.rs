//! Batched matrix product with broadcast batch dims, and linear layers.
//!
//! C = op(A)·op(B), op = identity or transpose of the last two dims. Backward:
//!   dop(A) = dC·op(B)ᵀ,  dop(B) = op(A)ᵀ·dC,  each summed over broadcast batch dims;
//! written with the transpose flags so no gradient needs a transposed copy.
//!
//! Products run at this thread's compute precision when the forward runs
//! ([`crate::ops::precision`]), the backward's at the same one.

pub mod cpu;
pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, shape_err};
use crate::ops::binary::add;
use crate::ops::layout::reshape;
use crate::ops::precision::{self, operand};
use crate::ops::reduce::sum_to;
use crate::tensor::{Shape, Storage, Tensor, cpu_f32_storage, for_each_offset2};
use cpu::MatRef;
use rayon::prelude::*;

/// a [..., m, k] · b [..., k, n] → [..., m, n]; batch dims broadcast.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_t(a, false, b, false)
}

/// op(a)·op(b) where op transposes the last two dims when its flag is set.
pub fn matmul_t(a: &Tensor, trans_a: bool, b: &Tensor, trans_b: bool) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("matmul_t");
    let device = Tensor::common_device("matmul", &[a, b])?;
    if a.rank() < 2 || b.rank() < 2 {
        return shape_err("matmul", format!("operands need 2 or more dims, got {} and {}", a.shape(), b.shape()));
    }
    let (ar, ac) = (a.dims()[a.rank() - 2], a.dims()[a.rank() - 1]);
    let (br, bc) = (b.dims()[b.rank() - 2], b.dims()[b.rank() - 1]);
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if trans_b { (bc, br) } else { (br, bc) };
    if k != k2 {
        return shape_err("matmul", format!("inner dims differ: {} and {} (transposed: {trans_a}, {trans_b})", a.shape(), b.shape()));
    }
    let a_batch = Shape::new(a.dims()[..a.rank() - 2].to_vec());
    let b_batch = Shape::new(b.dims()[..b.rank() - 2].to_vec());
    let Some(batch) = a_batch.broadcast(&b_batch) else {
        return shape_err("matmul", format!("batch dims of {} and {} do not broadcast", a.shape(), b.shape()));
    };
    let mut out_dims = batch.dims().to_vec();
    out_dims.extend([m, n]);
    let prec = precision::current();
    let storage = match device {
        Device::Cpu => {
            let (sa, sb) = (a.storage(), b.storage());
            let (da, db) = (operand(sa.cpu_f32("matmul")?, prec), operand(sb.cpu_f32("matmul")?, prec));
            // matrix offsets of each output batch entry
            let mut offsets = Vec::with_capacity(batch.numel());
            let stride_a: Vec<usize> = a_batch.broadcast_strides(&batch).iter().map(|s| s * ar * ac).collect();
            let stride_b: Vec<usize> = b_batch.broadcast_strides(&batch).iter().map(|s| s * br * bc).collect();
            for_each_offset2(batch.dims(), &stride_a, &stride_b, |_, oa, ob| offsets.push((oa, ob)));
            let mut out = vec![0.0; batch.numel() * m * n];
            let product = |(c, &(oa, ob)): (&mut [f32], &(usize, usize)), parallel: bool| {
                let ma = MatRef::rows(&da[oa..oa + ar * ac], ar, ac).t_if(trans_a);
                let mb = MatRef::rows(&db[ob..ob + br * bc], br, bc).t_if(trans_b);
                cpu::gemm(ma, mb, c, n, false, parallel);
            };
            if offsets.len() > 1 && m * n > 0 {
                out.par_chunks_mut(m * n).zip(offsets.par_iter()).for_each(|pair| product(pair, false));
            } else if m * n > 0 {
                out.chunks_mut(m * n).zip(offsets.iter()).for_each(|pair| product(pair, true));
            }
            cpu_f32_storage(out)
        }
        Device::Cuda(_) => {
            let (sa, sb) = (a.storage(), b.storage());
            let (da, db) = (sa.cuda("matmul")?, sb.cuda("matmul")?);
            Storage::Cuda(cuda::matmul(da, &a_batch, (ar, ac), trans_a, db, &b_batch, (br, bc), trans_b, &batch, prec)?)
        }
    };
    Ok(Tensor::from_op(storage, Shape::new(out_dims), |_| {
        let (a, b) = (a.clone(), b.clone());
        Node::new("matmul", vec![a.clone(), b.clone()], move |g| {
            let _forward_precision = precision::with_precision(prec);
            let ga = if !a.requires_grad() {
                None
            } else if trans_a {
                Some(sum_to(&matmul_t(&b, trans_b, g, true)?, a.shape())?)
            } else {
                Some(sum_to(&matmul_t(g, false, &b, !trans_b)?, a.shape())?)
            };
            let gb = if !b.requires_grad() {
                None
            } else if trans_b {
                Some(sum_to(&matmul_t(g, true, &a, trans_a)?, b.shape())?)
            } else {
                Some(sum_to(&matmul_t(&a, !trans_a, g, false)?, b.shape())?)
            };
            Ok(vec![ga, gb])
        })
    }))
}

/// y = x·wᵀ + bias for x [..., in], w [out, in] (PyTorch's layout), bias [out].
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("linear");
    if weight.rank() != 2 || x.rank() == 0 || x.dims()[x.rank() - 1] != weight.dims()[1] {
        return shape_err("linear", format!("input {} does not fit weight {}", x.shape(), weight.shape()));
    }
    let features_in = weight.dims()[1];
    let rows = x.numel() / features_in.max(1);
    let flat = reshape(x, [rows, features_in])?;
    let mut y = matmul_t(&flat, false, weight, true)?;
    if let Some(bias) = bias {
        if bias.dims() != [weight.dims()[0]] {
            return shape_err("linear", format!("bias {} does not fit weight {}", bias.shape(), weight.shape()));
        }
        y = add(&y, bias)?;
    }
    let mut out_dims = x.dims().to_vec();
    *out_dims.last_mut().unwrap() = weight.dims()[0];
    reshape(&y, out_dims)
}
