//! The few driver operations the CUDA backend needs, behind one trait with two
//! implementations: a real GPU through cudarc, and the CPU emulation.

use crate::error::{Error, Result};

/// A kernel argument, passed by value as cuLaunchKernel expects.
#[derive(Clone, Debug)]
pub enum Arg {
    /// A device pointer.
    Ptr(u64),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
    /// A `#[repr(C)]` struct passed by value (its bytes).
    Bytes(Vec<u8>),
}

impl Arg {
    /// The argument's bytes, as the kernel reads them.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Arg::Ptr(v) | Arg::U64(v) => bytemuck::bytes_of(v),
            Arg::I32(v) => bytemuck::bytes_of(v),
            Arg::U32(v) => bytemuck::bytes_of(v),
            Arg::F32(v) => bytemuck::bytes_of(v),
            Arg::Bytes(b) => b,
        }
    }

    /// A `#[repr(C)]` plain-old-data struct.
    pub fn pod<T: bytemuck::Pod>(value: &T) -> Arg {
        Arg::Bytes(bytemuck::bytes_of(value).to_vec())
    }
}

/// Grid and block sizes of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
}

impl LaunchConfig {
    /// One thread per element, `threads` per block.
    pub fn for_elems(n: usize, threads: u32) -> LaunchConfig {
        let blocks = n.div_ceil(threads as usize).clamp(1, u32::MAX as usize) as u32;
        LaunchConfig { grid: [blocks, 1, 1], block: [threads, 1, 1] }
    }
    /// `blocks` blocks of `threads` threads.
    pub fn blocks(blocks: usize, threads: u32) -> LaunchConfig {
        LaunchConfig { grid: [blocks.clamp(1, u32::MAX as usize) as u32, 1, 1], block: [threads, 1, 1] }
    }
    /// A 3-D grid of 1-D blocks.
    pub fn grid(grid: [usize; 3], threads: u32) -> LaunchConfig {
        LaunchConfig { grid: grid.map(|g| g.max(1).min(u32::MAX as usize) as u32), block: [threads, 1, 1] }
    }
    /// The device's limits (every CUDA GPU since compute capability 3.0):
    /// grid x < 2³¹, y and z ≤ 65,535 blocks; at most 1,024 threads a block.
    /// A launch past them fails on a GPU with a bare "invalid argument"; here
    /// it fails on both drivers with the kernel and the grid named.
    pub fn check(&self, kernel: &str) -> Result<()> {
        let [x, y, z] = self.grid;
        let threads: u64 = self.block.iter().map(|&b| b as u64).product();
        if x == 0 || y == 0 || z == 0 || x > i32::MAX as u32 || y > 65_535 || z > 65_535 || threads == 0 || threads > 1024 {
            return Err(Error::Cuda(format!(
                "launching {kernel}: grid {:?} of {:?} threads is past the device's limits (x < 2^31, y, z <= 65535 blocks; 1024 threads)",
                self.grid, self.block
            )));
        }
        Ok(())
    }
}

/// A captured CUDA graph, instantiated: one launch replays all its work on
/// the stream, in the order it was recorded.
pub trait GraphExec {
    fn launch(&self) -> Result<()>;
}

/// A device-to-host copy queued on the stream.
pub trait PendingRead: Send {
    /// Wait for the copy (not for the work queued after it) and return its bytes.
    fn wait(self: Box<Self>) -> Result<Vec<u8>>;
}

/// Device memory, copies and launches on one stream. All work is ordered on
/// that stream; `dtoh` waits for it, `htod` does not (the source is copied
/// before it returns).
pub trait Driver: Send + Sync {
    /// The device's name (e.g. "NVIDIA H100 80GB HBM3" or "CUDA emulation on the CPU").
    fn name(&self) -> String;
    fn malloc(&self, bytes: usize) -> Result<u64>;
    /// Blocks of exactly the bytes asked for (rounded to 16) instead of size
    /// classes: the emulation, whose blocks end at a guard page, so a kernel
    /// reading or writing past a buffer's end faults in the tests.
    fn exact_blocks(&self) -> bool {
        false
    }
    /// Whether the kernels' warpgroup MMA (wgmma, sm_90a: kernels/mma.cuh)
    /// runs here: a compute-capability 9.0 GPU with sm_90a code loaded, or
    /// the emulation. Elsewhere the kernels using it trap.
    fn wgmma(&self) -> bool {
        false
    }
    fn free(&self, ptr: u64);
    fn htod(&self, dst: u64, src: &[u8]) -> Result<()>;
    fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()>;
    /// Queue a copy of `bytes` bytes at `src` to the host; the host goes on
    /// (a training step's loss is read after the next step is queued).
    fn dtoh_async(&self, src: u64, bytes: usize) -> Result<Box<dyn PendingRead>>;
    fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()>;
    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[Arg]) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// Start or stop timing every launch of the calling thread (CUDA events on a GPU).
    fn set_profiling(&self, on: bool);
    /// The timings since the last call: (kernel, milliseconds) per launch.
    fn take_profile(&self) -> Result<Vec<(&'static str, f64)>>;
    /// From now on record the calling thread's launches, device copies and
    /// memsets into a graph instead of running them (relaxed capture mode:
    /// allocation is allowed). Host copies, synchronisation and freeing
    /// device memory fail and invalidate the capture, as on a GPU.
    fn begin_capture(&self) -> Result<()>;
    /// Stop recording: the graph, instantiated. Fails if the capture was
    /// invalidated or recorded nothing.
    fn end_capture(&self) -> Result<Box<dyn GraphExec>>;
}

#[cfg(test)]
mod tests {
    use super::LaunchConfig;

    #[test]
    fn launches_past_the_grid_limits_are_refused_with_the_kernel_named() {
        assert!(LaunchConfig::grid([1 << 30, 65_535, 65_535], 1024).check("k").is_ok());
        for bad in [LaunchConfig::grid([1, 65_536, 1], 128), LaunchConfig::grid([1, 1, 70_000], 32), LaunchConfig::blocks(1 << 31, 32), LaunchConfig::blocks(4, 1025)] {
            let err = bad.check("attention_columns_infer_h8").unwrap_err().to_string();
            assert!(err.contains("attention_columns_infer_h8") && err.contains("65535"), "{err}");
        }
    }
}

/// The thread whose launches a driver times: the one that started profiling
/// (the other threads of a test run launch on the same device meanwhile, and
/// a test that checks which kernels ran must not see theirs).
#[derive(Default)]
pub struct ProfiledThread {
    on: std::sync::atomic::AtomicBool,
    thread: std::sync::Mutex<Option<std::thread::ThreadId>>,
}

impl ProfiledThread {
    /// Time the calling thread's launches from now on, or stop.
    pub fn set(&self, on: bool) {
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = on.then(|| std::thread::current().id());
        self.on.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a launch from the calling thread is timed.
    pub fn is_current(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
            && *self.thread.lock().unwrap_or_else(|e| e.into_inner()) == Some(std::thread::current().id())
    }
}
