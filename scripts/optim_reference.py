#!/usr/bin/env python3
"""Reference values for tests/optim_math.rs (pure Python, no torch, no numpy).

This script mirrors PyTorch's own code, line for line, so the Rust port in
src/optim/{one_cycle,adamw_math}.rs can be checked against literal numbers:

* torch/optim/lr_scheduler.py, ``OneCycleLR.__init__`` (``_schedule_phases``
  for ``three_phase=False``, ``initial_lr``/``min_lr``) and ``OneCycleLR.get_lr``
  together with ``OneCycleLR._annealing_cos``.  ``lr(step)`` is the value
  ``get_last_lr()[0]`` (and ``betas[0]``) has after ``step`` calls to
  ``scheduler.step()``, i.e. ``last_epoch == step``.

* torch/optim/adamw.py, ``_single_tensor_adamw`` (the path taken with
  ``foreach=False, capturable=False, differentiable=False, amsgrad=False,
  maximize=False``; in torch >= 2.6 the same code lives in
  torch/optim/adam.py ``_single_tensor_adam`` with
  ``decoupled_weight_decay=True``), plus the per-element float32 arithmetic of
  the ATen CPU kernels it calls:
      param.mul_(1 - lr*wd)                       p = p * f32(1 - lr*wd)
      exp_avg.lerp_(grad, 1 - beta1)              m = m + w*(g - m)     (|w| <  0.5)
                                                  m = g - (g - m)*(1-w) (|w| >= 0.5)
                                                  with w = f32(1 - beta1)  [ATen/native/Lerp.h]
      exp_avg_sq.mul_(beta2)                      v = v * f32(beta2)
        .addcmul_(grad, grad, value=1-beta2)      v = v + (f32(1-beta2)*g)*g
      bias_correction1 = 1 - beta1 ** step        (Python float = f64)
      bias_correction2 = 1 - beta2 ** step        (f64)
      step_size = lr / bias_correction1           (f64)
      bias_correction2_sqrt = sqrt(bc2)           (f64, _dispatch_sqrt -> math.sqrt)
      denom = (exp_avg_sq.sqrt() / bc2_sqrt)      d = sqrt(v) / f32(bc2_sqrt)
                .add_(eps)                        d = d + f32(eps)
      param.addcdiv_(exp_avg, denom,              p = p + (f32(-step_size)*m)/d
                     value=-step_size)
  Every float32 operation is emulated by computing in f64 and rounding to f32
  (exact for + - * / sqrt, because 53 >= 2*24 + 2), so the numbers below are
  bit-exact IEEE float32 results of that operation order.

The hyper-parameters are first rounded to float32, because the Rust API
(``AdamWHyper``) receives f32 values and widens them to f64; this equals
calling ``torch.optim.AdamW(lr=float(np.float32(1e-2)), ...)``.  The script
also prints how far the result moves if the exact decimal Python floats were
used instead (far below the tests' 1e-6 relative tolerance).

Run:  python3 scripts/optim_reference.py
"""
import math
import struct


def f32(x):
    """Round a Python float to the nearest IEEE float32 (returned as float)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


# --------------------------------------------------------------------------
# OneCycleLR (three_phase=False, anneal_strategy='cos', cycle_momentum=True)
# --------------------------------------------------------------------------
def annealing_cos(start, end, pct):
    # OneCycleLR._annealing_cos
    cos_out = math.cos(math.pi * pct) + 1
    return end + (start - end) / 2.0 * cos_out


def one_cycle(max_lr, total_steps, step, pct_start=0.3, div_factor=25.0,
              final_div_factor=1e4, base_momentum=0.85, max_momentum=0.95):
    """(lr, beta1) exactly as OneCycleLR.get_lr computes them at last_epoch=step."""
    initial_lr = max_lr / div_factor
    min_lr = initial_lr / final_div_factor
    phases = [
        dict(end_step=float(pct_start * total_steps) - 1,
             start_lr=initial_lr, end_lr=max_lr,
             start_momentum=max_momentum, end_momentum=base_momentum),
        dict(end_step=total_steps - 1,
             start_lr=max_lr, end_lr=min_lr,
             start_momentum=base_momentum, end_momentum=max_momentum),
    ]
    step_num = step
    if step_num > total_steps:
        raise ValueError("torch raises here")
    start_step = 0.0
    for i, phase in enumerate(phases):
        end_step = phase["end_step"]
        if step_num <= end_step or i == len(phases) - 1:
            pct = (step_num - start_step) / (end_step - start_step)
            lr = annealing_cos(phase["start_lr"], phase["end_lr"], pct)
            mom = annealing_cos(phase["start_momentum"], phase["end_momentum"], pct)
            return lr, mom
        start_step = phase["end_step"]


# --------------------------------------------------------------------------
# AdamW, _single_tensor_adamw with float32 tensors on CPU
# --------------------------------------------------------------------------
def adamw_step(p, g, m, v, t, lr, beta1, beta2, eps, wd):
    """One step on lists of float32 values (modified in place). t is 1-based."""
    decay = f32(1 - lr * wd)
    w = f32(1 - beta1)
    one_minus_w = f32(1.0 - w)
    b2 = f32(beta2)
    c2 = f32(1 - beta2)
    bias_correction1 = 1 - beta1 ** float(t)
    bias_correction2 = 1 - beta2 ** float(t)
    step_size = lr / bias_correction1
    bc2_sqrt = math.sqrt(bias_correction2)
    neg_step = f32(-step_size)
    bc2s = f32(bc2_sqrt)
    epsf = f32(eps)
    for i in range(len(p)):
        pi = f32(p[i] * decay)
        gi = g[i]
        if abs(w) < 0.5:
            mi = f32(m[i] + f32(w * f32(gi - m[i])))
        else:
            mi = f32(gi - f32(f32(gi - m[i]) * one_minus_w))
        vi = f32(f32(v[i] * b2) + f32(f32(c2 * gi) * gi))
        d = f32(f32(f32(math.sqrt(vi)) / bc2s) + epsf)
        pi = f32(pi + f32(f32(neg_step * mi) / d))
        p[i], m[i], v[i] = pi, mi, vi


def fmt(x):
    return repr(x)


def main():
    print("# OneCycle(max_lr=1e-2, total_steps=100): step, lr, beta1")
    for s in [0, 1, 15, 29, 30, 50, 99]:
        lr, mom = one_cycle(1e-2, 100, s)
        print(f"({s}, {fmt(lr)}, {fmt(mom)}),")
    print("# OneCycle(max_lr=3e-4, total_steps=7): step, lr, beta1")
    for s in range(7):
        lr, mom = one_cycle(3e-4, 7, s)
        print(f"({s}, {fmt(lr)}, {fmt(mom)}),")
    print("# OneCycle(max_lr=1e-3, total_steps=3): step, lr, beta1")
    for s in range(3):
        lr, mom = one_cycle(1e-3, 3, s)
        print(f"({s}, {fmt(lr)}, {fmt(mom)}),")

    P0 = [0.5, -1.25, 2.0, 0.0, -0.75, 3.5]
    GRADS = [
        [0.1, -0.2, 0.3, 1e-3, -4.0, 0.0],
        [-0.05, 0.4, 0.25, -2e-3, 3.0, 0.5],
        [0.2, 0.1, -0.6, 1e-4, -1.0, -0.5],
    ]
    hyper_f32 = dict(lr=f32(1e-2), beta1=f32(0.9), beta2=f32(0.999), eps=f32(1e-5), wd=f32(0.01))
    hyper_dec = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-5, wd=0.01)
    res = {}
    for name, hy in [("f32", hyper_f32), ("dec", hyper_dec)]:
        p = [f32(x) for x in P0]
        m = [0.0] * len(p)
        v = [0.0] * len(p)
        out = []
        for t, g in enumerate(GRADS, start=1):
            adamw_step(p, [f32(x) for x in g], m, v, t, **hy)
            out.append((list(p), list(m), list(v)))
        res[name] = out
    print("# AdamW lr=1e-2 betas=(0.9,0.999) eps=1e-5 wd=0.01 (hypers rounded to f32)")
    for t, (p, m, v) in enumerate(res["f32"], start=1):
        print(f"# after step {t}: params, m, v")
        print("[" + ", ".join(fmt(x) for x in p) + "],")
        print("[" + ", ".join(fmt(x) for x in m) + "],")
        print("[" + ", ".join(fmt(x) for x in v) + "],")
    worst = 0.0
    for (pa, _, _), (pb, _, _) in zip(res["f32"], res["dec"]):
        for a, b in zip(pa, pb):
            if a != b:
                worst = max(worst, abs(a - b) / max(abs(b), 1e-30))
    print(f"# max rel diff of params vs exact-decimal hypers: {worst:.3e}")


if __name__ == "__main__":
    main()
