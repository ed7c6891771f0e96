//! add / sub / mul / div with broadcasting and scalars: values and gradient checks.

use minidiffusion::testing::{GradTol, assert_close, grad_check, grad_check_at, randn};
use minidiffusion::{Shape, Tensor, ops};

#[test]
fn broadcast_values() {
    let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap();
    let row = Tensor::from_vec(vec![10.0, 20.0, 30.0], [3]).unwrap();
    let col = Tensor::from_vec(vec![1.0, 2.0], [2, 1]).unwrap();
    assert_eq!(ops::add(&a, &row).unwrap().to_vec(), vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
    assert_eq!(ops::sub(&a, &col).unwrap().to_vec(), vec![0.0, 1.0, 2.0, 2.0, 3.0, 4.0]);
    assert_eq!(ops::mul(&col, &row).unwrap().dims(), &[2, 3]);
    assert_eq!(ops::mul(&col, &row).unwrap().to_vec(), vec![10.0, 20.0, 30.0, 20.0, 40.0, 60.0]);
    assert_eq!(ops::div(&a, &col).unwrap().to_vec(), vec![1.0, 2.0, 3.0, 2.0, 2.5, 3.0]);
    assert_eq!(ops::affine(&a, 2.0, -1.0).unwrap().to_vec(), vec![1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
}

#[test]
fn large_same_shape_path_matches_small_path() {
    let n = 70_000; // above the parallel threshold
    let a = randn(&[n], 1);
    let b = randn(&[n], 2);
    let ta = Tensor::from_vec(a.clone(), [n]).unwrap();
    let tb = Tensor::from_vec(b.clone(), [n]).unwrap();
    type Op = fn(&Tensor, &Tensor) -> minidiffusion::Result<Tensor>;
    let cases: [(&str, Op, fn(f32, f32) -> f32); 4] = [
        ("add", ops::add, |x, y| x + y),
        ("sub", ops::sub, |x, y| x - y),
        ("mul", ops::mul, |x, y| x * y),
        ("div", ops::div, |x, y| x / y),
    ];
    for (name, op, f) in cases {
        let want: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect();
        assert_close(name, &op(&ta, &tb).unwrap().to_vec(), &want, 0.0, 0.0);
    }
}

#[test]
fn incompatible_shapes_are_an_error() {
    let a = Tensor::zeros([2, 3]);
    let b = Tensor::zeros([4]);
    let err = ops::add(&a, &b).unwrap_err().to_string();
    assert!(err.contains("add") && err.contains("[2, 3]") && err.contains("[4]"), "{err}");
}

#[test]
fn add_grad() {
    grad_check("add", &[&[2, 3, 4], &[3, 1]], |x| ops::add(&x[0], &x[1]), GradTol::default());
}

#[test]
fn sub_grad() {
    grad_check("sub", &[&[1, 4], &[3, 1, 4]], |x| ops::sub(&x[0], &x[1]), GradTol::default());
}

#[test]
fn mul_grad() {
    grad_check("mul", &[&[2, 3, 4, 5], &[1, 3, 1, 1]], |x| ops::mul(&x[0], &x[1]), GradTol::default());
    grad_check("mul_scalar_tensor", &[&[5], &[]], |x| ops::mul(&x[0], &x[1]), GradTol::default());
}

#[test]
fn div_grad() {
    // keep the divisor away from zero
    let a = randn(&[3, 4], 3);
    let b: Vec<f32> = randn(&[4], 4).iter().map(|v| v.signum() * (1.0 + v.abs())).collect();
    grad_check_at(
        "div",
        vec![(a, Shape::from([3, 4])), (b, Shape::from([4]))],
        |x| ops::div(&x[0], &x[1]),
        GradTol::default(),
    );
}

#[test]
fn scalar_ops_grad() {
    grad_check("affine", &[&[3, 3]], |x| ops::affine(&x[0], -1.5, 0.25), GradTol::default());
    grad_check("add_scalar", &[&[7]], |x| ops::add_scalar(&x[0], 3.0), GradTol::default());
}
