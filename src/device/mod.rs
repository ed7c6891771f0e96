//! Where a tensor's storage lives. Ops dispatch on the device of their inputs;
//! the CUDA device joins this enum with the CUDA backend.

use std::fmt;

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory, plain-Rust kernels (the reference twins of the CUDA kernels).
    #[default]
    Cpu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
        }
    }
}

impl Device {
    /// Parse `cpu` (CUDA names arrive with the CUDA backend).
    pub fn parse(name: &str) -> Option<Device> {
        match name {
            "cpu" => Some(Device::Cpu),
            _ => None,
        }
    }
}
