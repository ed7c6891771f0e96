//! Pointwise activations and their derivatives (CPU reference).

use super::Activation;
use crate::ops::PARALLEL_THRESHOLD;
use rayon::prelude::*;

impl Activation {
    /// f(x).
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            // silu(x) = x·σ(x)
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu { slope } => {
                if x > 0.0 { x } else { slope * x }
            }
            // miniai's GeneralRelu: leaky_relu(x, leak) − sub
            Activation::GeneralRelu { leak, sub } => (if x > 0.0 { x } else { leak * x }) - sub,
        }
    }

    /// f'(x).
    #[inline(always)]
    pub fn derivative(self, x: f32) -> f32 {
        match self {
            // d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x)))
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 + x * (1.0 - s))
            }
            Activation::Relu => {
                if x > 0.0 { 1.0 } else { 0.0 }
            }
            Activation::LeakyRelu { slope } | Activation::GeneralRelu { leak: slope, .. } => {
                if x > 0.0 { 1.0 } else { slope }
            }
        }
    }
}

pub fn forward(act: Activation, x: &[f32]) -> Vec<f32> {
    if x.len() >= PARALLEL_THRESHOLD {
        x.par_iter().map(|&v| act.apply(v)).collect()
    } else {
        x.iter().map(|&v| act.apply(v)).collect()
    }
}

/// dx = dy · f'(x).
pub fn backward(act: Activation, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if x.len() >= PARALLEL_THRESHOLD {
        x.par_iter().zip(dy.par_iter()).map(|(&v, &g)| g * act.derivative(v)).collect()
    } else {
        x.iter().zip(dy).map(|(&v, &g)| g * act.derivative(v)).collect()
    }
}
