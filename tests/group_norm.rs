//! group_norm: forward against a naive f64 reference and hand-computed values,
//! gradient checks for x, weight and bias, and refused inputs; the fused
//! group_norm_silu against silu(group_norm(..)) and its gradient checks.

use minidiffusion::ops::group_norm::{group_norm, group_norm_silu};
use minidiffusion::testing::{GradTol, assert_close, grad_check, randn};
use minidiffusion::{Error, Tensor};

/// Naive group norm in f64: x [N, C, S...] flattened, loops over (n, g).
fn reference(x: &[f32], dims: &[usize], groups: usize, w: Option<&[f32]>, b: Option<&[f32]>, eps: f64) -> Vec<f32> {
    let (n, c) = (dims[0], dims[1]);
    let s: usize = dims[2..].iter().product();
    let cg = c / groups;
    let mut y = vec![0.0f32; x.len()];
    for ni in 0..n {
        for g in 0..groups {
            let idx = |ci: usize, si: usize| (ni * c + g * cg + ci) * s + si;
            let mut sum = 0.0f64;
            for ci in 0..cg {
                for si in 0..s {
                    sum += x[idx(ci, si)] as f64;
                }
            }
            let m = (cg * s) as f64;
            let mean = sum / m;
            let mut var = 0.0f64;
            for ci in 0..cg {
                for si in 0..s {
                    var += (x[idx(ci, si)] as f64 - mean).powi(2);
                }
            }
            var /= m;
            for ci in 0..cg {
                let ch = g * cg + ci;
                let (gamma, beta) = (w.map_or(1.0, |w| w[ch] as f64), b.map_or(0.0, |b| b[ch] as f64));
                for si in 0..s {
                    let xhat = (x[idx(ci, si)] as f64 - mean) / (var + eps).sqrt();
                    y[idx(ci, si)] = (xhat * gamma + beta) as f32;
                }
            }
        }
    }
    y
}

fn tensor(dims: &[usize], seed: u64) -> (Vec<f32>, Tensor) {
    let v = randn(dims, seed);
    let t = Tensor::from_vec(v.clone(), dims.to_vec()).unwrap();
    (v, t)
}

#[test]
fn forward_matches_naive_reference() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 6, 3, 5], &[1, 2, 3, 6]),
        (&[3, 4, 7], &[1, 2, 4]),
        (&[2, 4], &[1, 2]),
        (&[1, 10, 3, 3], &[5]),
        (&[2, 3, 2, 3, 2], &[3]),
    ];
    for (ci, &(dims, groups_list)) in cases.iter().enumerate() {
        let c = dims[1];
        // Offset and scale so the mean is far from 0 and the variance from 1.
        let xv: Vec<f32> = randn(dims, 10 + ci as u64).iter().map(|v| 3.0 + 2.5 * v).collect();
        let x = Tensor::from_vec(xv.clone(), dims.to_vec()).unwrap();
        let (wv, w) = tensor(&[c], 20 + ci as u64);
        let (bv, b) = tensor(&[c], 30 + ci as u64);
        for &groups in groups_list {
            for affine in [false, true] {
                let (wo, bo) = if affine { (Some(&w), Some(&b)) } else { (None, None) };
                let (ws, bs) = if affine { (Some(&wv[..]), Some(&bv[..])) } else { (None, None) };
                let got = group_norm(&x, groups, wo, bo, 1e-5).unwrap();
                assert_eq!(got.dims(), dims);
                let want = reference(&xv, dims, groups, ws, bs, 1e-5);
                assert_close(
                    &format!("group_norm {dims:?} groups {groups} affine {affine}"),
                    &got.to_vec(),
                    &want,
                    2e-5,
                    2e-5,
                );
            }
        }
    }
}

#[test]
fn weight_only_and_bias_only() {
    let dims = [2, 4, 3, 3];
    let (xv, x) = tensor(&dims, 1);
    let (wv, w) = tensor(&[4], 2);
    let (bv, b) = tensor(&[4], 3);
    let got = group_norm(&x, 2, Some(&w), None, 1e-5).unwrap();
    assert_close("weight only", &got.to_vec(), &reference(&xv, &dims, 2, Some(&wv), None, 1e-5), 2e-5, 2e-5);
    let got = group_norm(&x, 2, None, Some(&b), 1e-5).unwrap();
    assert_close("bias only", &got.to_vec(), &reference(&xv, &dims, 2, None, Some(&bv), 1e-5), 2e-5, 2e-5);
}

#[test]
fn groups_without_affine_have_zero_mean_unit_variance() {
    let dims = [3, 8, 5, 4];
    let xv: Vec<f32> = randn(&dims, 5).iter().map(|v| -7.0 + 0.3 * v).collect();
    let x = Tensor::from_vec(xv, dims.to_vec()).unwrap();
    let groups = 4;
    let y = group_norm(&x, groups, None, None, 1e-5).unwrap().to_vec();
    let m = 8 / groups * 5 * 4;
    for (k, grp) in y.chunks(m).enumerate() {
        let mean = grp.iter().map(|&v| v as f64).sum::<f64>() / m as f64;
        let var = grp.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / m as f64;
        assert!(mean.abs() < 1e-5, "group {k}: mean {mean}");
        // var = σ²/(σ²+eps) with σ² ≈ 0.09, so eps shows at ~1e-4.
        assert!((var - 1.0).abs() < 5e-4, "group {k}: variance {var}");
    }
}

#[test]
fn hand_computed_tiny_cases() {
    // x = [[1, 2], [3, 4]] as 1×2×1×2.
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], vec![1, 2, 1, 2]).unwrap();
    let w = Tensor::from_vec(vec![2.0, -1.0], vec![2]).unwrap();
    let b = Tensor::from_vec(vec![0.5, 1.0], vec![2]).unwrap();

    // groups 2, eps 0.75: each channel has mean ±0.5 around its centre and
    // variance 0.25, so √(0.25 + 0.75) = 1 and x̂ = [−0.5, 0.5] per channel.
    let y = group_norm(&x, 2, None, None, 0.75).unwrap();
    assert_eq!(y.to_vec(), vec![-0.5, 0.5, -0.5, 0.5]);
    // With γ = [2, −1], β = [0.5, 1]: [−1+0.5, 1+0.5, 0.5+1, −0.5+1].
    let y = group_norm(&x, 2, Some(&w), Some(&b), 0.75).unwrap();
    assert_eq!(y.to_vec(), vec![-0.5, 1.5, 1.5, 0.5]);

    // groups 1, eps 0: mean 2.5, variance (2.25+0.25+0.25+2.25)/4 = 1.25,
    // x̂ = [−1.5, −0.5, 0.5, 1.5]/√1.25.
    let r = 1.0 / 1.25f64.sqrt();
    let y = group_norm(&x, 1, None, None, 0.0).unwrap();
    let want: Vec<f32> = [-1.5, -0.5, 0.5, 1.5].iter().map(|v| (v * r) as f32).collect();
    assert_close("groups 1", &y.to_vec(), &want, 1e-6, 1e-6);
    assert_close("groups 1 literal", &y.to_vec(), &[-1.341_640_8, -0.447_213_6, 0.447_213_6, 1.341_640_8], 1e-6, 1e-6);
}

#[test]
fn hand_computed_tiny_gradient() {
    // Two values per group, eps 0: x̂ = ±1 whatever x is (for x0 ≠ x1), so
    // dL/dx is 0 for L = Σ y; and dγ = Σ x̂ = 0, dβ = count per channel.
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 5.0], vec![2, 1, 2]).unwrap().requires_grad_();
    let w = Tensor::from_vec(vec![1.5], vec![1]).unwrap().requires_grad_();
    let b = Tensor::from_vec(vec![0.0], vec![1]).unwrap().requires_grad_();
    let y = group_norm(&x, 1, Some(&w), Some(&b), 0.0).unwrap();
    assert_eq!(y.to_vec(), vec![-1.5, 1.5, -1.5, 1.5]);
    // L = Σ y·[1, 0, 0, 0]: dL/dx for group 0 = rstd·γ·(e0 − 1/2 − x̂·x̂0/2)
    // with rstd = 2 (σ = 0.5), x̂ = [−1, 1]: 3·([1, 0] − 0.5 − [0.5, −0.5]) = [0, 0].
    let sel = Tensor::from_vec(vec![1.0, 0.0, 0.0, 0.0], vec![2, 1, 2]).unwrap();
    let loss = minidiffusion::ops::sum_all(&minidiffusion::ops::mul(&y, &sel).unwrap()).unwrap();
    let grads = minidiffusion::backward(&loss).unwrap();
    assert_close("dx", &grads.get(&x).unwrap().to_vec(), &[0.0; 4], 1e-6, 0.0);
    assert_close("dw", &grads.get(&w).unwrap().to_vec(), &[-1.0], 1e-6, 0.0);
    assert_close("db", &grads.get(&b).unwrap().to_vec(), &[1.0], 1e-6, 0.0);
}

#[test]
fn grad_check_x_without_affine() {
    grad_check(
        "group_norm x [2,6,3,3] g3",
        &[&[2, 6, 3, 3]],
        |t| group_norm(&t[0], 3, None, None, 1e-5),
        GradTol::default(),
    );
    grad_check(
        "group_norm x [3,4,5] g1",
        &[&[3, 4, 5]],
        |t| group_norm(&t[0], 1, None, None, 1e-5),
        GradTol::default(),
    );
    grad_check(
        "group_norm x [2,4,2,3] g4",
        &[&[2, 4, 2, 3]],
        |t| group_norm(&t[0], 4, None, None, 1e-5),
        GradTol::default(),
    );
}

#[test]
fn grad_check_x_weight_bias() {
    for (dims, groups) in
        [(&[2usize, 6, 3, 3][..], 2usize), (&[2, 4, 7][..], 4), (&[3, 8][..], 2), (&[1, 3, 2, 5][..], 1)]
    {
        let c = dims[1];
        grad_check(
            &format!("group_norm x,w,b {dims:?} g{groups}"),
            &[dims, &[c], &[c]],
            |t| group_norm(&t[0], groups, Some(&t[1]), Some(&t[2]), 1e-5),
            GradTol::default(),
        );
    }
}

#[test]
fn grad_check_weight_only() {
    grad_check(
        "group_norm x,w [2,4,3,2] g2",
        &[&[2, 4, 3, 2], &[4]],
        |t| group_norm(&t[0], 2, Some(&t[1]), None, 1e-5),
        GradTol::default(),
    );
}

#[test]
fn parameters_get_gradients_when_x_does_not() {
    let (_, x) = tensor(&[2, 4, 3], 1);
    let w = Tensor::ones(vec![4]).requires_grad_();
    let b = Tensor::zeros(vec![4]).requires_grad_();
    let y = group_norm(&x, 2, Some(&w), Some(&b), 1e-5).unwrap();
    let grads = minidiffusion::backward(&minidiffusion::ops::sum_all(&y).unwrap()).unwrap();
    assert!(grads.get(&x).is_none());
    // dβ = Σ dy = N·S = 6 per channel; dγ = Σ x̂ per channel.
    assert_close("db", &grads.get(&b).unwrap().to_vec(), &[6.0; 4], 1e-5, 0.0);
    assert_eq!(grads.get(&w).unwrap().dims(), &[4]);
}

#[test]
fn bad_inputs_are_errors() {
    let x = Tensor::zeros(vec![2, 6, 3]);
    assert!(matches!(group_norm(&x, 4, None, None, 1e-5), Err(Error::Argument { .. })), "6 channels, 4 groups");
    assert!(matches!(group_norm(&x, 0, None, None, 1e-5), Err(Error::Argument { .. })), "0 groups");
    assert!(matches!(group_norm(&x, 2, None, None, -1.0), Err(Error::Argument { .. })), "negative eps");
    let w5 = Tensor::ones(vec![5]);
    let w6x1 = Tensor::ones(vec![6, 1]);
    assert!(matches!(group_norm(&x, 2, Some(&w5), None, 1e-5), Err(Error::Shape { .. })), "weight [5]");
    assert!(matches!(group_norm(&x, 2, Some(&w6x1), None, 1e-5), Err(Error::Shape { .. })), "weight [6, 1]");
    assert!(matches!(group_norm(&x, 2, None, Some(&w5), 1e-5), Err(Error::Shape { .. })), "bias [5]");
    assert!(matches!(group_norm(&Tensor::zeros(vec![6]), 1, None, None, 1e-5), Err(Error::Shape { .. })), "rank 1");
    assert!(matches!(group_norm(&Tensor::scalar(1.0), 1, None, None, 1e-5), Err(Error::Shape { .. })), "rank 0");
    let message = group_norm(&x, 4, None, None, 1e-5).unwrap_err().to_string();
    assert!(message.contains("group_norm") && message.contains('6') && message.contains('4'), "{message}");
}

#[test]
fn empty_batch_is_fine() {
    let x = Tensor::zeros(vec![0, 4, 3]);
    let y = group_norm(&x, 2, None, None, 1e-5).unwrap();
    assert_eq!(y.dims(), &[0, 4, 3]);
}

#[test]
fn group_norm_silu_forward_equals_silu_of_group_norm() {
    // Tolerance 1e-6 abs + 1e-6 rel: the fused pass forms u = (x−μ)·(rstd·γ) + β
    // with the same f32 operations as group_norm and applies the same SiLU
    // formula, so the results agree to the last bit in practice.
    let cases: &[(&[usize], usize)] = &[(&[2, 6, 5, 7], 3), (&[3, 4, 5], 1), (&[2, 4], 4), (&[1, 8, 3, 3], 2)];
    for (k, &(dims, groups)) in cases.iter().enumerate() {
        let c = dims[1];
        let xv: Vec<f32> = randn(dims, 90 + k as u64).iter().map(|v| 1.5 + 2.0 * v).collect();
        let x = Tensor::from_vec(xv, dims.to_vec()).unwrap();
        let (_, w) = tensor(&[c], 91 + k as u64);
        let (_, b) = tensor(&[c], 92 + k as u64);
        for affine in [false, true] {
            let (wo, bo) = if affine { (Some(&w), Some(&b)) } else { (None, None) };
            let fused = group_norm_silu(&x, groups, wo, bo, 1e-5).unwrap();
            let chained = minidiffusion::ops::silu(&group_norm(&x, groups, wo, bo, 1e-5).unwrap()).unwrap();
            assert_eq!(fused.dims(), dims);
            assert_close(
                &format!("group_norm_silu {dims:?} g{groups} affine {affine}"),
                &fused.to_vec(),
                &chained.to_vec(),
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn group_norm_silu_gradients_equal_the_chain() {
    // The fused backward against the tape through silu(group_norm(..)):
    // same formulas, sums in another order, so 1e-5 abs + 1e-4 rel.
    let dims = [2, 6, 3, 5];
    let x = tensor(&dims, 1).1.requires_grad_();
    let w = tensor(&[6], 2).1.requires_grad_();
    let b = tensor(&[6], 3).1.requires_grad_();
    let r = tensor(&dims, 4).1;
    let grads_of = |y: Tensor| {
        let g = minidiffusion::backward(&minidiffusion::ops::sum_all(&minidiffusion::ops::mul(&y, &r).unwrap()).unwrap())
            .unwrap();
        [&x, &w, &b].map(|t| g.get(t).unwrap().to_vec())
    };
    let fused = grads_of(group_norm_silu(&x, 3, Some(&w), Some(&b), 1e-5).unwrap());
    let chained = grads_of(minidiffusion::ops::silu(&group_norm(&x, 3, Some(&w), Some(&b), 1e-5).unwrap()).unwrap());
    for (i, name) in ["dx", "dw", "db"].iter().enumerate() {
        assert_close(name, &fused[i], &chained[i], 1e-5, 1e-4);
    }
}

#[test]
fn grad_check_group_norm_silu() {
    for (dims, groups) in [(&[2usize, 6, 3, 3][..], 2usize), (&[2, 4, 7][..], 4), (&[3, 8][..], 2), (&[1, 3, 2, 5][..], 1)] {
        let c = dims[1];
        grad_check(
            &format!("group_norm_silu x,w,b {dims:?} g{groups}"),
            &[dims, &[c], &[c]],
            |t| group_norm_silu(&t[0], groups, Some(&t[1]), Some(&t[2]), 1e-5),
            GradTol::default(),
        );
    }
    grad_check(
        "group_norm_silu x [2,6,3,3] g3",
        &[&[2, 6, 3, 3]],
        |t| group_norm_silu(&t[0], 3, None, None, 1e-5),
        GradTol::default(),
    );
}

#[test]
fn group_norm_silu_bad_inputs_are_errors() {
    let x = Tensor::zeros(vec![2, 6, 3]);
    let err = group_norm_silu(&x, 4, None, None, 1e-5).unwrap_err();
    assert!(matches!(err, Error::Argument { .. }) && err.to_string().contains("group_norm_silu"), "{err}");
    assert!(matches!(group_norm_silu(&x, 2, Some(&Tensor::ones(vec![5])), None, 1e-5), Err(Error::Shape { .. })));
    assert_eq!(group_norm_silu(&Tensor::zeros(vec![0, 4, 3]), 2, None, None, 1e-5).unwrap().dims(), &[0, 4, 3]);
}

/// x used twice, its other gradient reaching the norm's backward first
/// (norm(x) + x) or after it (norm(x) + x·x, the product's backward later or
/// earlier by the tape's order): finite differences of the sum either way.
#[test]
fn grad_check_x_with_another_use() {
    use minidiffusion::ops;
    grad_check(
        "group_norm(x) + x",
        &[&[2, 6, 3, 3], &[6], &[6]],
        |t| ops::add(&group_norm_silu(&t[0], 3, Some(&t[1]), Some(&t[2]), 1e-5)?, &t[0]),
        GradTol::default(),
    );
    grad_check(
        "x·x + group_norm(x)",
        &[&[2, 4, 5]],
        |t| ops::add(&ops::mul(&t[0], &t[0])?, &group_norm(&t[0], 2, None, None, 1e-5)?),
        GradTol::default(),
    );
}

/// At a UNet's size (many groups a thread, 256-value channels), with x used
/// twice — sum((norm(x) + x)·r), so that x's gradient from the sum, r,
/// reaches the norm's backward first and is summed into dx as it is
/// written: the fused backward (with and without SiLU) against the tape
/// through silu(group_norm(x)·w + b) without the second use, plus r;
/// 1e-5 abs + 1e-4 rel.
#[test]
fn large_gradients_with_another_use_equal_the_chain() {
    use minidiffusion::ops;
    let dims = [4, 64, 16, 16];
    let x = tensor(&dims, 5).1.requires_grad_();
    let w = tensor(&[64], 6).1.requires_grad_();
    let b = tensor(&[64], 7).1.requires_grad_();
    let r = tensor(&dims, 8).1;
    let grads_of = |y: Tensor| {
        let g = minidiffusion::backward(&ops::sum_all(&ops::mul(&y, &r).unwrap()).unwrap()).unwrap();
        [&x, &w, &b].map(|t| g.get(t).unwrap().to_vec())
    };
    for silu in [false, true] {
        let y = if silu { group_norm_silu(&x, 8, Some(&w), Some(&b), 1e-5) } else { group_norm(&x, 8, Some(&w), Some(&b), 1e-5) };
        let fused = grads_of(ops::add(&y.unwrap(), &x).unwrap());
        let normed = ops::mul(&group_norm(&x, 8, None, None, 1e-5).unwrap(), &ops::reshape(&w, [1, 64, 1, 1]).unwrap()).unwrap();
        let normed = ops::add(&normed, &ops::reshape(&b, [1, 64, 1, 1]).unwrap()).unwrap();
        let mut chained = grads_of(if silu { ops::silu(&normed).unwrap() } else { normed });
        chained[0] = chained[0].iter().zip(r.to_vec()).map(|(d, r)| d + r).collect();
        for (i, name) in ["dx", "dw", "db"].iter().enumerate() {
            assert_close(&format!("{name} silu {silu}"), &fused[i], &chained[i], 1e-5, 1e-4);
        }
    }
}
