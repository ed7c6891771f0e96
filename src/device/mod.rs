//! Where a tensor's storage lives. Ops dispatch on the device of their inputs:
//! `Device::Cpu` runs the plain-Rust kernels, `Device::Cuda` the CUDA kernels
//! in `kernels/` — on a GPU, or on the CPU emulation of CUDA that lets the
//! CUDA path be tested on machines without one.

pub mod cpu_profile;
pub mod cuda;
pub mod nvtx;

use crate::error::{Error, Result};
use std::fmt;

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory, plain-Rust kernels (the reference twins of the CUDA kernels).
    #[default]
    Cpu,
    /// A CUDA device: a GPU by ordinal, or the emulation.
    Cuda(CudaDevice),
}

/// Which CUDA device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CudaDevice {
    pub ordinal: usize,
    /// The CPU emulation of CUDA (kernels/emu): same kernels, same launches, no GPU.
    pub emulated: bool,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(CudaDevice { ordinal, emulated: false }) => write!(f, "cuda:{ordinal}"),
            Device::Cuda(CudaDevice { ordinal, emulated: true }) => write!(f, "cuda-emu:{ordinal}"),
        }
    }
}

/// What a `--device` flag asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    /// CUDA when a driver and a GPU are there, else the CPU.
    Auto,
    Exact(Device),
}

impl DeviceRequest {
    /// Parse `auto`, `cpu`, `cuda`, `cuda:N` or `cuda-emu` (the CPU emulation, for tests).
    pub fn parse(text: &str) -> Result<DeviceRequest> {
        let bad = || Error::Argument { op: "--device", msg: format!("'{text}' is not one of auto, cpu, cuda, cuda:N") };
        Ok(match text {
            "auto" => DeviceRequest::Auto,
            "cpu" => DeviceRequest::Exact(Device::Cpu),
            "cuda" => DeviceRequest::Exact(Device::Cuda(CudaDevice { ordinal: 0, emulated: false })),
            "cuda-emu" => DeviceRequest::Exact(Device::Cuda(CudaDevice { ordinal: 0, emulated: true })),
            _ => {
                let ordinal = text.strip_prefix("cuda:").ok_or_else(bad)?.parse::<usize>().map_err(|_| bad())?;
                DeviceRequest::Exact(Device::Cuda(CudaDevice { ordinal, emulated: false }))
            }
        })
    }

    /// The device to use: `auto` becomes cuda:0 when a GPU is usable, else cpu;
    /// an explicit CUDA device must be usable, or this is a clear error.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceRequest::Auto => Ok(if cuda::gpu_count() > 0 {
                Device::Cuda(CudaDevice { ordinal: 0, emulated: false })
            } else {
                Device::Cpu
            }),
            DeviceRequest::Exact(Device::Cuda(d)) => {
                cuda::backend(d)?;
                Ok(Device::Cuda(d))
            }
            DeviceRequest::Exact(d) => Ok(d),
        }
    }
}

impl Device {
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

/// Keep freed host memory in the process for reuse (glibc's malloc): blocks
/// up to 32 MiB come from the heap instead of their own mmap, and the heap's
/// top is not handed back to the kernel. A CPU training step frees and
/// re-allocates the same large buffers (a weight gradient, an im2col matrix);
/// freshly mapped pages fault on first touch, and a buffer that is first read
/// (calloc's zero pages) and then written faults twice, each time flushing
/// the other cores' TLBs: 11 of 12.7 ms of a 256×4×4 conv backward, 12 % of a
/// tiny-preset training step. The trade: the peak stays resident (as
/// PyTorch's caching allocators keep theirs). Called once by the CLI; a
/// library user may call it too. No-op off glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets malloc's tunables; called before the
            // allocations it should affect, from one thread (Once).
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}

/// A profile as a table: name, calls, total ms and share of the total, one
/// row per (name, calls, ms) in the order given (`--profile`'s output).
pub fn profile_table<'a>(heading: &str, rows: impl IntoIterator<Item = (&'a str, usize, f64)> + Clone) -> String {
    let total: f64 = rows.clone().into_iter().map(|(_, _, ms)| ms).sum();
    let mut out = format!("{heading:<32} {:>8} {:>12} {:>8}\n", "calls", "total ms", "share");
    for (name, calls, ms) in rows {
        out += &format!("{name:<32} {calls:>8} {ms:>12.3} {:>7.1}%\n", 100.0 * ms / total.max(1e-12));
    }
    out
}
