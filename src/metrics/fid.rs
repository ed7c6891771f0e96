//! Fréchet Inception Distance on feature statistics:
//! FID = ‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2·tr √(Σ₁Σ₂).
//!
//! tr √(Σ₁Σ₂) by Newton–Schulz ([`crate::metrics::sqrtm`]) on
//! - [`SqrtInput::Product`] (default, SPEC and the lesson): A = Σ₁·Σ₂ itself.
//!   Not symmetric, but similar to the PSD √Σ₁Σ₂√Σ₁, so its eigenvalues are
//!   real and ≥ 0 and the iteration converges; in f64 its trace agrees with
//!   an eigen-decomposition of √Σ₁Σ₂√Σ₁ to ~1e-12 relative (tests/metrics.rs).
//! - [`SqrtInput::Symmetric`]: S = √Σ₁ by Newton–Schulz, then √(S·Σ₂·S),
//!   both symmetric (two square roots: about twice the work).
//!
//! Singular covariances (fewer samples than dimensions, dead features): Σ₁Σ₂
//! may then have no square root at all (nilpotent blocks at 0), scipy's
//! sqrtm turns non-finite and pytorch-fid retries with eps·I added to both
//! covariances. Here the same: when Newton–Schulz on Σ₁Σ₂ does not reach its
//! residual tolerance (it keeps the best finite iterate; see sqrtm.rs), it is
//! run again on (Σ₁ + εI)(Σ₂ + εI), ε = 1e-6 (pytorch-fid's eps), and the
//! report says so (`offset`). The result is finite, never NaN.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::metrics::linalg::{add_diag, matmul_f64};
use crate::metrics::sqrtm::{NsOptions, SqrtmResult, newton_schulz, sqrtm_newton_schulz};
use crate::metrics::stats::FeatureStats;

/// Which matrix Newton–Schulz runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SqrtInput {
    /// √(Σ₁Σ₂) directly (SPEC).
    #[default]
    Product,
    /// √(√Σ₁·Σ₂·√Σ₁), symmetric.
    Symmetric,
}

/// Settings of [`fid_with`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FidOptions {
    pub ns: NsOptions,
    pub input: SqrtInput,
    /// Diagonal offset added to both covariances when the square root fails (pytorch-fid: 1e-6).
    pub eps: f64,
}

impl Default for FidOptions {
    fn default() -> Self {
        FidOptions {
            ns: NsOptions::default(),
            input: SqrtInput::Product,
            eps: 1e-6,
        }
    }
}

/// FID and its parts.
#[derive(Clone, Debug)]
pub struct FidReport {
    pub fid: f64,
    /// ‖μ₁−μ₂‖².
    pub mean_term: f64,
    pub trace_a: f64,
    pub trace_b: f64,
    /// tr √(Σ₁Σ₂).
    pub trace_sqrt: f64,
    /// The diagonal offset that was needed (0, or `eps`).
    pub offset: f64,
    /// Newton–Schulz iterations (summed over the square roots taken).
    pub iterations: usize,
    /// Residual ‖A − (√A)²‖_F/‖A‖_F of the last square root.
    pub residual: f64,
}

/// FID between two sets of feature statistics, the square root on `device`.
pub fn fid(a: &FeatureStats, b: &FeatureStats, device: Device) -> Result<f64> {
    Ok(fid_with(a, b, device, &FidOptions::default())?.fid)
}

/// [`fid`] with settings, and the parts of the result.
pub fn fid_with(
    a: &FeatureStats,
    b: &FeatureStats,
    device: Device,
    opts: &FidOptions,
) -> Result<FidReport> {
    if a.dim != b.dim {
        return Err(Error::Shape {
            op: "fid",
            msg: format!("feature dimensions differ: {} and {}", a.dim, b.dim),
        });
    }
    let d = a.dim;
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let (trace_a, trace_b) = (a.trace(), b.trace());
    let (mut root, mut iterations) = trace_sqrt(&a.cov, &b.cov, d, device, opts)?;
    let mut offset = 0.0;
    if !root.converged {
        offset = opts.eps;
        let (ca, cb) = (add_diag(&a.cov, d, offset), add_diag(&b.cov, d, offset));
        let (r, it) = trace_sqrt(&ca, &cb, d, device, opts)?;
        root = r;
        iterations += it;
    }
    if !root.trace.is_finite() {
        return Err(Error::Argument {
            op: "fid",
            msg: "the square root of Σ₁Σ₂ is not finite".into(),
        });
    }
    let fid = mean_term + trace_a + trace_b - 2.0 * root.trace;
    Ok(FidReport {
        fid,
        mean_term,
        trace_a,
        trace_b,
        trace_sqrt: root.trace,
        offset,
        iterations,
        residual: root.residual,
    })
}

/// Newton–Schulz for tr √(Σ₁Σ₂) as `opts.input` says; the last square root and the total iterations.
fn trace_sqrt(
    c1: &[f64],
    c2: &[f64],
    d: usize,
    device: Device,
    opts: &FidOptions,
) -> Result<(SqrtmResult, usize)> {
    match opts.input {
        SqrtInput::Product => {
            let r = product_sqrt(c1, c2, d, device, &opts.ns)?;
            let it = r.iterations;
            Ok((r, it))
        }
        SqrtInput::Symmetric => {
            let s = sqrtm_newton_schulz(c1, d, &opts.ns, device)?;
            let mut m = matmul_f64(&matmul_f64(&s.sqrt, c2, d, d, d), &s.sqrt, d, d, d);
            for i in 0..d {
                for j in 0..i {
                    let v = 0.5 * (m[i * d + j] + m[j * d + i]);
                    m[i * d + j] = v;
                    m[j * d + i] = v;
                }
            }
            let r = sqrtm_newton_schulz(&m, d, &opts.ns, device)?;
            let it = s.iterations + r.iterations;
            let converged = s.converged && r.converged;
            Ok((SqrtmResult { converged, ..r }, it))
        }
    }
}

/// √(Σ₁Σ₂), the product formed on `device` (the f64 GEMM on CUDA).
fn product_sqrt(
    c1: &[f64],
    c2: &[f64],
    d: usize,
    device: Device,
    ns: &NsOptions,
) -> Result<SqrtmResult> {
    match device {
        Device::Cpu => sqrtm_newton_schulz(&matmul_f64(c1, c2, d, d, d), d, ns, Device::Cpu),
        Device::Cuda(dev) => {
            use crate::metrics::cuda::{CudaNs, alloc_f64, gemm_f64, upload_f64};
            let backend = crate::device::cuda::backend(dev)?;
            let (s1, s2) = (upload_f64(&backend, c1)?, upload_f64(&backend, c2)?);
            let prod = alloc_f64(&backend, d * d)?;
            gemm_f64(&backend, &[(&s1, &s2, &prod)], (d, d, d), 1.0, 0.0)?;
            newton_schulz(&mut CudaNs::new(&backend, prod, d)?, d, ns)
        }
    }
}
