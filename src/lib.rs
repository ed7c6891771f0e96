//! minidiffusion: train small diffusion UNets, sample them (DDPM, skip-DDPM,
//! DDIM) and score the samples (FID/KID), with hand-written kernels and a
//! plain-Rust CPU twin of each.

pub mod autograd;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod error;
pub mod io;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod tensor;
pub mod testing;
pub mod track;
pub mod train;

pub use autograd::{Gradients, backward, no_grad};
pub use device::Device;
pub use error::{Error, Result};
pub use tensor::{DType, Shape, Tensor};
