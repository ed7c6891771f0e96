//! Feature statistics: mean μ and unbiased covariance Σ (N−1) of features
//! [N, D], as FID needs them (the lesson's `feats.mean(0), feats.T.cov()`).
//!
//! Precision: all in f64 from the f32 features. The mean is summed in f64,
//! the features centred in f64, and Σ = Σ_c Xc_cᵀ·Xc_c/(N−1) over chunks of
//! [`COV_CHUNK_ROWS`] rows by the f64 GEMM (the `gemm` crate on the CPU,
//! `fid_gemm_f64` of kernels/fid.cu on CUDA; the chunks give the GPU
//! parallelism over K and bound the centred copy's memory). Why not f32
//! products: with N ≤ D (FID at 256 or 512 samples of 512-d features) Σ is
//! singular, and tr √(Σ₁Σ₂) is not Lipschitz there — noise ε in Σ's null
//! space adds ~√ε per null dimension. f32 products (noise ~1e-7·‖Σ‖) moved
//! such FIDs by ~1e-5 relative; f64 products (~1e-16) leave ~1e-8, as
//! numpy/scipy. The f64 covariance of 10,000×512 costs ~2× the f32 one.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::metrics::linalg::matmul_tn_f64;
use crate::tensor::{DType, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Rows per GEMM of the covariance (the chunks' products are added).
pub const COV_CHUNK_ROWS: usize = 1024;

/// Mean and unbiased covariance of n feature vectors of dimension `dim`.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    pub n: usize,
    pub dim: usize,
    /// μ, `dim` values.
    pub mean: Vec<f64>,
    /// Σ, dim×dim row-major, normalised by n − 1.
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of features [N, D] (f32 on the CPU or a CUDA device; other
    /// float dtypes are converted), computed on the tensor's device.
    pub fn from_features(features: &Tensor) -> Result<FeatureStats> {
        let (n, dim) = dims2("feature stats", features)?;
        let features = if features.dtype() == DType::F32 {
            features.clone()
        } else {
            features.to_dtype(DType::F32)?
        };
        let storage = features.storage();
        match features.device() {
            Device::Cpu => Self::from_slice(storage.cpu_f32("feature stats")?, n, dim),
            Device::Cuda(_) => {
                let (mean, cov) = crate::metrics::cuda::feature_stats(
                    storage.cuda("feature stats")?,
                    n,
                    dim,
                    COV_CHUNK_ROWS,
                )?;
                Ok(FeatureStats { n, dim, mean, cov })
            }
        }
    }

    /// Statistics of row-major features (n rows of `dim`) on the CPU.
    pub fn from_slice(features: &[f32], n: usize, dim: usize) -> Result<FeatureStats> {
        if features.len() != n * dim {
            return Err(Error::Shape {
                op: "feature stats",
                msg: format!("{} values are not {n}×{dim}", features.len()),
            });
        }
        if n < 2 {
            return Err(Error::Argument {
                op: "feature stats",
                msg: format!("a covariance needs at least 2 samples, got {n}"),
            });
        }
        let mut mean = vec![0.0f64; dim];
        for row in features.chunks_exact(dim.max(1)) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0f64; dim * dim];
        let mut part = vec![0.0f64; dim * dim];
        let mut xc = vec![0.0f64; COV_CHUNK_ROWS.min(n) * dim];
        for start in (0..n).step_by(COV_CHUNK_ROWS) {
            let rows = COV_CHUNK_ROWS.min(n - start);
            let chunk = &mut xc[..rows * dim];
            for (c, (&v, j)) in chunk.iter_mut().zip(
                features[start * dim..(start + rows) * dim]
                    .iter()
                    .zip((0..dim).cycle()),
            ) {
                *c = v as f64 - mean[j];
            }
            matmul_tn_f64(chunk, rows, dim, &mut part);
            for (c, &p) in cov.iter_mut().zip(&part) {
                *c += p;
            }
        }
        let scale = 1.0 / (n as f64 - 1.0);
        cov.iter_mut().for_each(|c| *c *= scale);
        Ok(FeatureStats { n, dim, mean, cov })
    }

    /// Write as safetensors: "mu" [D] and "sigma" [D, D] in f64, the sample
    /// count in the metadata ("n"), as pytorch-fid caches (mu, sigma).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mu: Vec<u8> = self.mean.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sigma: Vec<u8> = self.cov.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bad = |e: safetensors::SafeTensorError| Error::Argument {
            op: "feature stats",
            msg: e.to_string(),
        };
        let views = vec![
            (
                "mu".to_string(),
                TensorView::new(Dtype::F64, vec![self.dim], &mu).map_err(bad)?,
            ),
            (
                "sigma".to_string(),
                TensorView::new(Dtype::F64, vec![self.dim, self.dim], &sigma).map_err(bad)?,
            ),
        ];
        let metadata = HashMap::from([
            ("n".to_string(), self.n.to_string()),
            ("format".to_string(), "minidiffusion-fid-stats".to_string()),
        ]);
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(bad)?;
        // a temporary name, then renamed: a cache being rewritten is never half there
        crate::io::write_atomic(path, &bytes)
    }

    /// Read what [`FeatureStats::save`] wrote.
    pub fn load(path: &Path) -> Result<FeatureStats> {
        let err = |msg: String| Error::Data {
            path: path.display().to_string(),
            msg,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let n: usize = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("n"))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| err("no sample count 'n' in the metadata".into()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let get = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            let v = st
                .tensor(name)
                .map_err(|_| err(format!("no tensor '{name}'")))?;
            if v.dtype() != Dtype::F64 {
                return Err(err(format!("'{name}' is {:?}, expected F64", v.dtype())));
            }
            Ok((
                v.shape().to_vec(),
                v.data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            ))
        };
        let (ms, mean) = get("mu")?;
        let (cs, cov) = get("sigma")?;
        let dim = mean.len();
        if ms.len() != 1 || cs != [dim, dim] {
            return Err(err(format!(
                "shapes {ms:?} and {cs:?} are not [D] and [D, D]"
            )));
        }
        Ok(FeatureStats { n, dim, mean, cov })
    }

    /// tr Σ.
    pub fn trace(&self) -> f64 {
        crate::metrics::linalg::trace(&self.cov, self.dim)
    }
}

/// (N, D) of a rank-2 tensor.
pub(crate) fn dims2(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    match t.dims() {
        &[n, d] => Ok((n, d)),
        _ => Err(Error::Shape {
            op,
            msg: format!("features must be [N, D], got {}", t.shape()),
        }),
    }
}
