//! reshape, permute / transpose, concat, narrow: values and gradient checks.

use minidiffusion::testing::{GradTol, grad_check};
use minidiffusion::{Tensor, ops};

fn iota(dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    Tensor::from_vec((0..n).map(|i| i as f32).collect(), dims).unwrap()
}

#[test]
fn reshape_shares_storage() {
    let x = iota(&[2, 6]);
    let y = ops::reshape(&x, [3, 4]).unwrap();
    assert!(y.same_storage(&x));
    assert_eq!(y.to_vec(), x.to_vec());
    assert!(ops::reshape(&x, [5]).is_err());
}

#[test]
fn permute_values() {
    let x = iota(&[2, 3]);
    assert_eq!(ops::transpose(&x, 0, 1).unwrap().to_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let y = ops::permute(&iota(&[2, 3, 4]), &[2, 0, 1]).unwrap();
    assert_eq!(y.dims(), &[4, 2, 3]);
    // y[k, i, j] = x[i, j, k] = 12i + 4j + k
    assert_eq!(y.to_vec()[1 * 6 + 1 * 3 + 2], (12 + 8 + 1) as f32);
    assert!(ops::permute(&x, &[0, 0]).is_err());
}

#[test]
fn concat_and_narrow_values() {
    let a = iota(&[2, 1, 2]);
    let b = ops::add_scalar(&iota(&[2, 2, 2]), 10.0).unwrap();
    let c = ops::concat(&[&a, &b], 1).unwrap();
    assert_eq!(c.dims(), &[2, 3, 2]);
    assert_eq!(c.to_vec(), vec![0.0, 1.0, 10.0, 11.0, 12.0, 13.0, 2.0, 3.0, 14.0, 15.0, 16.0, 17.0]);
    assert_eq!(ops::narrow(&c, 1, 1, 2).unwrap().to_vec(), b.to_vec());
    assert!(ops::concat(&[&a, &iota(&[3, 1, 2])], 1).is_err());
    assert!(ops::narrow(&c, 1, 2, 2).is_err());
}

/// Past the parallel threshold (rows copied on the rayon threads): concat
/// along channels and along the batch, and narrow, against index arithmetic.
#[test]
fn large_concat_and_narrow_match_the_indices() {
    let (a, b) = (iota(&[3, 5, 40, 50]), ops::add_scalar(&iota(&[3, 2, 40, 50]), 1e6).unwrap());
    let (av, bv) = (a.to_vec(), b.to_vec());
    let c = ops::concat(&[&a, &b], 1).unwrap();
    assert_eq!(c.dims(), &[3, 7, 40, 50]);
    let plane = 40 * 50;
    let want: Vec<f32> =
        (0..3 * 7 * plane).map(|i| (i / (7 * plane), i / plane % 7, i % plane)).map(|(n, ch, q)| if ch < 5 { av[(n * 5 + ch) * plane + q] } else { bv[(n * 2 + ch - 5) * plane + q] }).collect();
    assert_eq!(c.to_vec(), want);
    assert_eq!(ops::narrow(&c, 1, 5, 2).unwrap().to_vec(), bv);
    assert_eq!(ops::narrow(&c, 1, 0, 5).unwrap().to_vec(), av);
    let batch = ops::concat(&[&a, &a], 0).unwrap();
    assert_eq!(batch.to_vec(), [av.clone(), av.clone()].concat());
    assert_eq!(ops::narrow(&batch, 0, 3, 3).unwrap().to_vec(), av);
}

#[test]
fn reshape_grad() {
    grad_check("reshape", &[&[2, 6]], |x| ops::reshape(&x[0], [4, 3]), GradTol::default());
}

#[test]
fn permute_grad() {
    grad_check("permute", &[&[2, 3, 4]], |x| ops::permute(&x[0], &[1, 2, 0]), GradTol::default());
    grad_check("transpose", &[&[3, 5]], |x| ops::transpose(&x[0], 0, 1), GradTol::default());
}

#[test]
fn concat_grad() {
    grad_check("concat_channels", &[&[2, 3, 2, 2], &[2, 1, 2, 2]], |x| ops::concat(&[&x[0], &x[1]], 1), GradTol::default());
    grad_check("concat_last", &[&[2, 3], &[2, 2], &[2, 1]], |x| ops::concat(&[&x[0], &x[1], &x[2]], 1), GradTol::default());
}

#[test]
fn narrow_grad() {
    grad_check("narrow", &[&[2, 5, 3]], |x| ops::narrow(&x[0], 1, 1, 3), GradTol::default());
}
