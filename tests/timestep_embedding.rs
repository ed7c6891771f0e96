//! Sinusoidal timestep embedding against diffusers' formula, evaluated in f64
//! by Python (`math`) — the values are printed by the snippet in this file's
//! comments. Tolerance 1e-4: f32 rounding of t·f for t up to 999.
//!
//! ```python
//! half = dim // 2; f_i = exp(-log(10000) * i / (half - shift))
//! row = [cos(t f)] + [sin(t f)] if flip else [sin(t f)] + [cos(t f)]; odd dim: + [0]
//! ```

use minidiffusion::testing::assert_close;
use minidiffusion::{Tensor, ops};

#[test]
fn flip_sin_to_cos_shift_0() {
    let t = Tensor::from_vec(vec![0.0, 1.0, 999.0], [3]).unwrap();
    let e = ops::timestep_embedding(&t, 8, true, 0.0, 10000.0).unwrap();
    assert_eq!(e.dims(), &[3, 8]);
    #[rustfmt::skip]
    let want = [
        1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0,
        0.5403023, 0.9950042, 0.99995, 0.9999995, 0.841471, 0.0998334, 0.0099998, 0.001,
        0.9996499, 0.8074587, -0.8444697, 0.5411435, -0.0264608, -0.5899242, -0.5356033, 0.8409303,
    ];
    assert_close("embedding_flip", &e.to_vec(), &want, 1e-4, 0.0);
}

#[test]
fn sin_first_shift_1_odd_dim() {
    let t = Tensor::from_vec(vec![5.0, 250.0], [2]).unwrap();
    let e = ops::timestep_embedding(&t, 7, false, 1.0, 10000.0).unwrap();
    #[rustfmt::skip]
    let want = [
        -0.9589243, 0.0499792, 0.0005, 0.2836622, 0.9987503, 0.9999999, 0.0,
        -0.970528, 0.5984721, 0.0249974, 0.2409883, -0.8011436, 0.9996875, 0.0,
    ];
    assert_close("embedding_shift1", &e.to_vec(), &want, 1e-4, 0.0);
}

#[test]
fn bad_arguments() {
    assert!(ops::timestep_embedding(&Tensor::zeros([2, 1]), 8, true, 0.0, 10000.0).is_err());
    assert!(ops::timestep_embedding(&Tensor::zeros([2]), 1, true, 0.0, 10000.0).is_err());
}

/// diffusers' GaussianFourierProjection (log=True): [sin p, cos p] with
/// p = ln(σ)·W·2π, against the f64 formula. |p| reaches ~200 here, so the f32
/// rounding of p allows ~2e-5 of error in sin/cos.
#[test]
fn gaussian_fourier_features() {
    let sigma = [0.01f32, 0.5, 1.0, 7.0, 80.0];
    let w = [16.0f32, -3.5, 0.25, 9.0];
    let s = Tensor::from_vec(sigma.to_vec(), [5]).unwrap();
    let wt = Tensor::from_vec(w.to_vec(), [4]).unwrap();
    for flip in [false, true] {
        let e = ops::fourier_embedding(&s, &wt, flip).unwrap();
        assert_eq!(e.dims(), &[5, 8]);
        let want: Vec<f32> = sigma
            .iter()
            .flat_map(|&sg| {
                let p: Vec<f64> = w.iter().map(|&wj| (sg as f64).ln() * wj as f64 * 2.0 * std::f64::consts::PI).collect();
                let (sin, cos): (Vec<f32>, Vec<f32>) = p.iter().map(|v| (v.sin() as f32, v.cos() as f32)).unzip();
                if flip { [cos, sin].concat() } else { [sin, cos].concat() }
            })
            .collect();
        assert_close(&format!("fourier flip {flip}"), &e.to_vec(), &want, 1e-4, 0.0);
    }
    // σ = 1: ln σ = 0, so every sin is 0 and every cos 1
    let one = ops::fourier_embedding(&Tensor::from_vec(vec![1.0], [1]).unwrap(), &wt, false).unwrap().to_vec();
    assert_eq!(one, vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    assert!(ops::fourier_embedding(&s, &Tensor::zeros_on([2, 2], minidiffusion::Device::Cpu).unwrap(), false).is_err());
}
