//! CUDA launches of kernels/groupnorm.cu: group norm (optionally fused with
//! SiLU) forward, and its backward in two launches (per-group dx and per-(n, c)
//! partial sums, then the per-channel parameter gradients). Where a group
//! fits, forward and backward hold it in registers and read it once.

use super::cpu::GroupNormDims;
use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::Result;
use crate::ops::binary::cuda::elems;
use crate::tensor::DType;

const OP: &str = "group_norm";
/// Threads per block of the per-group kernels (GN_THREADS).
const THREADS: u32 = 256;
/// Most blocks launched; the kernels grid-stride over the remaining groups.
const MAX_BLOCKS: usize = 65_535;

fn opt_arg(b: Option<&CudaBuffer>) -> Arg {
    b.map_or(Arg::Ptr(0), |b| b.arg())
}

/// The statistics a forward pass keeps for backward: mean and rstd per group
/// (n, g), indexed n·G + g, on the device.
pub struct SavedStats {
    pub mean: CudaBuffer,
    pub rstd: CudaBuffer,
}

/// y = act(x̂·γ + β) with act = SiLU when `silu`, else the identity, stored
/// as `store` (f32, or bf16 rounded to nearest even). Returns y and the
/// saved statistics.
pub fn forward(
    x: &CudaBuffer,
    d: GroupNormDims,
    weight: Option<&CudaBuffer>,
    bias: Option<&CudaBuffer>,
    eps: f32,
    silu: bool,
    store: DType,
) -> Result<(CudaBuffer, SavedStats)> {
    let backend = x.backend();
    let groups_total = d.n * d.groups;
    let y = backend.alloc_as(x.len(), store)?;
    if d.m() == 0 {
        // Nothing to normalise: statistics are 0, as on the CPU.
        return Ok((y, SavedStats { mean: backend.zeros(groups_total)?, rstd: backend.zeros(groups_total)? }));
    }
    let (mean, rstd) = (backend.alloc(groups_total)?, backend.alloc(groups_total)?);
    let mut args = vec![y.arg(), mean.arg(), rstd.arg()];
    args.extend(per_group_args(x, d, weight, bias, eps)?);
    args.push(Arg::I32(silu as i32));
    let (kernel, grid) = if x.dtype() == DType::F32 {
        forward_kernel(d, resident(x, d) && y.ptr().is_multiple_of(16), store, false)
    } else if reads_bf16(x, d, store) {
        bf16_forward_kernel(d)
    } else {
        return Err(crate::error::Error::DType { op: OP, dtype: x.dtype() });
    };
    backend.launch(kernel, grid, &args)?;
    Ok((y, SavedStats { mean, rstd }))
}

/// Whether [`forward`] reads `x` from bf16 storage as it is: into bf16
/// (`store`), where a group fits the resident kernels (x 8-byte aligned).
/// Anything else is widened to f32 first (exact, so the same values).
pub fn reads_bf16(x: &CudaBuffer, d: GroupNormDims, store: DType) -> bool {
    x.dtype() == DType::BF16 && store == DType::BF16 && fits_resident(d) && x.ptr().is_multiple_of(8)
}

/// The forward of bf16 storage into bf16 and its grid: by warps or blocks
/// as [`forward_kernel`] picks them, with the fewest float4s a thread.
fn bf16_forward_kernel(d: GroupNormDims) -> (&'static str, LaunchConfig) {
    const BLOCK: [&str; 5] = [
        "groupnorm_forward_resident_xbf16_bf16_r1",
        "groupnorm_forward_resident_xbf16_bf16_r2",
        "groupnorm_forward_resident_xbf16_bf16_r4",
        "groupnorm_forward_resident_xbf16_bf16_r8",
        "groupnorm_forward_resident_xbf16_bf16_r12",
    ];
    const WARP: [&str; 4] = [
        "groupnorm_forward_warp_xbf16_bf16_r1",
        "groupnorm_forward_warp_xbf16_bf16_r2",
        "groupnorm_forward_warp_xbf16_bf16_r4",
        "groupnorm_forward_warp_xbf16_bf16_r8",
    ];
    if by_warps(d) { (WARP[resident_round(d, 32)], per_warp_blocks(d)) } else { (BLOCK[resident_round(d, THREADS as usize)], per_group_blocks(d)) }
}

/// [`forward`] of the concatenation x ⧺ x2 along channels (`d` its
/// dimensions), reading the two as they lie — the concatenation is never
/// written. The same bits as [`forward`] of the written concatenation. None
/// where the resident kernels cannot take it (a group past 12 float4s a
/// thread, S not a multiple of 4, misaligned buffers): concatenate then.
#[allow(clippy::too_many_arguments)]
pub fn forward_concat(
    x: &CudaBuffer,
    x2: &CudaBuffer,
    d: GroupNormDims,
    weight: Option<&CudaBuffer>,
    bias: Option<&CudaBuffer>,
    eps: f32,
    silu: bool,
    store: DType,
) -> Result<Option<(CudaBuffer, SavedStats)>> {
    let total = x.len() + x2.len();
    let split = x.len().checked_div(d.n).unwrap_or(0);
    if d.m() == 0 || total != d.n * d.c * d.s || !resident(x, d) || !x2.ptr().is_multiple_of(16) || !split.is_multiple_of(4) {
        return Ok(None);
    }
    let backend = x.backend();
    let groups_total = d.n * d.groups;
    let y = backend.alloc_as(total, store)?;
    if !y.ptr().is_multiple_of(16) {
        return Ok(None);
    }
    let (mean, rstd) = (backend.alloc(groups_total)?, backend.alloc(groups_total)?);
    elems(OP, total)?;
    let [xa, rest @ ..] = per_group_args(x, d, weight, bias, eps)?;
    let mut args = vec![y.arg(), mean.arg(), rstd.arg(), xa, x2.arg(), Arg::I32(elems(OP, split)?)];
    args.extend(rest);
    args.push(Arg::I32(silu as i32));
    let (kernel, grid) = forward_kernel(d, true, store, true);
    backend.launch(kernel, grid, &args)?;
    Ok(Some((y, SavedStats { mean, rstd })))
}

/// The forward kernel for `d` and its grid: where the group fits
/// (`resident`), one holding it in registers — a warp a group where the
/// group has at most 1,024 values ([`warp_groups`]), else the block — with
/// the fewest float4s a thread that hold it (1, 2, 4, 8 or, by a block, 12:
/// fewer registers, more blocks an SM), else the loop kernel, which reads x
/// three times; storing y as f32 or bf16; of a concatenation (`concat`,
/// resident only) or of x.
fn forward_kernel(d: GroupNormDims, resident: bool, store: DType, concat: bool) -> (&'static str, LaunchConfig) {
    const BLOCK: [[[&str; 5]; 2]; 2] = [
        [
            [
                "groupnorm_forward_resident_r1",
                "groupnorm_forward_resident_r2",
                "groupnorm_forward_resident_r4",
                "groupnorm_forward_resident_r8",
                "groupnorm_forward_resident_r12",
            ],
            [
                "groupnorm_forward_resident_bf16_r1",
                "groupnorm_forward_resident_bf16_r2",
                "groupnorm_forward_resident_bf16_r4",
                "groupnorm_forward_resident_bf16_r8",
                "groupnorm_forward_resident_bf16_r12",
            ],
        ],
        [
            [
                "groupnorm_forward_resident_concat_r1",
                "groupnorm_forward_resident_concat_r2",
                "groupnorm_forward_resident_concat_r4",
                "groupnorm_forward_resident_concat_r8",
                "groupnorm_forward_resident_concat_r12",
            ],
            [
                "groupnorm_forward_resident_concat_bf16_r1",
                "groupnorm_forward_resident_concat_bf16_r2",
                "groupnorm_forward_resident_concat_bf16_r4",
                "groupnorm_forward_resident_concat_bf16_r8",
                "groupnorm_forward_resident_concat_bf16_r12",
            ],
        ],
    ];
    const WARP: [[[&str; 4]; 2]; 2] = [
        [
            ["groupnorm_forward_warp_r1", "groupnorm_forward_warp_r2", "groupnorm_forward_warp_r4", "groupnorm_forward_warp_r8"],
            ["groupnorm_forward_warp_bf16_r1", "groupnorm_forward_warp_bf16_r2", "groupnorm_forward_warp_bf16_r4", "groupnorm_forward_warp_bf16_r8"],
        ],
        [
            ["groupnorm_forward_warp_concat_r1", "groupnorm_forward_warp_concat_r2", "groupnorm_forward_warp_concat_r4", "groupnorm_forward_warp_concat_r8"],
            [
                "groupnorm_forward_warp_concat_bf16_r1",
                "groupnorm_forward_warp_concat_bf16_r2",
                "groupnorm_forward_warp_concat_bf16_r4",
                "groupnorm_forward_warp_concat_bf16_r8",
            ],
        ],
    ];
    let bf16 = store == DType::BF16;
    if !resident {
        debug_assert!(!concat, "a concatenation is read by the resident kernels only");
        return (if bf16 { "groupnorm_forward_bf16" } else { "groupnorm_forward" }, per_group_blocks(d));
    }
    let (concat, bf16) = (usize::from(concat), usize::from(bf16));
    if by_warps(d) {
        (WARP[concat][bf16][resident_round(d, 32)], per_warp_blocks(d))
    } else {
        (BLOCK[concat][bf16][resident_round(d, THREADS as usize)], per_group_blocks(d))
    }
}

/// Which of the resident kernels (R = 1, 2, 4, 8, 12 float4s a thread)
/// holds a group of `d` over `holders` threads: the fewest that do.
fn resident_round(d: GroupNormDims, holders: usize) -> usize {
    match d.m().div_ceil(4 * holders) {
        0..=1 => 0,
        2 => 1,
        3..=4 => 2,
        5..=8 => 3,
        _ => 4,
    }
}

/// Values a group may have for a warp to hold it (32 lanes × 8 float4s).
const WARP_GROUP_MAX: usize = 32 * 8 * 4;

/// Whether a resident group of `d` is held by a warp: at most
/// [`WARP_GROUP_MAX`] values, unless [`warp_groups`] is off.
fn by_warps(d: GroupNormDims) -> bool {
    d.m() <= WARP_GROUP_MAX && warp_groups()
}

thread_local! {
    static WARP_GROUPS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether the forward (and its affine) hold groups of at most 1,024 values
/// by a warp, 8 groups a block (the default), or by a block each
/// (`MINIDIFFUSION_GN_WARP=off`, the A/B; the same statistics, f64 sums of
/// the same float4 partials in another order).
pub fn warp_groups() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::ops::ab_switch::switch(&WARP_GROUPS, &ENV, || std::env::var("MINIDIFFUSION_GN_WARP").map_or(true, |v| v != "off"))
}

/// Run `f` with groups held by warps or not on this thread (tests, A/B).
pub fn with_warp_groups<R>(on: bool, f: impl FnOnce() -> R) -> R {
    crate::ops::ab_switch::with_switch(&WARP_GROUPS, on, f)
}

/// float4s a thread of the resident kernels holds (GN_RESIDENT in kernels/groupnorm.cu).
const RESIDENT_FLOAT4S: usize = 12;

/// Whether a group of `x` fits the resident kernels, which read it once into
/// registers as float4s (one read of x instead of three): at most
/// 12·4·256 values, the group and each channel a whole number of float4s,
/// x 16-byte aligned (and the forward's y).
fn resident(x: &CudaBuffer, d: GroupNormDims) -> bool {
    fits_resident(d) && x.ptr().is_multiple_of(16)
}

/// Whether a group of `d` fits the resident kernels, alignment aside.
fn fits_resident(d: GroupNormDims) -> bool {
    d.m() <= RESIDENT_FLOAT4S * 4 * THREADS as usize && d.s.is_multiple_of(4)
}

/// The arguments the per-group forward kernels share after their outputs:
/// x, γ, β, the group count N·G, G, C/G, S and eps.
fn per_group_args(x: &CudaBuffer, d: GroupNormDims, weight: Option<&CudaBuffer>, bias: Option<&CudaBuffer>, eps: f32) -> Result<[Arg; 8]> {
    elems(OP, x.len())?;
    Ok([
        x.arg(),
        opt_arg(weight),
        opt_arg(bias),
        Arg::I32(elems(OP, d.n * d.groups)?),
        Arg::I32(d.groups as i32),
        Arg::I32(d.cg() as i32),
        Arg::I32(d.s as i32),
        Arg::F32(eps),
    ])
}

/// One block per group (n, g), the kernels grid-striding past MAX_BLOCKS.
fn per_group_blocks(d: GroupNormDims) -> LaunchConfig {
    LaunchConfig::blocks((d.n * d.groups).min(MAX_BLOCKS), THREADS)
}

/// One warp per group, 8 a block (the warp kernels), grid-striding past MAX_BLOCKS.
fn per_warp_blocks(d: GroupNormDims) -> LaunchConfig {
    LaunchConfig::blocks((d.n * d.groups).div_ceil(THREADS as usize / 32).min(MAX_BLOCKS), THREADS)
}

/// The group norm of `x` as a per-(image, channel) affine, [N·C, 4]:
/// (mean, scale, shift, 0) with (x − mean)·scale + shift the normalised value,
/// bit for bit as [`forward`] writes it (for a convolution that applies it as
/// it reads x, one 16-byte load per channel: `ops::conv2d::conv2d_after_norm`).
pub fn affine(x: &CudaBuffer, d: GroupNormDims, weight: Option<&CudaBuffer>, bias: Option<&CudaBuffer>, eps: f32) -> Result<CudaBuffer> {
    let backend = x.backend();
    let len = 4 * d.n * d.c;
    if d.m() == 0 {
        // no values: the statistics are 0 as in forward (nothing reads them)
        return backend.zeros(len);
    }
    let affine = backend.alloc(len)?;
    let mut args = vec![affine.arg()];
    args.extend(per_group_args(x, d, weight, bias, eps)?);
    let (kernel, grid) = match resident(x, d) {
        true if by_warps(d) => ("groupnorm_affine_warp", per_warp_blocks(d)),
        true => ("groupnorm_affine_resident", per_group_blocks(d)),
        false => ("groupnorm_affine", per_group_blocks(d)),
    };
    backend.launch(kernel, grid, &args)?;
    Ok(affine)
}

/// Gradients (dx if `need_dx`, dγ, dβ) of group norm, or of the fused
/// group norm + SiLU when `silu` (then `bias` enters through u = x̂·γ + β).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dy: &CudaBuffer,
    x: &CudaBuffer,
    stats: &SavedStats,
    weight: Option<&CudaBuffer>,
    bias: Option<&CudaBuffer>,
    d: GroupNormDims,
    silu: bool,
    need_dx: bool,
    dx_add: Option<&CudaBuffer>,
) -> Result<(Option<CudaBuffer>, CudaBuffer, CudaBuffer)> {
    let backend = x.backend();
    debug_assert!(dx_add.is_none_or(|a| need_dx && a.len() == x.len() && a.dtype() == DType::F32));
    if d.m() == 0 || d.n == 0 {
        // x is empty (no images or no values): so are dx and dx_add
        let dx = need_dx.then(|| backend.zeros(x.len())).transpose()?;
        return Ok((dx, backend.zeros(d.c)?, backend.zeros(d.c)?));
    }
    let groups_total = d.n * d.groups;
    let dx = need_dx.then(|| backend.alloc(x.len())).transpose()?;
    // (A_nc, B_nc) as f64 pairs: 2·N·C doubles = 4·N·C f32 slots.
    let partials = backend.alloc(4 * d.n * d.c)?;
    elems(OP, x.len())?;
    elems(OP, 2 * d.n * d.c)?;
    let args = [
        opt_arg(dx.as_ref()),
        opt_arg(dx_add),
        partials.arg(),
        dy.arg(),
        x.arg(),
        stats.mean.arg(),
        stats.rstd.arg(),
        opt_arg(weight),
        opt_arg(bias),
        Arg::I32(elems(OP, groups_total)?),
        Arg::I32(d.groups as i32),
        Arg::I32(d.cg() as i32),
        Arg::I32(d.s as i32),
        Arg::I32(silu as i32),
    ];
    let aligned = [Some(dy), Some(x), dx.as_ref(), dx_add].into_iter().flatten().all(|b| b.ptr().is_multiple_of(16));
    backend.launch(backward_kernel(d, aligned), per_group_blocks(d), &args)?;
    let (dw, db) = (backend.alloc(d.c)?, backend.alloc(d.c)?);
    let args = [dw.arg(), db.arg(), partials.arg(), Arg::I32(d.n as i32), Arg::I32(d.c as i32)];
    backend.launch("groupnorm_backward_params", LaunchConfig::blocks(d.c.div_ceil(8), THREADS), &args)?;
    Ok((dx, dw, db))
}

/// (`dx_add`, if given, is x's gradient from its other uses: dx includes it.)
///
/// The backward kernel for `d`: one holding x and dy in registers (4, 8 or
/// 12 float4s a thread, the fewest that hold a group) where the group fits,
/// each channel's float4s fill whole warps (S a multiple of 128: the
/// channel sums are warp sums) or whole segments of one (S = 16, 32 or 64,
/// the group whole warps: segment sums), and the buffers are 16-byte
/// aligned; else the loop kernel, which reads x and dy twice.
fn backward_kernel(d: GroupNormDims, aligned: bool) -> &'static str {
    let float4s = d.m().div_ceil(4 * THREADS as usize);
    let segments = d.s.is_multiple_of(128) || (matches!(d.s, 16 | 32 | 64) && d.m().is_multiple_of(128));
    match float4s {
        _ if !aligned || !segments => "groupnorm_backward",
        0..=4 => "groupnorm_backward_resident_r4",
        5..=8 => "groupnorm_backward_resident_r8",
        9..=RESIDENT_FLOAT4S => "groupnorm_backward_resident_r12",
        _ => "groupnorm_backward",
    }
}
