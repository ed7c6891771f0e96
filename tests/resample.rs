//! Tests for `ops::resample`: upsample_nearest2x and avg_pool2x2 (PyTorch's
//! AvgPool2d(2, ceil_mode=True): an edge window divides by its in-bounds count).
//! Exact values on hand cases; a nested-loop reference on random shapes
//! (atol 1e-6, rtol 1e-6: at most 4 terms summed); gradient checks.

use minidiffusion::ops::{self, avg_pool2x2, upsample_nearest2x};
use minidiffusion::testing::{GradTol, assert_close, grad_check, randn};
use minidiffusion::{Error, Tensor, backward};

fn iota(n: usize, shape: [usize; 4]) -> Tensor {
    Tensor::from_vec((0..n).map(|v| v as f32).collect(), shape).unwrap()
}

/// Direct reference of the ceil-mode 2×2 average pool.
fn avg_pool_direct(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let mut y = Vec::new();
    for p in 0..n * c {
        for i in 0..oh {
            for j in 0..ow {
                let (mut sum, mut count) = (0.0f32, 0.0f32);
                for r in 2 * i..2 * i + 2 {
                    for s in 2 * j..2 * j + 2 {
                        if r < h && s < w {
                            sum += x[(p * h + r) * w + s];
                            count += 1.0;
                        }
                    }
                }
                y.push(sum / count);
            }
        }
    }
    y
}

#[test]
fn upsample_nearest2x_exact_values() {
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1, 1, 2, 3]).unwrap();
    let y = upsample_nearest2x(&x).unwrap();
    assert_eq!(y.dims(), [1, 1, 4, 6]);
    #[rustfmt::skip]
    let want = vec![
        1.0, 1.0, 2.0, 2.0, 3.0, 3.0,
        1.0, 1.0, 2.0, 2.0, 3.0, 3.0,
        4.0, 4.0, 5.0, 5.0, 6.0, 6.0,
        4.0, 4.0, 5.0, 5.0, 6.0, 6.0,
    ];
    assert_eq!(y.to_vec(), want);
}

#[test]
fn upsample_nearest2x_matches_direct_reference() {
    let [n, c, h, w] = [2, 3, 5, 4];
    let xv = randn(&[n, c, h, w], 5);
    let y = upsample_nearest2x(&Tensor::from_vec(xv.clone(), [n, c, h, w]).unwrap()).unwrap();
    assert_eq!(y.dims(), [n, c, 2 * h, 2 * w]);
    let yv = y.to_vec();
    for p in 0..n * c {
        for r in 0..2 * h {
            for s in 0..2 * w {
                assert_eq!(yv[(p * 2 * h + r) * 2 * w + s], xv[(p * h + r / 2) * w + s / 2]);
            }
        }
    }
}

#[test]
fn upsample_nearest2x_backward_sums_blocks() {
    let x = Tensor::zeros([1, 1, 1, 2]).requires_grad_();
    let y = upsample_nearest2x(&x).unwrap();
    let r = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [1, 1, 2, 4]).unwrap();
    let grads = backward(&ops::sum_all(&ops::mul(&y, &r).unwrap()).unwrap()).unwrap();
    // block 0: 1 + 2 + 5 + 6, block 1: 3 + 4 + 7 + 8
    assert_eq!(grads.get(&x).unwrap().to_vec(), vec![14.0, 22.0]);
}

#[test]
fn avg_pool2x2_3x3_divisors_4_2_2_1() {
    // [[0,1,2],[3,4,5],[6,7,8]] → [[(0+1+3+4)/4, (2+5)/2], [(6+7)/2, 8/1]]
    let y = avg_pool2x2(&iota(9, [1, 1, 3, 3])).unwrap();
    assert_eq!(y.dims(), [1, 1, 2, 2]);
    assert_eq!(y.to_vec(), vec![2.0, 3.5, 6.5, 8.0]);
}

#[test]
fn avg_pool2x2_5x4_odd_height() {
    // rows of 4: 0..4, 4..8, 8..12, 12..16, 16..20; the last row pools alone (divisor 2)
    let y = avg_pool2x2(&iota(20, [1, 1, 5, 4])).unwrap();
    assert_eq!(y.dims(), [1, 1, 3, 2]);
    assert_eq!(y.to_vec(), vec![2.5, 4.5, 10.5, 12.5, 16.5, 18.5]);
}

#[test]
fn avg_pool2x2_4x5_odd_width() {
    // rows of 5: 0..5, 5..10, 10..15, 15..20; the last column pools alone (divisor 2)
    let y = avg_pool2x2(&iota(20, [1, 1, 4, 5])).unwrap();
    assert_eq!(y.dims(), [1, 1, 2, 3]);
    assert_eq!(y.to_vec(), vec![3.0, 5.0, 6.5, 13.0, 15.0, 16.5]);
}

#[test]
fn avg_pool2x2_matches_direct_reference() {
    for (i, shape) in [[2, 3, 6, 8], [1, 2, 7, 5], [3, 1, 1, 1], [2, 2, 9, 9], [4, 8, 33, 31]].into_iter().enumerate() {
        let xv = randn(&shape, 50 + i as u64);
        let y = avg_pool2x2(&Tensor::from_vec(xv.clone(), shape).unwrap()).unwrap();
        assert_eq!(y.dims(), [shape[0], shape[1], shape[2].div_ceil(2), shape[3].div_ceil(2)]);
        assert_close(&format!("avg_pool2x2 {shape:?}"), &y.to_vec(), &avg_pool_direct(&xv, shape), 1e-6, 1e-6);
    }
}

#[test]
fn avg_pool2x2_backward_spreads_by_count() {
    let x = Tensor::zeros([1, 1, 3, 3]).requires_grad_();
    let grads = backward(&ops::sum_all(&avg_pool2x2(&x).unwrap()).unwrap()).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec(), vec![0.25, 0.25, 0.5, 0.25, 0.25, 0.5, 0.5, 0.5, 1.0]);
}

// Gradient checks use the default GradTol (h 1e-3, atol 2e-3, rtol 1e-2).

#[test]
fn upsample_nearest2x_grad_check() {
    grad_check("upsample_nearest2x", &[&[2, 3, 3, 4]], |t| upsample_nearest2x(&t[0]), GradTol::default());
}

#[test]
fn avg_pool2x2_grad_check() {
    for shape in [&[2, 2, 5, 4][..], &[1, 3, 4, 6], &[1, 1, 3, 3], &[2, 1, 1, 3]] {
        grad_check("avg_pool2x2", &[shape], |t| avg_pool2x2(&t[0]), GradTol::default());
    }
}

#[test]
fn fir_resampling_grad_check() {
    use minidiffusion::ops::{fir_downsample2x, fir_upsample2x};
    for shape in [&[2, 2, 5, 4][..], &[1, 3, 4, 6], &[1, 1, 2, 3]] {
        grad_check("fir_downsample2x", &[shape], |t| fir_downsample2x(&t[0]), GradTol::default());
        grad_check("fir_upsample2x", &[shape], |t| fir_upsample2x(&t[0]), GradTol::default());
    }
}

/// The FIR kernel (1, 3, 3, 1) by hand: a constant image keeps its value
/// inside and loses the taps that fall outside at the edges (7/8 per edge
/// axis down, ¾ up); one pixel spreads as (¼, ¾, ¾, ¼)²; down's adjoint is up/4.
#[test]
fn fir_resampling_values() {
    use minidiffusion::ops::{fir_downsample2x, fir_upsample2x};
    let ones = Tensor::full(1.0, [1, 1, 6, 6]);
    let down = fir_downsample2x(&ones).unwrap();
    assert_eq!(down.dims(), &[1, 1, 3, 3]);
    // rows 2o−1..2o+2: output 0 misses row −1 (weight 1/8), output 2 misses row 6 (1/8)
    let edge = 7.0 / 8.0;
    let want = [edge * edge, edge, edge * edge, edge, 1.0, edge, edge * edge, edge, edge * edge];
    assert_eq!(down.to_vec(), want);
    let up = fir_upsample2x(&Tensor::full(1.0, [1, 1, 3, 3])).unwrap();
    assert_eq!(up.dims(), &[1, 1, 6, 6]);
    // y[0] = ¼·x[−1] + ¾·x[0] = ¾ at the first row/column, y[5] = ¾·x[2] + ¼·x[3] = ¾ at the last
    let row = [0.75, 1.0, 1.0, 1.0, 1.0, 0.75];
    let want: Vec<f32> = (0..36).map(|i| row[i / 6] * row[i % 6]).collect();
    assert_eq!(up.to_vec(), want);
    // one input pixel spreads as the outer product of (¼, ¾, ¾, ¼)
    let mut v = vec![0.0; 9];
    v[4] = 1.0;
    let up = fir_upsample2x(&Tensor::from_vec(v, [1, 1, 3, 3]).unwrap()).unwrap().to_vec();
    let k = [0.25f32, 0.75, 0.75, 0.25];
    for (i, &y) in up.iter().enumerate() {
        let (r, c) = (i / 6, i % 6);
        let w = |p: usize| if (1..5).contains(&p) { k[p - 1] } else { 0.0 };
        assert_eq!(y, w(r) * w(c), "({r}, {c})");
    }
    // ⟨down(x), y⟩ = ⟨x, up(y)⟩/4 (the adjoint)
    let x = Tensor::from_vec(minidiffusion::testing::randn(&[2, 1, 6, 8], 1), [2, 1, 6, 8]).unwrap();
    let y = Tensor::from_vec(minidiffusion::testing::randn(&[2, 1, 3, 4], 2), [2, 1, 3, 4]).unwrap();
    let dot = |a: &Tensor, b: &Tensor| a.to_vec().iter().zip(b.to_vec()).map(|(p, q)| (*p as f64) * q as f64).sum::<f64>();
    let (lhs, rhs) = (dot(&fir_downsample2x(&x).unwrap(), &y), dot(&x, &fir_upsample2x(&y).unwrap()) / 4.0);
    assert!((lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    assert!(fir_downsample2x(&Tensor::zeros([1, 1, 1, 4])).is_err(), "H < 2 is refused");
}

#[test]
fn resample_rank_errors_return_err() {
    let bad = Tensor::zeros([2, 3, 4]);
    assert!(matches!(avg_pool2x2(&bad), Err(Error::Shape { op: "avg_pool2x2", .. })));
    assert!(matches!(upsample_nearest2x(&bad), Err(Error::Shape { op: "upsample_nearest2x", .. })));
    assert!(matches!(avg_pool2x2(&Tensor::zeros([1, 1, 1, 2, 2])), Err(Error::Shape { .. })));
}
