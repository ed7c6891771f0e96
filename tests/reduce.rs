//! sum / mean over axes, sum_to, broadcast_to: values and gradient checks.

use minidiffusion::testing::{GradTol, grad_check};
use minidiffusion::{Shape, Tensor, ops};

fn t(values: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), dims).unwrap()
}

#[test]
fn sum_and_mean_values() {
    let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    assert_eq!(ops::sum(&x, &[0], false).unwrap().to_vec(), vec![5.0, 7.0, 9.0]);
    let rows = ops::sum(&x, &[1], true).unwrap();
    assert_eq!((rows.dims(), rows.to_vec()), (&[2usize, 1][..], vec![6.0, 15.0]));
    assert_eq!(ops::mean(&x, &[1], false).unwrap().to_vec(), vec![2.0, 5.0]);
    assert_eq!(ops::sum_all(&x).unwrap().item().unwrap(), 21.0);
    assert_eq!(ops::mean_all(&x).unwrap().item().unwrap(), 3.5);
    let x3 = Tensor::ones([2, 3, 4]);
    assert_eq!(ops::sum(&x3, &[0, 2], false).unwrap().to_vec(), vec![8.0; 3]);
}

#[test]
fn sum_is_accurate_over_many_elements() {
    // 2^24 + 1 ones: a plain f32 running sum would stop at 2^24
    let n = (1 << 24) + 4;
    let total = ops::sum_all(&Tensor::ones([n])).unwrap().item().unwrap();
    assert_eq!(total, n as f32);
}

#[test]
fn sum_to_and_broadcast_to_values() {
    let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    assert_eq!(ops::sum_to(&x, &Shape::from([3])).unwrap().to_vec(), vec![5.0, 7.0, 9.0]);
    assert_eq!(ops::sum_to(&x, &Shape::from([2, 1])).unwrap().to_vec(), vec![6.0, 15.0]);
    let b = ops::broadcast_to(&t(&[1.0, 2.0], &[2, 1]), &Shape::from([2, 2])).unwrap();
    assert_eq!(b.to_vec(), vec![1.0, 1.0, 2.0, 2.0]);
    assert!(ops::sum_to(&x, &Shape::from([4])).is_err());
    assert!(ops::sum(&x, &[2], false).is_err());
}

#[test]
fn sum_grad() {
    grad_check("sum_axis1", &[&[2, 3, 4]], |x| ops::sum(&x[0], &[1], false), GradTol::default());
    grad_check("sum_axes02_keepdim", &[&[2, 3, 4]], |x| ops::sum(&x[0], &[0, 2], true), GradTol::default());
    grad_check("sum_all", &[&[3, 5]], |x| ops::sum_all(&x[0]), GradTol::default());
}

#[test]
fn mean_grad() {
    grad_check("mean", &[&[4, 3]], |x| ops::mean(&x[0], &[0], false), GradTol::default());
    grad_check("mean_all", &[&[2, 2, 3]], |x| ops::mean_all(&x[0]), GradTol::default());
}

#[test]
fn broadcast_to_grad() {
    grad_check("broadcast_to", &[&[3, 1]], |x| ops::broadcast_to(&x[0], &Shape::from([2, 3, 4])), GradTol::default());
    grad_check("sum_to", &[&[2, 3, 4]], |x| ops::sum_to(&x[0], &Shape::from([3, 1])), GradTol::default());
}
