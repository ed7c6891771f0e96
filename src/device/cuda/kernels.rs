//! The kernels of this build, embedded by build.rs.

/// Compiled ahead by nvcc, or sources for NVRTC at run time.
#[derive(Clone, Copy, Debug)]
pub enum KernelImage {
    Fatbin(&'static [u8]),
    Source(&'static str),
}

include!(concat!(env!("OUT_DIR"), "/kernels_embed.rs"));

/// True when build.rs compiled the kernels with nvcc (false: NVRTC at run time).
pub fn compiled_ahead() -> bool {
    matches!(KERNEL_IMAGE, KernelImage::Fatbin(_))
}

/// What the kernel image holds: "nvcc fatbin (sm_80, …, compute_80 PTX)" or NVRTC sources.
pub fn targets() -> &'static str {
    KERNEL_TARGETS
}

/// Names of all kernels.
pub fn names() -> &'static [&'static str] {
    KERNEL_NAMES
}
