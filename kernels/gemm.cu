// Tiled f32 GEMM: C = alpha·op(A)·op(B) (+ C when accumulating), batched.
//
// Every operand is a strided matrix view, so transposes cost nothing:
//   A(i, p) = a[z·a_batch + i·a_row + p·a_col]      i < M, p < K
//   B(p, j) = b[z·b_batch + p·b_row + j·b_col]      p < K, j < N
//   C(i, j) = c[z·c_batch + i·c_row + j·c_col]      i < M, j < N
// for batch entries z < batch. A batch stride of 0 repeats that operand over
// the batch (broadcast); op(A) = Aᵀ is the view with row and column strides swapped.
//
// Tiling. One block of 256 threads computes a 64×64 tile of C:
//   block (bx, by, bz): rows i0 = by·64 … i0+63, columns j0 = bx·64 … j0+63,
//                       batch entries z = bz, bz + gridDim.z, … (grid-stride).
// K is walked in slices of 16. The block stages
//   As[p][i] = A(i0 + i, p0 + p)   (64×16 slice, stored K-major)
//   Bs[p][j] = B(p0 + p, j0 + j)   (16×64 slice)
// in shared memory, zero-filled outside M, N and K, so odd sizes need no case
// in the inner loop; then each thread accumulates a 4×4 block of C in registers:
//   thread t: tx = t % 16, ty = t / 16
//   acc[r][s] = Σ_p A(i0 + ty + 16r, p)·B(p, j0 + tx + 16s),   r, s < 4
// The strided (not contiguous) 4×4 assignment makes the 16 threads of a
// half-warp read 16 consecutive Bs entries (no bank conflicts) and write 16
// consecutive C columns (coalesced when c_col = 1).
#include "common.cuh"

// Sizes and strides of one (batched) product. Mirrors ops::matmul::cuda::GemmParams.
struct GemmParams {
    int m, n, k, batch;
    int a_row, a_col, a_batch;
    int b_row, b_col, b_batch;
    int c_row, c_col, c_batch;
    float alpha;
    int accumulate;  // 1: C += alpha·op(A)·op(B); 0: C = alpha·op(A)·op(B) (C is not read)
};

namespace gemm {

constexpr int BM = 64;                          // tile rows (along M)
constexpr int BN = 64;                          // tile columns (along N)
constexpr int BK = 16;                          // K slice
constexpr int TM = 4;                           // outputs per thread along M
constexpr int TN = 4;                           // outputs per thread along N
constexpr int THREADS = (BM / TM) * (BN / TN);  // 256
// One padding column: the K-major stores of a row-major A slice (consecutive
// threads walk p, a row stride of BM + 1 floats apart) fall in distinct banks.
constexpr int PAD = 1;

// As[p][i] = A(i0 + i, p0 + p), zero outside the matrix. Consecutive threads
// follow whichever stride of A is 1, so a warp's global reads are contiguous
// for A and for Aᵀ alike.
__device__ __forceinline__ void load_a(float (*as)[BM + PAD], const float* a, const GemmParams& p, int i0, int p0) {
    for (int e = threadIdx.x; e < BM * BK; e += THREADS) {
        int i, kk;
        if (p.a_col == 1) {  // row-major: walk along K first
            kk = e % BK;
            i = e / BK;
        } else {  // transposed: walk along M first
            i = e % BM;
            kk = e / BM;
        }
        const int gi = i0 + i, gk = p0 + kk;
        as[kk][i] = (gi < p.m && gk < p.k) ? a[gi * p.a_row + gk * p.a_col] : 0.0f;
    }
}

// Bs[p][j] = B(p0 + p, j0 + j), zero outside the matrix; same coalescing rule.
__device__ __forceinline__ void load_b(float (*bs)[BN + PAD], const float* b, const GemmParams& p, int p0, int j0) {
    for (int e = threadIdx.x; e < BK * BN; e += THREADS) {
        int kk, j;
        if (p.b_col == 1) {  // row-major: walk along N first
            j = e % BN;
            kk = e / BN;
        } else {  // transposed: walk along K first
            kk = e % BK;
            j = e / BK;
        }
        const int gk = p0 + kk, gj = j0 + j;
        bs[kk][j] = (gk < p.k && gj < p.n) ? b[gk * p.b_row + gj * p.b_col] : 0.0f;
    }
}

}  // namespace gemm

// grid = (⌈N/64⌉, ⌈M/64⌉, min(batch, 65535)), block = 256.
extern "C" __global__ void __launch_bounds__(256) gemm_tiled_f32(float* c, const float* a, const float* b, GemmParams p) {
    using namespace gemm;
    __shared__ float as[BK][BM + PAD];
    __shared__ float bs[BK][BN + PAD];
    const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
    const int i0 = blockIdx.y * BM, j0 = blockIdx.x * BN;

    for (int z = blockIdx.z; z < p.batch; z += gridDim.z) {
        const float* az = a + z * p.a_batch;
        const float* bz = b + z * p.b_batch;
        float* cz = c + z * p.c_batch;

        float acc[TM][TN];
        for (int r = 0; r < TM; ++r)
            for (int s = 0; s < TN; ++s) acc[r][s] = 0.0f;

        for (int p0 = 0; p0 < p.k; p0 += BK) {
            load_a(as, az, p, i0, p0);
            load_b(bs, bz, p, p0, j0);
            __syncthreads();
            // acc[r][s] += Σ_kk As[kk][ty + 16r]·Bs[kk][tx + 16s]
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                float ar[TM], br[TN];
#pragma unroll
                for (int r = 0; r < TM; ++r) ar[r] = as[kk][ty + r * (BM / TM)];
#pragma unroll
                for (int s = 0; s < TN; ++s) br[s] = bs[kk][tx + s * (BN / TN)];
#pragma unroll
                for (int r = 0; r < TM; ++r)
#pragma unroll
                    for (int s = 0; s < TN; ++s) acc[r][s] = fmaf(ar[r], br[s], acc[r][s]);
            }
            __syncthreads();  // the tiles are overwritten by the next slice
        }

        // C(i, j) = alpha·acc (+ C(i, j)), only inside M×N
        for (int r = 0; r < TM; ++r) {
            const int i = i0 + ty + r * (BM / TM);
            if (i >= p.m) continue;
            for (int s = 0; s < TN; ++s) {
                const int j = j0 + tx + s * (BN / TN);
                if (j >= p.n) continue;
                float* out = cz + i * p.c_row + j * p.c_col;
                const float v = p.alpha * acc[r][s];
                *out = p.accumulate ? *out + v : v;
            }
        }
    }
}
