//! A real GPU as a [`Driver`], through cudarc (driver API, loaded at run time).

use super::driver::{Arg, Driver, GraphExec, LaunchConfig, PendingRead};
use super::kernels::KernelImage;
use super::pinned::{PINNED_MAX_BYTES, PinnedBlock, PinnedPool};
use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaStream, result as cu, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

pub struct GpuDriver {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    name: String,
    profiling: super::driver::ProfiledThread,
    /// (kernel, start, end) events of timed launches, read by take_profile.
    timed: Mutex<Vec<(&'static str, CudaEvent, CudaEvent)>>,
    /// A graph capture is open on the stream (launches are not timed then).
    capturing: std::sync::atomic::AtomicBool,
    /// Staging for small copies, so that they do not synchronise the stream.
    pinned: Arc<PinnedPool>,
    /// The module has sm_90a code for this (compute capability 9.0) GPU.
    wgmma: bool,
}

/// An instantiated CUDA graph (cudarc's, which destroys it when dropped).
struct GpuGraph(CudaGraph);

impl GraphExec for GpuGraph {
    fn launch(&self) -> Result<()> {
        self.0.launch().map_err(|e| cuda_err("launching a CUDA graph", e))
    }
}

fn cuda_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{what}: {e:?}"))
}

impl GpuDriver {
    /// Open GPU `ordinal` and load the kernels (the embedded fatbin, or the
    /// embedded sources compiled with NVRTC for this GPU's architecture).
    pub fn open(ordinal: usize) -> Result<GpuDriver> {
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err(&format!("opening CUDA device {ordinal}"), e))?;
        // SAFETY: called before any allocation on this context (cudarc's advice).
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(|e| cuda_err("creating a stream", e))?;
        let name = ctx.name().unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let (major, minor) = ctx.compute_capability().map_err(|e| cuda_err("compute capability", e))?;
        // Hopper (9.0) gets its arch-specific target: the fatbin's sm_90a SASS, or NVRTC's compute_90a
        let hopper = (major, minor) == (9, 0);
        let wgmma = hopper && (!super::kernels::compiled_ahead() || super::kernels::targets().contains("sm_90a"));
        let ptx = match super::kernels::KERNEL_IMAGE {
            KernelImage::Fatbin(bytes) => cudarc::nvrtc::Ptx::from_binary(bytes.to_vec()),
            KernelImage::Source(src) => {
                let arch = if hopper { "90a".to_string() } else { format!("{major}{minor}") };
                let opts = cudarc::nvrtc::CompileOptions {
                    options: vec![format!("--gpu-architecture=compute_{arch}"), "-std=c++17".into()],
                    ..Default::default()
                };
                cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| cuda_err("compiling the kernels with NVRTC", e))?
            }
        };
        let module = ctx.load_module(ptx).map_err(|e| cuda_err("loading the kernels", e))?;
        Ok(GpuDriver {
            stream,
            module,
            functions: Mutex::new(HashMap::new()),
            name,
            profiling: Default::default(),
            timed: Mutex::new(Vec::new()),
            capturing: Default::default(),
            pinned: Arc::new(PinnedPool::new(ctx.clone())),
            wgmma,
            ctx,
        })
    }

    fn function(&self, kernel: &'static str) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cache.get(kernel) {
            return Ok(f.clone());
        }
        let f = self.module.load_function(kernel).map_err(|e| cuda_err(&format!("kernel {kernel}"), e))?;
        cache.insert(kernel, f.clone());
        Ok(f)
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| cuda_err("binding the CUDA context", e))
    }

    /// Host copies would be recorded as graph nodes reading or writing a
    /// staging block later reused: refused, as the emulation refuses them.
    fn forbid_in_capture(&self, what: &str) -> Result<()> {
        if self.capturing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cuda(format!("{what} is not allowed while capturing a CUDA graph")));
        }
        Ok(())
    }
}

/// A read-back into a pinned block; the block goes back to the pool after.
struct GpuPendingRead {
    block: Option<PinnedBlock>,
    bytes: usize,
    pool: Arc<PinnedPool>,
}

impl PendingRead for GpuPendingRead {
    fn wait(mut self: Box<Self>) -> Result<Vec<u8>> {
        let mut block = self.block.take().expect("waited once");
        let waited = block.wait();
        let out = block.bytes_mut(self.bytes).to_vec();
        self.pool.give_back(block);
        waited.map(|_| out)
    }
}

impl Drop for GpuPendingRead {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            self.pool.give_back(block); // busy until the copy is done
        }
    }
}

impl Driver for GpuDriver {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn wgmma(&self) -> bool {
        self.wgmma
    }

    fn malloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        // SAFETY: a plain allocation on the bound context.
        unsafe { cu::malloc_sync(bytes.max(1)) }.map_err(|e| cuda_err(&format!("allocating {bytes} bytes"), e))
    }

    fn free(&self, ptr: u64) {
        if self.bind().is_ok() {
            // SAFETY: ptr came from malloc and is freed once; work using it is
            // finished first because free waits for the stream.
            let _ = self.stream.synchronize();
            let _ = unsafe { cu::free_sync(ptr) };
        }
    }

    fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.forbid_in_capture("a host-to-device copy")?;
        self.bind()?;
        if src.len() <= PINNED_MAX_BYTES {
            // staged in a pinned block: queued, no wait for the stream
            let mut block = self.pinned.take(src.len())?;
            block.bytes_mut(src.len()).copy_from_slice(src);
            // SAFETY: dst holds at least src.len() bytes; the block stays
            // untouched until the event recorded after the copy completes.
            let copied = unsafe { cu::memcpy_htod_async(dst, block.bytes_mut(src.len()), self.stream.cu_stream()) }
                .map_err(|e| cuda_err("host to device copy", e))
                .and_then(|_| block.record(&self.stream));
            self.pinned.give_back(block);
            return copied;
        }
        // SAFETY: dst holds at least src.len() bytes; the copy completes before return.
        unsafe { cu::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(|e| cuda_err("host to device copy", e))?;
        self.synchronize()
    }

    fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.forbid_in_capture("a device-to-host copy")?;
        self.bind()?;
        // SAFETY: src holds at least dst.len() bytes; the stream is synchronised before dst is read.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(|e| cuda_err("device to host copy", e))?;
        self.synchronize()
    }

    fn dtoh_async(&self, src: u64, bytes: usize) -> Result<Box<dyn PendingRead>> {
        self.forbid_in_capture("a device-to-host copy")?;
        self.bind()?;
        let mut block = self.pinned.take(bytes)?;
        // SAFETY: src holds at least `bytes` bytes; the block is read only
        // after the event recorded behind the copy has completed.
        let queued = unsafe { cu::memcpy_dtoh_async(block.bytes_mut(bytes), src, self.stream.cu_stream()) }
            .map_err(|e| cuda_err("device to host copy", e))
            .and_then(|_| block.record(&self.stream));
        let pending = GpuPendingRead { block: Some(block), bytes, pool: self.pinned.clone() };
        queued.map(|_| Box::new(pending) as Box<dyn PendingRead>)
    }

    fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both buffers hold at least `bytes` bytes; ordered on the stream.
        unsafe { cu::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }.map_err(|e| cuda_err("device copy", e))
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds at least `bytes` bytes; ordered on the stream.
        unsafe { cu::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }.map_err(|e| cuda_err("memset", e))
    }

    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        self.bind()?;
        let f = self.function(kernel)?;
        let mut storage: Vec<Vec<u8>> = args.iter().map(|a| a.bytes().to_vec()).collect();
        let mut params: Vec<*mut c_void> = storage.iter_mut().map(|b| b.as_mut_ptr() as *mut c_void).collect();
        let [gx, gy, gz] = cfg.grid;
        let [bx, by, bz] = cfg.block;
        let timed = self.profiling.is_current() && !self.capturing.load(std::sync::atomic::Ordering::Relaxed);
        let events = if timed {
            let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
            let start = self.ctx.new_event(timing).map_err(|e| cuda_err("creating an event", e))?;
            let end = self.ctx.new_event(timing).map_err(|e| cuda_err("creating an event", e))?;
            start.record(&self.stream).map_err(|e| cuda_err("recording an event", e))?;
            Some((start, end))
        } else {
            None
        };
        // SAFETY: params point at the argument bytes, alive for the call; the
        // typed wrapper of each kernel (ops/*/cuda.rs) passes them in the
        // kernel's order and sizes (the emulator checks both in tests).
        unsafe { cu::launch_kernel(f.cu_function(), (gx, gy, gz), (bx, by, bz), 0, self.stream.cu_stream(), &mut params) }
            .map_err(|e| cuda_err(&format!("launching {kernel}"), e))?;
        if let Some((start, end)) = events {
            end.record(&self.stream).map_err(|e| cuda_err("recording an event", e))?;
            self.timed.lock().unwrap_or_else(|e| e.into_inner()).push((kernel, start, end));
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| cuda_err("synchronising the stream", e))
    }

    fn set_profiling(&self, on: bool) {
        self.profiling.set(on);
    }

    fn take_profile(&self) -> Result<Vec<(&'static str, f64)>> {
        self.synchronize()?;
        let timed = std::mem::take(&mut *self.timed.lock().unwrap_or_else(|e| e.into_inner()));
        timed
            .into_iter()
            .map(|(k, start, end)| Ok((k, start.elapsed_ms(&end).map_err(|e| cuda_err("reading an event", e))? as f64)))
            .collect()
    }

    fn begin_capture(&self) -> Result<()> {
        // Relaxed: the caching allocator may call cuMemAlloc while the graph's
        // private pool grows; every stream operation is recorded, not run.
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| cuda_err("beginning a CUDA graph capture", e))?;
        self.capturing.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn end_capture(&self) -> Result<Box<dyn GraphExec>> {
        self.capturing.store(false, std::sync::atomic::Ordering::Relaxed);
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| cuda_err("ending a CUDA graph capture", e))?
            .ok_or_else(|| Error::Cuda("the CUDA graph capture recorded nothing".into()))?;
        // upload now, so the first launch does not pay for it
        graph.upload().map_err(|e| cuda_err("uploading a CUDA graph", e))?;
        Ok(Box::new(GpuGraph(graph)))
    }
}
