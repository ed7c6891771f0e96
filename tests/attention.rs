//! Scaled dot-product attention: against a composition of matmul + softmax, and gradient checks.

use minidiffusion::ops::matmul_t;
use minidiffusion::testing::{GradTol, assert_close, grad_check, randn};
use minidiffusion::ops::attention::Layout;
use minidiffusion::ops::attention::cpu::Dims;
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

/// (dQ, dK, dV) of Columns-layout attention in f64 from the definition, per
/// batch entry: P = softmax(scale·QᵀK) row-wise, dV = dOᵀ-weighted P,
/// dS = P ⊙ (dP − rowsum(P ⊙ dP)).
fn columns_backward_f64(q: &[f32], k: &[f32], v: &[f32], d_o: &[f32], dims: Dims, scale: f32) -> [Vec<f64>; 3] {
    let Dims { batch, lq, lk, d, dv } = dims;
    let (mut dq, mut dk, mut dvv) = (vec![0.0; batch * d * lq], vec![0.0; batch * d * lk], vec![0.0; batch * dv * lk]);
    for b in 0..batch {
        let (q, k) = (&q[b * d * lq..], &k[b * d * lk..]);
        let (v, g) = (&v[b * dv * lk..], &d_o[b * dv * lq..]);
        for i in 0..lq {
            let s: Vec<f64> = (0..lk).map(|j| scale as f64 * (0..d).map(|f| q[f * lq + i] as f64 * k[f * lk + j] as f64).sum::<f64>()).collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
            let dp: Vec<f64> = (0..lk).map(|j| (0..dv).map(|c| g[c * lq + i] as f64 * v[c * lk + j] as f64).sum()).collect();
            let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for j in 0..lk {
                let ds = scale as f64 * p[j] * (dp[j] - delta);
                for f in 0..d {
                    dq[b * d * lq + f * lq + i] += ds * k[f * lk + j] as f64;
                    dk[b * d * lk + f * lk + j] += ds * q[f * lq + i] as f64;
                }
                for c in 0..dv {
                    dvv[b * dv * lk + c * lk + j] += p[j] * g[c * lq + i] as f64;
                }
            }
        }
    }
    [dq, dk, dvv]
}

#[test]
fn lane_backward_matches_the_gemm_reference_and_f64() {
    // the AVX-512 Columns backward (16 queries × 16 keys a tile, p and dS
    // transposed in registers for dK and dV) against the gemm reference and
    // an f64 sum: partial query and key tiles (37 × 300, 70 × 17), one
    // query and one key, the seed UNet's 16×16 and 8×8 heads, D = 16
    use minidiffusion::ops::attention::{columns_backward, cpu};
    if !columns_backward::takes(Dims { batch: 1, lq: 1, lk: 1, d: 8, dv: 8 }) {
        println!("SKIPPED lane attention backward: this CPU has no AVX-512");
        return;
    }
    let cases = [(3, 37, 300, 8), (2, 70, 17, 8), (1, 1, 1, 8), (2, 256, 256, 8), (2, 64, 64, 8), (2, 16, 33, 16), (1, 45, 9, 16)];
    for (n, &(batch, lq, lk, d)) in cases.iter().enumerate() {
        let dims = Dims { batch, lq, lk, d, dv: d };
        let seed = 100 + 5 * n as u64;
        let (q, k, v, g) = (randn(&[batch * d * lq], seed), randn(&[batch * d * lk], seed + 1), randn(&[batch * d * lk], seed + 2), randn(&[batch * d * lq], seed + 3));
        let scale = 1.0 / (d as f32).sqrt();
        let (o, lse) = cpu::forward(&q, &k, &v, dims, Layout::Columns, scale);
        let lanes = columns_backward::backward(&q, &k, &v, &o, &lse, &g, dims, scale);
        let gemm = cpu::backward(&q, &k, &v, &lse, &g, dims, Layout::Columns, scale);
        let exact = columns_backward_f64(&q, &k, &v, &g, dims, scale);
        for (name, (got, (reference, want))) in ["dq", "dk", "dv"].iter().zip([&lanes.0, &lanes.1, &lanes.2].into_iter().zip([&gemm.0, &gemm.1, &gemm.2].into_iter().zip(&exact))) {
            let err = |x: &[f32]| x.iter().zip(want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
            let size = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let (e_lanes, e_gemm) = (err(got), err(reference));
            assert!(e_lanes <= (2.0 * e_gemm).max(2e-6 * size), "case {n} {name}: error {e_lanes:.3e} (gemm {e_gemm:.3e}, size {size:.3e})");
        }
        // one task per batch entry: the same bits under any thread count
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| columns_backward::backward(&q, &k, &v, &o, &lse, &g, dims, scale));
        assert!(one_thread == lanes, "case {n}: the bits depend on the thread count");
    }
    // heads it does not take: D ≠ Dv, D outside {8, 16}, no keys
    for (d, dv, lk) in [(8, 4, 5), (4, 4, 5), (32, 32, 5), (8, 8, 0)] {
        assert!(!columns_backward::takes(Dims { batch: 1, lq: 3, lk, d, dv }), "takes d {d} dv {dv} lk {lk}");
    }
}

#[test]
fn attention_columns_grad_at_the_unets_head_size() {
    // D = 8 and 16: the lane backward where the CPU has AVX-512 (else the
    // gemm path), through the tape against central differences; 19 queries
    // and 21 keys leave partial 16-wide tiles
    for d in [8, 16] {
        grad_check(
            &format!("attention_columns d{d}"),
            &[&[1, 2, d, 19], &[1, 2, d, 21], &[1, 2, d, 21]],
            |x| ops::attention_columns(&x[0], &x[1], &x[2], 0.35),
            GradTol::default(),
        );
    }
}

#[test]
fn columns_training_forward_keeps_the_rows_log_sum_exp() {
    // Columns forward with a tape runs the inference lanes and keeps L: the
    // same O and L as the Rows (gemm) forward of the transposes
    use minidiffusion::ops::attention::cpu;
    let dims = Dims { batch: 2, lq: 37, lk: 45, d: 8, dv: 5 };
    let (q, k, v) = (randn(&[2 * 8 * 37], 61), randn(&[2 * 8 * 45], 62), randn(&[2 * 5 * 45], 63));
    let t = |x: &[f32], rows: usize, cols: usize| -> Vec<f32> {
        x.chunks(rows * cols).flat_map(|m| (0..rows * cols).map(move |e| m[(e % rows) * cols + e / rows])).collect()
    };
    let (o, lse) = cpu::forward(&q, &k, &v, dims, Layout::Columns, 0.4);
    let (o_rows, lse_rows) = cpu::forward(&t(&q, 8, 37), &t(&k, 8, 45), &t(&v, 5, 45), dims, Layout::Rows, 0.4);
    assert_close("columns forward O", &o, &t(&o_rows, 37, 5), 1e-6, 1e-5);
    assert_close("columns forward L", &lse, &lse_rows, 1e-6, 1e-5);
}
