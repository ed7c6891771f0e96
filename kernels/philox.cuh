// Counter-based random numbers: Philox4x32-10 (Random123) and Box–Muller
// normals, the same (seed, offset, index) → value mapping as src/rng.rs, so a
// kernel that draws noise here gives, element for element, what the CPU twin
// draws with PhiloxStream. Everything is a pure function of its arguments:
// any element can be computed by any thread, in any order.
//
//   key     = [seed lo, seed hi]
//   block b = Philox4x32-10(counter [b lo, b hi, offset lo, offset hi], key)
//   u32 j   = lane j%4 of block j/4
//   uniform j = (x >> 8) · 2^-24                    (exact in f32, in [0, 1))
//   normals 4b..4b+4: Box–Muller in double on lanes (0,1) and (2,3):
//     u1 = ((x_a >> 8) + 1) · 2^-24 in (0, 1],  u2 = (x_b >> 8) · 2^-24 in [0, 1)
//     r = sqrt(−2 ln u1),  θ = 2π·u2,  z_a = f32(r cos θ),  z_b = f32(r sin θ)
//
// On a GPU the double log/sin/cos may differ from the host libm in the last
// bit of the double, which very rarely moves the f32 rounding by one ulp.
#pragma once
#include "common.cuh"

namespace philox {

constexpr unsigned int M0 = 0xD2511F53u;  // multiplier of lane 0
constexpr unsigned int M1 = 0xCD9E8D57u;  // multiplier of lane 2
constexpr unsigned int W0 = 0x9E3779B9u;  // key bump, word 0 (golden ratio)
constexpr unsigned int W1 = 0xBB67AE85u;  // key bump, word 1 (sqrt(3) − 1)
constexpr float TWO_POW_M24_F = 5.9604644775390625e-08f;  // 2^-24, exact
constexpr double TWO_POW_M24_D = 5.9604644775390625e-08;  // 2^-24, exact
constexpr double PI = 3.141592653589793;                  // std::f64::consts::PI

// Four u32s: one Philox block, or four values derived from it.
struct U4 {
    unsigned int v[4];
};
struct F4 {
    float v[4];
};

// Ten rounds on counter c with key k; the key is bumped between rounds (9 times).
__device__ __forceinline__ U4 philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2, unsigned int c3,
                                            unsigned int k0, unsigned int k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        const unsigned int hi0 = __umulhi(M0, c0), lo0 = M0 * c0;
        const unsigned int hi1 = __umulhi(M1, c2), lo1 = M1 * c2;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    U4 out;
    out.v[0] = c0;
    out.v[1] = c1;
    out.v[2] = c2;
    out.v[3] = c3;
    return out;
}

// Block b of stream (seed, offset): elements 4b..4b+4.
__device__ __forceinline__ U4 block(unsigned long long seed, unsigned long long offset, unsigned long long b) {
    return philox4x32_10((unsigned int)b, (unsigned int)(b >> 32), (unsigned int)offset, (unsigned int)(offset >> 32),
                         (unsigned int)seed, (unsigned int)(seed >> 32));
}

// u32 element j of the stream.
__device__ __forceinline__ unsigned int u32_at(unsigned long long seed, unsigned long long offset, unsigned long long j) {
    return block(seed, offset, j >> 2).v[j & 3];
}

// Uniform in [0, 1) from one u32 (exact).
__device__ __forceinline__ float to_uniform(unsigned int x) { return (float)(x >> 8) * TWO_POW_M24_F; }

__device__ __forceinline__ float uniform_at(unsigned long long seed, unsigned long long offset, unsigned long long j) {
    return to_uniform(u32_at(seed, offset, j));
}

// Box–Muller on one pair, in double, rounded to f32: x_a drives the radius, x_b the angle.
__device__ __forceinline__ void box_muller(unsigned int x_a, unsigned int x_b, float* z_a, float* z_b) {
    const double u1 = (double)((x_a >> 8) + 1u) * TWO_POW_M24_D;  // (0, 1]
    const double u2 = (double)(x_b >> 8) * TWO_POW_M24_D;         // [0, 1)
    const double radius = sqrt(-2.0 * log(u1));
    const double theta = 2.0 * PI * u2;
    *z_a = (float)(radius * cos(theta));
    *z_b = (float)(radius * sin(theta));
}

// The four normals of one block: lanes (0,1) → normals 4b, 4b+1; lanes (2,3) → 4b+2, 4b+3.
__device__ __forceinline__ F4 to_normals(U4 x) {
    F4 z;
    box_muller(x.v[0], x.v[1], &z.v[0], &z.v[1]);
    box_muller(x.v[2], x.v[3], &z.v[2], &z.v[3]);
    return z;
}

// Normal element j of the stream alone (computes one block and one Box–Muller pair).
__device__ __forceinline__ float normal_at(unsigned long long seed, unsigned long long offset, unsigned long long j) {
    const U4 x = block(seed, offset, j >> 2);
    const int pair = (int)(j & 2);  // lanes (0,1) or (2,3)
    float z_a, z_b;
    box_muller(x.v[pair], x.v[pair + 1], &z_a, &z_b);
    return (j & 1) ? z_b : z_a;
}

}  // namespace philox
