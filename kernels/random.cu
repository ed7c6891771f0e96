// Random fills from the Philox stream (seed, offset) of kernels/philox.cuh,
// elements start..start+n written to out[0..n]. One thread per Philox block:
// block b covers elements 4b..4b+4, so each block is computed once whatever
// the alignment of `start`, and only the lanes inside the range are written.
#include "common.cuh"
#include "philox.cuh"

// Number of Philox blocks overlapping start..start+n is (start % 4 + n + 3) / 4;
// block k of the launch is stream block start/4 + k.

// out[i] = u32 element start + i (written through a 32-bit buffer; the host reads the bits).
extern "C" __global__ void philox_fill_u32(unsigned int* out, unsigned long long seed, unsigned long long offset,
                                           unsigned long long start, int n) {
    const int first = (int)(start & 3);
    const int blocks = (first + n + 3) / 4;
    for (int k = global_index(); k < blocks; k += grid_stride()) {
        const philox::U4 x = philox::block(seed, offset, (start >> 2) + (unsigned long long)k);
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
            const int i = 4 * k + lane - first;
            if (i >= 0 && i < n) out[i] = x.v[lane];
        }
    }
}

// out[i] = lo + scale · uniform(start + i), uniform in [0, 1); the affine map
// rounds after the product and after the sum (no fused multiply-add), as the CPU twin.
extern "C" __global__ void philox_fill_uniform(float* out, unsigned long long seed, unsigned long long offset,
                                               unsigned long long start, float lo, float scale, int n) {
    const int first = (int)(start & 3);
    const int blocks = (first + n + 3) / 4;
    for (int k = global_index(); k < blocks; k += grid_stride()) {
        const philox::U4 x = philox::block(seed, offset, (start >> 2) + (unsigned long long)k);
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
            const int i = 4 * k + lane - first;
            if (i >= 0 && i < n) out[i] = __fadd_rn(lo, __fmul_rn(scale, philox::to_uniform(x.v[lane])));
        }
    }
}

// out[i] = standard normal element start + i (Box–Muller in double, rounded to f32).
extern "C" __global__ void philox_fill_normal(float* out, unsigned long long seed, unsigned long long offset,
                                              unsigned long long start, int n) {
    const int first = (int)(start & 3);
    const int blocks = (first + n + 3) / 4;
    for (int k = global_index(); k < blocks; k += grid_stride()) {
        const philox::F4 z = philox::to_normals(philox::block(seed, offset, (start >> 2) + (unsigned long long)k));
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
            const int i = 4 * k + lane - first;
            if (i >= 0 && i < n) out[i] = z.v[lane];
        }
    }
}
