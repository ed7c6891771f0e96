//! The CUDA backend: one [`CudaBackend`] per device (a GPU through cudarc, or
//! the CPU emulation), its caching allocator, and [`CudaBuffer`], the storage
//! of a CUDA tensor. Ops launch kernels by name through
//! [`CudaBackend::launch`] from their typed wrappers in `ops/<op>/cuda.rs`.

pub mod allocator;
pub mod driver;
mod emulator;
mod gpu;
pub mod kernels;
pub mod pinned;

pub use allocator::{AllocStats, GraphPool};
pub use driver::{Arg, LaunchConfig};

use super::{CudaDevice, Device};
use crate::error::{Error, Result};
use crate::tensor::DType;
use allocator::{CachingAllocator, DeviceBlock};
use driver::{Driver, GraphExec, PendingRead};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    profiling: AtomicBool,
    graph_captures: AtomicU64,
    graph_launches: AtomicU64,
    /// While a graph is being captured: what it must keep alive (buffers made
    /// outside its pool that its kernels read, see [`CudaBackend::keep_for_graph`]).
    capture_keep: Mutex<Option<Vec<Arc<dyn std::any::Any + Send + Sync>>>>,
}

/// Counters of CUDA graph use on a device (see [`CudaBackend::graph_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    pub captures: u64,
    pub launches: u64,
}

/// Work captured once on a device and replayed by [`Graph::launch`]: the same
/// kernels with the same arguments on the same buffers, one launch for all.
/// It keeps its private memory pool, so the addresses it replays stay its own.
pub struct Graph {
    exec: Box<dyn GraphExec>,
    backend: Arc<CudaBackend>,
    _pool: Arc<GraphPool>,
    _kept: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Graph {
    /// Queue the whole graph on the device's stream.
    pub fn launch(&self) -> Result<()> {
        let _nvtx = crate::device::nvtx::range("graph launch");
        self.exec.launch()?;
        self.backend.graph_launches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Restores the thread's previous pool when dropped (also on error or panic).
struct ActivePool<'a> {
    allocator: &'a CachingAllocator,
    previous: Option<Option<Arc<GraphPool>>>,
}

impl Drop for ActivePool<'_> {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            self.allocator.set_active_pool(previous);
        }
    }
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
    let b = Arc::new(CudaBackend {
        device,
        allocator: CachingAllocator::new(driver),
        profiling: AtomicBool::new(false),
        graph_captures: AtomicU64::new(0),
        graph_launches: AtomicU64::new(0),
        capture_keep: Mutex::new(None),
    });
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

    /// Whether kernels using Hopper's warpgroup MMA run here (see `Driver::wgmma`).
    pub fn wgmma(&self) -> bool {
        self.allocator.driver().wgmma()
    }

    fn driver(&self) -> &Arc<dyn Driver> {
        self.allocator.driver()
    }

    /// An f32 buffer of `len` elements, contents undefined.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<CudaBuffer> {
        self.alloc_as(len, DType::F32)
    }

    /// An f32 buffer from the general cache even while this thread draws on a
    /// graph's pool: for values kept beyond one graph (a tensor's derived
    /// values), which would otherwise hold the whole pool alive.
    pub fn alloc_outside_pools(self: &Arc<Self>, len: usize) -> Result<CudaBuffer> {
        let _general = ActivePool { allocator: &self.allocator, previous: Some(self.allocator.set_active_pool(None)) };
        self.alloc(len)
    }

    /// A buffer of `len` elements of `dtype` (f32 or bf16), contents undefined.
    pub fn alloc_as(self: &Arc<Self>, len: usize, dtype: DType) -> Result<CudaBuffer> {
        if dtype == DType::F16 {
            return Err(Error::Cuda("f16 storage on CUDA is not supported (f32 and bf16 are)".into()));
        }
        let block = self.allocator.alloc(len * dtype.size_of())?;
        Ok(CudaBuffer { block, len, dtype, backend: self.clone() })
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
        cfg.check(kernel)?;
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

    /// Time every kernel this thread launches from now on (CUDA events on a GPU).
    pub fn start_profiling(&self) {
        self.profiling.store(true, Ordering::Relaxed);
        self.driver().set_profiling(true);
    }

    /// Whether launches are being timed (graph replays cannot be, per kernel).
    pub fn is_profiling(&self) -> bool {
        self.profiling.load(Ordering::Relaxed)
    }

    /// Stop timing and return one row per kernel: (name, calls, total ms),
    /// slowest first.
    pub fn stop_profiling(&self) -> Result<Vec<KernelTime>> {
        self.profiling.store(false, Ordering::Relaxed);
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

    /// A new private memory pool for a graph.
    pub fn new_graph_pool(&self) -> Arc<GraphPool> {
        self.allocator.new_pool()
    }

    fn activate(&self, pool: &Arc<GraphPool>) -> ActivePool<'_> {
        let previous = self.allocator.set_active_pool(Some(pool.clone()));
        ActivePool { allocator: &self.allocator, previous: Some(previous) }
    }

    /// Run `f` with this thread's allocations on this device drawn from `pool`
    /// (the eager warm-up before a capture: it grows the pool to what the
    /// captured work needs, so the capture itself allocates nothing).
    pub fn with_pool<T>(&self, pool: &Arc<GraphPool>, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _active = self.activate(pool);
        f()
    }

    /// Record `f`'s work on this device as a graph, allocating from `pool`;
    /// nothing runs until [`Graph::launch`]. `f` must not copy to or from the
    /// host or synchronise (that fails the capture). Its results are buffers
    /// the graph will write when launched.
    pub fn capture<T>(self: &Arc<Self>, pool: &Arc<GraphPool>, f: impl FnOnce() -> Result<T>) -> Result<(Graph, T)> {
        let _nvtx = crate::device::nvtx::range("graph capture");
        let active = self.activate(pool);
        self.driver().begin_capture()?;
        *self.keep_list() = Some(Vec::new());
        let recorded = f();
        let kept = self.keep_list().take().unwrap_or_default();
        let ended = self.driver().end_capture();
        drop(active);
        let value = recorded?;
        let exec = ended?;
        self.graph_captures.fetch_add(1, Ordering::Relaxed);
        Ok((Graph { exec, backend: self.clone(), _pool: pool.clone(), _kept: kept }, value))
    }

    fn keep_list(&self) -> std::sync::MutexGuard<'_, Option<Vec<Arc<dyn std::any::Any + Send + Sync>>>> {
        self.capture_keep.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether work on this device is being recorded into a graph now.
    pub fn is_capturing(&self) -> bool {
        self.keep_list().is_some()
    }

    /// Keep `value` alive as long as the graph being captured (if one is):
    /// its kernels read it at every replay.
    pub fn keep_for_graph(&self, value: Arc<dyn std::any::Any + Send + Sync>) {
        if let Some(list) = self.keep_list().as_mut() {
            list.push(value);
        }
    }

    /// How many graphs were captured and launched on this device.
    pub fn graph_stats(&self) -> GraphStats {
        GraphStats { captures: self.graph_captures.load(Ordering::Relaxed), launches: self.graph_launches.load(Ordering::Relaxed) }
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
    super::profile_table("kernel", rows.iter().map(|r| (r.kernel, r.calls, r.total_ms)))
}

/// The storage of a CUDA tensor: `len` elements of f32 (the compute type) or
/// bf16 (16-bit patterns; the bf16 path's activations) in a cached device block.
pub struct CudaBuffer {
    block: DeviceBlock,
    len: usize,
    dtype: DType,
    backend: Arc<CudaBackend>,
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuffer({} {:?} on {})", self.len, self.dtype, self.backend.device())
    }
}

impl CudaBuffer {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    fn bytes(&self) -> usize {
        self.len * self.dtype.size_of()
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

    /// The values as f32, copied to the host (bf16 widened exactly).
    pub fn download(&self) -> Result<Vec<f32>> {
        if self.dtype == DType::BF16 {
            let mut bits = vec![0u16; self.len];
            self.backend.driver().dtoh(bytemuck::cast_slice_mut(&mut bits), self.ptr())?;
            return Ok(bits.into_iter().map(|b| half::bf16::from_bits(b).to_f32()).collect());
        }
        let mut out = vec![0f32; self.len];
        self.backend.driver().dtoh(bytemuck::cast_slice_mut(&mut out), self.ptr())?;
        Ok(out)
    }

    /// Queue a copy of the values to the host and go on; [`PendingDownload::wait`]
    /// returns them once the stream has reached the copy (work queued later
    /// may still be running).
    pub fn download_async(&self) -> Result<PendingDownload> {
        let read = self.backend.driver().dtoh_async(self.ptr(), self.bytes())?;
        Ok(PendingDownload { read, dtype: self.dtype })
    }

    /// A device-side copy.
    pub fn try_clone(&self) -> Result<CudaBuffer> {
        let copy = self.backend.alloc_as(self.len, self.dtype)?;
        self.backend.driver().dtod(copy.ptr(), self.ptr(), self.bytes())?;
        Ok(copy)
    }

    /// Overwrite with another buffer's values on the device (same length and dtype).
    pub fn copy_from(&self, src: &CudaBuffer) -> Result<()> {
        assert_eq!((src.len, src.dtype), (self.len, self.dtype), "copy_from: length and dtype");
        self.backend.driver().dtod(self.ptr(), src.ptr(), self.bytes())
    }

    /// Overwrite with host values (same length; f32 buffers).
    pub fn upload_from(&self, values: &[f32]) -> Result<()> {
        assert_eq!(values.len(), self.len, "upload_from: length");
        if self.dtype != DType::F32 {
            return Err(Error::DType { op: "upload", dtype: self.dtype });
        }
        self.backend.driver().htod(self.ptr(), bytemuck::cast_slice(values))
    }
}

/// Values on their way to the host (see [`CudaBuffer::download_async`]).
pub struct PendingDownload {
    read: Box<dyn PendingRead>,
    dtype: DType,
}

impl PendingDownload {
    /// Wait for the copy; the values as f32 (bf16 widened exactly).
    pub fn wait(self) -> Result<Vec<f32>> {
        let bytes = self.read.wait()?;
        Ok(match self.dtype {
            DType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_ne_bytes([b[0], b[1]])).to_f32()).collect(),
            _ => bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect(),
        })
    }
}
