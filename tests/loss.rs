//! MSE and cross-entropy: values and gradient checks.

use minidiffusion::testing::{GradTol, assert_close, grad_check, grad_check_at, randn};
use minidiffusion::{Shape, Tensor, ops};

#[test]
fn mse_values() {
    let p = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [2, 2]).unwrap();
    let t = Tensor::from_vec(vec![1.0, 0.0, 3.0, 1.0], [2, 2]).unwrap();
    assert_eq!(ops::mse_loss(&p, &t).unwrap().item().unwrap(), (4.0 + 9.0) / 4.0);
    assert!(ops::mse_loss(&p, &Tensor::zeros([4])).is_err());
}

#[test]
fn cross_entropy_values() {
    // uniform logits: loss = ln K
    let z = Tensor::zeros([3, 4]);
    assert_close("ce_uniform", &[ops::cross_entropy(&z, &[0, 1, 3]).unwrap().item().unwrap()], &[4f32.ln()], 1e-6, 0.0);
    // one row, by hand: logsumexp([1, 2, 3]) − 3
    let z = Tensor::from_vec(vec![1.0, 2.0, 3.0], [1, 3]).unwrap();
    let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    assert_close("ce_hand", &[ops::cross_entropy(&z, &[2]).unwrap().item().unwrap()], &[(lse - 3.0) as f32], 1e-6, 0.0);
    // huge logits stay finite
    let z = Tensor::from_vec(vec![1000.0, -1000.0], [1, 2]).unwrap();
    assert_eq!(ops::cross_entropy(&z, &[0]).unwrap().item().unwrap(), 0.0);
    assert!(ops::cross_entropy(&Tensor::zeros([2, 3]), &[0, 3]).is_err());
    assert!(ops::cross_entropy(&Tensor::zeros([2, 3]), &[0]).is_err());
}

#[test]
fn mse_loss_grad() {
    grad_check("mse_loss", &[&[2, 3, 4], &[2, 3, 4]], |x| ops::mse_loss(&x[0], &x[1]), GradTol::default());
}

#[test]
fn cross_entropy_grad() {
    let logits = randn(&[5, 4], 9).iter().map(|v| 2.0 * v).collect();
    grad_check_at(
        "cross_entropy",
        vec![(logits, Shape::from([5, 4]))],
        |x| ops::cross_entropy(&x[0], &[0, 3, 1, 1, 2]),
        GradTol::default(),
    );
}
