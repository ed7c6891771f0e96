//! reshape (a view), permute / transpose, concat and narrow (copies).
//!
//! Backward: reshape → reshape g back; permute → permute g by the inverse
//! permutation; concat → narrow g into the parts; narrow → g placed into zeros
//! (concat with zero blocks).

pub mod cpu;
pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, arg_err, shape_err};
use crate::tensor::{Shape, Storage, Tensor, cpu_f32_storage};

/// Same values, new shape with the same element count (shares storage).
pub fn reshape(x: &Tensor, dims: impl Into<Shape>) -> Result<Tensor> {
    let shape: Shape = dims.into();
    if shape.numel() != x.numel() {
        return shape_err("reshape", format!("cannot reshape {} into {}", x.shape(), shape));
    }
    let in_shape = x.shape().clone();
    Ok(x.view_op(shape, || Node::new("reshape", vec![x.clone()], move |g| Ok(vec![Some(reshape(g, in_shape.clone())?)]))))
}

/// Reorder axes: output dim d is input dim perm[d].
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("permute");
    let rank = x.rank();
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return arg_err("permute", format!("{perm:?} is not a permutation of the {rank} axes of {}", x.shape()));
    }
    let out_shape = Shape::new(perm.iter().map(|&p| x.dims()[p]).collect());
    let storage = match x.device() {
        Device::Cpu => cpu_f32_storage(cpu::permute(x.storage().cpu_f32("permute")?, x.shape(), perm)),
        Device::Cuda(_) => Storage::Cuda(cuda::permute(x.storage().cuda("permute")?, x.shape(), perm)?),
    };
    Ok(Tensor::from_op(storage, out_shape, |_| {
        let mut inverse = vec![0; rank];
        for (d, &p) in perm.iter().enumerate() {
            inverse[p] = d;
        }
        Node::new("permute", vec![x.clone()], move |g| Ok(vec![Some(permute(g, &inverse)?)]))
    }))
}

/// Swap two axes.
pub fn transpose(x: &Tensor, a: usize, b: usize) -> Result<Tensor> {
    if a >= x.rank() || b >= x.rank() {
        return arg_err("transpose", format!("axes ({a}, {b}) out of range for shape {}", x.shape()));
    }
    let mut perm: Vec<usize> = (0..x.rank()).collect();
    perm.swap(a, b);
    permute(x, &perm)
}

/// Join tensors along `axis`; all other dims must agree (UNet skip connections).
pub fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("concat");
    let Some(first) = parts.first() else {
        return arg_err("concat", "no tensors to concatenate");
    };
    if axis >= first.rank() {
        return arg_err("concat", format!("axis {axis} out of range for shape {}", first.shape()));
    }
    let device = Tensor::common_device("concat", parts)?;
    for p in parts {
        let same_rank = p.rank() == first.rank();
        if !same_rank || (0..p.rank()).any(|d| d != axis && p.dims()[d] != first.dims()[d]) {
            return shape_err("concat", format!("shapes {} and {} differ outside axis {axis}", first.shape(), p.shape()));
        }
    }
    let lens: Vec<usize> = parts.iter().map(|p| p.dims()[axis]).collect();
    let (outer, _, inner) = cpu::split_at_axis(first.dims(), axis);
    let mut dims = first.dims().to_vec();
    dims[axis] = lens.iter().sum();
    let storage = match device {
        Device::Cpu => {
            let guards: Vec<_> = parts.iter().map(|p| p.storage()).collect();
            let slices = guards.iter().map(|g| g.cpu_f32("concat")).collect::<Result<Vec<_>>>()?;
            cpu_f32_storage(cpu::concat(&slices, &lens, outer, inner))
        }
        Device::Cuda(_) => {
            let guards: Vec<_> = parts.iter().map(|p| p.storage()).collect();
            let bufs = guards.iter().map(|g| g.cuda("concat")).collect::<Result<Vec<_>>>()?;
            Storage::Cuda(cuda::concat(&bufs, &lens, outer, inner)?)
        }
    };
    Ok(Tensor::from_op(storage, Shape::new(dims), |_| {
        let inputs: Vec<Tensor> = parts.iter().map(|&p| p.clone()).collect();
        Node::new("concat", inputs.clone(), move |g| {
            let mut start = 0;
            let mut grads = Vec::with_capacity(lens.len());
            for (input, &len) in inputs.iter().zip(&lens) {
                grads.push(if input.requires_grad() { Some(narrow(g, axis, start, len)?) } else { None });
                start += len;
            }
            Ok(grads)
        })
    }))
}

/// Entries start..start+len along `axis` (a copy).
pub fn narrow(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("narrow");
    if axis >= x.rank() || start + len > x.dims()[axis] {
        return arg_err("narrow", format!("range {start}..{} of axis {axis} is outside shape {}", start + len, x.shape()));
    }
    let (outer, axis_len, inner) = cpu::split_at_axis(x.dims(), axis);
    let mut dims = x.dims().to_vec();
    dims[axis] = len;
    let storage = match x.device() {
        Device::Cpu => cpu_f32_storage(cpu::narrow(x.storage().cpu_f32("narrow")?, outer, axis_len, inner, start, len)),
        Device::Cuda(_) => Storage::Cuda(cuda::narrow(x.storage().cuda("narrow")?, outer, axis_len, inner, start, len)?),
    };
    Ok(Tensor::from_op(storage, Shape::new(dims), |_| {
        let in_shape = x.shape().clone();
        Node::new("narrow", vec![x.clone()], move |g| {
            let mut parts = Vec::new();
            let zeros_dims = |n: usize| {
                let mut d = in_shape.dims().to_vec();
                d[axis] = n;
                Tensor::zeros_on(d, g.device())
            };
            let before = zeros_dims(start)?;
            let after = zeros_dims(axis_len - start - len)?;
            if start > 0 {
                parts.push(&before);
            }
            parts.push(g);
            if start + len < axis_len {
                parts.push(&after);
            }
            Ok(vec![Some(concat(&parts, axis)?)])
        })
    }))
}

/// Rows `rows` of `x` along axis 0 (a data gather: not differentiable).
pub fn index_select(x: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("index_select");
    if x.rank() == 0 {
        return shape_err("index_select", "needs at least one axis");
    }
    if x.requires_grad() {
        return arg_err("index_select", "has no gradient (it gathers data batches)");
    }
    let n = x.dims()[0];
    if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
        return arg_err("index_select", format!("row {bad} is out of range for {n} rows"));
    }
    let row_len = x.numel() / n.max(1);
    let mut dims = x.dims().to_vec();
    dims[0] = rows.len();
    let storage = match x.device() {
        Device::Cpu => {
            let s = x.storage();
            let data = s.cpu_f32("index_select")?;
            cpu_f32_storage(rows.iter().flat_map(|&r| data[r * row_len..(r + 1) * row_len].iter().copied()).collect())
        }
        Device::Cuda(_) => Storage::Cuda(cuda::gather_rows(x.storage().cuda("index_select")?, rows, row_len)?),
    };
    Ok(Tensor::from_storage(storage, Shape::new(dims)))
}
