//! CUDA launches of kernels/gemm.cu: [`gemm`], a batched strided product that
//! every CUDA op built on matrix products uses (matmul, linear, attention), and
//! the batching of `matmul_t` over broadcast batch dims.

use crate::device::cuda::{Arg, CudaBuffer, LaunchConfig};
use crate::error::{Error, Result, shape_err};
use crate::ops::binary::cuda::elems;
use crate::ops::precision::Precision;
use crate::tensor::{Shape, for_each_offset2};

/// Output tile of one block (BM = BN in kernels/gemm.cu) and its thread count.
const TILE: usize = 64;
const THREADS: u32 = 256;
/// Largest grid y and z dimension.
const GRID_YZ_MAX: usize = 65_535;

/// Mirrors `GemmParams` in kernels/gemm.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GemmParams {
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub batch: i32,
    pub a_row: i32,
    pub a_col: i32,
    pub a_batch: i32,
    pub b_row: i32,
    pub b_col: i32,
    pub b_batch: i32,
    pub c_row: i32,
    pub c_col: i32,
    pub c_batch: i32,
    pub alpha: f32,
    pub accumulate: i32,
    pub k_split: i32,
    pub k_chunk: i32,
}

/// Split K when a single product has fewer output tiles than this and
/// K ≥ [`SPLIT_MIN_K`]: splits bring the blocks towards [`SPLIT_TARGET_BLOCKS`]
/// (two per SM of a 132-SM H100), each summing at least [`SPLIT_MIN_CHUNK`] of K.
/// Fixed numbers, not the device's: the result is the same on every GPU.
const SPLIT_MAX_TILES: usize = 64;
const SPLIT_MIN_K: usize = 2048;
const SPLIT_TARGET_BLOCKS: usize = 264;
const SPLIT_MIN_CHUNK: usize = 512;

/// (splits, k_chunk) for an [M, K]·[K, N] product of `batch` entries; (1, K) when not split.
pub fn k_splits(m: usize, n: usize, k: usize, batch: usize) -> (usize, usize) {
    let tiles = m.div_ceil(TILE) * n.div_ceil(TILE);
    if batch != 1 || tiles >= SPLIT_MAX_TILES || k < SPLIT_MIN_K {
        return (1, k);
    }
    let want = SPLIT_TARGET_BLOCKS.div_ceil(tiles).min(k / SPLIT_MIN_CHUNK).max(1);
    // chunks are whole K slices (16) so every block but the last does full slices
    let chunk = k.div_ceil(want).div_ceil(16) * 16;
    (k.div_ceil(chunk), chunk)
}

/// A batch of strided matrices in a CUDA buffer: element (i, j) of batch entry
/// z is `buf[offset + z·batch_stride + i·row_stride + j·col_stride]`.
/// A batch stride of 0 repeats one matrix over the batch.
#[derive(Clone, Copy, Debug)]
pub struct MatView<'a> {
    pub buf: &'a CudaBuffer,
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
    pub batch_stride: usize,
}

impl<'a> MatView<'a> {
    /// Row-major rows×cols matrices stored one after another from the start of `buf`.
    pub fn rows(buf: &'a CudaBuffer, rows: usize, cols: usize) -> Self {
        MatView { buf, offset: 0, rows, cols, row_stride: cols, col_stride: 1, batch_stride: rows * cols }
    }
    /// The transposes, by swapping strides (no copy).
    pub fn t(self) -> Self {
        MatView { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
    /// `self` or its transpose.
    pub fn t_if(self, transpose: bool) -> Self {
        if transpose { self.t() } else { self }
    }
    /// Starting `offset` elements into the buffer.
    pub fn at(self, offset: usize) -> Self {
        MatView { offset, ..self }
    }
    /// With another batch stride (0: the same matrix for every batch entry).
    pub fn batch_stride(self, batch_stride: usize) -> Self {
        MatView { batch_stride, ..self }
    }
    /// One past the last element touched by `batch` entries (0 when empty).
    fn end(&self, batch: usize) -> usize {
        if self.rows == 0 || self.cols == 0 || batch == 0 {
            return 0;
        }
        self.offset + (batch - 1) * self.batch_stride + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
    fn ptr(&self) -> Arg {
        Arg::Ptr(self.buf.ptr() + 4 * self.offset as u64)
    }
}

/// c = alpha·a·b, or c += alpha·a·b when `accumulate`, for `batch` entries:
/// a is [M, K], b [K, N], c [M, N] per entry (views may be transposed or
/// broadcast; c must not overlap a or b). One launch; f32 accuracy.
pub fn gemm(a: MatView, b: MatView, c: MatView, batch: usize, alpha: f32, accumulate: bool) -> Result<()> {
    gemm_at(a, b, c, batch, alpha, accumulate, Precision::F32)
}

/// [`gemm`] with the products at compute precision `prec` (`gemm_tiled_bf16`
/// at bf16: operands rounded to bf16, f32 sums).
pub fn gemm_at(a: MatView, b: MatView, c: MatView, batch: usize, alpha: f32, accumulate: bool, prec: Precision) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.rows != m || c.cols != n {
        return shape_err("gemm", format!("[{m}, {k}]·[{}, {n}] does not give [{}, {}]", b.rows, c.rows, c.cols));
    }
    let device = c.buf.device();
    if a.buf.device() != device || b.buf.device() != device {
        return Err(Error::Cuda(format!("gemm: operands on {}, {} and {}", a.buf.device(), b.buf.device(), device)));
    }
    for (name, v) in [("a", &a), ("b", &b), ("c", &c)] {
        if v.end(batch) > v.buf.len() {
            return shape_err("gemm", format!("operand {name} reaches element {} of a buffer of {}", v.end(batch), v.buf.len()));
        }
    }
    if m == 0 || n == 0 || batch == 0 {
        return Ok(());
    }
    if m.div_ceil(TILE) > GRID_YZ_MAX {
        return shape_err("gemm", format!("{m} rows exceed the kernel's grid ({} tiles of {TILE})", GRID_YZ_MAX));
    }
    // Every offset the kernel forms is below some operand's end, so i32 holds it.
    let i = |v: usize| elems("gemm", v);
    let p = GemmParams {
        m: i(m)?,
        n: i(n)?,
        k: i(k)?,
        batch: i(batch)?,
        a_row: i(a.row_stride)?,
        a_col: i(a.col_stride)?,
        a_batch: i(a.batch_stride)?,
        b_row: i(b.row_stride)?,
        b_col: i(b.col_stride)?,
        b_batch: i(b.batch_stride)?,
        c_row: i(c.row_stride)?,
        c_col: i(c.col_stride)?,
        c_batch: i(c.batch_stride)?,
        alpha,
        accumulate: accumulate as i32,
        k_split: 0,
        k_chunk: i(k)?,
    };
    for v in [&a, &b, &c] {
        i(v.end(batch))?;
    }
    let backend = c.buf.backend();
    let tiled = match prec {
        Precision::F32 => "gemm_tiled_f32",
        Precision::Bf16 => "gemm_tiled_bf16",
    };
    let (splits, chunk) = k_splits(m, n, k, batch);
    if splits == 1 {
        let cfg = LaunchConfig::grid([n.div_ceil(TILE), m.div_ceil(TILE), batch.min(GRID_YZ_MAX)], THREADS);
        return backend.launch(tiled, cfg, &[c.ptr(), a.ptr(), b.ptr(), Arg::pod(&p)]);
    }
    // split K: partial [M, N] slabs, one per split, then their sum in split order
    let part = backend.alloc(splits * m * n)?;
    let pp = GemmParams {
        batch: i(splits)?,
        a_batch: 0,
        b_batch: 0,
        c_row: p.n,
        c_col: 1,
        c_batch: i(m * n)?,
        alpha: 1.0,
        accumulate: 0,
        k_split: 1,
        k_chunk: i(chunk)?,
        ..p
    };
    i(splits * m * n)?;
    let cfg = LaunchConfig::grid([n.div_ceil(TILE), m.div_ceil(TILE), splits], THREADS);
    backend.launch(tiled, cfg, &[part.arg(), a.ptr(), b.ptr(), Arg::pod(&pp)])?;
    let cfg = LaunchConfig::for_elems(m * n, 256);
    backend.launch("gemm_sum_splits_f32", cfg, &[c.ptr(), part.arg(), Arg::I32(splits as i32), Arg::pod(&p)])
}

/// The single stride S with offset(z) = z·S for every row-major index z over
/// `dims` (offset = Σ_d coord_d·strides[d]), if there is one. Dims of size 1
/// do not matter; S is the stride of the innermost other dim.
fn uniform_stride(dims: &[usize], strides: &[usize]) -> Option<usize> {
    let mut stride = None;
    let mut inner = 1; // Π dims[d+1..]
    for d in (0..dims.len()).rev() {
        if dims[d] != 1 {
            let s = *stride.get_or_insert(strides[d]);
            if strides[d] != s * inner {
                return None;
            }
        }
        inner *= dims[d];
    }
    Some(stride.unwrap_or(0))
}

/// matmul_t on CUDA: op(a)·op(b) for a [a_batch.., ar, ac], b [b_batch.., br, bc]
/// with the batch dims broadcast to `batch`, products at precision `prec`; the
/// result is contiguous [batch.., m, n].
///
/// The trailing batch dims over which both operands advance by one fixed
/// stride each (present in full, or broadcast) go to one batched launch; the
/// leading dims, when a mixed broadcast leaves any (a [2, 1, ..]·b [1, 3, ..]),
/// are looped over on the host, one launch per entry.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &CudaBuffer,
    a_batch: &Shape,
    (ar, ac): (usize, usize),
    trans_a: bool,
    b: &CudaBuffer,
    b_batch: &Shape,
    (br, bc): (usize, usize),
    trans_b: bool,
    batch: &Shape,
    prec: Precision,
) -> Result<CudaBuffer> {
    let va = MatView::rows(a, ar, ac).t_if(trans_a);
    let vb = MatView::rows(b, br, bc).t_if(trans_b);
    let (m, n) = (va.rows, vb.cols);
    let out = a.backend().alloc(batch.numel() * m * n)?;
    if out.is_empty() {
        return Ok(out);
    }
    let vc = MatView::rows(&out, m, n);
    let dims = batch.dims();
    // element strides of each operand's matrices along the output batch dims
    let sa: Vec<usize> = a_batch.broadcast_strides(batch).iter().map(|s| s * ar * ac).collect();
    let sb: Vec<usize> = b_batch.broadcast_strides(batch).iter().map(|s| s * br * bc).collect();
    // the longest suffix dims[split..] with a uniform stride for both operands
    let mut split = dims.len();
    let (mut stride_a, mut stride_b) = (0, 0);
    while split > 0 {
        match (uniform_stride(&dims[split - 1..], &sa[split - 1..]), uniform_stride(&dims[split - 1..], &sb[split - 1..])) {
            (Some(x), Some(y)) => (stride_a, stride_b, split) = (x, y, split - 1),
            _ => break,
        }
    }
    let inner: usize = dims[split..].iter().product();
    let mut starts = Vec::new();
    for_each_offset2(&dims[..split], &sa[..split], &sb[..split], |o, oa, ob| starts.push((o, oa, ob)));
    for (o, oa, ob) in starts {
        let (ea, eb, ec) = (va.at(oa).batch_stride(stride_a), vb.at(ob).batch_stride(stride_b), vc.at(o * inner * m * n));
        gemm_at(ea, eb, ec, inner, 1.0, false, prec)?;
    }
    Ok(out)
}
