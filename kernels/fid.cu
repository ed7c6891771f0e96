// FID / KID on the device: feature statistics (column means, centring and the
// chunked covariance product, all in f64), a tiled f64 GEMM and the elementwise and
// reduction steps of the Newton–Schulz matrix square root, and the polynomial
// kernel sums of KID. The host side is src/metrics/cuda.rs; every kernel has
// a plain-Rust twin in src/metrics (the CPU path runs the same algorithm).
//
// f64 GEMM tiling (fid_gemm_f64): as kernels/gemm.cu, in double. One block of
// 256 threads computes a 64×64 tile of C, K in slices of 16 staged in shared
// memory (zero-filled outside the matrix), each thread a 4×4 block of C at
// rows ty + 16r and columns tx + 16s. Matrices are dense row-major n×n-style
// (rows × cols with a row stride; A may be stored transposed); up to FID_MAX_BATCH independent products
// run in one launch, one per grid z, each with its own pointers, so that
// Newton–Schulz runs its two pairs of products (Z·Y with Y·Y, then Y·T with
// T·Z) in two launches per iteration.
#include "common.cuh"

#define FID_MAX_BATCH 4
#define FID_BM 64
#define FID_BN 64
#define FID_BK 16
#define FID_THREADS 256

// One product C = alpha·A·B + diag·I (A: m×k, B: k×n, C: m×n, row-major with
// the given row strides). Mirrors metrics::cuda::GemmF64Entry.
struct FidGemmEntry {
    const double* a;
    const double* b;
    double* c;
};

// Mirrors metrics::cuda::GemmF64Params.
struct FidGemmParams {
    FidGemmEntry e[FID_MAX_BATCH];
    int count;  // entries in use (= gridDim.z)
    int m, n, k;
    int lda, ldb, ldc;
    int trans_a;  // 1: A(i, p) = a[p·lda + i] (A stored transposed, k×m)
    double alpha;
    double diag;  // added to C(i, i)
};

namespace fid {

__device__ __forceinline__ void load_a(double (*as)[FID_BM + 1], const double* a, const FidGemmParams& p, int i0, int p0) {
    // consecutive threads follow the contiguous dim of A in memory
    for (int e = threadIdx.x; e < FID_BM * FID_BK; e += FID_THREADS) {
        const int kk = p.trans_a ? e / FID_BM : e % FID_BK;
        const int i = p.trans_a ? e % FID_BM : e / FID_BK;
        const int gi = i0 + i, gk = p0 + kk;
        const long long off = p.trans_a ? (long long)gk * p.lda + gi : (long long)gi * p.lda + gk;
        as[kk][i] = (gi < p.m && gk < p.k) ? a[off] : 0.0;
    }
}

__device__ __forceinline__ void load_b(double (*bs)[FID_BN + 1], const double* b, const FidGemmParams& p, int p0, int j0) {
    for (int e = threadIdx.x; e < FID_BK * FID_BN; e += FID_THREADS) {
        const int j = e % FID_BN, kk = e / FID_BN;
        const int gk = p0 + kk, gj = j0 + j;
        bs[kk][j] = (gk < p.k && gj < p.n) ? b[(long long)gk * p.ldb + gj] : 0.0;
    }
}

}  // namespace fid

// grid = (⌈n/64⌉, ⌈m/64⌉, count), block = 256.
extern "C" __global__ void __launch_bounds__(256) fid_gemm_f64(FidGemmParams p) {
    __shared__ double as[FID_BK][FID_BM + 1];
    __shared__ double bs[FID_BK][FID_BN + 1];
    if ((int)blockIdx.z >= p.count) return;
    const FidGemmEntry ent = p.e[blockIdx.z];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int i0 = blockIdx.y * FID_BM, j0 = blockIdx.x * FID_BN;

    double acc[4][4];
    for (int r = 0; r < 4; ++r)
        for (int s = 0; s < 4; ++s) acc[r][s] = 0.0;

    for (int p0 = 0; p0 < p.k; p0 += FID_BK) {
        fid::load_a(as, ent.a, p, i0, p0);
        fid::load_b(bs, ent.b, p, p0, j0);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < FID_BK; ++kk) {
            double ar[4], br[4];
#pragma unroll
            for (int r = 0; r < 4; ++r) ar[r] = as[kk][ty + 16 * r];
#pragma unroll
            for (int s = 0; s < 4; ++s) br[s] = bs[kk][tx + 16 * s];
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int s = 0; s < 4; ++s) acc[r][s] = fma(ar[r], br[s], acc[r][s]);
        }
        __syncthreads();
    }
    for (int r = 0; r < 4; ++r) {
        const int i = i0 + ty + 16 * r;
        if (i >= p.m) continue;
        for (int s = 0; s < 4; ++s) {
            const int j = j0 + tx + 16 * s;
            if (j >= p.n) continue;
            ent.c[(long long)i * p.ldc + j] = p.alpha * acc[r][s] + (i == j ? p.diag : 0.0);
        }
    }
}

// Newton–Schulz setup: y = a·scale, z = I (n×n).
extern "C" __global__ void __launch_bounds__(256) fid_ns_init(double* y, double* z, const double* a, double scale, int n) {
    const int total = n * n;
    for (int e = global_index(); e < total; e += grid_stride()) {
        y[e] = a[e] * scale;
        z[e] = (e / n == e % n) ? 1.0 : 0.0;
    }
}

// One Newton–Schulz step between the two product launches, given P = Z·Y and
// Q = Y·Y of the current iterate: T = (3I − P)/2, and per block the partial
// sums Σ (An − Q)² (the squared residual of Y, An = A/‖A‖_F) and Σ Y(i, i).
// partials[2·block] and partials[2·block + 1]; the host adds the blocks.
extern "C" __global__ void __launch_bounds__(256) fid_ns_t(double* t, double* partials, const double* p, const double* q,
                                                           const double* an, const double* y, int n) {
    __shared__ double scratch[32];
    const int total = n * n;
    double res = 0.0, tr = 0.0;
    for (int e = global_index(); e < total; e += grid_stride()) {
        const bool diag = e / n == e % n;
        t[e] = 0.5 * ((diag ? 3.0 : 0.0) - p[e]);
        const double d = an[e] - q[e];
        res += d * d;
        if (diag) tr += y[e];
    }
    res = block_sum_d(res, scratch);
    tr = block_sum_d(tr, scratch);
    if (threadIdx.x == 0) {
        partials[2 * blockIdx.x] = res;
        partials[2 * blockIdx.x + 1] = tr;
    }
}

// Partial sums of x² per block (the Frobenius norm of A): partials[block].
extern "C" __global__ void __launch_bounds__(256) fid_sumsq_f64(double* partials, const double* x, int count) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (int e = global_index(); e < count; e += grid_stride()) acc += x[e] * x[e];
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Column sums of features x [rows, dim] (f32), in f64, split over row ranges:
// partials[s·dim + j] = Σ_{r in split s} x[r, j]; grid = (⌈dim/32⌉, splits),
// block = 256 = 32 columns × 8 row lanes.
extern "C" __global__ void __launch_bounds__(256) fid_col_sums(double* partials, const float* x, int rows, int dim) {
    __shared__ double acc_s[8][33];
    const int col = blockIdx.x * 32 + threadIdx.x % 32;
    const int lane = threadIdx.x / 32;
    const int splits = gridDim.y;
    const int per = (rows + splits - 1) / splits;
    const int r0 = blockIdx.y * per;
    const int r1 = min(rows, r0 + per);
    double acc = 0.0;
    if (col < dim)
        for (int r = r0 + lane; r < r1; r += 8) acc += (double)x[(long long)r * dim + col];
    acc_s[lane][threadIdx.x % 32] = acc;
    __syncthreads();
    if (lane == 0 && col < dim) {
        double s = 0.0;
        for (int l = 0; l < 8; ++l) s += acc_s[l][threadIdx.x % 32];
        partials[(long long)blockIdx.y * dim + col] = s;
    }
}

// Centred features in f64: xc[r, j] = x[r, j] − mean[j] for r < rows and
// 0 for rows ≤ r < padded_rows (zero rows add nothing to XcᵀXc).
extern "C" __global__ void __launch_bounds__(256) fid_center(double* xc, const float* x, const double* mean, int rows, int padded_rows, int dim) {
    const int total = padded_rows * dim;
    for (int e = global_index(); e < total; e += grid_stride()) {
        const int r = e / dim, j = e % dim;
        xc[e] = r < rows ? (double)x[e] - mean[j] : 0.0;
    }
}

// cov[e] = scale·Σ_c parts[c·size + e] (the per-chunk f64 products XcᵀXc summed).
extern "C" __global__ void __launch_bounds__(256) fid_sum_chunks(double* cov, const double* parts, int chunks, int size, double scale) {
    for (int e = global_index(); e < size; e += grid_stride()) {
        double acc = 0.0;
        for (int c = 0; c < chunks; ++c) acc += parts[(long long)c * size + e];
        cov[e] = acc * scale;
    }
}

// KID: out[slot] = Σ (g[i, j]·inv_d + 1)³ over a rows×cols Gram matrix (f32,
// row-major), leaving out the diagonal when skip_diag. One block.
extern "C" __global__ void __launch_bounds__(256) fid_kid_poly_sum(double* out, const float* g, int rows, int cols, double inv_d,
                                                                   int skip_diag, int slot) {
    __shared__ double scratch[32];
    const int total = rows * cols;
    double acc = 0.0;
    for (int e = threadIdx.x; e < total; e += blockDim.x) {
        const int i = e / cols, j = e % cols;
        if (skip_diag && i == j) continue;
        const double v = (double)g[e] * inv_d + 1.0;
        acc += v * v * v;
    }
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) out[slot] = acc;
}
