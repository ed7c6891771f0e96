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


// ---- Hopper's warpgroup MMA (wgmma), bf16 operands in shared memory ----
//
// wgmma.mma_async.m64nNk16.f32.bf16.bf16: the 4 warps of a warpgroup (128
// threads, warps 4w … 4w + 3 of the block) compute D[64×N] += A[64×16]·B[16×N]
// together, both operands read by the tensor cores from shared memory —
// no fragment loads through the load/store pipe. Each operand is given by a
// 64-bit descriptor; here no swizzle, "K-major": 8 × 16-byte core matrices
// (8 rows, 8 consecutive k each), the two k halves LBO bytes apart, 8-row
// groups SBO bytes apart (PTX ISA, "Shared Memory Matrix Layout"). Thread
// 32w' + 4g + t (w' its warp in the warpgroup) holds, for n8 block i,
//   d[4i + q] = D[16w' + g + 8(q / 2)][8i + 2t + q % 2]   (as mma.sync's D).
// The instruction is asynchronous: issue (wgmma_fence first, after the
// registers it reads were written), wgmma_commit, then wgmma_wait<0> before
// the accumulators are read or the operands' shared memory is overwritten;
// shared memory written by plain stores is made visible to it by
// fence_proxy_async before the barrier that precedes it. Needs sm_90a
// (MD_WGMMA: compiled for it, or emulated); elsewhere a kernel using it traps.
#if defined(MD_EMULATED) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MD_WGMMA 1
#endif

// p's address in the shared window (cvta.to.shared).
__device__ __forceinline__ unsigned int shared_address(const void* p) {
#if defined(MD_EMULATED)
    return emu::shared_address(p);
#else
    unsigned int at;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(at) : "l"(p));
    return at;
#endif
}

// The descriptor of an unswizzled K-major operand starting at p (16-byte
// aligned): bits 0–13 the address, 16–29 LBO, 32–45 SBO, each in 16-byte
// units (byte values & 0x3FFFF, >> 4); base offset and swizzle mode 0.
__device__ __forceinline__ unsigned long long smem_desc(const void* p, unsigned int lbo, unsigned int sbo) {
    const auto field = [](unsigned int bytes) { return (unsigned long long)((bytes & 0x3ffffu) >> 4); };
    return field(shared_address(p)) | field(lbo) << 16 | field(sbo) << 32;
}

// Orders this thread's earlier register writes (accumulators, operands)
// before the wgmma that follow.
__device__ __forceinline__ void wgmma_fence() {
#if !defined(MD_EMULATED) && defined(MD_WGMMA)
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
// Closes a group of the wgmma issued since the last commit.
__device__ __forceinline__ void wgmma_commit() {
#if defined(MD_EMULATED)
    emu::wgmma_commit();
#elif defined(MD_WGMMA)
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
// Waits until at most PENDING committed groups are in flight.
template <int PENDING>
__device__ __forceinline__ void wgmma_wait() {
#if defined(MD_EMULATED)
    emu::wgmma_wait(PENDING);
#elif defined(MD_WGMMA)
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(PENDING) : "memory");
#endif
}
// Plain (generic-proxy) shared-memory writes of this thread made visible to
// the async proxy the tensor cores read through.
__device__ __forceinline__ void fence_proxy_async() {
#if !defined(MD_EMULATED) && defined(MD_WGMMA)
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
// Keeps the compiler from moving reads of r across a wgmma_wait (the
// instruction writes the accumulators behind its back).
__device__ __forceinline__ void fence_operand(float& r) {
#if !defined(MD_EMULATED)
    asm volatile("" : "+f"(r)::"memory");
#endif
}

// d += A·B, the m64nNk16 bf16 instruction for the N a kernel uses.
template <int N> struct Wgmma;
#if defined(MD_EMULATED)
template <int N> struct Wgmma {
    __device__ static void ss(float (&d)[N / 2], unsigned long long desc_a, const void* a, unsigned long long desc_b, const void* b) {
        emu::wgmma_bf16_ss(d, N, desc_a, a, desc_b, b);
    }
};
#elif defined(MD_WGMMA)
// (one asm statement a shape: the instruction takes each accumulator as its
// own operand; scale-d 1 keeps D, the immediates: A and B not negated, both K-major)
template <> struct Wgmma<72> {
    __device__ static void ss(float (&d)[36], unsigned long long desc_a, const void*, unsigned long long desc_b, const void*) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n72k16.f32.bf16.bf16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
            "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
            "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35"
            "}, %36, %37, p, 1, 1, 0, 0;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35])
            : "l"(desc_a), "l"(desc_b), "r"(1)
            : "memory");
    }
};
template <> struct Wgmma<128> {
    __device__ static void ss(float (&d)[64], unsigned long long desc_a, const void*, unsigned long long desc_b, const void*) {
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
            "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
            "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
            "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "
            "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
            "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, "
            "%60, %61, %62, %63"
            "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
              "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
              "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
              "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
              "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
              "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
              "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
              "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
            : "l"(desc_a), "l"(desc_b), "r"(1)
            : "memory");
    }
};
#else
template <int N> struct Wgmma {
    __device__ static void ss(float (&)[N / 2], unsigned long long, const void*, unsigned long long, const void*) { __trap(); }
};
#endif

}  // namespace mma
