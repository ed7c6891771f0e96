//! CUDA launches of kernels/fid.cu: f64 buffers (an f64 is two f32 slots of
//! a [`CudaBuffer`]), the f64 GEMM, the Newton–Schulz backend, the feature
//! statistics and the KID kernel sums.

use crate::device::cuda::{Arg, CudaBackend, CudaBuffer, LaunchConfig};
use crate::error::{Error, Result};
use crate::metrics::sqrtm::NsBackend;
use crate::ops::binary::cuda::elems;
use crate::ops::matmul::cuda::{MatView, gemm};
use std::sync::Arc;

const THREADS: u32 = 256;
/// Blocks of the reduction kernels (each writes one partial sum, added on the host).
const REDUCE_BLOCKS: usize = 64;
/// Products per f64 GEMM launch (FID_MAX_BATCH in kernels/fid.cu).
const MAX_BATCH: usize = 4;

/// An f64 matrix operand: a buffer and an element offset into it.
pub type F64Operand<'a> = (&'a CudaBuffer, usize);
/// Rows x0..x1 of x and y0..y1 of y (one KID chunk pair).
pub type ChunkPair = ((usize, usize), (usize, usize));

/// A device buffer of `len` f64 values.
pub fn alloc_f64(backend: &Arc<CudaBackend>, len: usize) -> Result<CudaBuffer> {
    backend.alloc(2 * len)
}

/// Copy f64 values to a new device buffer.
pub fn upload_f64(backend: &Arc<CudaBackend>, values: &[f64]) -> Result<CudaBuffer> {
    backend.upload(bytemuck::cast_slice(values))
}

/// The f64 values of a buffer made by [`alloc_f64`] / [`upload_f64`].
pub fn download_f64(buf: &CudaBuffer) -> Result<Vec<f64>> {
    let raw = buf.download()?;
    let bytes: &[u8] = bytemuck::cast_slice(&raw);
    Ok(bytes
        .chunks_exact(8)
        .map(|b| f64::from_ne_bytes(b.try_into().unwrap()))
        .collect())
}

/// Mirrors `FidGemmEntry` in kernels/fid.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmF64Entry {
    a: u64,
    b: u64,
    c: u64,
}

/// Mirrors `FidGemmParams` in kernels/fid.cu (no padding: 96 + 8·4 bytes before the doubles).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmF64Params {
    e: [GemmF64Entry; MAX_BATCH],
    count: i32,
    m: i32,
    n: i32,
    k: i32,
    lda: i32,
    ldb: i32,
    ldc: i32,
    trans_a: i32,
    alpha: f64,
    diag: f64,
}

/// For each (a, b, c): c [m, n] = alpha·a [m, k]·b [k, n] + diag·I, dense
/// row-major f64 buffers; up to 4 products in one launch. c must not alias a or b.
pub fn gemm_f64(
    backend: &CudaBackend,
    products: &[(&CudaBuffer, &CudaBuffer, &CudaBuffer)],
    mkn: (usize, usize, usize),
    alpha: f64,
    diag: f64,
) -> Result<()> {
    let entries: Vec<_> = products
        .iter()
        .map(|&(a, b, c)| ((a, 0), (b, 0), (c, 0)))
        .collect();
    gemm_f64_at(backend, &entries, false, mkn, alpha, diag)
}

/// [`gemm_f64`] with each operand at an element offset into its buffer, and
/// A read transposed when `trans_a` (stored k×m, row-major).
pub fn gemm_f64_at(
    backend: &CudaBackend,
    products: &[(F64Operand, F64Operand, F64Operand)],
    trans_a: bool,
    (m, k, n): (usize, usize, usize),
    alpha: f64,
    diag: f64,
) -> Result<()> {
    assert!(
        !products.is_empty() && products.len() <= MAX_BATCH,
        "gemm_f64: 1 to {MAX_BATCH} products"
    );
    if m == 0 || n == 0 {
        return Ok(());
    }
    let mut e = [GemmF64Entry::default(); MAX_BATCH];
    for (slot, &((a, oa), (b, ob), (c, oc))) in e.iter_mut().zip(products) {
        if a.len() < 2 * (oa + m * k) || b.len() < 2 * (ob + k * n) || c.len() < 2 * (oc + m * n) {
            return Err(Error::Shape {
                op: "gemm_f64",
                msg: format!("buffers too small for [{m}, {k}]·[{k}, {n}]"),
            });
        }
        *slot = GemmF64Entry {
            a: a.ptr() + 8 * oa as u64,
            b: b.ptr() + 8 * ob as u64,
            c: c.ptr() + 8 * oc as u64,
        };
    }
    let i = |v: usize| elems("gemm_f64", v);
    let p = GemmF64Params {
        e,
        count: products.len() as i32,
        m: i(m)?,
        n: i(n)?,
        k: i(k)?,
        lda: i(if trans_a { m } else { k })?,
        ldb: i(n)?,
        ldc: i(n)?,
        trans_a: trans_a as i32,
        alpha,
        diag,
    };
    let cfg = LaunchConfig::grid([n.div_ceil(64), m.div_ceil(64), products.len()], THREADS);
    backend.launch("fid_gemm_f64", cfg, &[Arg::pod(&p)])
}

/// Σ x² of `count` f64 values, by partial sums per block added on the host.
pub fn sum_sq_f64(backend: &Arc<CudaBackend>, x: &CudaBuffer, count: usize) -> Result<f64> {
    let blocks = count.div_ceil(THREADS as usize).clamp(1, REDUCE_BLOCKS);
    let partials = alloc_f64(backend, blocks)?;
    backend.launch(
        "fid_sumsq_f64",
        LaunchConfig::blocks(blocks, THREADS),
        &[partials.arg(), x.arg(), Arg::I32(elems("fid", count)?)],
    )?;
    Ok(download_f64(&partials)?.iter().sum())
}

/// The CUDA Newton–Schulz backend (see [`crate::metrics::sqrtm`]).
pub(crate) struct CudaNs {
    backend: Arc<CudaBackend>,
    n: usize,
    a: CudaBuffer,
    y: CudaBuffer,
    z: CudaBuffer,
    t: CudaBuffer,
    p: CudaBuffer,
    q: CudaBuffer,
    y2: CudaBuffer,
    z2: CudaBuffer,
    best: CudaBuffer,
    partials: CudaBuffer,
    blocks: usize,
}

impl CudaNs {
    /// `a`: the n×n input as f64 on `backend` (taken over: it becomes A/‖A‖_F).
    pub(crate) fn new(backend: &Arc<CudaBackend>, a: CudaBuffer, n: usize) -> Result<Self> {
        let m = |_| alloc_f64(backend, n * n);
        let blocks = (n * n).div_ceil(THREADS as usize).clamp(1, REDUCE_BLOCKS);
        Ok(CudaNs {
            backend: backend.clone(),
            n,
            a,
            y: m(0)?,
            z: m(0)?,
            t: m(0)?,
            p: m(0)?,
            q: m(0)?,
            y2: m(0)?,
            z2: m(0)?,
            best: m(0)?,
            partials: alloc_f64(backend, 2 * blocks)?,
            blocks,
        })
    }
}

impl NsBackend for CudaNs {
    fn frob_sq(&mut self) -> Result<f64> {
        sum_sq_f64(&self.backend, &self.a, self.n * self.n)
    }

    fn init(&mut self, scale: f64) -> Result<()> {
        let nn = self.n * self.n;
        let n = Arg::I32(elems("fid", self.n)?);
        // y = a·scale and z = I, then a = y (An, kept for the residual)
        self.backend.launch(
            "fid_ns_init",
            LaunchConfig::for_elems(nn, THREADS),
            &[
                self.y.arg(),
                self.z.arg(),
                self.a.arg(),
                Arg::Bytes(scale.to_ne_bytes().to_vec()),
                n,
            ],
        )?;
        self.a = self.y.try_clone()?;
        Ok(())
    }

    fn products(&mut self) -> Result<(f64, f64)> {
        let n = self.n;
        gemm_f64(
            &self.backend,
            &[(&self.z, &self.y, &self.p), (&self.y, &self.y, &self.q)],
            (n, n, n),
            1.0,
            0.0,
        )?;
        self.backend.launch(
            "fid_ns_t",
            LaunchConfig::blocks(self.blocks, THREADS),
            &[
                self.t.arg(),
                self.partials.arg(),
                self.p.arg(),
                self.q.arg(),
                self.a.arg(),
                self.y.arg(),
                Arg::I32(elems("fid", n)?),
            ],
        )?;
        let parts = download_f64(&self.partials)?;
        Ok(parts
            .chunks_exact(2)
            .take(self.blocks)
            .fold((0.0, 0.0), |(r, t), c| (r + c[0], t + c[1])))
    }

    fn update(&mut self) -> Result<()> {
        let n = self.n;
        gemm_f64(
            &self.backend,
            &[(&self.y, &self.t, &self.y2), (&self.t, &self.z, &self.z2)],
            (n, n, n),
            1.0,
            0.0,
        )?;
        std::mem::swap(&mut self.y, &mut self.y2);
        std::mem::swap(&mut self.z, &mut self.z2);
        Ok(())
    }

    fn save_best(&mut self) -> Result<()> {
        self.best = self.y.try_clone()?;
        Ok(())
    }

    fn y(&mut self, best: bool) -> Result<Vec<f64>> {
        download_f64(if best { &self.best } else { &self.y })
    }
}

/// Mean and unbiased covariance (D×D) of features x [rows, dim] (f32, on
/// the device), all in f64: column sums (per row split, added on the host),
/// centred features padded with zero rows to whole chunks of `chunk` rows,
/// the f64 GEMM Xc_cᵀ·Xc_c per chunk (4 chunks per launch), and the chunks
/// summed and scaled by 1/(rows − 1).
pub fn feature_stats(
    x: &CudaBuffer,
    rows: usize,
    dim: usize,
    chunk: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let backend = x.backend().clone();
    let splits = rows.div_ceil(256).clamp(1, REDUCE_BLOCKS);
    let partials = alloc_f64(&backend, splits * dim)?;
    let (r, d) = (Arg::I32(elems("fid", rows)?), Arg::I32(elems("fid", dim)?));
    backend.launch(
        "fid_col_sums",
        LaunchConfig::grid([dim.div_ceil(32), splits, 1], THREADS),
        &[partials.arg(), x.arg(), r.clone(), d.clone()],
    )?;
    let parts = download_f64(&partials)?;
    let mut mean = vec![0.0f64; dim];
    for s in 0..splits {
        for (m, p) in mean.iter_mut().zip(&parts[s * dim..(s + 1) * dim]) {
            *m += p;
        }
    }
    mean.iter_mut().for_each(|m| *m /= rows as f64);
    let dev_mean = upload_f64(&backend, &mean)?;

    let chunks = rows.div_ceil(chunk);
    let padded = chunks * chunk;
    let xc = alloc_f64(&backend, padded * dim)?;
    backend.launch(
        "fid_center",
        LaunchConfig::blocks((padded * dim).div_ceil(THREADS as usize).min(4096), THREADS),
        &[
            xc.arg(),
            x.arg(),
            dev_mean.arg(),
            r,
            Arg::I32(elems("fid", padded)?),
            d,
        ],
    )?;
    let parts = alloc_f64(&backend, chunks * dim * dim)?;
    let all: Vec<_> = (0..chunks)
        .map(|c| {
            (
                (&xc, c * chunk * dim),
                (&xc, c * chunk * dim),
                (&parts, c * dim * dim),
            )
        })
        .collect();
    for group in all.chunks(MAX_BATCH) {
        gemm_f64_at(&backend, group, true, (dim, chunk, dim), 1.0, 0.0)?;
    }
    let cov = alloc_f64(&backend, dim * dim)?;
    backend.launch(
        "fid_sum_chunks",
        LaunchConfig::blocks((dim * dim).div_ceil(THREADS as usize).min(4096), THREADS),
        &[
            cov.arg(),
            parts.arg(),
            Arg::I32(elems("fid", chunks)?),
            Arg::I32(elems("fid", dim * dim)?),
            Arg::Bytes((1.0 / (rows as f64 - 1.0)).to_ne_bytes().to_vec()),
        ],
    )?;
    Ok((mean, download_f64(&cov)?))
}

/// The KID sums of chunk pairs on the device: for each (x rows x0..x1, y rows
/// y0..y1) the three sums Σ_{i≠j} k(x_i, x_j), Σ_{i≠j} k(y_i, y_j) and
/// Σ k(x_i, y_j) with k(a, b) = (a·b/d + 1)³, Gram matrices by the f32 GEMM.
pub fn kid_sums(
    x: &CudaBuffer,
    y: &CudaBuffer,
    dim: usize,
    pairs: &[ChunkPair],
) -> Result<Vec<[f64; 3]>> {
    let backend = x.backend().clone();
    let out = alloc_f64(&backend, 3 * pairs.len().max(1))?;
    let largest = pairs
        .iter()
        .map(|&((a, b), (c, e))| (b - a).max(e - c))
        .max()
        .unwrap_or(0);
    let gram = backend.alloc((largest * largest).max(1))?;
    let inv_d = Arg::Bytes((1.0 / dim as f64).to_ne_bytes().to_vec());
    for (slot, &((x0, x1), (y0, y1))) in pairs.iter().enumerate() {
        let vx = MatView::rows(x, x1 - x0, dim).at(x0 * dim);
        let vy = MatView::rows(y, y1 - y0, dim).at(y0 * dim);
        for (term, (a, b, skip)) in [(vx, vx, 1), (vy, vy, 1), (vx, vy, 0)]
            .into_iter()
            .enumerate()
        {
            let (rows, cols) = (a.rows, b.rows);
            gemm(a, b.t(), MatView::rows(&gram, rows, cols), 1, 1.0, false)?;
            backend.launch(
                "fid_kid_poly_sum",
                LaunchConfig::blocks(1, THREADS),
                &[
                    out.arg(),
                    gram.arg(),
                    Arg::I32(elems("kid", rows)?),
                    Arg::I32(elems("kid", cols)?),
                    inv_d.clone(),
                    Arg::I32(skip),
                    Arg::I32(elems("kid", 3 * slot + term)?),
                ],
            )?;
        }
    }
    let sums = download_f64(&out)?;
    Ok(pairs
        .iter()
        .enumerate()
        .map(|(s, _)| [sums[3 * s], sums[3 * s + 1], sums[3 * s + 2]])
        .collect())
}
