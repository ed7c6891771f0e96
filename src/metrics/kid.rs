//! Kernel Inception Distance as the lesson computes it (`_calc_kid`):
//! k(a, b) = (a·b/d + 1)³, unbiased
//! MMD² = Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(n(n−1)) − 2·Σ k(x_i, y_j)/(mn),
//! over c = max(⌈min(|x|, |y|)/50⌉, 4) contiguous chunks — chunk i of x is
//! rows round(i·|x|/c) .. round((i+1)·|x|/c) (Python's round: half to even),
//! the same for y — averaged. Unbiased, so it can be negative.
//!
//! The Gram matrices go through the f32 GEMM (the `gemm` crate on the CPU,
//! kernels/gemm.cu on CUDA); the cubes are summed in f64 (the lesson sums in
//! f32). [`kid_subsets`] is torchmetrics' variant: random subsets of equal
//! size drawn without replacement (Philox), mean and standard deviation.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::metrics::cuda::ChunkPair;
use crate::metrics::stats::dims2;
use crate::ops::matmul::cpu::{MatRef, gemm};
use crate::rng::PhiloxStream;
use crate::tensor::{DType, Tensor};
use rayon::prelude::*;

/// The lesson's chunk count: max(⌈min(nx, ny)/50⌉, 4).
pub fn kid_chunk_count(nx: usize, ny: usize) -> usize {
    ((nx.min(ny) as f64 / 50.0).ceil() as usize).max(4)
}

/// Row range of chunk i of c over n rows: round(i·n/c) .. round((i+1)·n/c).
fn chunk_range(i: usize, c: usize, n: usize) -> (usize, usize) {
    let at = |i: usize| ((i * n) as f64 / c as f64).round_ties_even() as usize;
    (at(i), at(i + 1))
}

/// (rows of x, rows of y, D) of features x [m, D] and y [n, D], which must share D.
fn feature_dims(x: &Tensor, y: &Tensor) -> Result<(usize, usize, usize)> {
    let (nx, d) = dims2("kid", x)?;
    let (ny, dy) = dims2("kid", y)?;
    if d != dy {
        return Err(Error::Shape { op: "kid", msg: format!("feature dimensions differ: {d} and {dy}") });
    }
    Ok((nx, ny, d))
}

/// KID of features x [m, D] and y [n, D] (same device: the CPU or CUDA), the lesson's chunked estimate.
pub fn kid(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (nx, ny, d) = feature_dims(x, y)?;
    let c = kid_chunk_count(nx, ny);
    let pairs: Vec<_> = (0..c)
        .map(|i| (chunk_range(i, c, nx), chunk_range(i, c, ny)))
        .collect();
    let mmd = pair_mmds(x, y, d, &pairs)?;
    Ok(mmd.iter().sum::<f64>() / c as f64)
}

/// torchmetrics-style KID settings: `subsets` random subsets of `subset_size`
/// rows from each set (without replacement within a subset), Philox `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KidSubsets {
    pub subsets: usize,
    pub subset_size: usize,
    pub seed: u64,
}

impl Default for KidSubsets {
    /// torchmetrics' defaults (100 subsets of 1000).
    fn default() -> Self {
        KidSubsets {
            subsets: 100,
            subset_size: 1000,
            seed: 0,
        }
    }
}

/// torchmetrics-style KID: (mean, standard deviation (n−1)) of MMD² over random subsets.
pub fn kid_subsets(x: &Tensor, y: &Tensor, opts: &KidSubsets) -> Result<(f64, f64)> {
    let (nx, ny, d) = feature_dims(x, y)?;
    let k = opts.subset_size;
    if k < 2 || k > nx.min(ny) || opts.subsets == 0 {
        return Err(Error::Argument {
            op: "kid",
            msg: format!(
                "subset size {k} must be at least 2 and at most the smaller set ({}), with at least one subset",
                nx.min(ny)
            ),
        });
    }
    let host = |t: &Tensor| -> Result<Vec<f32>> {
        let t = t.to_device(Device::Cpu)?;
        Ok(if t.dtype() == DType::F32 {
            t.to_vec()
        } else {
            t.to_dtype(DType::F32)?.to_vec()
        })
    };
    let (xv, yv) = (host(x)?, host(y)?);
    let s = opts.subsets;
    let mut xs = Vec::with_capacity(s * k * d);
    let mut ys = Vec::with_capacity(s * k * d);
    for sub in 0..s as u64 {
        for row in sample_rows(opts.seed, 2 * sub, nx, k) {
            xs.extend_from_slice(&xv[row * d..(row + 1) * d]);
        }
        for row in sample_rows(opts.seed, 2 * sub + 1, ny, k) {
            ys.extend_from_slice(&yv[row * d..(row + 1) * d]);
        }
    }
    let device = x.device();
    let (tx, ty) = (
        Tensor::from_vec_on(xs, [s * k, d], device)?,
        Tensor::from_vec_on(ys, [s * k, d], device)?,
    );
    let pairs: Vec<_> = (0..s)
        .map(|i| ((i * k, (i + 1) * k), (i * k, (i + 1) * k)))
        .collect();
    let mmd = pair_mmds(&tx, &ty, d, &pairs)?;
    let mean = mmd.iter().sum::<f64>() / s as f64;
    let var = if s > 1 {
        mmd.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (s as f64 - 1.0)
    } else {
        0.0
    };
    Ok((mean, var.sqrt()))
}

/// `k` distinct rows of 0..n: a partial Fisher–Yates shuffle driven by Philox stream (seed, offset).
fn sample_rows(seed: u64, offset: u64, n: usize, k: usize) -> Vec<usize> {
    let stream = PhiloxStream::new(seed, offset);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + ((stream.u32_at(i as u64) as u64 * (n - i) as u64) >> 32) as usize;
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx
}

/// Unbiased MMD² of row-major x [m, d] and y [n, d] on the CPU (m, n ≥ 2).
pub fn squared_mmd(x: &[f32], m: usize, y: &[f32], n: usize, d: usize) -> f64 {
    let [kxx, kyy, kxy] = cpu_sums(x, m, y, n, d);
    mmd_from_sums([kxx, kyy, kxy], m, n)
}

fn mmd_from_sums([kxx, kyy, kxy]: [f64; 3], m: usize, n: usize) -> f64 {
    let (m, n) = (m as f64, n as f64);
    kxx / (m * (m - 1.0)) + kyy / (n * (n - 1.0)) - 2.0 * kxy / (m * n)
}

/// MMD² of each chunk pair ((x rows), (y rows)).
fn pair_mmds(x: &Tensor, y: &Tensor, d: usize, pairs: &[ChunkPair]) -> Result<Vec<f64>> {
    if let Some(&((a, b), (c, e))) = pairs
        .iter()
        .find(|&&((a, b), (c, e))| b - a < 2 || e - c < 2)
    {
        return Err(Error::Argument {
            op: "kid",
            msg: format!(
                "a chunk has fewer than 2 samples (x rows {a}..{b}, y rows {c}..{e}): give each set at least 8"
            ),
        });
    }
    let device = Tensor::common_device("kid", &[x, y])?;
    let f32_of = |t: &Tensor| {
        if t.dtype() == DType::F32 {
            Ok(t.clone())
        } else {
            t.to_dtype(DType::F32)
        }
    };
    let (x, y) = (f32_of(x)?, f32_of(y)?);
    let (sx, sy) = (x.storage(), y.storage());
    let sums = match device {
        Device::Cpu => {
            let (xv, yv) = (sx.cpu_f32("kid")?, sy.cpu_f32("kid")?);
            pairs
                .par_iter()
                .map(|&((x0, x1), (y0, y1))| {
                    cpu_sums(
                        &xv[x0 * d..x1 * d],
                        x1 - x0,
                        &yv[y0 * d..y1 * d],
                        y1 - y0,
                        d,
                    )
                })
                .collect()
        }
        Device::Cuda(_) => {
            crate::metrics::cuda::kid_sums(sx.cuda("kid")?, sy.cuda("kid")?, d, pairs)?
        }
    };
    Ok(sums
        .into_iter()
        .zip(pairs)
        .map(|(s, &((x0, x1), (y0, y1)))| mmd_from_sums(s, x1 - x0, y1 - y0))
        .collect())
}

/// [Σ_{i≠j} k(x_i, x_j), Σ_{i≠j} k(y_i, y_j), Σ k(x_i, y_j)] with Gram matrices by the f32 GEMM.
fn cpu_sums(x: &[f32], m: usize, y: &[f32], n: usize, d: usize) -> [f64; 3] {
    let inv_d = 1.0 / d as f64;
    let poly_sum = |a: &[f32], ra: usize, b: &[f32], rb: usize, skip_diag: bool| -> f64 {
        let mut g = vec![0.0f32; ra * rb];
        let (ma, mb) = (MatRef::rows(a, ra, d), MatRef::rows(b, rb, d));
        gemm(ma, mb.t(), &mut g, rb, false, false);
        let mut acc = 0.0f64;
        for (e, &v) in g.iter().enumerate() {
            if skip_diag && e / rb == e % rb {
                continue;
            }
            let k = v as f64 * inv_d + 1.0;
            acc += k * k * k;
        }
        acc
    };
    [
        poly_sum(x, m, x, m, true),
        poly_sum(y, n, y, n, true),
        poly_sum(x, m, y, n, false),
    ]
}
