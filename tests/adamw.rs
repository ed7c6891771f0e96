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
