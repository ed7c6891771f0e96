// CUDA on the CPU, for testing kernels on machines without a GPU.
//
// The kernels in kernels/*.cu are compiled a second time with g++, with this
// header force-included. Each CUDA thread of a block runs as one OS thread;
// the blocks of a grid run one after another, so a function-local `static`
// array behaves as the block's __shared__ memory. __syncthreads is a barrier
// over the block's threads, warp shuffles exchange through a per-warp buffer
// behind a per-warp barrier, atomics are std::atomic_ref. Threads that return
// early drop out of both barriers, as on Volta and later GPUs.
//
// Device buffers are exact-size blocks that end at a guard page
// (emu_runtime.cpp), so an out-of-bounds access past a buffer faults.
//
// The subset this supports is the subset our kernels may use: no inline PTX,
// no dynamic shared memory, full-warp shuffles. Tensor-core products go
// through emu::mma_m16n8k8_3xtf32 and emu::mma_m16n8k16_bf16, fragment loads
// through emu::ldmatrix_x4, warpgroup MMAs through emu::wgmma_bf16_ss (kernels/mma.cuh
// picks them under MD_EMULATED).
#pragma once

#define MD_EMULATED 1

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)
#define __constant__ static const

struct alignas(8) uint2 { unsigned int x, y; };
struct uint3 { unsigned int x, y, z; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return uint2{x, y}; }
struct dim3 { unsigned int x, y, z; };

namespace emu {
extern thread_local uint3 thread_idx;
extern thread_local uint3 block_idx;
extern thread_local dim3 block_dim;
extern thread_local dim3 grid_dim;
void sync_threads();
void sync_warp();
// Exchange one 64-bit value among the lanes of the calling warp; returns the
// value written by lane `src_lane` (own value when src_lane is out of range).
uint64_t warp_exchange(uint64_t value, int src_lane);
int lane_id();
// The warp's big += hi_a·hi_b, small += lo_a·hi_b + hi_a·lo_b on m16n8k8
// TF32 fragments (layout in kernels/mma.cuh), each product summed over k in
// f32, as three mma.sync instructions do. Every lane of the warp must call it.
void mma_m16n8k8_3xtf32(float (&big)[4], float (&small)[4], const unsigned int (&a_hi)[4], const unsigned int (&a_lo)[4],
                        const unsigned int (&b_hi)[2], const unsigned int (&b_lo)[2]);
// The warp's d += A·B on m16n8k16 bf16-pair fragments (layout in
// kernels/mma.cuh), summed over k in f32 (bf16 products are exact in f32).
void mma_m16n8k16_bf16(float (&d)[4], const unsigned int (&a)[4], const unsigned int (&b)[2]);
// ldmatrix.sync.aligned.m8n8.x4.b16: lane l gives the address of row l % 8 of
// matrix l / 8 (16 bytes); r[m] = 32-bit word l % 4 of matrix m's row l / 4.
// Every lane of the warp must call it.
void ldmatrix_x4(unsigned int (&r)[4], const void* row);
// Hopper's warpgroup MMA (kernels/mma.cuh's wgmma_*): D[64×N] += A[64×16]·B[16×N]
// with bf16 A and B in shared memory, each given by its 64-bit matrix
// descriptor (no swizzle, K-major: 8 × 16-byte core matrices; LBO the byte
// offset between the two k halves, SBO between 8-row groups) and by the
// pointer the descriptor's address bits must be those of. Thread 32w' + 4g + t
// of a warpgroup (w' its warp there) holds, for each n8 block i,
//   d[4i + q] = D[16w' + g + 8(q / 2)][8i + 2t + q % 2].
// Asynchronous as on the GPU: an operation is recorded when issued and
// computed when wgmma_wait retires its group, reading the operands and the
// accumulators then — so a kernel that overwrites an operand or reads d
// before waiting gets wrong numbers here too. Every thread of the warpgroup
// calls these.
void wgmma_bf16_ss(float* d, int n, uint64_t desc_a, const void* a, uint64_t desc_b, const void* b);
void wgmma_commit();
void wgmma_wait(int pending);
// The emulation's shared-window address of p (cvta.to.shared): its low 32 bits.
unsigned int shared_address(const void* p);

template <typename T>
inline T shfl(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 64 bits");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    uint64_t got = warp_exchange(bits, src_lane);
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
static constexpr int warpSize = 32;

inline void __syncthreads() { emu::sync_threads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }

template <typename T> inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int lane = emu::lane_id();
    return emu::shfl(v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    int lane = emu::lane_id();
    int src = lane ^ mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return emu::shfl(v, src);
}
template <typename T> inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = emu::lane_id();
    int src = lane + (int)delta;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return emu::shfl(v, src);
}
template <typename T> inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = emu::lane_id();
    int src = lane - (int)delta;
    if (src < (lane & ~(width - 1))) src = lane;
    return emu::shfl(v, src);
}

// vote.any: nonzero when pred is nonzero on any lane (every lane must call it).
inline int __any_sync(unsigned, int pred) {
    int any = pred != 0;
    for (int mask = 1; mask < 32; mask <<= 1) any |= __shfl_xor_sync(0xffffffffu, any, mask);
    return any;
}

template <typename T> inline T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}
template <typename T> inline T atomicMax(T* address, T value) {
    std::atomic_ref<T> ref(*address);
    T old = ref.load();
    while (old < value && !ref.compare_exchange_weak(old, value)) {}
    return old;
}

template <typename T> inline T __ldg(const T* p) { return *p; }

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return std::min(std::max(x, 0.0f), 1.0f); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((uint64_t)a * (uint64_t)b) >> 32);
}
inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// Explicitly rounded f32 arithmetic (no contraction on the GPU): plain IEEE
// operations here, as the host compiler does not contract under -std=c++20.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline void sincos(double x, double* s, double* c) { *s = std::sin(x); *c = std::cos(x); }
inline void sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }

using std::min;
using std::max;
using std::sqrt;
using std::exp;
using std::log;
using std::fabs;
using std::floor;
using std::ceil;
using std::sin;
using std::cos;
using std::tanh;
