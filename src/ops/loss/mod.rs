//! Losses: mean squared error and cross-entropy on logits.
//!
//! mse = mean((p − t)²);            dp = g·2(p − t)/n,  dt = −dp
//! ce  = mean_i(logsumexp(z_i) − z_i[y_i]);  dz = g·(softmax(z) − onehot(y))/N

pub mod cuda;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, arg_err, shape_err};
use crate::ops::{binary, reduce};
use crate::device::cuda::CudaBuffer;
use crate::tensor::{Shape, Storage, Tensor, cpu_f32_storage};

/// Mean squared error over all elements.
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("mse_loss");
    if pred.shape() != target.shape() {
        return shape_err("mse_loss", format!("prediction {} and target {} differ", pred.shape(), target.shape()));
    }
    let diff = binary::sub(pred, target)?;
    reduce::mean_all(&binary::mul(&diff, &diff)?)
}

/// Mean cross-entropy of logits [N, K] against class indices `labels` (len N).
pub fn cross_entropy(logits: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("cross_entropy");
    if logits.rank() != 2 || logits.dims()[0] != labels.len() {
        return shape_err("cross_entropy", format!("logits {} need shape [N, K] with N = {} labels", logits.shape(), labels.len()));
    }
    let (n, k) = (logits.dims()[0], logits.dims()[1]);
    if let Some(&bad) = labels.iter().find(|&&y| y >= k) {
        return arg_err("cross_entropy", format!("label {bad} is out of range for {k} classes"));
    }
    // what backward needs: softmax(logits), and on CUDA the uploaded labels
    enum Saved {
        Cpu(Vec<f32>),
        Cuda { probs: CudaBuffer, labels: CudaBuffer },
    }
    let (loss, saved) = match logits.device() {
        Device::Cpu => {
            let z = logits.storage();
            let z = z.cpu_f32("cross_entropy")?;
            let probs = crate::ops::softmax::cpu::forward(z, k);
            let mut total = 0f64;
            for (row, &y) in z.chunks(k).zip(labels) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let lse = max as f64 + row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln();
                total += lse - row[y] as f64;
            }
            (cpu_f32_storage(vec![(total / n.max(1) as f64) as f32]), Saved::Cpu(probs))
        }
        Device::Cuda(_) => {
            let z = logits.storage();
            let z = z.cuda("cross_entropy")?;
            let labels = cuda::upload_labels(z.backend(), labels)?;
            let (loss, probs) = cuda::forward(z, &labels, n, k)?;
            (Storage::Cuda(loss), Saved::Cuda { probs, labels })
        }
    };
    let labels = labels.to_vec();
    Ok(Tensor::from_op(loss, Shape::new(vec![]), |_| {
        Node::new("cross_entropy", vec![logits.clone()], move |g| {
            let grad = match &saved {
                Saved::Cpu(probs) => {
                    let scale = g.item()? / n.max(1) as f32;
                    let mut grad = probs.clone();
                    for (row, &y) in grad.chunks_mut(k).zip(&labels) {
                        row[y] -= 1.0;
                        row.iter_mut().for_each(|v| *v *= scale);
                    }
                    cpu_f32_storage(grad)
                }
                Saved::Cuda { probs, labels } => {
                    let g = g.storage();
                    Storage::Cuda(cuda::backward(probs, labels, g.cuda("cross_entropy_backward")?, n, k)?)
                }
            };
            Ok(vec![Some(Tensor::from_storage(grad, Shape::new(vec![n, k])))])
        })
    }))
}
