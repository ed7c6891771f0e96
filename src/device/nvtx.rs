//! NVTX ranges, so Nsight Systems and Nsight Compute show steps, layers and
//! ops by name (the `nvtx` crate: NVTX v3, header-only, no CUDA library
//! needed). Off unless a tool is attached — nsys and ncu set
//! `NVTX_INJECTION64_PATH` — or `MINIDIFFUSION_NVTX=1`; off, a range costs
//! one relaxed atomic load.

use std::sync::atomic::{AtomicU8, Ordering};

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// True when ranges are recorded (checked once per process).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = std::env::var_os("NVTX_INJECTION64_PATH").is_some_and(|v| !v.is_empty())
                || std::env::var("MINIDIFFUSION_NVTX").is_ok_and(|v| v == "1");
            STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
            on
        }
    }
}

/// Whether a range does anything on this thread: NVTX is [`enabled`] or
/// this thread's ranges are timed for `--profile` ([`super::cpu_profile`]).
/// (A caller that builds a range's name can skip it when not.)
pub fn active() -> bool {
    enabled() || super::cpu_profile::is_on()
}

/// A range on this thread, open until the guard drops.
#[must_use = "the range closes when this guard drops"]
pub struct Range {
    open: bool,
    timed: bool,
}

/// Opens a range named `name` (when [`enabled`]; timed when this thread
/// profiles the CPU).
pub fn range(name: &str) -> Range {
    let open = enabled();
    if open {
        nvtx::range_push!("{name}");
    }
    Range { open, timed: super::cpu_profile::open(name) }
}

impl Drop for Range {
    fn drop(&mut self) {
        if self.timed {
            super::cpu_profile::close();
        }
        if self.open {
            nvtx::range_pop!();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_nest_and_close_without_a_tool() {
        // no tool attached: push/pop go to NVTX's no-op stubs (or are skipped)
        let outer = super::range("outer");
        {
            let _inner = super::range("inner");
        }
        drop(outer);
    }
}
