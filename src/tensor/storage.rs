//! Typed buffers behind a tensor. f32 is the compute type; f16/bf16 host
//! storage exists for checkpoints and the mixed-precision path.

use super::DType;
use crate::device::Device;
use crate::device::cuda::CudaBuffer;
use crate::error::{Error, Result};
use half::{bf16, f16};

/// A buffer on one device.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    /// f32 on a CUDA device.
    Cuda(CudaBuffer),
}

/// Host buffers by dtype.
#[derive(Clone, Debug)]
pub enum CpuStorage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(b) => b.device(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(CpuStorage::F32(_)) => DType::F32,
            Storage::Cuda(b) => b.dtype(),
            Storage::Cpu(CpuStorage::F16(_)) => DType::F16,
            Storage::Cpu(CpuStorage::BF16(_)) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(CpuStorage::F32(v)) => v.len(),
            Storage::Cpu(CpuStorage::F16(v)) => v.len(),
            Storage::Cpu(CpuStorage::BF16(v)) => v.len(),
            Storage::Cuda(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 host slice, or an error naming `op`.
    pub fn cpu_f32(&self, op: &'static str) -> Result<&[f32]> {
        match self {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
            Storage::Cuda(b) => Err(Error::WrongDevice { op, expected: "cpu", got: b.device() }),
            other => Err(Error::DType { op, dtype: other.dtype() }),
        }
    }

    pub fn cpu_f32_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        match self {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
            Storage::Cuda(b) => Err(Error::WrongDevice { op, expected: "cpu", got: b.device() }),
            other => Err(Error::DType { op, dtype: other.dtype() }),
        }
    }

    /// The f32 CUDA buffer, or an error naming `op`.
    pub fn cuda(&self, op: &'static str) -> Result<&CudaBuffer> {
        match self {
            Storage::Cuda(b) if b.dtype() == DType::F32 => Ok(b),
            Storage::Cuda(b) => Err(Error::DType { op, dtype: b.dtype() }),
            other => Err(Error::WrongDevice { op, expected: "cuda", got: other.device() }),
        }
    }

    /// The CUDA buffer whatever its dtype (for the ops that read bf16 storage too).
    pub fn cuda_any(&self, op: &'static str) -> Result<&CudaBuffer> {
        match self {
            Storage::Cuda(b) => Ok(b),
            other => Err(Error::WrongDevice { op, expected: "cuda", got: other.device() }),
        }
    }

    /// Values as f32 on the host, whatever the dtype or device.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        Ok(match self {
            Storage::Cpu(CpuStorage::F32(v)) => v.clone(),
            Storage::Cpu(CpuStorage::F16(v)) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::Cpu(CpuStorage::BF16(v)) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::Cuda(b) => b.download()?,
        })
    }

    /// A copy on the same device.
    pub fn try_clone(&self) -> Result<Storage> {
        Ok(match self {
            Storage::Cpu(c) => Storage::Cpu(c.clone()),
            Storage::Cuda(b) => Storage::Cuda(b.try_clone()?),
        })
    }

    /// A host copy converted to another dtype (round to nearest even).
    pub fn to_dtype(&self, dtype: DType) -> Result<Storage> {
        let values = self.to_f32_vec()?;
        Ok(Storage::Cpu(match dtype {
            DType::F32 => CpuStorage::F32(values),
            DType::F16 => CpuStorage::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => CpuStorage::BF16(values.iter().map(|&x| bf16::from_f32(x)).collect()),
        }))
    }
}
