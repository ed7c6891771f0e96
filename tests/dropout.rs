//! Dropout: the kept fraction and scale, the same mask for the same stream
//! and another for another, the backward through the same mask (finite
//! differences), p = 0 as the identity, bad p refused.

use minidiffusion::testing::{GradTol, grad_check_at, randn};
use minidiffusion::{Shape, Tensor, ops};

#[test]
fn keeps_about_one_minus_p_scaled() {
    let n = 100_000;
    let x = Tensor::from_vec(vec![1.0; n], [n]).unwrap();
    for p in [0.1f32, 0.5, 0.9] {
        let y = ops::dropout(&x, p, 7, 3).unwrap().to_vec();
        let kept = y.iter().filter(|&&v| v != 0.0).count();
        // binomial: 5 standard deviations
        let sd = (n as f32 * p * (1.0 - p)).sqrt();
        assert!((kept as f32 - n as f32 * (1.0 - p)).abs() < 5.0 * sd, "p {p}: kept {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || v == 1.0 / (1.0 - p)), "p {p}: kept values scaled by 1/(1 − p)");
        // mean preserved in expectation
        let mean = y.iter().sum::<f32>() / n as f32;
        assert!((mean - 1.0).abs() < 5.0 * sd / n as f32 / (1.0 - p), "p {p}: mean {mean}");
    }
}

#[test]
fn the_stream_decides_the_mask() {
    let x = Tensor::from_vec(randn(&[4096], 1), [4096]).unwrap();
    let a = ops::dropout(&x, 0.3, 7, 3).unwrap().to_vec();
    assert_eq!(a, ops::dropout(&x, 0.3, 7, 3).unwrap().to_vec());
    assert_ne!(a, ops::dropout(&x, 0.3, 7, 4).unwrap().to_vec());
    assert_ne!(a, ops::dropout(&x, 0.3, 8, 3).unwrap().to_vec());
    assert_eq!(ops::dropout(&x, 0.0, 7, 3).unwrap().to_vec(), x.to_vec());
    for bad in [1.0, -0.1, f32::NAN] {
        assert!(ops::dropout(&x, bad, 7, 3).is_err(), "{bad}");
    }
}

#[test]
fn gradient_goes_through_the_same_mask() {
    grad_check_at("dropout", vec![(randn(&[3, 50], 2), Shape::from([3, 50]))], |x| ops::dropout(&x[0], 0.4, 11, 5), GradTol::default());
    // and exactly: d(sum y)/dx = mask/(1 − p)
    let x = Tensor::from_vec(randn(&[64], 3), [64]).unwrap().requires_grad_();
    let y = ops::dropout(&x, 0.25, 1, 2).unwrap();
    let g = minidiffusion::backward(&ops::sum_all(&y).unwrap()).unwrap().get(&x).unwrap().to_vec();
    for ((gi, yi), xi) in g.iter().zip(y.to_vec()).zip(x.to_vec()) {
        assert_eq!(*gi, if yi == 0.0 && xi != 0.0 { 0.0 } else { 1.0 / 0.75 });
    }
}
