//! Random tensors from the Philox stream, on any device.
//!
//! Stream `(seed, offset)` of [`crate::rng::PhiloxStream`]: the CPU arm fills
//! from it directly (`cpu.rs`), the CUDA arm runs `kernels/random.cu`, which
//! computes the same (seed, offset, index) → value mapping in
//! `kernels/philox.cuh`. u32 and uniform values agree bit for bit across
//! devices; normals too, except that a GPU's double `log`/`sin`/`cos` may move
//! the f32 rounding of a rare value by one ulp.
//!
//! The `_at` variants start at element `start` of the stream: element `start + i`
//! lands in output `i`, so a fill of `a..b` followed by one of `b..c` equals one
//! fill of `a..c`. Random tensors are leaves: nothing is recorded on the tape.

pub mod cpu;
pub mod cuda;

use crate::device::Device;
use crate::error::Result;
use crate::tensor::{Shape, Storage, Tensor, cpu_f32_storage};

/// Standard normals of `shape`: element i is normal i of stream (seed, offset).
pub fn randn(shape: impl Into<Shape>, seed: u64, offset: u64, device: Device) -> Result<Tensor> {
    randn_at(shape, seed, offset, 0, device)
}

/// Standard normals of `shape` from elements `start..` of stream (seed, offset).
pub fn randn_at(shape: impl Into<Shape>, seed: u64, offset: u64, start: u64, device: Device) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("randn_at");
    let shape = shape.into();
    let n = shape.numel();
    let storage = match device {
        Device::Cpu => cpu_f32_storage(cpu::normal(seed, offset, start, n)),
        Device::Cuda(d) => Storage::Cuda(cuda::normal(&crate::device::cuda::backend(d)?, seed, offset, start, n)?),
    };
    Ok(Tensor::from_storage(storage, shape))
}

/// Uniform values in [lo, hi) of `shape`: `lo + (hi − lo)·u` in f32 with u the
/// uniform element i of stream (seed, offset) (as [`Tensor::rand_uniform`]).
pub fn rand_uniform(shape: impl Into<Shape>, lo: f32, hi: f32, seed: u64, offset: u64, device: Device) -> Result<Tensor> {
    rand_uniform_at(shape, lo, hi, seed, offset, 0, device)
}

/// [`rand_uniform`] from elements `start..` of the stream.
pub fn rand_uniform_at(shape: impl Into<Shape>, lo: f32, hi: f32, seed: u64, offset: u64, start: u64, device: Device) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("rand_uniform_at");
    let shape = shape.into();
    let n = shape.numel();
    let storage = match device {
        Device::Cpu => cpu_f32_storage(cpu::uniform(lo, hi, seed, offset, start, n)),
        Device::Cuda(d) => Storage::Cuda(cuda::uniform(&crate::device::cuda::backend(d)?, lo, hi, seed, offset, start, n)?),
    };
    Ok(Tensor::from_storage(storage, shape))
}

/// The raw u32 stream (seed, offset), elements 0..n, computed on `device` (for tests).
pub fn random_u32(n: usize, seed: u64, offset: u64, device: Device) -> Result<Vec<u32>> {
    random_u32_at(n, seed, offset, 0, device)
}

/// The raw u32 stream (seed, offset), elements start..start+n, computed on `device`.
pub fn random_u32_at(n: usize, seed: u64, offset: u64, start: u64, device: Device) -> Result<Vec<u32>> {
    let _nvtx = crate::device::nvtx::range("random_u32_at");
    match device {
        Device::Cpu => Ok(cpu::u32s(seed, offset, start, n)),
        Device::Cuda(d) => cuda::u32s(&crate::device::cuda::backend(d)?, seed, offset, start, n),
    }
}
