//! Sample-quality metrics on classifier features: FID and KID (SPEC,
//! "Evaluation: FID and KID on our own classifier").
//!
//! - [`FeatureStats`]: mean (f64) and unbiased covariance (N−1) of features
//!   [N, D], the covariance through the f32 GEMM kernels in chunks of
//!   [`stats::COV_CHUNK_ROWS`] rows summed in f64; saved and loaded as
//!   safetensors (f64) so the real set's statistics can be cached.
//! - [`sqrtm_newton_schulz`]: the matrix square root by the coupled
//!   Newton–Schulz iteration in f64, on the CPU (`gemm` crate) or CUDA
//!   (kernels/fid.cu), one control loop for both.
//! - [`fid`] / [`fid_with`]: ‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2·tr √(Σ₁Σ₂).
//! - [`kid`]: the lesson's KID (polynomial kernel, unbiased MMD², contiguous
//!   chunks), and [`kid_subsets`], torchmetrics-style random subsets.

pub mod cuda;
pub mod fid;
pub mod kid;
pub mod linalg;
pub mod sqrtm;
pub mod stats;

pub use fid::{FidOptions, FidReport, SqrtInput, fid, fid_with};
pub use kid::{KidSubsets, kid, kid_chunk_count, kid_subsets, squared_mmd};
pub use sqrtm::{NsOptions, SqrtmResult, sqrtm_newton_schulz};
pub use stats::FeatureStats;
