//! Embedding lookup, PyTorch's `nn.Embedding`: out[i] = table[index[i]] for
//! a [rows, dim] table and N indices; backward dtable[r] = Σ_{i: index[i]=r} dy[i]
//! (the indices carry no gradient). The indices are an f32 [N] tensor, as the
//! UNet's timesteps and class labels are. On the CPU an index that is not a
//! whole number in [0, rows) is refused; on CUDA (where checking would need
//! a sync) it gives a NaN row.

pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, arg_err, shape_err};
use crate::tensor::{Shape, Storage, Tensor, cpu_f32_storage};

const OP: &str = "embedding_lookup";

/// [rows, dim] table, [N] indices → [N, dim].
pub fn embedding_lookup(table: &Tensor, indices: &Tensor) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range(OP);
    let &[rows, dim] = table.dims() else {
        return shape_err(OP, format!("the table must be [rows, dim], got {}", table.shape()));
    };
    if indices.rank() != 1 {
        return shape_err(OP, format!("indices must be 1-D, got {}", indices.shape()));
    }
    let n = indices.numel();
    let storage = match Tensor::common_device(OP, &[table, indices])? {
        Device::Cpu => {
            let rows_of = cpu_rows(indices.storage().cpu_f32(OP)?, rows)?;
            let t = table.storage();
            let t = t.cpu_f32(OP)?;
            cpu_f32_storage(rows_of.iter().flat_map(|&r| t[r * dim..(r + 1) * dim].iter().copied()).collect())
        }
        Device::Cuda(_) => Storage::Cuda(cuda::lookup(table.storage().cuda(OP)?, indices.storage().cuda(OP)?, rows, dim)?),
    };
    Ok(Tensor::from_op(storage, Shape::new(vec![n, dim]), |_| {
        let indices = indices.clone();
        Node::new(OP, vec![table.clone()], move |g| Ok(vec![Some(lookup_backward(g, &indices, rows, dim)?)]))
    }))
}

/// The table row of each index; refuses one that names none.
fn cpu_rows(indices: &[f32], rows: usize) -> Result<Vec<usize>> {
    indices
        .iter()
        .map(|&f| {
            if f >= 0.0 && f < rows as f32 && f.fract() == 0.0 {
                Ok(f as usize)
            } else {
                arg_err(OP, format!("index {f} is not a row of a {rows}-row table"))
            }
        })
        .collect()
}

/// dtable from dy [N, dim] (not itself recorded).
fn lookup_backward(dy: &Tensor, indices: &Tensor, rows: usize, dim: usize) -> Result<Tensor> {
    let storage = match Tensor::common_device(OP, &[dy, indices])? {
        Device::Cpu => {
            let rows_of = cpu_rows(indices.storage().cpu_f32(OP)?, rows)?;
            let g = dy.storage();
            let g = g.cpu_f32(OP)?;
            let mut dtable = vec![0.0f32; rows * dim];
            for (i, &r) in rows_of.iter().enumerate() {
                for (d, v) in dtable[r * dim..(r + 1) * dim].iter_mut().zip(&g[i * dim..(i + 1) * dim]) {
                    *d += v;
                }
            }
            cpu_f32_storage(dtable)
        }
        Device::Cuda(_) => Storage::Cuda(cuda::lookup_backward(dy.storage().cuda(OP)?, indices.storage().cuda(OP)?, rows, dim)?),
    };
    Ok(Tensor::from_storage(storage, Shape::new(vec![rows, dim])))
}
