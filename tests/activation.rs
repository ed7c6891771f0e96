//! SiLU, ReLU, leaky ReLU, GeneralRelu, Mish, GELU: values and gradient checks.

use minidiffusion::testing::{GradTol, assert_close, grad_check_at, randn};
use minidiffusion::{Shape, Tensor, ops};

fn t(values: &[f32]) -> Tensor {
    Tensor::from_vec(values.to_vec(), [values.len()]).unwrap()
}

/// Random inputs kept at least 0.05 from the kink at 0 (the central difference
/// step is 1e-3, so it never straddles the kink).
fn away_from_zero(n: usize, seed: u64) -> Vec<f32> {
    randn(&[n], seed).into_iter().map(|v| if v.abs() < 0.05 { v.signum() * 0.05 + v } else { v }).collect()
}

#[test]
fn values() {
    let x = t(&[-2.0, -0.5, 0.0, 1.0, 3.0]);
    let silu: Vec<f32> = [-2.0f32, -0.5, 0.0, 1.0, 3.0].iter().map(|&v| v / (1.0 + (-v).exp())).collect();
    assert_close("silu", &ops::silu(&x).unwrap().to_vec(), &silu, 1e-7, 1e-6);
    assert_eq!(ops::relu(&x).unwrap().to_vec(), vec![0.0, 0.0, 0.0, 1.0, 3.0]);
    assert_eq!(ops::leaky_relu(&x, 0.1).unwrap().to_vec(), vec![-0.2, -0.05, 0.0, 1.0, 3.0]);
    // GeneralRelu(leak 0.1, sub 0.4)
    assert_close("general_relu", &ops::general_relu(&x, 0.1, 0.4).unwrap().to_vec(), &[-0.6, -0.45, -0.4, 0.6, 2.6], 1e-6, 0.0);
    // silu(1) = 1/(1+e^-1)
    assert_close("silu(1)", &ops::silu(&t(&[1.0])).unwrap().to_vec(), &[0.731_058_6], 1e-7, 0.0);
}

#[test]
fn silu_grad() {
    grad_check_at("silu", vec![(randn(&[2, 3, 4, 4], 1), Shape::from([2, 3, 4, 4]))], |x| ops::silu(&x[0]), GradTol::default());
}

#[test]
fn relu_grad() {
    grad_check_at("relu", vec![(away_from_zero(40, 2), Shape::from([40]))], |x| ops::relu(&x[0]), GradTol::default());
}

#[test]
fn leaky_relu_grad() {
    grad_check_at("leaky_relu", vec![(away_from_zero(40, 3), Shape::from([40]))], |x| ops::leaky_relu(&x[0], 0.1), GradTol::default());
}

#[test]
fn general_relu_grad() {
    grad_check_at("general_relu", vec![(away_from_zero(40, 4), Shape::from([4, 10]))], |x| ops::general_relu(&x[0], 0.1, 0.4), GradTol::default());
}

/// Mish and GELU against their f64 formulas (libm's f64 tanh/log1p/erf),
/// including the tails where exp over- or underflows in f32.
#[test]
fn mish_and_gelu_values() {
    let xs = [-100.0f32, -20.0, -3.0, -1.0, -0.25, 0.0, 0.5, 1.0, 2.5, 15.0, 100.0];
    let mish: Vec<f32> = xs.iter().map(|&v| {
        let v = v as f64;
        (v * libm::tanh(libm::log1p(libm::exp(v)))) as f32
    }).collect();
    let gelu: Vec<f32> = xs.iter().map(|&v| {
        let v = v as f64;
        (0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))) as f32
    }).collect();
    assert_close("mish", &ops::mish(&t(&xs)).unwrap().to_vec(), &mish, 1e-6, 1e-6);
    assert_close("gelu", &ops::gelu(&t(&xs)).unwrap().to_vec(), &gelu, 1e-6, 1e-6);
    // the exact GELU, not the tanh approximation: gelu(1) = Φ(1) = 0.841344746
    assert_close("gelu(1)", &ops::gelu(&t(&[1.0])).unwrap().to_vec(), &[0.841_344_7], 1e-7, 0.0);
    for name in ["silu", "swish", "mish", "gelu", "relu"] {
        assert!(ops::Activation::from_diffusers(name).is_some(), "{name}");
    }
    assert_eq!(ops::Activation::from_diffusers("tanh"), None);
}

#[test]
fn mish_grad() {
    let mut x = randn(&[3, 20], 5);
    x.extend([-12.0, 9.0]);
    grad_check_at("mish", vec![(x, Shape::from([62]))], |x| ops::mish(&x[0]), GradTol::default());
}

#[test]
fn gelu_grad() {
    let mut x = randn(&[3, 20], 6);
    x.extend([-6.0, 5.0]);
    grad_check_at("gelu", vec![(x, Shape::from([62]))], |x| ops::gelu(&x[0]), GradTol::default());
}

/// Past one parallel chunk (and with a tail short of a vector), the
/// vectorised loops give every activation's f and dy·f′ bit for bit as the
/// scalar functions do, element by element.
#[test]
fn long_inputs_match_the_scalar_functions() {
    use ops::activation::cpu;
    let n = 3 * (1 << 15) + 7;
    let x: Vec<f32> = randn(&[n], 11).into_iter().map(|v| 4.0 * v).collect();
    let dy = randn(&[n], 12);
    let all = [
        ops::Activation::Silu,
        ops::Activation::Relu,
        ops::Activation::LeakyRelu { slope: 0.1 },
        ops::Activation::GeneralRelu { leak: 0.1, sub: 0.4 },
        ops::Activation::Mish,
        ops::Activation::Gelu,
    ];
    for act in all {
        let y = cpu::forward(act, &x);
        let dx = cpu::backward(act, &x, &dy);
        for i in 0..n {
            assert_eq!(y[i].to_bits(), act.apply(x[i]).to_bits(), "{act:?} f at {i}");
            assert_eq!(dx[i].to_bits(), (dy[i] * act.derivative(x[i])).to_bits(), "{act:?} dy·f′ at {i}");
        }
    }
}
