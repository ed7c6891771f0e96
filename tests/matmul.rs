//! matmul (batched, broadcast, transposed operands) and linear: values and gradient checks.

use minidiffusion::ops::matmul_t;
use minidiffusion::testing::{GradTol, assert_close, grad_check, randn};
use minidiffusion::{Tensor, ops};

/// Naive reference: c[b] = a[b] · b[b] for row-major [batch, m, k] · [batch, k, n].
fn naive(a: &[f32], b: &[f32], batch: usize, m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; batch * m * n];
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for l in 0..k {
                    s += a[bi * m * k + i * k + l] as f64 * b[bi * k * n + l * n + j] as f64;
                }
                c[bi * m * n + i * n + j] = s as f32;
            }
        }
    }
    c
}

#[test]
fn hand_computed_2x2() {
    let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [2, 2]).unwrap();
    let b = Tensor::from_vec(vec![5.0, 6.0, 7.0, 8.0], [2, 2]).unwrap();
    assert_eq!(ops::matmul(&a, &b).unwrap().to_vec(), vec![19.0, 22.0, 43.0, 50.0]);
    assert_eq!(matmul_t(&a, true, &b, false).unwrap().to_vec(), vec![26.0, 30.0, 38.0, 44.0]);
    assert_eq!(matmul_t(&a, false, &b, true).unwrap().to_vec(), vec![17.0, 23.0, 39.0, 53.0]);
}

#[test]
fn matches_naive_on_odd_and_large_shapes() {
    for &(batch, m, k, n) in &[(1, 1, 1, 1), (3, 5, 7, 2), (2, 33, 17, 65), (1, 200, 300, 150)] {
        let a = randn(&[batch, m, k], 1);
        let b = randn(&[batch, k, n], 2);
        let got = ops::matmul(&Tensor::from_vec(a.clone(), [batch, m, k]).unwrap(), &Tensor::from_vec(b.clone(), [batch, k, n]).unwrap()).unwrap();
        // f32 products summed by gemm's blocked order vs f64: relative 1e-4 plus k-scaled absolute slack
        assert_close("matmul", &got.to_vec(), &naive(&a, &b, batch, m, k, n), 1e-5 * k as f32, 1e-4);
    }
}

#[test]
fn batch_broadcast() {
    let a = randn(&[4, 3, 5], 3);
    let w = randn(&[5, 2], 4);
    let got = ops::matmul(&Tensor::from_vec(a.clone(), [4, 3, 5]).unwrap(), &Tensor::from_vec(w.clone(), [5, 2]).unwrap()).unwrap();
    assert_eq!(got.dims(), &[4, 3, 2]);
    let tiled: Vec<f32> = (0..4).flat_map(|_| w.clone()).collect();
    assert_close("matmul_broadcast", &got.to_vec(), &naive(&a, &tiled, 4, 3, 5, 2), 1e-5, 1e-5);
    assert!(ops::matmul(&Tensor::zeros([2, 3]), &Tensor::zeros([4, 2])).is_err());
}

#[test]
fn linear_values() {
    // y = x·wᵀ + b
    let x = Tensor::from_vec(vec![1.0, 2.0], [1, 2]).unwrap();
    let w = Tensor::from_vec(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [3, 2]).unwrap();
    let b = Tensor::from_vec(vec![0.5, -0.5, 0.0], [3]).unwrap();
    assert_eq!(ops::linear(&x, &w, Some(&b)).unwrap().to_vec(), vec![1.5, 1.5, 3.0]);
    assert!(ops::linear(&Tensor::zeros([1, 3]), &w, None).is_err());
}

#[test]
fn matmul_grad() {
    grad_check("matmul", &[&[3, 4], &[4, 5]], |x| ops::matmul(&x[0], &x[1]), GradTol::default());
    grad_check("matmul_batched", &[&[2, 3, 4], &[2, 4, 2]], |x| ops::matmul(&x[0], &x[1]), GradTol::default());
    grad_check("matmul_broadcast", &[&[2, 2, 3, 4], &[4, 2]], |x| ops::matmul(&x[0], &x[1]), GradTol::default());
}

#[test]
fn matmul_transposed_grad() {
    for (ta, tb) in [(true, false), (false, true), (true, true)] {
        let sa: &[usize] = if ta { &[2, 4, 3] } else { &[2, 3, 4] };
        let sb: &[usize] = if tb { &[2, 5, 4] } else { &[2, 4, 5] };
        grad_check("matmul_t", &[sa, sb], |x| matmul_t(&x[0], ta, &x[1], tb), GradTol::default());
    }
}

#[test]
fn linear_grad() {
    grad_check("linear", &[&[2, 3, 4], &[5, 4], &[5]], |x| ops::linear(&x[0], &x[1], Some(&x[2])), GradTol::default());
}
