//! The CUDA backend: one [`CudaBackend`] per device (a GPU through cudarc, or
//! the CPU emulation), its caching allocator, and [`CudaBuffer`], the storage
//! of a CUDA tensor. Ops launch kernels by name through
//! [`CudaBackend::launch`] from their typed wrappers in `ops/<op>/cuda.rs`.

pub mod allocator;
pub mod driver;
mod emulator;
mod gpu;
pub mod kernels;

pub use allocator::AllocStats;
pub use driver::{Arg, LaunchConfig};

use super::{CudaDevice, Device};
use crate::error::{Error, Result};
use allocator::{CachingAllocator, DeviceBlock};
use driver::Driver;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Number of usable GPUs: 0 when libcuda cannot be loaded or no GPU is visible.
pub fn gpu_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        // SAFETY: only probes whether the driver library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return 0;
        }
        cudarc::driver::CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)
    })
}

/// Why a GPU cannot be used, in one line.
fn no_gpu_reason(ordinal: usize) -> String {
    // SAFETY: as in gpu_count.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        "no CUDA driver found (libcuda.so could not be loaded)".into()
    } else if gpu_count() == 0 {
        "the CUDA driver sees no GPU".into()
    } else {
        format!("there is no CUDA device {ordinal} ({} found)", gpu_count())
    }
}

/// A CUDA device ready for work.
pub struct CudaBackend {
    device: CudaDevice,
    allocator: Arc<CachingAllocator>,
}

/// The backend of `device`, opened on first use and shared after.
pub fn backend(device: CudaDevice) -> Result<Arc<CudaBackend>> {
    static BACKENDS: OnceLock<Mutex<HashMap<CudaDevice, Arc<CudaBackend>>>> = OnceLock::new();
    let mut map = BACKENDS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = map.get(&device) {
        return Ok(b.clone());
    }
    let driver: Arc<dyn Driver> = if device.emulated {
        Arc::new(emulator::EmulatedDriver::default())
    } else {
        if device.ordinal >= gpu_count() {
            return Err(Error::NoCuda(no_gpu_reason(device.ordinal)));
        }
        Arc::new(gpu::GpuDriver::open(device.ordinal)?)
    };
    let b = Arc::new(CudaBackend { device, allocator: CachingAllocator::new(driver) });
    map.insert(device, b.clone());
    Ok(b)
}

impl CudaBackend {
    pub fn device(&self) -> Device {
        Device::Cuda(self.device)
    }

    /// The GPU's name, or that it is the emulation.
    pub fn name(&self) -> String {
        self.allocator.driver().name()
    }

    fn driver(&self) -> &Arc<dyn Driver> {
        self.allocator.driver()
    }

    /// An f32 buffer of `len` elements, contents undefined.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<CudaBuffer> {
        let block = self.allocator.alloc(len * 4)?;
        Ok(CudaBuffer { block, len, backend: self.clone() })
    }

    /// An f32 buffer of zeros.
    pub fn zeros(self: &Arc<Self>, len: usize) -> Result<CudaBuffer> {
        let buf = self.alloc(len)?;
        self.driver().memset_zero(buf.ptr(), len * 4)?;
        Ok(buf)
    }

    /// Copy host values to a new device buffer.
    pub fn upload(self: &Arc<Self>, values: &[f32]) -> Result<CudaBuffer> {
        let buf = self.alloc(values.len())?;
        self.driver().htod(buf.ptr(), bytemuck::cast_slice(values))?;
        Ok(buf)
    }

    /// Launch `kernel` on this device's stream.
    pub fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        self.driver().launch(kernel, cfg, args)
    }

    /// Wait for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.driver().synchronize()
    }

    /// Allocator counters: in a steady-state training step `device_mallocs` stays put.
    pub fn alloc_stats(&self) -> AllocStats {
        self.allocator.stats()
    }

    /// Time every kernel launch from now on (CUDA events on a GPU).
    pub fn start_profiling(&self) {
        self.driver().set_profiling(true);
    }

    /// Stop timing and return one row per kernel: (name, calls, total ms),
    /// slowest first.
    pub fn stop_profiling(&self) -> Result<Vec<KernelTime>> {
        self.driver().set_profiling(false);
        let mut rows: Vec<KernelTime> = Vec::new();
        for (name, ms) in self.driver().take_profile()? {
            match rows.iter_mut().find(|r| r.kernel == name) {
                Some(r) => {
                    r.calls += 1;
                    r.total_ms += ms;
                }
                None => rows.push(KernelTime { kernel: name, calls: 1, total_ms: ms }),
            }
        }
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        Ok(rows)
    }

    /// Give cached device memory back to the driver.
    pub fn empty_cache(&self) {
        self.allocator.empty_cache()
    }
}

/// Time spent in one kernel while profiling.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub kernel: &'static str,
    pub calls: usize,
    pub total_ms: f64,
}

/// The profile as a table: kernel, calls, total ms, share of the total.
pub fn profile_table(rows: &[KernelTime]) -> String {
    let total: f64 = rows.iter().map(|r| r.total_ms).sum();
    let mut out = format!("{:<32} {:>8} {:>12} {:>8}\n", "kernel", "calls", "total ms", "share");
    for r in rows {
        out += &format!("{:<32} {:>8} {:>12.3} {:>7.1}%\n", r.kernel, r.calls, r.total_ms, 100.0 * r.total_ms / total.max(1e-12));
    }
    out
}

/// The storage of an f32 CUDA tensor: `len` elements in a cached device block.
pub struct CudaBuffer {
    block: DeviceBlock,
    len: usize,
    backend: Arc<CudaBackend>,
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuffer({} f32 on {})", self.len, self.backend.device())
    }
}

impl CudaBuffer {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn ptr(&self) -> u64 {
        self.block.ptr()
    }
    /// As a kernel argument.
    pub fn arg(&self) -> Arg {
        Arg::Ptr(self.ptr())
    }
    pub fn backend(&self) -> &Arc<CudaBackend> {
        &self.backend
    }
    pub fn device(&self) -> Device {
        self.backend.device()
    }

    /// The values, copied to the host.
    pub fn download(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.len];
        self.backend.driver().dtoh(bytemuck::cast_slice_mut(&mut out), self.ptr())?;
        Ok(out)
    }

    /// A device-side copy.
    pub fn try_clone(&self) -> Result<CudaBuffer> {
        let copy = self.backend.alloc(self.len)?;
        self.backend.driver().dtod(copy.ptr(), self.ptr(), self.len * 4)?;
        Ok(copy)
    }

    /// Overwrite with host values (same length).
    pub fn upload_from(&self, values: &[f32]) -> Result<()> {
        assert_eq!(values.len(), self.len, "upload_from: length");
        self.backend.driver().htod(self.ptr(), bytemuck::cast_slice(values))
    }
}
