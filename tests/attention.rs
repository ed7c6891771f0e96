//! Scaled dot-product attention: against a composition of matmul + softmax, and gradient checks.

use minidiffusion::ops::matmul_t;
use minidiffusion::testing::{GradTol, assert_close, grad_check, randn};
use minidiffusion::{Tensor, ops};

fn tensor(dims: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(randn(dims, seed), dims).unwrap()
}

#[test]
fn matches_matmul_softmax_composition() {
    // B=2, heads=3, L=7 pixels, D=4; Lk may differ from Lq
    let (q, k, v) = (tensor(&[2, 3, 7, 4], 1), tensor(&[2, 3, 5, 4], 2), tensor(&[2, 3, 5, 6], 3));
    let scale = 1.0 / 2.0;
    let got = ops::attention(&q, &k, &v, scale).unwrap();
    assert_eq!(got.dims(), &[2, 3, 7, 6]);
    let scores = ops::mul_scalar(&matmul_t(&q, false, &k, true).unwrap(), scale).unwrap();
    let want = ops::matmul(&ops::softmax(&scores).unwrap(), &v).unwrap();
    assert_close("attention", &got.to_vec(), &want.to_vec(), 1e-5, 1e-5);
}

#[test]
fn uniform_keys_average_values() {
    // all scores equal → output is the mean of the values
    let q = Tensor::ones([1, 2, 3]);
    let k = Tensor::zeros([1, 4, 3]);
    let v = Tensor::from_vec((0..8).map(|i| i as f32).collect(), [1, 4, 2]).unwrap();
    let o = ops::attention(&q, &k, &v, 1.0).unwrap().to_vec();
    assert_close("attention_uniform", &o, &[3.0, 4.0, 3.0, 4.0], 1e-6, 0.0);
}

#[test]
fn shape_errors() {
    assert!(ops::attention(&Tensor::zeros([1, 2, 3]), &Tensor::zeros([1, 2, 4]), &Tensor::zeros([1, 2, 3]), 1.0).is_err());
    assert!(ops::attention(&Tensor::zeros([1, 2, 3]), &Tensor::zeros([2, 2, 3]), &Tensor::zeros([2, 2, 3]), 1.0).is_err());
}

#[test]
fn attention_grad() {
    grad_check(
        "attention",
        &[&[2, 2, 5, 4], &[2, 2, 6, 4], &[2, 2, 6, 3]],
        |x| ops::attention(&x[0], &x[1], &x[2], 0.5),
        GradTol::default(),
    );
}

#[test]
fn columns_layout_is_attention_of_the_transposes() {
    // q [B, H, D, Lq], k [B, H, D, Lk], v [B, H, Dv, Lk] → o [B, H, Dv, Lq]
    let (q, k, v) = (tensor(&[2, 3, 4, 5], 21), tensor(&[2, 3, 4, 6], 22), tensor(&[2, 3, 3, 6], 23));
    let t = |x: &Tensor| ops::transpose(x, 2, 3).unwrap();
    let want = t(&ops::attention(&t(&q), &t(&k), &t(&v), 0.6).unwrap());
    let got = ops::attention_columns(&q, &k, &v, 0.6).unwrap();
    assert_eq!(got.dims(), &[2, 3, 3, 5]);
    assert_close("attention_columns", &got.to_vec(), &want.to_vec(), 1e-6, 1e-5);
    // Lk of k and v must agree along their last dim now
    assert!(ops::attention_columns(&q, &k, &tensor(&[2, 3, 3, 5], 24), 1.0).is_err());
}

#[test]
fn attention_columns_grad() {
    grad_check(
        "attention_columns",
        &[&[2, 2, 4, 5], &[2, 2, 4, 6], &[2, 2, 3, 6]],
        |x| ops::attention_columns(&x[0], &x[1], &x[2], 0.5),
        GradTol::default(),
    );
}

#[test]
fn inference_without_saved_probabilities_gives_the_same_output() {
    // under no_grad the CPU op keeps nothing for backward (columns: 16
    // queries in the vector lanes; rows: O's rows divided by the softmax sums
    // instead of P's): the same values to rounding, in both layouts
    let (q, k, v) = (tensor(&[3, 2, 4, 9], 31), tensor(&[3, 2, 4, 7], 32), tensor(&[3, 2, 5, 7], 33));
    let with_tape = ops::attention_columns(&q.detach().requires_grad_(), &k, &v, 0.4).unwrap().to_vec();
    let inference = minidiffusion::no_grad(|| ops::attention_columns(&q, &k, &v, 0.4)).unwrap().to_vec();
    assert_close("attention_columns no_grad", &inference, &with_tape, 1e-6, 1e-6);
    let (q, k, v) = (tensor(&[3, 2, 9, 4], 34), tensor(&[3, 2, 7, 4], 35), tensor(&[3, 2, 7, 5], 36));
    let with_tape = ops::attention(&q.detach().requires_grad_(), &k, &v, 0.4).unwrap().to_vec();
    let inference = minidiffusion::no_grad(|| ops::attention(&q, &k, &v, 0.4)).unwrap().to_vec();
    assert_close("attention no_grad", &inference, &with_tape, 1e-6, 1e-6);
}

#[test]
fn inference_columns_kernel_matches_the_tape_path_on_uneven_shapes() {
    // 16 queries per block: Lq = 37 leaves a partial block; Dv = 11 runs one
    // 8-row group and three single rows; long keys (Lk = 300), D = 8 and 20
    for (i, &(b, h, d, lq, lk, dv)) in [(2, 3, 8, 37, 300, 11), (1, 2, 20, 16, 5, 8), (3, 1, 3, 1, 1, 1)].iter().enumerate() {
        let seed = 40 + 3 * i as u64;
        let (q, k, v) = (tensor(&[b, h, d, lq], seed), tensor(&[b, h, d, lk], seed + 1), tensor(&[b, h, dv, lk], seed + 2));
        let scale = 1.0 / (d as f32).sqrt();
        let with_tape = ops::attention_columns(&q.detach().requires_grad_(), &k, &v, scale).unwrap().to_vec();
        let inference = minidiffusion::no_grad(|| ops::attention_columns(&q, &k, &v, scale)).unwrap().to_vec();
        assert_close(&format!("columns inference case {i}"), &inference, &with_tape, 1e-6, 1e-5);
    }
}
