//! The matrix square root by the coupled Newton–Schulz iteration, in f64
//! (SPEC and the lesson's `_sqrtm_newton_schulz`):
//!
//! ```text
//! Y₀ = A/‖A‖_F, Z₀ = I
//! T = (3I − Z·Y)/2;  Y ← Y·T;  Z ← T·Z;      √A ≈ Y·√‖A‖_F
//! ```
//!
//! One control loop ([`newton_schulz`]) drives two backends that run the same
//! steps: the CPU (`gemm` crate, f64) and CUDA (kernels/fid.cu: a tiled f64
//! GEMM, two batched launches and one elementwise/reduction kernel per
//! iteration). Each iteration computes P = Z·Y and Q = Y·Y of the current
//! iterate, the relative residual ‖A − (√A)²‖_F/‖A‖_F = ‖A/‖A‖_F − Y²‖_F and
//! tr Y, then T and the update.
//!
//! Stopping. SPEC stops at residual ≤ 1e-6 (`tol`) or after 100 iterations.
//! At 1e-6 the eigenvalues below ~1e-6·‖A‖_F are still converging (each
//! iteration multiplies their Z·Y by ~2.25), which leaves tr √A low by up to
//! ~5e-4 relative — too coarse for FID to 1e-4 of scipy. So the loop goes on
//! past `tol` until tr Y also settles (|Δ tr| ≤ `trace_tol`·|tr|, 1e-10), which
//! costs ~10–20 more iterations and brings tr √A to ~1e-12 of the
//! eigen-decomposition value. Singular matrices: rounding leaves tiny
//! negative eigenvalues on the null space, which this iteration amplifies
//! (Z·Y grows there without bound) until it overflows; the loop therefore
//! keeps the iterate with the smallest residual and stops as soon as the
//! residual climbs 100× above that best after reaching `tol`, or turns
//! non-finite, and returns the best. `converged` is false only when `tol`
//! was never reached (then [`crate::metrics::fid`] retries with εI added).

use crate::device::Device;
use crate::error::{Error, Result};
use crate::metrics::linalg::{eye, frobenius, matmul_f64_into};

/// Settings of [`sqrtm_newton_schulz`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NsOptions {
    /// SPEC's stopping residual ‖A − (√A)²‖_F/‖A‖_F.
    pub tol: f64,
    /// SPEC's iteration cap.
    pub max_iter: usize,
    /// After `tol`, iterate until |Δ tr √A| ≤ trace_tol·|tr √A| (0: stop at `tol`, as SPEC).
    pub trace_tol: f64,
}

impl Default for NsOptions {
    fn default() -> Self {
        NsOptions {
            tol: 1e-6,
            max_iter: 100,
            trace_tol: 1e-10,
        }
    }
}

impl NsOptions {
    /// Exactly SPEC's rule: stop at the first residual ≤ 1e-6.
    pub fn spec() -> Self {
        NsOptions {
            trace_tol: 0.0,
            ..Default::default()
        }
    }
}

/// What [`sqrtm_newton_schulz`] returns.
#[derive(Clone, Debug)]
pub struct SqrtmResult {
    /// √A, n×n row-major.
    pub sqrt: Vec<f64>,
    /// tr √A.
    pub trace: f64,
    /// Updates Y ← Y·T made to reach the returned iterate.
    pub iterations: usize,
    /// ‖A − (√A)²‖_F/‖A‖_F of the returned iterate (computed by the iteration).
    pub residual: f64,
    /// Whether the residual reached `tol`.
    pub converged: bool,
}

/// The steps one backend runs; the state is Y, Z, T, A/‖A‖_F and a saved "best" Y.
pub(crate) trait NsBackend {
    /// ‖A‖_F² of the input.
    fn frob_sq(&mut self) -> Result<f64>;
    /// An = A·scale, Y = An, Z = I.
    fn init(&mut self, scale: f64) -> Result<()>;
    /// P = Z·Y, Q = Y·Y, T = (3I − P)/2; returns (‖An − Q‖_F², tr Y).
    fn products(&mut self) -> Result<(f64, f64)>;
    /// Y ← Y·T, Z ← T·Z.
    fn update(&mut self) -> Result<()>;
    /// Remember the current Y.
    fn save_best(&mut self) -> Result<()>;
    /// The current Y, or the remembered one.
    fn y(&mut self, best: bool) -> Result<Vec<f64>>;
}

/// The control loop shared by both backends; returns √A and how it went.
pub(crate) fn newton_schulz(
    b: &mut dyn NsBackend,
    n: usize,
    opts: &NsOptions,
) -> Result<SqrtmResult> {
    let norm = b.frob_sq()?.sqrt();
    if norm == 0.0 {
        return Ok(SqrtmResult {
            sqrt: vec![0.0; n * n],
            trace: 0.0,
            iterations: 0,
            residual: 0.0,
            converged: true,
        });
    }
    if !norm.is_finite() {
        return Err(Error::Argument {
            op: "sqrtm",
            msg: "the matrix has non-finite entries".into(),
        });
    }
    b.init(1.0 / norm)?;
    // (residual, trace of Y, iterations) of the saved best iterate
    let mut best: Option<(f64, f64, usize)> = None;
    let mut trace_prev = f64::NAN;
    let mut done: Option<(f64, f64, usize)> = None; // stop at the current iterate
    for k in 0..=opts.max_iter {
        let (res_sq, tr) = b.products()?;
        let res = res_sq.sqrt();
        if k > 0 {
            if !res.is_finite() || !tr.is_finite() {
                break;
            }
            if best.is_none_or(|(r, _, _)| res < r) {
                best = Some((res, tr, k));
                b.save_best()?;
            }
            if res <= opts.tol
                && (opts.trace_tol == 0.0 || (tr - trace_prev).abs() <= opts.trace_tol * tr.abs())
            {
                done = Some((res, tr, k));
                break;
            }
            if let Some((r, _, _)) = best
                && r <= opts.tol
                && res > 100.0 * r
            {
                break; // rounding on a null space is being amplified: keep the best
            }
            if k == opts.max_iter {
                if res <= opts.tol {
                    done = Some((res, tr, k));
                }
                break;
            }
        }
        trace_prev = tr;
        b.update()?;
    }
    let (y, (residual, tr, iterations)) = match (done, best) {
        (Some(d), _) => (b.y(false)?, d),
        (None, Some(bst)) => (b.y(true)?, bst),
        (None, None) => {
            return Err(Error::Argument {
                op: "sqrtm",
                msg: "Newton–Schulz produced no finite iterate".into(),
            });
        }
    };
    let s = norm.sqrt();
    Ok(SqrtmResult {
        sqrt: y.iter().map(|v| v * s).collect(),
        trace: tr * s,
        iterations,
        residual,
        converged: residual <= opts.tol,
    })
}

/// √A of a square n×n row-major matrix `a` (f64) by Newton–Schulz on `device`.
/// A needs eigenvalues with non-negative real parts (Σ₁Σ₂, a covariance).
pub fn sqrtm_newton_schulz(
    a: &[f64],
    n: usize,
    opts: &NsOptions,
    device: Device,
) -> Result<SqrtmResult> {
    if a.len() != n * n {
        return Err(Error::Shape {
            op: "sqrtm",
            msg: format!("{} values are not a {n}×{n} matrix", a.len()),
        });
    }
    match device {
        Device::Cpu => newton_schulz(&mut CpuNs::new(a.to_vec(), n), n, opts),
        Device::Cuda(d) => {
            let backend = crate::device::cuda::backend(d)?;
            let dev_a = crate::metrics::cuda::upload_f64(&backend, a)?;
            newton_schulz(
                &mut crate::metrics::cuda::CudaNs::new(&backend, dev_a, n)?,
                n,
                opts,
            )
        }
    }
}

/// The CPU backend.
pub(crate) struct CpuNs {
    n: usize,
    a: Vec<f64>,
    y: Vec<f64>,
    z: Vec<f64>,
    t: Vec<f64>,
    p: Vec<f64>,
    q: Vec<f64>,
    scratch: Vec<f64>,
    best: Vec<f64>,
}

impl CpuNs {
    pub(crate) fn new(a: Vec<f64>, n: usize) -> Self {
        let z = || vec![0.0; n * n];
        CpuNs {
            n,
            a,
            y: z(),
            z: z(),
            t: z(),
            p: z(),
            q: z(),
            scratch: z(),
            best: z(),
        }
    }
}

impl NsBackend for CpuNs {
    fn frob_sq(&mut self) -> Result<f64> {
        Ok(frobenius(&self.a).powi(2))
    }

    fn init(&mut self, scale: f64) -> Result<()> {
        self.a.iter_mut().for_each(|v| *v *= scale);
        self.y.copy_from_slice(&self.a);
        self.z = eye(self.n);
        Ok(())
    }

    fn products(&mut self) -> Result<(f64, f64)> {
        let n = self.n;
        matmul_f64_into(&self.z, &self.y, &mut self.p, n, n, n);
        matmul_f64_into(&self.y, &self.y, &mut self.q, n, n, n);
        let (mut res, mut tr) = (0.0, 0.0);
        for e in 0..n * n {
            let diag = e / n == e % n;
            self.t[e] = 0.5 * (if diag { 3.0 } else { 0.0 } - self.p[e]);
            let d = self.a[e] - self.q[e];
            res += d * d;
            if diag {
                tr += self.y[e];
            }
        }
        Ok((res, tr))
    }

    fn update(&mut self) -> Result<()> {
        let n = self.n;
        matmul_f64_into(&self.y, &self.t, &mut self.scratch, n, n, n);
        std::mem::swap(&mut self.y, &mut self.scratch);
        matmul_f64_into(&self.t, &self.z, &mut self.scratch, n, n, n);
        std::mem::swap(&mut self.z, &mut self.scratch);
        Ok(())
    }

    fn save_best(&mut self) -> Result<()> {
        self.best.copy_from_slice(&self.y);
        Ok(())
    }

    fn y(&mut self, best: bool) -> Result<Vec<f64>> {
        Ok(if best {
            self.best.clone()
        } else {
            self.y.clone()
        })
    }
}
