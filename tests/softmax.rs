//! Softmax over the last axis: values, stability and gradient check.

use minidiffusion::testing::{GradTol, assert_close, grad_check};
use minidiffusion::{Tensor, ops};

#[test]
fn values_and_rows_sum_to_one() {
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0], [2, 3]).unwrap();
    let y = ops::softmax(&x).unwrap().to_vec();
    let e = [1f32.exp(), 2f32.exp(), 3f32.exp()];
    let s: f32 = e.iter().sum();
    assert_close("softmax", &y, &[e[0] / s, e[1] / s, e[2] / s, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0], 1e-7, 1e-6);
}

#[test]
fn large_logits_do_not_overflow() {
    let x = Tensor::from_vec(vec![1000.0, 1001.0, -1000.0], [3]).unwrap();
    let y = ops::softmax(&x).unwrap().to_vec();
    assert!(y.iter().all(|v| v.is_finite()));
    assert_close("softmax_large", &y, &[0.268_941_43, 0.731_058_6, 0.0], 1e-7, 1e-6);
}

#[test]
fn softmax_grad() {
    grad_check("softmax", &[&[3, 5]], |x| ops::softmax(&x[0]), GradTol::default());
    grad_check("softmax_4d", &[&[2, 2, 3, 4]], |x| ops::softmax(&x[0]), GradTol::default());
}
