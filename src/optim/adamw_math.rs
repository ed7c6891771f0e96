//! The AdamW update on plain `f32` slices, bit-for-bit in the operation order of
//! PyTorch's `torch.optim.AdamW` single-tensor path on CPU.
//!
//! Matched code: `torch/optim/adamw.py::_single_tensor_adamw` (non-capturable,
//! non-differentiable branch; in torch >= 2.6 the identical code is
//! `torch/optim/adam.py::_single_tensor_adam` with `decoupled_weight_decay=True`):
//!
//! ```text
//! step_t += 1
//! param.mul_(1 - lr * weight_decay)
//! exp_avg.lerp_(grad, 1 - beta1)
//! exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
//! bias_correction1 = 1 - beta1 ** step
//! bias_correction2 = 1 - beta2 ** step
//! step_size = lr / bias_correction1
//! bias_correction2_sqrt = _dispatch_sqrt(bias_correction2)      # math.sqrt
//! denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
//! param.addcdiv_(exp_avg, denom, value=-step_size)
//! ```
//!
//! Scalars are Python floats there, so every scalar factor is computed in f64
//! here; the ATen CPU kernels then cast each scalar to the tensor's f32 and do
//! the element math in f32 (`Lerp.h::lerp`, `addcmul`: `self + value*t1*t2`,
//! `addcdiv`: `self + value*t1/t2`). Per element, with `w = f32(1 - b1)`:
//!
//! ```text
//! p = p * f32(1 - lr*wd)
//! m = m + w*(g - m)              if |w| < 0.5   (else m = g - (g - m)*(1 - w))
//! v = v*f32(b2) + (f32(1 - b2)*g)*g
//! d = sqrt(v) / f32(sqrt(1 - b2^t)) + f32(eps)
//! p = p + (f32(-lr/(1 - b1^t)) * m) / d
//! ```
//!
//! Mathematically this is `p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g²;
//! p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)`. Rust never contracts to FMA, so
//! results equal PyTorch's scalar kernel path exactly; PyTorch's AVX2/AVX-512
//! vector path computes the `lerp` with a fused multiply-add, which can differ
//! from this by 1 ulp in `m`.
//!
//! The hyper-parameters arrive as `f32` and are widened with `as f64`, i.e. this
//! equals PyTorch called with those f32-representable values (e.g.
//! `lr=float(np.float32(1e-2))`); versus the decimal `1e-2` the difference is a
//! few 1e-7 relative at most on typical steps.

/// AdamW hyper-parameters for one step (lr may come from a schedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// One AdamW step on one parameter tensor, exactly as torch.optim.AdamW (foreach=False, amsgrad=False, maximize=False):
///   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
///   bc1 = 1 - b1^t;  bc2 = 1 - b2^t;  p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
/// `t` is the 1-based step count. Compute the scalar factors in f64 and the per-element math in f32 as PyTorch does.
///
/// See the module docs for the exact f32 operation order matched (`m` via
/// `lerp`, `v` via `mul_` + `addcmul_`, update via `addcdiv_`).
///
/// # Panics
/// If `grads`, `m` or `v` do not have the same length as `params`.
pub fn adamw_step(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    t: u64,
    h: AdamWHyper,
) {
    let n = params.len();
    assert_eq!(grads.len(), n, "adamw_step: grads length mismatch");
    assert_eq!(m.len(), n, "adamw_step: exp_avg length mismatch");
    assert_eq!(v.len(), n, "adamw_step: exp_avg_sq length mismatch");

    // Scalar factors in f64 (Python floats in PyTorch).
    let lr = h.lr as f64;
    let beta1 = h.beta1 as f64;
    let beta2 = h.beta2 as f64;
    let step = t as f64; // PyTorch: `_get_value(step_t)`, a float
    let decay = (1.0 - lr * h.weight_decay as f64) as f32;
    let weight = (1.0 - beta1) as f32; // lerp weight
    let b2 = h.beta2; // == f32(beta2 as f64)
    let c2 = (1.0 - beta2) as f32; // addcmul value
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let step_size = lr / bias_correction1;
    let bc2_sqrt = bias_correction2.sqrt() as f32;
    let neg_step_size = (-step_size) as f32; // addcdiv value
    let eps = h.eps;

    let (params, grads, m, v) = (&mut params[..n], &grads[..n], &mut m[..n], &mut v[..n]);
    let f = StepFactors { decay, weight, b2, c2, bc2_sqrt, neg_step_size, eps };
    // elementwise: chunks on the rayon threads give the same bits
    if n >= PARALLEL_MIN {
        use rayon::prelude::*;
        params.par_chunks_mut(CHUNK).zip(grads.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).for_each(|(((p, g), m), v)| update(p, g, m, v, f));
    } else {
        update(params, grads, m, v, f);
    }
}

/// Parameters from this many values update on the rayon threads, CHUNK at a time.
const PARALLEL_MIN: usize = 1 << 15;
const CHUNK: usize = 1 << 14;

/// One step's f32 factors (see [`adamw_step`]).
#[derive(Clone, Copy)]
pub struct StepFactors {
    decay: f32,
    weight: f32,
    b2: f32,
    c2: f32,
    bc2_sqrt: f32,
    neg_step_size: f32,
    eps: f32,
}

crate::ops::fast_math::dispatch! {
    /// The update of [`adamw_step`] on one run of values, compiled for the
    /// widest vectors the CPU has (multiplies, adds, divisions and square
    /// roots, each rounded as IEEE says: the same bits at every width).
    pub fn update(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], f: StepFactors) => update_plain
}

#[inline(always)]
fn update_plain(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], f: StepFactors) {
    // lerp(m, g, weight) as ATen computes it, from the nearer end (Lerp.h
    // `is_lerp_weight_small`): the branch hoisted out of the loop so each
    // loop body is branch-free and vectorisable
    let weight = f.weight;
    if weight.abs() < 0.5 {
        update_with(params, grads, m, v, f, |m, g| m + weight * (g - m));
    } else {
        let one_minus_weight = 1.0f32 - weight;
        update_with(params, grads, m, v, f, |m, g| g - (g - m) * one_minus_weight);
    }
}

#[inline(always)]
fn update_with(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], f: StepFactors, lerp: impl Fn(f32, f32) -> f32) {
    let StepFactors { decay, b2, c2, bc2_sqrt, neg_step_size, eps, .. } = f;
    for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m.iter_mut()).zip(v.iter_mut()) {
        let pd = *p * decay;
        let mi = lerp(*m, g);
        let vi = *v * b2 + (c2 * g) * g;
        let denom = vi.sqrt() / bc2_sqrt + eps;
        *p = pd + (neg_step_size * mi) / denom;
        *m = mi;
        *v = vi;
    }
}
