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
// in the inner loop; then the block's 8 warps multiply the slice on the
// tensor cores, warp w owning rows 32·(w % 2).. and columns 16·(w / 2).. of
// the tile: at f32 accuracy (3xTF32, kernels/mma.cuh) in gemm_tiled_f32, or
// with bf16 operands and f32 sums in gemm_tiled_bf16 (the bf16 compute
// precision), where a staged word holds two consecutive p as bf16 and a slice
// is 16 words = 32 p (one m16n8k16 instruction per 16 p).
//
// Split K. A product with few output tiles and a long K (a linear layer's
// weight gradient sums over every token: M, N ≤ 256, K = 131,072 at batch 512)
// would leave most of the GPU idle. Then the host launches it with k_split = 1:
// grid z = split index s instead of batch entry, the block sums only
//   k ∈ [s·k_chunk, min(K, (s + 1)·k_chunk))
// into its own slab part_s = c + s·c_batch (plain [M, N] rows), and
// gemm_sum_splits_f32 adds the slabs in split order into the real C:
//   C(i, j) = alpha·Σ_s part_s(i, j) (+ C(i, j))
// so the result does not depend on scheduling (deterministic).
#include "common.cuh"
#include "mma.cuh"

// Sizes and strides of one (batched) product. Mirrors ops::matmul::cuda::GemmParams.
struct GemmParams {
    int m, n, k, batch;
    int a_row, a_col, a_batch;
    int b_row, b_col, b_batch;
    int c_row, c_col, c_batch;
    float alpha;
    int accumulate;  // 1: C += alpha·op(A)·op(B); 0: C = alpha·op(A)·op(B) (C is not read)
    int k_split;     // 1: batch entry z is K split z (operands not advanced), see above
    int k_chunk;     // K per split when k_split
};

namespace gemm {

constexpr int BM = 64;                          // tile rows (along M)
constexpr int BN = 64;                          // tile columns (along N)
constexpr int BK = 16;                          // K slice in staged words
constexpr int THREADS = 256;                    // 8 warps
// Rows padded to 68 floats: the mma fragment reads (lanes 4 rows × 8 columns
// apart) and the K-major stores of a row-major slice conflict pairwise at worst.
constexpr int PAD = 4;

// Words a thread stages per operand slice: 64·16 / 256.
constexpr int SLOTS = BM * BK / THREADS;

// This thread's share of the slice As[w][i] = A(i0 + i, p0 + PER_WORD·w + e),
// e < PER_WORD packed by Math (zero outside the matrix), read into registers:
// word e = tid + 256·s of the slice. Consecutive threads follow whichever
// stride of A is 1, so a warp's global reads are contiguous for A and for Aᵀ alike.
__device__ __forceinline__ void a_slot(const GemmParams& p, int e, int& i, int& kk) {
    if (p.a_col == 1) {  // row-major: walk along K first
        kk = e % BK;
        i = e / BK;
    } else {  // transposed: walk along M first
        i = e % BM;
        kk = e / BM;
    }
}
template <class Math>
__device__ __forceinline__ void fetch_a(typename Math::Word* regs, const float* a, const GemmParams& p, int i0, int p0,
                                        int k_end) {
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) {
        int i, kk;
        a_slot(p, threadIdx.x + s * THREADS, i, kk);
        const int gi = i0 + i, gk = p0 + Math::PER_WORD * kk;
        float v[Math::PER_WORD];
#pragma unroll
        for (int e = 0; e < Math::PER_WORD; ++e)
            v[e] = (gi < p.m && gk + e < k_end) ? a[gi * p.a_row + (gk + e) * p.a_col] : 0.0f;
        regs[s] = Math::pack(v);
    }
}
template <class Word>
__device__ __forceinline__ void store_a(const Word* regs, Word (*as)[BM + PAD], const GemmParams& p) {
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) {
        int i, kk;
        a_slot(p, threadIdx.x + s * THREADS, i, kk);
        as[kk][i] = regs[s];
    }
}

// The same for Bs[p][j] = B(p0 + p, j0 + j).
__device__ __forceinline__ void b_slot(const GemmParams& p, int e, int& kk, int& j) {
    if (p.b_col == 1) {  // row-major: walk along N first
        j = e % BN;
        kk = e / BN;
    } else {  // transposed: walk along K first
        kk = e % BK;
        j = e / BK;
    }
}
template <class Math>
__device__ __forceinline__ void fetch_b(typename Math::Word* regs, const float* b, const GemmParams& p, int p0, int j0,
                                        int k_end) {
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) {
        int kk, j;
        b_slot(p, threadIdx.x + s * THREADS, kk, j);
        const int gk = p0 + Math::PER_WORD * kk, gj = j0 + j;
        float v[Math::PER_WORD];
#pragma unroll
        for (int e = 0; e < Math::PER_WORD; ++e)
            v[e] = (gk + e < k_end && gj < p.n) ? b[(gk + e) * p.b_row + gj * p.b_col] : 0.0f;
        regs[s] = Math::pack(v);
    }
}
template <class Word>
__device__ __forceinline__ void store_b(const Word* regs, Word (*bs)[BN + PAD], const GemmParams& p) {
#pragma unroll
    for (int s = 0; s < SLOTS; ++s) {
        int kk, j;
        b_slot(p, threadIdx.x + s * THREADS, kk, j);
        bs[kk][j] = regs[s];
    }
}

// The tiled product at the precision of Math (mma::Tf32x3 or mma::Bf16).
template <class Math>
__device__ __forceinline__ void tiled(float* c, const float* a, const float* b, const GemmParams& p) {
    using Word = typename Math::Word;
    constexpr int K_SLICE = BK * Math::PER_WORD;
    __shared__ Word as[BK][BM + PAD];
    __shared__ Word bs[BK][BN + PAD];
    const int i0 = blockIdx.y * BM, j0 = blockIdx.x * BN;

    for (int z = blockIdx.z; z < p.batch; z += gridDim.z) {
        const float* az = a + z * p.a_batch;
        const float* bz = b + z * p.b_batch;
        float* cz = c + z * p.c_batch;
        const int k_begin = p.k_split ? z * p.k_chunk : 0;
        const int k_end = p.k_split ? min(p.k, k_begin + p.k_chunk) : p.k;

        // Software pipeline: the next slice's global reads are issued before
        // the tensor cores work on this one.
        Word a_regs[SLOTS], b_regs[SLOTS];
        fetch_a<Math>(a_regs, az, p, i0, k_begin, k_end);
        fetch_b<Math>(b_regs, bz, p, k_begin, j0, k_end);
        mma::Acc acc;
        acc.zero();
        for (int p0 = k_begin; p0 < k_end; p0 += K_SLICE) {
            store_a(a_regs, as, p);
            store_b(b_regs, bs, p);
            __syncthreads();
            if (p0 + K_SLICE < k_end) {
                fetch_a<Math>(a_regs, az, p, i0, p0 + K_SLICE, k_end);
                fetch_b<Math>(b_regs, bz, p, p0 + K_SLICE, j0, k_end);
            }
            Math::template slice<BM + PAD>(as, bs, acc);  // acc += As[k][rows]ᵀ·Bs[k][cols]
            __syncthreads();  // the tiles are overwritten by the next slice
        }

        // C(i, j) = alpha·acc (+ C(i, j)), only inside M×N
        mma::for_each_acc(acc, [&](int row, int col, float a) {
            const int i = i0 + row, j = j0 + col;
            if (i >= p.m || j >= p.n) return;
            float* out = cz + i * p.c_row + j * p.c_col;
            const float v = p.alpha * a;
            *out = p.accumulate ? *out + v : v;
        });
    }
}

}  // namespace gemm

// grid = (⌈N/64⌉, ⌈M/64⌉, min(batch, 65535)), block = 256. Same arguments for both.
extern "C" __global__ void __launch_bounds__(256) gemm_tiled_f32(float* c, const float* a, const float* b, GemmParams p) {
    gemm::tiled<mma::Tf32x3>(c, a, b, p);
}
extern "C" __global__ void __launch_bounds__(256) gemm_tiled_bf16(float* c, const float* a, const float* b, GemmParams p) {
    gemm::tiled<mma::Bf16>(c, a, b, p);
}

// The split-K epilogue: C(i, j) = alpha·Σ_{s < splits} part[s·M·N + i·N + j] (+ C(i, j)),
// summed in split order. p describes the real C (m, n, strides, alpha, accumulate).
extern "C" __global__ void gemm_sum_splits_f32(float* c, const float* part, int splits, GemmParams p) {
    const int len = p.m * p.n;
    for (int e = global_index(); e < len; e += grid_stride()) {
        float acc = 0.0f;
        for (int s = 0; s < splits; ++s) acc += part[(size_t)s * len + e];
        float* out = c + (e / p.n) * p.c_row + (e % p.n) * p.c_col;
        const float v = p.alpha * acc;
        *out = p.accumulate ? *out + v : v;
    }
}
