//! CUDA against the CPU twin: binary ops (same shape, broadcast, scalar),
//! affine, fill and activations, forward and backward. On a machine without a
//! GPU these run on the CPU emulation of CUDA (kernels/emu).

use minidiffusion::testing::{ParityTol, parity_check, parity_check_at, parity_device, randn};
use minidiffusion::{Shape, Tensor, ops};

#[test]
fn binary_parity() {
    // odd sizes, not multiples of the 256-thread block
    parity_check("add", &[&[3, 5, 7], &[3, 5, 7]], |x| ops::add(&x[0], &x[1]), ParityTol::EXACTISH);
    parity_check("sub_broadcast", &[&[2, 3, 5, 7], &[3, 1, 7]], |x| ops::sub(&x[0], &x[1]), ParityTol::REDUCTION);
    parity_check("mul_channel", &[&[4, 6, 5, 5], &[1, 6, 1, 1]], |x| ops::mul(&x[0], &x[1]), ParityTol::REDUCTION);
    parity_check("mul_scalar_tensor", &[&[301], &[]], |x| ops::mul(&x[0], &x[1]), ParityTol::REDUCTION);
    let b: Vec<f32> = randn(&[7], 5).iter().map(|v| v.signum() * (1.0 + v.abs())).collect();
    parity_check_at(
        "div",
        vec![(randn(&[9, 7], 4), Shape::from([9, 7])), (b, Shape::from([7]))],
        |x| ops::div(&x[0], &x[1]),
        ParityTol::REDUCTION,
    );
}

#[test]
fn affine_parity() {
    parity_check("affine", &[&[1000]], |x| ops::affine(&x[0], -1.5, 0.25), ParityTol::EXACTISH);
}

#[test]
fn fill_parity() {
    let t = Tensor::full_on(2.5, [3, 333], parity_device()).unwrap();
    assert_eq!(t.to_vec(), vec![2.5; 999]);
    assert_eq!(Tensor::zeros_on([5], parity_device()).unwrap().to_vec(), vec![0.0; 5]);
}

#[test]
fn activation_parity() {
    // ex2.approx and rcp.approx on the GPU vs the CPU's exp: ~1e-6 at these |x|
    parity_check("silu", &[&[2, 3, 17, 13]], |x| ops::silu(&x[0]), ParityTol::EXACTISH);
    parity_check("relu", &[&[777]], |x| ops::relu(&x[0]), ParityTol::EXACTISH);
    parity_check("leaky_relu", &[&[777]], |x| ops::leaky_relu(&x[0], 0.1), ParityTol::EXACTISH);
    parity_check("general_relu", &[&[5, 155]], |x| ops::general_relu(&x[0], 0.1, 0.4), ParityTol::EXACTISH);
    // tanhf/log1pf/erff of the GPU's libdevice vs the libm crate: a few ulp
    // (spread to ±30 so the tails where expf over- or underflows are covered)
    let wide = || vec![(randn(&[903], 8).iter().map(|v| 8.0 * v).collect(), Shape::from([3, 301]))];
    parity_check_at("mish", wide(), |x| ops::mish(&x[0]), ParityTol::EXACTISH);
    parity_check_at("gelu", wide(), |x| ops::gelu(&x[0]), ParityTol::EXACTISH);
}

/// SiLU and its slope on the device across the f32 range against f64: the
/// kernels take e^−u by ex2.approx of −u·log₂e and σ by rcp.approx
/// (kernels/common.cuh), whose error grows with |u| (the rounding of
/// u·log₂e): within 2⁻²⁰ + |u|·2⁻²³ of the value (the bound of common.cuh
/// doubled); 0 where σ < 2⁻¹²⁶ (flushed: |silu| < 88·2⁻¹²⁶ ≈ 1.03e-36
/// there); ∞ and NaN kept.
#[test]
fn silu_holds_its_accuracy_across_the_range() {
    let u: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect(); // −100 … 100
    let x = Tensor::from_vec(u.clone(), [u.len()]).unwrap().to_device(parity_device()).unwrap().requires_grad_();
    let y = ops::silu(&x).unwrap();
    let slope = minidiffusion::backward(&ops::sum_all(&y).unwrap()).unwrap().get(&x).unwrap().to_vec();
    for ((&v, &got), &got_slope) in u.iter().zip(&y.to_vec()).zip(&slope) {
        let ud = v as f64;
        let s = 1.0 / (1.0 + (-ud).exp());
        let (silu, silu_slope) = (ud * s, s * (1.0 + ud * (1.0 - s)));
        let rel = 2f64.powi(-20) + ud.abs() * 2f64.powi(-23);
        assert!((got as f64 - silu).abs() <= rel * silu.abs() + 1.1e-36, "silu({v}) = {got}, f64 {silu}");
        assert!((got_slope as f64 - silu_slope).abs() <= rel * silu_slope.abs() + 1e-6, "silu'({v}) = {got_slope}, f64 {silu_slope}");
    }
    let special = Tensor::from_vec(vec![f32::INFINITY, f32::NAN, 0.0, -0.0], [4]).unwrap().to_device(parity_device()).unwrap();
    let got = ops::silu(&special).unwrap().to_vec();
    assert!(got[0] == f32::INFINITY && got[1].is_nan() && got[2] == 0.0 && got[3] == 0.0, "{got:?}");
}

#[test]
fn to_device_round_trip_and_gradient() {
    let device = parity_device();
    let x = Tensor::from_vec((0..10).map(|i| i as f32).collect(), [10]).unwrap().requires_grad_();
    let on_device = x.to_device(device).unwrap();
    assert_eq!(on_device.device(), device);
    let y = ops::mul_scalar(&on_device, 3.0).unwrap().to_device(minidiffusion::Device::Cpu).unwrap();
    let grads = minidiffusion::backward(&ops::sum_all(&y).unwrap()).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec(), vec![3.0; 10]);
    assert_eq!(grads.get(&x).unwrap().device(), minidiffusion::Device::Cpu);
}

/// Storage casts on the device against the CPU twin (the `half` crate's
/// rounding): ties to even both ways, NaN kept, ±∞, subnormals, values that
/// round up to ∞, and the exact widening back.
#[test]
fn cast_parity() {
    use minidiffusion::tensor::DType;
    let mut v = randn(&[1000], 5);
    v.extend([
        1.0 + 1.0 / 256.0,            // a tie: rounds down to 1 (even)
        1.0 + 3.0 / 256.0,            // a tie: rounds up (to even)
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,                        // subnormal
        -3e-39,
        f32::MAX,                     // past bf16's largest: ∞
        3.3895314e38,                 // bf16's largest
        0.0,
        -0.0,
    ]);
    let cpu = Tensor::from_vec(v.clone(), vec![v.len()]).unwrap();
    let dev = cpu.to_device(parity_device()).unwrap();
    let (c16, d16) = (ops::cast(&cpu, DType::BF16).unwrap(), ops::cast(&dev, DType::BF16).unwrap());
    assert_eq!((c16.dtype(), d16.dtype(), d16.device()), (DType::BF16, DType::BF16, parity_device()));
    let bits = |t: &Tensor| t.to_vec().iter().map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() }).collect::<Vec<_>>();
    assert_eq!(bits(&d16), bits(&c16), "f32 → bf16");
    let back = ops::cast(&d16, DType::F32).unwrap();
    assert_eq!((back.dtype(), back.device()), (DType::F32, parity_device()));
    assert_eq!(bits(&back), bits(&d16), "bf16 → f32 is exact");
    let got = d16.to_vec();
    let n = v.len();
    assert_eq!((got[1000], got[1001]), (1.0, 1.0 + 4.0 / 256.0));
    assert!(got[1002].is_nan() && got[1003] == f32::INFINITY && got[1004] == f32::NEG_INFINITY && got[1007] == f32::INFINITY);
    assert_eq!((got[1008], got[n - 2]), (3.3895314e38, 0.0));
    assert!(got[n - 1] == 0.0 && got[n - 1].is_sign_negative());
    // moving between devices keeps the dtype and the values
    let there = c16.to_device(parity_device()).unwrap();
    let back_home = d16.to_device(minidiffusion::Device::Cpu).unwrap();
    assert_eq!((there.dtype(), back_home.dtype()), (DType::BF16, DType::BF16));
    assert_eq!((bits(&there), bits(&back_home)), (bits(&c16), bits(&c16)));
    // ops that compute in f32 refuse bf16 storage with one clear error
    let err = ops::add(&d16, &d16).unwrap_err().to_string();
    assert!(err.contains("BF16") || err.contains("bf16"), "{err}");
}

/// Dropout (kernels/dropout.cu) against the CPU twin: the same Philox
/// uniforms, so the same mask, exactly; forward and backward.
#[test]
fn dropout_parity() {
    parity_check("dropout", &[&[3, 1001]], |x| ops::dropout(&x[0], 0.3, 9, 4), ParityTol { atol: 0.0, rtol: 0.0 });
}
