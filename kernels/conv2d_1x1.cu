// The weight gradient of a 1×1, stride-1, unpadded convolution (the UNet's
// attention projections and resnet shortcuts), with its bias gradient:
//
//   dW[oc, c] = Σ_{img, p} dY[img, oc, p] · x[img, c, p]      (p over the P = H·W pixels)
//   dB[oc]    = Σ_{img, p} dY[img, oc, p]
//
// A GEMM, M = OC, N = C, K = N·P, whose operands both run along k where they
// lie: an image's dY rows [OC, P] and x rows [C, P] are contiguous in p.
// (The same-conv weight gradient, conv2d_same.cu, stages a patch and its
// taps for 3×3; at 1×1 a block used 16 input channels of each dY tile it
// staged, with three barriers a tile and nothing in flight across them: run 7
// had it at 11.8 % of a training step, ~100 µs for 67 MB at 16×16×64.)
//
// Block tile: 64 output channels × 64 input channels, 256 threads (8 warps
// tiled 2 × 4 as mma::Acc: 32 rows × 16 columns each). K runs in slices of
// 32 words a row: 32 pixels at f32 (3xTF32, m16n8k8), 64 at bf16 (pairs of
// neighbouring pixels, m16n8k16). A slice is staged row-major, k contiguous,
//   As[oc][word], Bs[c][word],  LDW = 36 words a row,
// so a fragment (rows g = 0..7, words t = 0..3) reads banks 4g + t: none
// shared. Each thread loads float4s (4 pixels; P % 4 == 0, so a float4 never
// straddles two images) of fixed rows and one fixed pixel offset j of the
// slice: pixel k0 + j is (img, p) = divmod(k0 + j, P), once a slice; the
// next slice's loads are issued before this one's products (registers), so
// 8 (f32: 4) float4s a thread are in flight while the tensor cores work.
//
// Split K: split z = blockIdx.z sums slices [z·per_split, (z + 1)·per_split)
// into its slab dw_part + z·M·N; conv2d_sum_splits_pair_f32 adds the slabs
// of both gradients in a fixed order (deterministic). With db_part non-null the blocks of the first
// column tile (blockIdx.x = 0, which load every dY row of their split) also
// sum the f32 dY values they load, before any rounding: db_part[z·M + oc],
// the bias gradient's partial, in a fixed order (thread, then a tree over the
// threads sharing a row).
#include "common.cuh"
#include "conv2d.cuh"
#include "mma.cuh"

namespace wg1x1 {

constexpr int BM = 64;             // output channels a block
constexpr int BN = 64;             // input channels a block
constexpr int THREADS = 256;
constexpr int SLICE_WORDS = 32;    // staged words a row and slice
constexpr int LDW = SLICE_WORDS + 4;

// What one precision stages: PER_WORD pixels a word, the float4s a thread
// loads per operand and slice (QUADS: float4s a row), and one k step of the
// products (8 words) for the warp tile of mma::Acc.
template <class Math> struct Policy;

template <> struct Policy<mma::Bf16> {
    static constexpr int PER_WORD = 2;
    // acc += A[rows of the warp][8 words]·B[columns of the warp][8 words]ᵀ
    __device__ static void step(const unsigned int (*As)[LDW], const unsigned int (*Bs)[LDW], int w0, mma::Acc& acc) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        const int m_w = 32 * (warp % 2), n_w = 16 * (warp / 2);
        unsigned int a[2][4], b[2][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            const int r = m_w + 16 * mi + g;
            a[mi][0] = As[r][w0 + t];
            a[mi][1] = As[r + 8][w0 + t];
            a[mi][2] = As[r][w0 + t + 4];
            a[mi][3] = As[r + 8][w0 + t + 4];
        }
#pragma unroll
        for (int ni = 0; ni < 2; ++ni) {
            const int c = n_w + 8 * ni + g;
            b[ni][0] = Bs[c][w0 + t];
            b[ni][1] = Bs[c][w0 + t + 4];
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 2; ++ni) mma::mma_bf16(acc.big[mi][ni], a[mi], b[ni]);
    }
};

template <> struct Policy<mma::Tf32x3> {
    static constexpr int PER_WORD = 1;
    __device__ static void step(const unsigned int (*As)[LDW], const unsigned int (*Bs)[LDW], int w0, mma::Acc& acc) {
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
        const int m_w = 32 * (warp % 2), n_w = 16 * (warp / 2);
        unsigned int a_hi[2][4], a_lo[2][4], b_hi[2][2], b_lo[2][2];
        auto split = [](unsigned int w, unsigned int& hi, unsigned int& lo) { mma::split(__uint_as_float(w), hi, lo); };
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            const int r = m_w + 16 * mi + g;
            split(As[r][w0 + t], a_hi[mi][0], a_lo[mi][0]);
            split(As[r + 8][w0 + t], a_hi[mi][1], a_lo[mi][1]);
            split(As[r][w0 + t + 4], a_hi[mi][2], a_lo[mi][2]);
            split(As[r + 8][w0 + t + 4], a_hi[mi][3], a_lo[mi][3]);
        }
#pragma unroll
        for (int ni = 0; ni < 2; ++ni) {
            const int c = n_w + 8 * ni + g;
            split(Bs[c][w0 + t], b_hi[ni][0], b_lo[ni][0]);
            split(Bs[c][w0 + t + 4], b_hi[ni][1], b_lo[ni][1]);
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 2; ++ni)
                mma::mma_3xtf32(acc.big[mi][ni], acc.small[mi][ni], a_hi[mi], a_lo[mi], b_hi[ni], b_lo[ni]);
    }
};

template <class Math, class TX>
__device__ __forceinline__ void weight_grad(float* dw_part, float* db_part, const float* dy, const TX* x, const conv::Shape& s,
                                            int per_split) {
    using Pol = Policy<Math>;
    constexpr int PER_WORD = Pol::PER_WORD;
    constexpr int SLICE_PIX = SLICE_WORDS * PER_WORD;  // pixels a slice
    constexpr int QUADS = SLICE_PIX / 4;               // float4s a row and slice
    constexpr int LOADS = BM * QUADS / THREADS;        // float4s a thread loads per operand and slice
    constexpr int ROW_STEP = THREADS / QUADS;          // rows between a thread's loads
    static_assert(BM == BN && BM * QUADS % THREADS == 0, "whole float4s a thread");
    __shared__ unsigned int As[BM][LDW];
    __shared__ unsigned int Bs[BN][LDW];

    const int tid = threadIdx.x;
    const int P = s.oh * s.ow, K = s.n * P;
    const int m0 = blockIdx.y * BM, c0 = blockIdx.x * BN;
    const int slices = (K + SLICE_PIX - 1) / SLICE_PIX;
    const int slice_begin = blockIdx.z * per_split, slice_end = min(slices, slice_begin + per_split);
    const int quad = tid % QUADS, row0 = tid / QUADS;  // this thread's pixel offset 4·quad and first row
    const bool bias = db_part != nullptr && blockIdx.x == 0;

    // the float4s of slice sl: rows row0 + ROW_STEP·i of dY (a) and x (b), 0 past K, OC or C
    float4 a[LOADS];
    typename mma::Quad<TX>::Reg b[LOADS];
    auto fetch = [&](int sl) {
        const int k = sl * SLICE_PIX + 4 * quad;
        const bool live = k < K;
        const int img = live ? k / P : 0, p = k - img * P;
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            const int m = m0 + row0 + ROW_STEP * i, c = c0 + row0 + ROW_STEP * i;
            a[i] = live && m < s.oc ? *reinterpret_cast<const float4*>(dy + ((long long)img * s.oc + m) * P + p)
                                    : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            b[i] = live && c < s.c ? mma::Quad<TX>::load(x, ((long long)img * s.c + c) * P + p) : mma::Quad<TX>::zero();
        }
    };
    float row_sum[LOADS];
#pragma unroll
    for (int i = 0; i < LOADS; ++i) row_sum[i] = 0.0f;

    mma::Acc acc;
    acc.zero();
    if (slice_begin < slice_end) fetch(slice_begin);
    for (int sl = slice_begin; sl < slice_end; ++sl) {
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            const int r = row0 + ROW_STEP * i;
            if (bias) row_sum[i] += (a[i].x + a[i].y) + (a[i].z + a[i].w);
            if constexpr (PER_WORD == 2) {
                *reinterpret_cast<uint2*>(&As[r][2 * quad]) = mma::Quad<float>::bf16_words(a[i]);
                *reinterpret_cast<uint2*>(&Bs[r][2 * quad]) = mma::Quad<TX>::bf16_words(b[i]);
            } else {
                *reinterpret_cast<float4*>(&As[r][4 * quad]) = a[i];
                static_assert(sizeof(b[i]) == sizeof(float4), "f32 products read f32 input");
                *reinterpret_cast<float4*>(&Bs[r][4 * quad]) = b[i];
            }
        }
        __syncthreads();
        if (sl + 1 < slice_end) fetch(sl + 1);
#pragma unroll
        for (int w0 = 0; w0 < SLICE_WORDS; w0 += 8) Pol::step(As, Bs, w0, acc);
        __syncthreads();  // the next slice overwrites As, Bs
    }

    float* slab = dw_part + (size_t)blockIdx.z * s.oc * s.c;
    mma::for_each_acc(acc, [&](int row, int col, float v) {
        const int m = m0 + row, c = c0 + col;
        if (m < s.oc && c < s.c) slab[(size_t)m * s.c + c] = v;
    });
    if (bias) {
        // the QUADS threads of a row are consecutive lanes of one warp
#pragma unroll
        for (int i = 0; i < LOADS; ++i) {
            float v = row_sum[i];
#pragma unroll
            for (int off = QUADS / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
            const int m = m0 + row0 + ROW_STEP * i;
            if (quad == 0 && m < s.oc) db_part[(size_t)blockIdx.z * s.oc + m] = v;
        }
    }
}

}  // namespace wg1x1

// dw_part [splits, OC, C] (and, with db_part non-null, db_part [splits, OC])
// of a 1×1 stride-1 unpadded conv with P = OH·OW a multiple of 4 and dy, x
// 16-byte aligned (the host checks): _f32 at f32 accuracy (3xTF32), _bf16
// with bf16 operands, _bf16_xbf16 reading x from bf16 storage. Grid
// (⌈C/64⌉, ⌈OC/64⌉, splits), 256 threads; split z sums 32-word slices
// [z·per_split, (z + 1)·per_split).
extern "C" __global__ void __launch_bounds__(256)
    conv2d_weight_grad_1x1_f32(float* dw_part, float* db_part, const float* dy, const float* x, conv::Shape s, int per_split) {
    wg1x1::weight_grad<mma::Tf32x3, float>(dw_part, db_part, dy, x, s, per_split);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_weight_grad_1x1_bf16(float* dw_part, float* db_part, const float* dy, const float* x, conv::Shape s, int per_split) {
    wg1x1::weight_grad<mma::Bf16, float>(dw_part, db_part, dy, x, s, per_split);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_weight_grad_1x1_bf16_xbf16(float* dw_part, float* db_part, const float* dy, const unsigned short* x, conv::Shape s,
                                      int per_split) {
    wg1x1::weight_grad<mma::Bf16, unsigned short>(dw_part, db_part, dy, x, s, per_split);
}

// The split sums of both gradients in one launch, in a fixed order (deterministic):
//   out_a[i] = Σ_{z < splits} part_a[z·len_a + i]   (i < len_a)
//   out_b[i] = Σ_{z < splits} part_b[z·len_b + i]   (i < len_b; out_b may be null, len_b then unused)
// The 1×1 weight gradient splits into hundreds of partials (few outputs, a
// long K), too many for one thread an output to sum in sequence: a block
// takes 32 outputs (consecutive, coalesced) × 8 groups of splits, thread
// (o, zg) sums splits zg, zg + 8, …, and the 8 group sums of each output are
// added in group order. Grid ⌈(len_a (+ len_b))/32⌉, 256 threads.
constexpr int SUM_GROUPS = 8;
extern "C" __global__ void __launch_bounds__(256)
    conv2d_sum_splits_pair_f32(float* out_a, const float* part_a, int len_a, float* out_b, const float* part_b, int len_b,
                               int splits) {
    __shared__ float group_sum[SUM_GROUPS][33];
    const int len = len_a + (out_b != nullptr ? len_b : 0);
    const int lane = threadIdx.x % 32, zg = threadIdx.x / 32;
    const int e = blockIdx.x * 32 + lane;
    const bool first = e < len_a;
    float acc = 0.0f;
    if (e < len) {
        const float* part = first ? part_a + e : part_b + (e - len_a);
        const size_t stride = first ? (size_t)len_a : (size_t)len_b;
        for (int z = zg; z < splits; z += SUM_GROUPS) acc += part[z * stride];
    }
    group_sum[zg][lane] = acc;
    __syncthreads();
    if (zg == 0 && e < len) {
        float sum = 0.0f;
#pragma unroll
        for (int k = 0; k < SUM_GROUPS; ++k) sum += group_sum[k][lane];
        (first ? out_a + e : out_b + (e - len_a))[0] = sum;
    }
}
