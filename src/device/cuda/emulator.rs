//! The CPU emulation of CUDA as a [`Driver`]: device memory is host memory,
//! launches run the kernels compiled by g++ against kernels/emu/cuda_emu.hpp,
//! with the argument count and sizes checked against each kernel's signature.

use super::driver::{Arg, Driver, LaunchConfig};
use crate::error::{Error, Result};
use std::ffi::{CStr, CString, c_char, c_int, c_void};

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
    profiling: std::sync::atomic::AtomicBool,
    timings: std::sync::Mutex<Vec<(&'static str, f64)>>,
}

impl Driver for EmulatedDriver {
    fn name(&self) -> String {
        "CUDA emulation on the CPU".into()
    }

    fn exact_blocks(&self) -> bool {
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
        // SAFETY: ptr came from emu_malloc and is freed once (the allocator owns it).
        unsafe { emu_free(ptr as *mut c_void) }
    }

    fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: dst is an emulated device buffer of at least src.len() bytes (checked by the caller).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        // SAFETY: as htod.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        // SAFETY: both are emulated device buffers of at least `bytes` bytes.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        // SAFETY: as dtod.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }

    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let name = CString::new(kernel).expect("kernel names have no NUL");
        let mut storage: Vec<Vec<u8>> = args.iter().map(|a| a.bytes().to_vec()).collect();
        let sizes: Vec<usize> = storage.iter().map(|b| b.len()).collect();
        let mut pointers: Vec<*mut c_void> = storage.iter_mut().map(|b| b.as_mut_ptr() as *mut c_void).collect();
        let [gx, gy, gz] = cfg.grid;
        let [bx, by, bz] = cfg.block;
        let started = std::time::Instant::now();
        // SAFETY: pointers/sizes describe `storage`, alive for the call; the
        // runtime checks count and sizes against the kernel's signature.
        let code = unsafe { emu_launch(name.as_ptr(), gx, gy, gz, bx, by, bz, pointers.as_mut_ptr(), sizes.as_ptr(), args.len()) };
        if code != 0 {
            // SAFETY: a NUL-terminated thread-local string owned by the runtime.
            let msg = unsafe { CStr::from_ptr(emu_last_error()) }.to_string_lossy().into_owned();
            return Err(Error::Cuda(format!("launch of {kernel} failed: {msg}")));
        }
        if self.profiling.load(std::sync::atomic::Ordering::Relaxed) {
            // launches are synchronous here: wall time is the kernel's time
            self.timings.lock().unwrap_or_else(|e| e.into_inner()).push((kernel, started.elapsed().as_secs_f64() * 1e3));
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn set_profiling(&self, on: bool) {
        self.profiling.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn take_profile(&self) -> Result<Vec<(&'static str, f64)>> {
        Ok(std::mem::take(&mut *self.timings.lock().unwrap_or_else(|e| e.into_inner())))
    }
}
