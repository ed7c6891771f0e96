// Shared device helpers: launch geometry, strided index math, warp and block
// reductions. Included by every kernel file.
#pragma once

// Ranks up to this many dims travel by value in the parameter structs.
#define MD_MAX_DIMS 6

// −∞ without math.h (NVRTC has none).
#define MD_NEG_INF (__int_as_float((int)0xff800000u))

// Threads per block of the 1-D elementwise kernels.
#define MD_THREADS 256

// Output dims and the strides of two inputs read through broadcasting (a
// stride of 0 repeats the input along that axis). Mirrors ops::binary::cuda::Broadcast2.
struct Broadcast2 {
    int rank;
    int dims[MD_MAX_DIMS];
    int a_strides[MD_MAX_DIMS];
    int b_strides[MD_MAX_DIMS];
};

// bf16 bits of x, rounded to nearest, ties to even; NaN stays a (quiet) NaN.
// The same rounding as ops::precision::round_bf16 on the CPU. A bf16 tensor
// is stored as these 16-bit patterns (unsigned short).
__device__ __forceinline__ unsigned int bf16_bits(float x) {
    const unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;  // NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// Two floats as one 32-bit word of two bf16 (lo in bits 0..15, hi in bits
// 16..31), each rounded as bf16_bits. On the GPU one cvt.rn.bf16x2.f32 (round
// to nearest, ties to even; a NaN may keep another payload) where bf16_bits
// is ~8 instructions a value.
__device__ __forceinline__ unsigned int bf16_pair(float lo, float hi) {
#if defined(MD_EMULATED)
    return bf16_bits(lo) | (bf16_bits(hi) << 16);
#else
    unsigned int d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));  // hi to the upper half
    return d;
#endif
}

// 1/d by the hardware's approximation (rcp.approx.ftz: one MUFU op, ~1 ulp),
// where the IEEE division costs ~10 instructions and a slow-path check.
__device__ __forceinline__ float rcp_approx(float d) {
#if defined(MD_EMULATED)
    return 1.0f / d;
#else
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
    return r;
#endif
}

// 2^x by one ex2.approx.ftz (2⁻²² relative; exp2f adds a test and two
// multiplies to keep results below 2^-126 as subnormals, here they flush to
// 0: a softmax weight that small adds under 1e-38 of a value to its sum).
__device__ __forceinline__ float exp2_ftz(float x) {
#if defined(MD_EMULATED)
    return exp2f(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// σ(u) = 1 / (1 + e^−u) and SiLU u·σ(u), for every kernel that applies them
// (group norm + SiLU and its backward, the conv's norm prologue, the
// activation op), so fused and unfused paths give the same bits. e^−u as
// ex2.approx of −u·log₂e and the reciprocal approximate: 5
// instructions a value where expf and the IEEE division took ~15 (the group
// norm's SASS had an FCHK and a slow-path CALL a value). Relative error
// ≲ 2⁻²¹ + |u|·2⁻²⁴ (the rounding of u·log₂e): ~1e-6 at |u| = 16, and σ
// within that of 0 or 1 beyond. For u < −88 e^−u is ∞ and both give 0 (the
// exact values are below 1e-37); NaN stays NaN.
__device__ __forceinline__ float sigmoid_fast(float u) { return rcp_approx(1.0f + exp2_ftz(u * -1.44269504f)); }
__device__ __forceinline__ float silu_fast(float u) { return u * sigmoid_fast(u); }

// The value of stored bf16 bits (exact in f32).
__device__ __forceinline__ float bf16_value(unsigned short bits) { return __uint_as_float((unsigned int)bits << 16); }

// An element of f32 or bf16 storage, as f32.
__device__ __forceinline__ float load_f32(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load_f32(const unsigned short* p, long long i) { return bf16_value(p[i]); }

// Store v to f32 storage, or rounded to bf16 storage.
__device__ __forceinline__ void store_as(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_as(unsigned short* p, long long i, float v) { p[i] = (unsigned short)bf16_bits(v); }

// Global index of this thread in a 1-D launch, and the grid-stride step.
__device__ __forceinline__ int global_index() { return (int)(blockIdx.x * blockDim.x + threadIdx.x); }
__device__ __forceinline__ int grid_stride() { return (int)(gridDim.x * blockDim.x); }

// Offsets of linear output index i under two stride sets (row-major dims).
__device__ __forceinline__ void broadcast_offsets(const Broadcast2& p, int i, int* a_off, int* b_off) {
    int a = 0, b = 0;
    for (int d = p.rank - 1; d >= 0; --d) {
        int coord = i % p.dims[d];
        i /= p.dims[d];
        a += coord * p.a_strides[d];
        b += coord * p.b_strides[d];
    }
    *a_off = a;
    *b_off = b;
}

// Sum over the 32 lanes of a warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the total. `scratch` is 32 floats of shared memory, reusable after return.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : MD_NEG_INF;
    return warp_max(v);
}

// Output dims and the strides one input is read with (permute, broadcast).
// Mirrors ops::layout::cuda::Strided1.
struct Strided1 {
    int rank;
    int dims[MD_MAX_DIMS];
    int strides[MD_MAX_DIMS];
};

// Offset of linear index i of `dims` under `strides`.
__device__ __forceinline__ int strided_offset(const Strided1& p, int i) {
    int off = 0;
    for (int d = p.rank - 1; d >= 0; --d) {
        off += (i % p.dims[d]) * p.strides[d];
        i /= p.dims[d];
    }
    return off;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// Block-wide sum in double; `scratch` is 32 doubles of shared memory.
__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0;
    return warp_sum_d(v);
}
