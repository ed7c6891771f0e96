//! AdamW on tensors: agrees with the slice update, skips parameters without
//! gradients, follows a one-cycle schedule, and minimises a quadratic.

use minidiffusion::optim::adamw_math::adamw_step;
use minidiffusion::optim::{AdamW, AdamWHyper, OneCycle};
use minidiffusion::{Tensor, backward, ops};

#[test]
fn tensor_step_equals_slice_step() {
    let w = Tensor::from_vec(vec![0.5, -1.0, 2.0], [3]).unwrap().requires_grad_();
    let hyper = AdamW::lesson_defaults(1e-2);
    let mut opt = AdamW::new(vec![w.clone()], hyper).unwrap();
    let (mut p, mut m, mut v) = (vec![0.5f32, -1.0, 2.0], vec![0.0; 3], vec![0.0; 3]);
    for t in 1..=3 {
        // L = Σ w² → g = 2w
        let loss = ops::sum_all(&ops::mul(&w, &w).unwrap()).unwrap();
        let grads = backward(&loss).unwrap();
        let g: Vec<f32> = p.iter().map(|x| 2.0 * x).collect();
        adamw_step(&mut p, &g, &mut m, &mut v, t, hyper);
        opt.step(&grads).unwrap();
        assert_eq!(w.to_vec(), p, "step {t}");
    }
}

#[test]
fn parameters_without_gradients_are_untouched() {
    let used = Tensor::from_vec(vec![1.0], [1]).unwrap().requires_grad_();
    let unused = Tensor::from_vec(vec![3.0], [1]).unwrap().requires_grad_();
    let mut opt = AdamW::new(vec![used.clone(), unused.clone()], AdamW::lesson_defaults(0.1)).unwrap();
    let grads = backward(&ops::sum_all(&used).unwrap()).unwrap();
    opt.step(&grads).unwrap();
    assert_eq!(unused.to_vec(), vec![3.0]);
    assert!(used.to_vec()[0] < 1.0);
    assert_eq!(opt.state().2, &[1, 0]);
}

#[test]
fn one_cycle_drives_a_quadratic_to_its_minimum() {
    // minimise Σ (w − target)²
    let target = Tensor::from_vec(vec![1.0, -2.0, 0.5, 3.0], [4]).unwrap();
    let w = Tensor::zeros([4]).requires_grad_();
    let total = 300;
    let sched = OneCycle::new(0.1, total);
    let mut opt = AdamW::new(vec![w.clone()], AdamWHyper { weight_decay: 0.0, ..AdamW::lesson_defaults(0.1) }).unwrap();
    for step in 0..total {
        opt.hyper.lr = sched.lr(step) as f32;
        opt.hyper.beta1 = sched.beta1(step) as f32;
        let d = ops::sub(&w, &target).unwrap();
        let grads = backward(&ops::sum_all(&ops::mul(&d, &d).unwrap()).unwrap()).unwrap();
        opt.step(&grads).unwrap();
    }
    for (got, want) in w.to_vec().iter().zip(target.to_vec()) {
        assert!((got - want).abs() < 1e-2, "{got} vs {want}");
    }
}

#[test]
fn a_parameter_listed_twice_is_refused() {
    let w = Tensor::from_vec(vec![0.5, -1.0], [2]).unwrap().requires_grad_();
    let b = Tensor::from_vec(vec![1.0], [1]).unwrap().requires_grad_();
    let err = AdamW::new(vec![w.clone(), b, w], AdamW::lesson_defaults(1e-2)).err().expect("a duplicate parameter");
    assert_eq!(err.to_string(), "adamw: a parameter appears more than once");
}

/// `max_grad_norm` as PyTorch's clip_grad_norm_ before the step: the
/// gradients times min(1, max / (‖g‖ + 1e-6)), ‖g‖ over all parameters. The
/// same bits as the step on gradients scaled by hand; a norm under the bar
/// leaves the step as it was.
#[test]
fn clipping_scales_the_gradients_to_the_global_norm() {
    let consts = [vec![3.0f32, -4.0, 1.5], vec![12.0f32, -0.5]];
    // in f64, then f32, as the step sums
    let norm_times = |s: f32| (consts.iter().flatten().map(|&c| (c * s) as f64 * (c * s) as f64).sum::<f64>()).sqrt() as f32;
    let norm = norm_times(1.0);
    let fresh = || {
        let ws: Vec<Tensor> = [vec![0.5f32, -1.0, 2.0], vec![0.25, 4.0]].into_iter().map(|v| Tensor::from_vec(v.clone(), [v.len()]).unwrap().requires_grad_()).collect();
        let opt = AdamW::new(ws.clone(), AdamW::lesson_defaults(1e-2)).unwrap();
        (ws, opt)
    };
    // L = Σ_k Σ c_k·w_k·s: the gradients are s·c exactly
    let grads_of = |ws: &[Tensor], s: f32| {
        let terms: Vec<Tensor> = ws
            .iter()
            .zip(&consts)
            .map(|(w, c)| ops::sum_all(&ops::mul(w, &Tensor::from_vec(c.iter().map(|v| v * s).collect(), [c.len()]).unwrap()).unwrap()).unwrap())
            .collect();
        backward(&ops::add(&terms[0], &terms[1]).unwrap()).unwrap()
    };
    let max = norm / 4.0;
    let factor = max / (norm + 1e-6);
    let (clipped_ws, mut clipped) = fresh();
    clipped.max_grad_norm = Some(max);
    let (by_hand_ws, mut by_hand) = fresh();
    let (loose_ws, mut loose) = fresh();
    loose.max_grad_norm = Some(norm * 2.0);
    let (plain_ws, mut plain) = fresh();
    for step in 1..=3 {
        // step 2's gradients are 3× larger: the clip takes them down to the same norm
        let s = if step == 2 { 3.0 } else { 1.0 };
        let (n, f) = clipped.step(&grads_of(&clipped_ws, s)).unwrap().wait().unwrap();
        let step_factor = max / (norm_times(s) + 1e-6);
        assert_eq!((n, f), (norm_times(s), step_factor), "step {step}");
        if step != 2 {
            assert_eq!(f, factor);
        }
        // the gradients scaled by hand: s·c·f, as the clip multiplies each gradient by f in f32
        let hand = {
            let terms: Vec<Tensor> = by_hand_ws
                .iter()
                .zip(&consts)
                .map(|(w, c)| {
                    let g: Vec<f32> = c.iter().map(|v| (v * s) * step_factor).collect();
                    ops::sum_all(&ops::mul(w, &Tensor::from_vec(g, [c.len()]).unwrap()).unwrap()).unwrap()
                })
                .collect();
            backward(&ops::add(&terms[0], &terms[1]).unwrap()).unwrap()
        };
        assert_eq!(by_hand.step(&hand).unwrap().wait().unwrap().1, 1.0);
        let (ln, lf) = loose.step(&grads_of(&loose_ws, s)).unwrap().wait().unwrap();
        assert_eq!(lf, if step == 2 { (norm * 2.0) / (norm_times(3.0) + 1e-6) } else { 1.0 }, "step {step}: {ln}");
        plain.step(&grads_of(&plain_ws, s)).unwrap();
        for (a, b) in clipped_ws.iter().zip(&by_hand_ws) {
            assert_eq!(a.to_vec(), b.to_vec(), "step {step}");
        }
        if step == 1 {
            for (a, b) in loose_ws.iter().zip(&plain_ws) {
                assert_eq!(a.to_vec(), b.to_vec(), "a norm under the bar leaves the step as it was");
            }
        }
    }
    // and it changes the step: AdamW is not scale-invariant across steps of different sizes
    assert_ne!(clipped_ws[0].to_vec(), plain_ws[0].to_vec());
}
