//! batch_norm: forward in both modes against a naive f64 reference and
//! hand-computed values, the running-statistics update, gradient checks for
//! x, weight and bias in both modes, and refused inputs.

use minidiffusion::ops::batch_norm::{BatchNormMode, batch_norm};
use minidiffusion::testing::{GradTol, assert_close, grad_check, randn};
use minidiffusion::{Error, Tensor};

/// Per-channel (mean, biased variance) of x [N, C, S...] in f64.
fn channel_stats(x: &[f32], dims: &[usize]) -> Vec<(f64, f64)> {
    let (n, c) = (dims[0], dims[1]);
    let s: usize = dims[2..].iter().product();
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> = (0..n)
                .flat_map(|ni| (0..s).map(move |si| (ni, si)))
                .map(|(ni, si)| x[(ni * c + ch) * s + si] as f64)
                .collect();
            let m = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / m;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
            (mean, var)
        })
        .collect()
}

/// Naive batch norm in f64 with given per-channel (mean, variance).
fn reference(
    x: &[f32],
    dims: &[usize],
    stats: &[(f64, f64)],
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    eps: f64,
) -> Vec<f32> {
    let c = dims[1];
    let s: usize = dims[2..].iter().product();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / s) % c;
            let (mean, var) = stats[ch];
            let (gamma, beta) = (w.map_or(1.0, |w| w[ch] as f64), b.map_or(0.0, |b| b[ch] as f64));
            ((v as f64 - mean) / (var + eps).sqrt() * gamma + beta) as f32
        })
        .collect()
}

fn tensor(values: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), dims.to_vec()).unwrap()
}

const TRAIN: BatchNormMode = BatchNormMode::Train { momentum: 0.1 };

#[test]
fn train_forward_matches_naive_reference() {
    let shapes: &[&[usize]] = &[&[4, 3], &[3, 5, 2, 3], &[2, 4, 7], &[5, 1, 3, 3], &[2, 3, 2, 1, 3]];
    for (k, &dims) in shapes.iter().enumerate() {
        let c = dims[1];
        let xv: Vec<f32> = randn(dims, 40 + k as u64).iter().map(|v| 2.0 - 1.7 * v).collect();
        let (wv, bv) = (randn(&[c], 50 + k as u64), randn(&[c], 60 + k as u64));
        let x = tensor(&xv, dims);
        let stats = channel_stats(&xv, dims);
        for affine in [false, true] {
            let (rm, rv) = (Tensor::zeros(vec![c]), Tensor::ones(vec![c]));
            let (w, b) = (tensor(&wv, &[c]), tensor(&bv, &[c]));
            let (wo, bo) = if affine { (Some(&w), Some(&b)) } else { (None, None) };
            let (ws, bs) = if affine { (Some(&wv[..]), Some(&bv[..])) } else { (None, None) };
            let got = batch_norm(&x, &rm, &rv, wo, bo, TRAIN, 1e-5).unwrap();
            assert_eq!(got.dims(), dims);
            let want = reference(&xv, dims, &stats, ws, bs, 1e-5);
            assert_close(&format!("batch_norm train {dims:?} affine {affine}"), &got.to_vec(), &want, 2e-5, 2e-5);
        }
    }
}

#[test]
fn train_output_has_zero_mean_unit_variance_per_channel() {
    let dims = [6, 4, 3, 5];
    let xv: Vec<f32> = randn(&dims, 3).iter().map(|v| 10.0 + 4.0 * v).collect();
    let x = tensor(&xv, &dims);
    let y = batch_norm(&x, &Tensor::zeros(vec![4]), &Tensor::ones(vec![4]), None, None, TRAIN, 1e-5).unwrap();
    for (ch, (mean, var)) in channel_stats(&y.to_vec(), &dims).into_iter().enumerate() {
        assert!(mean.abs() < 1e-5, "channel {ch}: mean {mean}");
        assert!((var - 1.0).abs() < 1e-4, "channel {ch}: variance {var}");
    }
}

#[test]
fn hand_computed_2x1() {
    // x = [1, 3] as [N=2, C=1]: mean 2, biased variance 1, unbiased 2.
    let x = tensor(&[1.0, 3.0], &[2, 1]);
    let (rm, rv) = (Tensor::zeros(vec![1]), Tensor::ones(vec![1]));
    let w = tensor(&[2.0], &[1]);
    let b = tensor(&[0.5], &[1]);
    let y = batch_norm(&x, &rm, &rv, Some(&w), Some(&b), TRAIN, 0.0).unwrap();
    // x̂ = [−1, 1], y = 2·x̂ + 0.5.
    assert_eq!(y.to_vec(), vec![-1.5, 2.5]);
    // running_mean = 0.9·0 + 0.1·2 = 0.2; running_var = 0.9·1 + 0.1·2 = 1.1.
    assert_close("running_mean", &rm.to_vec(), &[0.2], 1e-7, 0.0);
    assert_close("running_var", &rv.to_vec(), &[1.1], 1e-7, 0.0);

    // Eval with running mean 0.5, running var 4 (eps 0): x̂ = (x − 0.5)/2.
    let (rm, rv) = (tensor(&[0.5], &[1]), tensor(&[4.0], &[1]));
    let y = batch_norm(&tensor(&[1.0, 3.0, -1.5], &[3, 1]), &rm, &rv, Some(&w), Some(&b), BatchNormMode::Eval, 0.0)
        .unwrap();
    // x̂ = [0.25, 1.25, −1], y = 2·x̂ + 0.5.
    assert_eq!(y.to_vec(), vec![1.0, 3.0, -1.5]);
    assert_eq!(rm.to_vec(), vec![0.5], "eval leaves running_mean alone");
    assert_eq!(rv.to_vec(), vec![4.0], "eval leaves running_var alone");
}

#[test]
fn running_stats_follow_momentum_formula() {
    let dims = [4, 3, 2, 5];
    let m = (4 * 2 * 5) as f64;
    let (rm0, rv0) = (vec![0.3f32, -1.0, 2.0], vec![0.5f32, 2.0, 1.5]);
    for momentum in [0.1f32, 0.3, 0.0, 1.0] {
        let (rm, rv) = (tensor(&rm0, &[3]), tensor(&rv0, &[3]));
        let mut want_m: Vec<f64> = rm0.iter().map(|&v| v as f64).collect();
        let mut want_v: Vec<f64> = rv0.iter().map(|&v| v as f64).collect();
        // Two steps with different batches: the update compounds.
        for step in 0..2u64 {
            let xv: Vec<f32> = randn(&dims, 70 + step).iter().map(|v| 1.0 + 3.0 * v).collect();
            batch_norm(&tensor(&xv, &dims), &rm, &rv, None, None, BatchNormMode::Train { momentum }, 1e-5).unwrap();
            let mo = momentum as f64;
            for (ch, (mean, var)) in channel_stats(&xv, &dims).into_iter().enumerate() {
                want_m[ch] = (1.0 - mo) * want_m[ch] + mo * mean;
                want_v[ch] = (1.0 - mo) * want_v[ch] + mo * var * m / (m - 1.0);
            }
            let to32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            assert_close(
                &format!("running_mean momentum {momentum} step {step}"),
                &rm.to_vec(),
                &to32(&want_m),
                1e-6,
                1e-6,
            );
            assert_close(
                &format!("running_var momentum {momentum} step {step}"),
                &rv.to_vec(),
                &to32(&want_v),
                1e-6,
                1e-6,
            );
        }
        if momentum == 0.0 {
            assert_eq!(rm.to_vec(), rm0, "momentum 0 keeps running_mean");
            assert_eq!(rv.to_vec(), rv0, "momentum 0 keeps running_var");
        }
    }
}

#[test]
fn eval_after_train_uses_running_stats() {
    let dims = [5, 3, 4];
    let c = 3;
    let (rm, rv) = (Tensor::zeros(vec![c]), Tensor::ones(vec![c]));
    let (wv, bv) = (randn(&[c], 1), randn(&[c], 2));
    let (w, b) = (tensor(&wv, &[c]), tensor(&bv, &[c]));
    let xv: Vec<f32> = randn(&dims, 3).iter().map(|v| 0.5 + 2.0 * v).collect();
    batch_norm(&tensor(&xv, &dims), &rm, &rv, Some(&w), Some(&b), BatchNormMode::Train { momentum: 0.25 }, 1e-5)
        .unwrap();
    let (rmv, rvv) = (rm.to_vec(), rv.to_vec());
    let stats: Vec<(f64, f64)> = rmv.iter().zip(&rvv).map(|(&m, &v)| (m as f64, v as f64)).collect();

    let xe = randn(&dims, 4);
    let y = batch_norm(&tensor(&xe, &dims), &rm, &rv, Some(&w), Some(&b), BatchNormMode::Eval, 1e-5).unwrap();
    assert_close("eval", &y.to_vec(), &reference(&xe, &dims, &stats, Some(&wv), Some(&bv), 1e-5), 1e-5, 1e-5);
    // Eval differs from train-mode output on the same batch (the batch stats are not used).
    let y_train =
        batch_norm(&tensor(&xe, &dims), &rm.deep_clone().unwrap(), &rv.deep_clone().unwrap(), Some(&w), Some(&b), TRAIN, 1e-5).unwrap();
    assert!(y.to_vec().iter().zip(y_train.to_vec()).any(|(a, b)| (a - b).abs() > 1e-2));
    assert_eq!(rm.to_vec(), rmv);
    assert_eq!(rv.to_vec(), rvv);
}

#[test]
fn grad_check_train() {
    grad_check(
        "batch_norm train x [4,3,2,3]",
        &[&[4, 3, 2, 3]],
        |t| batch_norm(&t[0], &Tensor::zeros(vec![3]), &Tensor::ones(vec![3]), None, None, TRAIN, 1e-5),
        GradTol::default(),
    );
    for dims in [&[4usize, 3, 2, 3][..], &[6, 5][..], &[3, 2, 7][..]] {
        let c = dims[1];
        grad_check(
            &format!("batch_norm train x,w,b {dims:?}"),
            &[dims, &[c], &[c]],
            |t| {
                batch_norm(
                    &t[0],
                    &Tensor::zeros(vec![c]),
                    &Tensor::ones(vec![c]),
                    Some(&t[1]),
                    Some(&t[2]),
                    TRAIN,
                    1e-5,
                )
            },
            GradTol::default(),
        );
    }
}

#[test]
fn grad_check_eval() {
    for dims in [&[3usize, 4, 2, 3][..], &[5, 2][..]] {
        let c = dims[1];
        let rmv: Vec<f32> = randn(&[c], 8);
        let rvv: Vec<f32> = randn(&[c], 9).iter().map(|v| 0.5 + v.abs()).collect();
        let (rm, rv) = (tensor(&rmv, &[c]), tensor(&rvv, &[c]));
        grad_check(
            &format!("batch_norm eval x,w,b {dims:?}"),
            &[dims, &[c], &[c]],
            |t| batch_norm(&t[0], &rm, &rv, Some(&t[1]), Some(&t[2]), BatchNormMode::Eval, 1e-5),
            GradTol::default(),
        );
        grad_check(
            &format!("batch_norm eval x {dims:?}"),
            &[dims],
            |t| batch_norm(&t[0], &rm, &rv, None, None, BatchNormMode::Eval, 1e-5),
            GradTol::default(),
        );
    }
}

#[test]
fn running_stats_get_no_gradient() {
    let dims = [4, 2, 3];
    let x = tensor(&randn(&dims, 1), &dims).requires_grad_();
    let rm = Tensor::zeros(vec![2]).requires_grad_();
    let rv = Tensor::ones(vec![2]).requires_grad_();
    for mode in [TRAIN, BatchNormMode::Eval] {
        let y = batch_norm(&x, &rm, &rv, None, None, mode, 1e-5).unwrap();
        let loss = minidiffusion::ops::sum_all(&minidiffusion::ops::mul(&y, &y).unwrap()).unwrap();
        let grads = minidiffusion::backward(&loss).unwrap();
        assert!(grads.get(&x).is_some());
        assert!(grads.get(&rm).is_none() && grads.get(&rv).is_none(), "{mode:?}");
        assert_eq!(grads.len(), 1);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let x = Tensor::zeros(vec![4, 3, 2]);
    let (rm, rv) = (Tensor::zeros(vec![3]), Tensor::ones(vec![3]));
    let bad = Tensor::ones(vec![4]);
    let shape_err = |r: minidiffusion::Result<Tensor>| matches!(r, Err(Error::Shape { .. }));
    assert!(shape_err(batch_norm(&Tensor::zeros(vec![3]), &rm, &rv, None, None, TRAIN, 1e-5)), "rank 1");
    assert!(shape_err(batch_norm(&Tensor::scalar(0.0), &rm, &rv, None, None, TRAIN, 1e-5)), "rank 0");
    assert!(shape_err(batch_norm(&x, &bad, &rv, None, None, TRAIN, 1e-5)), "running_mean [4]");
    assert!(shape_err(batch_norm(&x, &rm, &bad, None, None, BatchNormMode::Eval, 1e-5)), "running_var [4]");
    assert!(shape_err(batch_norm(&x, &rm, &rv, Some(&bad), None, TRAIN, 1e-5)), "weight [4]");
    assert!(shape_err(batch_norm(&x, &rm, &rv, None, Some(&bad), TRAIN, 1e-5)), "bias [4]");
    // One value per channel cannot be normalised with batch statistics (PyTorch refuses too).
    let one = Tensor::zeros(vec![1, 3, 1, 1]);
    assert!(
        matches!(batch_norm(&one, &rm, &rv, None, None, TRAIN, 1e-5), Err(Error::Argument { .. })),
        "1 value per channel"
    );
    assert!(batch_norm(&one, &rm, &rv, None, None, BatchNormMode::Eval, 1e-5).is_ok(), "eval on one value is fine");
    assert!(matches!(batch_norm(&x, &rm, &rv, None, None, TRAIN, -1e-5), Err(Error::Argument { .. })), "negative eps");
    // Refused inputs leave the running statistics alone.
    assert_eq!(rm.to_vec(), vec![0.0; 3]);
    assert_eq!(rv.to_vec(), vec![1.0; 3]);
}
