//! The CPU emulation of CUDA as a [`Driver`]: device memory is host memory,
//! launches run the kernels compiled by g++ against kernels/emu/cuda_emu.hpp,
//! with the argument count and sizes checked against each kernel's signature.

use super::driver::{Arg, Driver, GraphExec, LaunchConfig, PendingRead};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

unsafe extern "C" {
    fn emu_malloc(bytes: usize) -> *mut c_void;
    fn emu_free(p: *mut c_void);
    fn emu_last_error() -> *const c_char;
    #[allow(clippy::too_many_arguments)]
    fn emu_launch(
        name: *const c_char,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        args: *mut *mut c_void,
        arg_sizes: *const usize,
        nargs: usize,
    ) -> c_int;
}

#[derive(Default)]
pub struct EmulatedDriver {
    profiling: super::driver::ProfiledThread,
    timings: Mutex<Vec<(&'static str, f64)>>,
    /// Open captures, one per capturing thread (each thread of a test run
    /// stands for its own stream, so parallel tests do not record each other).
    captures: Arc<Mutex<HashMap<ThreadId, Capture>>>,
}

/// Stream work recorded by a capture, replayed in order by a graph launch.
enum Recorded {
    Launch { kernel: &'static str, cfg: LaunchConfig, args: Vec<Arg> },
    Dtod { dst: u64, src: u64, bytes: usize },
    Memset { dst: u64, bytes: usize },
}

#[derive(Default)]
struct Capture {
    work: Vec<Recorded>,
    /// Why the capture can no longer end in a graph (the first illegal call).
    invalidated: Option<String>,
}

type Captures = Arc<Mutex<HashMap<ThreadId, Capture>>>;

fn lock_captures(c: &Captures) -> std::sync::MutexGuard<'_, HashMap<ThreadId, Capture>> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmulatedDriver {
    /// Record `work` if this thread is capturing; true when it was recorded.
    fn record(&self, work: impl FnOnce() -> Recorded) -> bool {
        match lock_captures(&self.captures).get_mut(&std::thread::current().id()) {
            Some(c) => {
                c.work.push(work());
                true
            }
            None => false,
        }
    }

    /// `what` is not allowed while this thread captures: as on a GPU, it fails
    /// and the capture is invalidated.
    fn forbid_in_capture(&self, what: &str) -> Result<()> {
        match lock_captures(&self.captures).get_mut(&std::thread::current().id()) {
            Some(c) => {
                c.invalidated.get_or_insert_with(|| what.to_string());
                Err(Error::Cuda(format!("{what} is not allowed while capturing a CUDA graph")))
            }
            None => Ok(()),
        }
    }
}

/// Run one kernel on the emulation (argument count and sizes checked).
fn run_kernel(kernel: &'static str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
    let name = CString::new(kernel).expect("kernel names have no NUL");
    let mut storage: Vec<Vec<u8>> = args.iter().map(|a| a.bytes().to_vec()).collect();
    let sizes: Vec<usize> = storage.iter().map(|b| b.len()).collect();
    let mut pointers: Vec<*mut c_void> = storage.iter_mut().map(|b| b.as_mut_ptr() as *mut c_void).collect();
    let [gx, gy, gz] = cfg.grid;
    let [bx, by, bz] = cfg.block;
    // SAFETY: pointers/sizes describe `storage`, alive for the call; the
    // runtime checks count and sizes against the kernel's signature.
    let code = unsafe { emu_launch(name.as_ptr(), gx, gy, gz, bx, by, bz, pointers.as_mut_ptr(), sizes.as_ptr(), args.len()) };
    if code != 0 {
        // SAFETY: a NUL-terminated thread-local string owned by the runtime.
        let msg = unsafe { CStr::from_ptr(emu_last_error()) }.to_string_lossy().into_owned();
        return Err(Error::Cuda(format!("launch of {kernel} failed: {msg}")));
    }
    Ok(())
}

fn run_dtod(dst: u64, src: u64, bytes: usize) {
    // SAFETY: both are emulated device buffers of at least `bytes` bytes.
    unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
}

fn run_memset_zero(dst: u64, bytes: usize) {
    // SAFETY: dst is an emulated device buffer of at least `bytes` bytes.
    unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
}

/// A captured graph on the emulation: its recorded work, replayed in order.
struct EmulatedGraph {
    work: Vec<Recorded>,
    captures: Captures,
}

impl GraphExec for EmulatedGraph {
    fn launch(&self) -> Result<()> {
        if lock_captures(&self.captures).contains_key(&std::thread::current().id()) {
            return Err(Error::Cuda("launching a graph inside a capture is not emulated".into()));
        }
        for w in &self.work {
            match w {
                Recorded::Launch { kernel, cfg, args } => run_kernel(kernel, *cfg, args)?,
                Recorded::Dtod { dst, src, bytes } => run_dtod(*dst, *src, *bytes),
                Recorded::Memset { dst, bytes } => run_memset_zero(*dst, *bytes),
            }
        }
        Ok(())
    }
}

/// A read-back on the emulation, complete when queued.
struct ReadDone(Vec<u8>);

impl PendingRead for ReadDone {
    fn wait(self: Box<Self>) -> Result<Vec<u8>> {
        Ok(self.0)
    }
}

impl Driver for EmulatedDriver {
    fn name(&self) -> String {
        "CUDA emulation on the CPU".into()
    }

    fn exact_blocks(&self) -> bool {
        true
    }

    fn wgmma(&self) -> bool {
        true
    }

    fn malloc(&self, bytes: usize) -> Result<u64> {
        // SAFETY: zeroed pages with the block's end at a guard page; a null result is reported.
        let p = unsafe { emu_malloc(bytes) };
        if p.is_null() {
            return Err(Error::Cuda(format!("emulated allocation of {bytes} bytes failed")));
        }
        Ok(p as u64)
    }

    fn free(&self, ptr: u64) {
        // cudaFree synchronises, which a capture forbids (the block is freed all the same)
        let _ = self.forbid_in_capture("freeing device memory");
        // SAFETY: ptr came from emu_malloc and is freed once (the allocator owns it).
        unsafe { emu_free(ptr as *mut c_void) }
    }

    fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.forbid_in_capture("a host-to-device copy")?;
        // SAFETY: dst is an emulated device buffer of at least src.len() bytes (checked by the caller).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.forbid_in_capture("a device-to-host copy")?;
        // SAFETY: as htod.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn dtoh_async(&self, src: u64, bytes: usize) -> Result<Box<dyn PendingRead>> {
        // the emulation's stream has always finished: the copy is done now
        let mut out = vec![0u8; bytes];
        self.dtoh(&mut out, src)?;
        Ok(Box::new(ReadDone(out)))
    }

    fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if !self.record(|| Recorded::Dtod { dst, src, bytes }) {
            run_dtod(dst, src, bytes);
        }
        Ok(())
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if !self.record(|| Recorded::Memset { dst, bytes }) {
            run_memset_zero(dst, bytes);
        }
        Ok(())
    }

    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        if self.record(|| Recorded::Launch { kernel, cfg, args: args.to_vec() }) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        run_kernel(kernel, cfg, args)?;
        if self.profiling.is_current() {
            // launches are synchronous here: wall time is the kernel's time
            self.timings.lock().unwrap_or_else(|e| e.into_inner()).push((kernel, started.elapsed().as_secs_f64() * 1e3));
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.forbid_in_capture("synchronising the stream")
    }

    fn set_profiling(&self, on: bool) {
        self.profiling.set(on);
    }

    fn take_profile(&self) -> Result<Vec<(&'static str, f64)>> {
        Ok(std::mem::take(&mut *self.timings.lock().unwrap_or_else(|e| e.into_inner())))
    }

    fn begin_capture(&self) -> Result<()> {
        let mut captures = lock_captures(&self.captures);
        let me = std::thread::current().id();
        if captures.contains_key(&me) {
            return Err(Error::Cuda("a capture is already open on this stream".into()));
        }
        captures.insert(me, Capture::default());
        Ok(())
    }

    fn end_capture(&self) -> Result<Box<dyn GraphExec>> {
        let capture = lock_captures(&self.captures).remove(&std::thread::current().id());
        match capture {
            None => Err(Error::Cuda("ending a capture that was never begun".into())),
            Some(Capture { invalidated: Some(why), .. }) => Err(Error::Cuda(format!("the CUDA graph capture was invalidated by {why}"))),
            Some(Capture { work, .. }) if work.is_empty() => Err(Error::Cuda("the CUDA graph capture recorded nothing".into())),
            Some(Capture { work, .. }) => Ok(Box::new(EmulatedGraph { work, captures: self.captures.clone() })),
        }
    }
}
