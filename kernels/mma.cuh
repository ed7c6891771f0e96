// Tensor-core products at f32 accuracy ("3xTF32"), for the tiled GEMM and the
// implicit-GEMM convolution.
//
// A tensor core multiplies TF32 numbers (f32 with the mantissa cut to 10 bits)
// and accumulates in f32. Splitting each f32 operand x into
//   hi = tf32(x),  lo = tf32(x − hi)          (x = hi + lo to ~2⁻²² relative)
// and summing three products
//   a·b ≈ lo_a·hi_b + hi_a·lo_b + hi_a·hi_b   (lo_a·lo_b, ~2⁻²², is dropped)
// gives f32-level accuracy at a third of TF32's rate, still well above the
// f32 FMA pipes (H100: 495 dense TF32 TFLOP/s against 67 f32). The tensor
// core rounds each mma's f32 sum towards zero, a bias that grows with every
// instruction: the two small products go to their own accumulator (its
// values are ~2⁻¹¹ of the main one, so its truncation is negligible) and the
// two are added once at the end, which roughly thirds the error of one
// shared accumulator (measured on an H100: 6e-5 on outputs of scale ~10 at K ≈ 200).
//
// The instruction is mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32: one warp
// computes D[16×8] += A[16×8]·B[8×8]. Lane l holds, with g = l / 4, t = l % 4:
//   A: a0 = A[g][t], a1 = A[g + 8][t], a2 = A[g][t + 4], a3 = A[g + 8][t + 4]
//   B: b0 = B[t][g], b1 = B[t + 4][g]
//   D: d0 = D[g][2t], d1 = D[g][2t + 1], d2 = D[g + 8][2t], d3 = D[g + 8][2t + 1]
//
// warp_slice_3xtf32 runs one K slice of 16 of a 64×64 block tile held in
// shared memory as As[k][m], Bs[k][n] (the layout both kernels stage): the
// block's 8 warps tile it 2 (m) × 4 (n), each warp owning 32 rows × 16
// columns = 2 × 2 mma tiles, Acc::big[mi][ni][q] and Acc::small[..] as D's d_q
// above; Acc::get adds the two.
#pragma once
#include "common.cuh"

namespace mma {

// One warp's accumulators of a 64×64 block tile (see warp_slice_3xtf32).
struct Acc {
    float big[2][2][4];
    float small[2][2][4];
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < 16; ++i) (&big[0][0][0])[i] = (&small[0][0][0])[i] = 0.0f;
    }
    __device__ __forceinline__ float get(int mi, int ni, int q) const { return big[mi][ni][q] + small[mi][ni][q]; }
};

// tf32(x): round to nearest, ties away from zero (cvt.rna.tf32.f32), as f32
// bits with the 13 dropped mantissa bits zero.
__device__ __forceinline__ unsigned int tf32(float x) {
#if defined(MD_EMULATED)
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7f800000u) != 0x7f800000u) u += 0x1000u;  // not for inf/NaN
    return u & 0xffffe000u;
#else
    unsigned int r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r & 0xffffe000u;
#endif
}

// x = hi + lo, both TF32.
__device__ __forceinline__ void split(float x, unsigned int& hi, unsigned int& lo) {
    hi = tf32(x);
    lo = tf32(x - __uint_as_float(hi));
}

// big += hi_a·hi_b and small += lo_a·hi_b + hi_a·lo_b over one m16n8k8 tile
// (fragments as above).
__device__ __forceinline__ void mma_3xtf32(float (&big)[4], float (&small)[4], const unsigned int (&a_hi)[4],
                                           const unsigned int (&a_lo)[4], const unsigned int (&b_hi)[2],
                                           const unsigned int (&b_lo)[2]) {
#if defined(MD_EMULATED)
    emu::mma_m16n8k8_3xtf32(big, small, a_hi, a_lo, b_hi, b_lo);
#else
#define MD_MMA_TF32(D, A, B)                                                                                    \
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, " \
                 "{%0,%1,%2,%3};"                                                                              \
                 : "+f"(D[0]), "+f"(D[1]), "+f"(D[2]), "+f"(D[3])                                              \
                 : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]))
    MD_MMA_TF32(small, a_lo, b_hi);
    MD_MMA_TF32(small, a_hi, b_lo);
    MD_MMA_TF32(big, a_hi, b_hi);
#undef MD_MMA_TF32
#endif
}

// acc += As[k0..k0+16][rows of this warp]ᵀ · Bs[k0..k0+16][columns of this warp]
// for a block of 256 threads (8 warps, 2 × 4) on a 64×64 tile; LD is the row
// length of As and Bs (≥ 64). Call with every thread of the block.
template <int LD>
__device__ __forceinline__ void warp_slice_3xtf32(const float (*As)[LD], const float (*Bs)[LD], Acc& acc) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int m_w = 32 * (warp % 2), n_w = 16 * (warp / 2);
#pragma unroll
    for (int k0 = 0; k0 < 16; k0 += 8) {
        unsigned int a_hi[2][4], a_lo[2][4], b_hi[2][2], b_lo[2][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            const int r = m_w + 16 * mi + g;
            split(As[k0 + t][r], a_hi[mi][0], a_lo[mi][0]);
            split(As[k0 + t][r + 8], a_hi[mi][1], a_lo[mi][1]);
            split(As[k0 + t + 4][r], a_hi[mi][2], a_lo[mi][2]);
            split(As[k0 + t + 4][r + 8], a_hi[mi][3], a_lo[mi][3]);
        }
#pragma unroll
        for (int ni = 0; ni < 2; ++ni) {
            const int c = n_w + 8 * ni + g;
            split(Bs[k0 + t][c], b_hi[ni][0], b_lo[ni][0]);
            split(Bs[k0 + t + 4][c], b_hi[ni][1], b_lo[ni][1]);
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 2; ++ni)
                mma_3xtf32(acc.big[mi][ni], acc.small[mi][ni], a_hi[mi], a_lo[mi], b_hi[ni], b_lo[ni]);
    }
}

// ---- bf16 products (the `bf16` compute precision, ops::precision) ----
//
// Operands rounded to bfloat16 (8-bit mantissa, f32's exponent) multiply
// exactly in f32 (8 + 8 bits ≤ 24) and accumulate in f32: the numbers of
// PyTorch's bf16 autocast with an f32 output, at 6× the products per
// instruction of 3xTF32 (one mma covers k = 16 instead of three covering 8).
//
// The instruction is mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32. Its
// registers hold pairs of bf16 along k (lower k in the low half); with
// g = lane / 4, t = lane % 4 and kp = k / 2 the pair index:
//   A: a0 = A[g][kp t], a1 = A[g + 8][kp t], a2 = A[g][kp t + 4], a3 = A[g + 8][kp t + 4]
//   B: b0 = B[kp t][g], b1 = B[kp t + 4][g]
//   D: as m16n8k8 above.
// So the tiles are staged as pairs, As[kp][m] and Bs[kp][n], and the fragment
// reads are those of the TF32 path with k replaced by kp.

// (bf16_bits and bf16_pair, the rounding to bf16, are in common.cuh.)
using ::bf16_pair;

// 4 consecutive values of an operand as one vector load: f32 (float4), or
// bf16 storage (uint2: the bf16 bits of those 4 values, in order — what the
// f32 values would round to). bf16_words gives them as two bf16 pairs
// (values 0,1 and 2,3); `at` is an element offset (int or 64-bit).
template <class T> struct Quad;
template <> struct Quad<float> {
    using Reg = float4;
    template <class I> __device__ static Reg load(const float* p, I at) { return *reinterpret_cast<const float4*>(p + at); }
    __device__ static Reg zero() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
    __device__ static uint2 bf16_words(Reg v) { return make_uint2(bf16_pair(v.x, v.y), bf16_pair(v.z, v.w)); }
};
template <> struct Quad<unsigned short> {
    using Reg = uint2;
    template <class I> __device__ static Reg load(const unsigned short* p, I at) { return *reinterpret_cast<const uint2*>(p + at); }
    __device__ static Reg zero() { return make_uint2(0u, 0u); }
    __device__ static uint2 bf16_words(Reg v) { return v; }
};

// Four 8×8 matrices of 16-bit pairs from shared memory, one 32-bit word of
// each per lane: lane l gives the address of row l % 8 of matrix l / 8 (16
// bytes, 16-byte aligned), and gets in r[m] word l % 4 of matrix m's row
// l / 4 — with rows = the n of a B tile and words = its k pairs, B fragments
// (b0, b1 of two n8 tiles) in one instruction where plain loads take four.
__device__ __forceinline__ void ldmatrix_x4(unsigned int (&r)[4], const unsigned int* row) {
#if defined(MD_EMULATED)
    emu::ldmatrix_x4(r, row);
#else
    unsigned int at;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(at) : "l"(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(at));
#endif
}

// d += A·B over one m16n8k16 tile of bf16 pairs (fragments as above).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]) {
#if defined(MD_EMULATED)
    emu::mma_m16n8k16_bf16(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// d = c + A·B over one m16n8k16 tile (c read, not written: a C operand that
// stays in its registers across calls).
__device__ __forceinline__ void mma_bf16_from(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2],
                                              const float (&c)[4]) {
#if defined(MD_EMULATED)
    for (int i = 0; i < 4; ++i) d[i] = c[i];
    emu::mma_m16n8k16_bf16(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                   "f"(c[3]));
#endif
}

// d = c + A·B over one m16n8k8 tile of bf16 pairs: k = 8, A's a0, a1 and B's
// b0 of the m16n8k16 layout (the half of a k16 step whose other half is zero).
__device__ __forceinline__ void mma_bf16_k8_from(float (&d)[4], unsigned int a0, unsigned int a1, unsigned int b0,
                                                 const float (&c)[4]) {
#if defined(MD_EMULATED)
    const unsigned int a[4] = {a0, a1, 0u, 0u}, b[2] = {b0, 0u};
    for (int i = 0; i < 4; ++i) d[i] = c[i];
    emu::mma_m16n8k16_bf16(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a0), "r"(a1), "r"(b0), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#endif
}

// acc.big += As[kp0..kp0+16][rows of this warp]ᵀ · Bs[..][columns of this warp]
// for 16 k pairs (k = 32) of bf16 tiles, with the warp tiling of
// warp_slice_3xtf32 (acc.small is not touched, so Acc::get stays exact).
template <int LD>
__device__ __forceinline__ void warp_slice_bf16(const unsigned int (*As)[LD], const unsigned int (*Bs)[LD], Acc& acc) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int m_w = 32 * (warp % 2), n_w = 16 * (warp / 2);
#pragma unroll
    for (int kp0 = 0; kp0 < 16; kp0 += 8) {
        unsigned int a[2][4], b[2][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            const int r = m_w + 16 * mi + g;
            a[mi][0] = As[kp0 + t][r];
            a[mi][1] = As[kp0 + t][r + 8];
            a[mi][2] = As[kp0 + t + 4][r];
            a[mi][3] = As[kp0 + t + 4][r + 8];
        }
#pragma unroll
        for (int ni = 0; ni < 2; ++ni) {
            const int c = n_w + 8 * ni + g;
            b[ni][0] = Bs[kp0 + t][c];
            b[ni][1] = Bs[kp0 + t + 4][c];
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 2; ++ni) mma_bf16(acc.big[mi][ni], a[mi], b[ni]);
    }
}

// How a block tile's K slices are staged and multiplied: one policy per
// compute precision. A slice is 16 rows of `Word`s, each holding PER_WORD
// consecutive k values of one row or column of the tile (K_SLICE = 16·PER_WORD).
struct Tf32x3 {
    using Word = float;
    static constexpr int PER_WORD = 1;
    __device__ static Word pack(const float (&v)[1]) { return v[0]; }
    template <int LD>
    __device__ static void slice(const Word (*As)[LD], const Word (*Bs)[LD], Acc& acc) { warp_slice_3xtf32<LD>(As, Bs, acc); }
};
struct Bf16 {
    using Word = unsigned int;
    static constexpr int PER_WORD = 2;
    __device__ static Word pack(const float (&v)[2]) { return bf16_pair(v[0], v[1]); }
    template <int LD>
    __device__ static void slice(const Word (*As)[LD], const Word (*Bs)[LD], Acc& acc) { warp_slice_bf16<LD>(As, Bs, acc); }
};

// The tile coordinates (row, column within the block's 64×64 tile) of acc[mi][ni][q].
__device__ __forceinline__ int acc_row(int mi, int q) {
    return 32 * ((threadIdx.x / 32) % 2) + 16 * mi + (threadIdx.x % 32) / 4 + 8 * (q / 2);
}
__device__ __forceinline__ int acc_col(int ni, int q) {
    return 16 * ((threadIdx.x / 32) / 2) + 8 * ni + 2 * (threadIdx.x % 4) + (q % 2);
}

// f(row, column, value) for each of this thread's accumulators of the block's
// 64×64 tile (row and column within the tile, as acc_row / acc_col give them).
template <class F>
__device__ __forceinline__ void for_each_acc(const Acc& acc, F f) {
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 2; ++ni)
#pragma unroll
            for (int q = 0; q < 4; ++q) f(acc_row(mi, q), acc_col(ni, q), acc.get(mi, ni, q));
}

}  // namespace mma
