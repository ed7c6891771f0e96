//! Typed buffers behind a tensor. f32 is the compute type; f16/bf16 storage
//! exists for checkpoints and the mixed-precision path.

use super::DType;
use crate::device::Device;
use crate::error::{Error, Result};
use half::{bf16, f16};

/// A buffer on one device.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(CpuStorage),
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
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(CpuStorage::F32(_)) => DType::F32,
            Storage::Cpu(CpuStorage::F16(_)) => DType::F16,
            Storage::Cpu(CpuStorage::BF16(_)) => DType::BF16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(CpuStorage::F32(v)) => v.len(),
            Storage::Cpu(CpuStorage::F16(v)) => v.len(),
            Storage::Cpu(CpuStorage::BF16(v)) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 host slice, or a dtype error naming `op`.
    pub fn cpu_f32(&self, op: &'static str) -> Result<&[f32]> {
        match self {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
            other => Err(Error::DType { op, dtype: other.dtype() }),
        }
    }

    pub fn cpu_f32_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        match self {
            Storage::Cpu(CpuStorage::F32(v)) => Ok(v),
            other => Err(Error::DType { op, dtype: other.dtype() }),
        }
    }

    /// Values as f32 on the host, whatever the dtype.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            Storage::Cpu(CpuStorage::F32(v)) => v.clone(),
            Storage::Cpu(CpuStorage::F16(v)) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::Cpu(CpuStorage::BF16(v)) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }

    /// Convert to another dtype (round to nearest even).
    pub fn to_dtype(&self, dtype: DType) -> Storage {
        let values = self.to_f32_vec();
        Storage::Cpu(match dtype {
            DType::F32 => CpuStorage::F32(values),
            DType::F16 => CpuStorage::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
            DType::BF16 => CpuStorage::BF16(values.iter().map(|&x| bf16::from_f32(x)).collect()),
        })
    }
}
