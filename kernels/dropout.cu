// Dropout with a mask drawn from the Philox stream (seed, offset) of
// kernels/philox.cuh: element i is kept when its uniform u_i ≥ p, and then
// scaled by 1/(1 − p):
//
//   y_i = u_i ≥ p ? x_i · scale : 0,   scale = 1/(1 − p)
//
// The backward is the same map applied to dy (the mask is drawn again from
// the same stream, never stored). One thread per Philox block of 4 elements,
// as kernels/random.cu; the CPU twin (src/ops/dropout) draws the same u_i.
#include "common.cuh"
#include "philox.cuh"

extern "C" __global__ void dropout_f32(float* y, const float* x, float p, float scale, unsigned long long seed,
                                       unsigned long long offset, int n) {
    const int blocks = (n + 3) / 4;
    for (int k = global_index(); k < blocks; k += grid_stride()) {
        const philox::U4 r = philox::block(seed, offset, (unsigned long long)k);
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
            const int i = 4 * k + lane;
            if (i < n) y[i] = philox::to_uniform(r.v[lane]) >= p ? __fmul_rn(x[i], scale) : 0.0f;
        }
    }
}
