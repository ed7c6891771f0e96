// The fused diffusion updates: noisify for training and one sampler step
// (DDPM and DDIM share it). Noise element i is normal number start + i of the
// Philox stream (seed, offset) — the same numbers as the CPU twin. One thread
// per Philox block of 4 elements; products and sums are rounded one by one
// (__fmul_rn/__fadd_rn) in the CPU's order, so the results match it exactly.
#include "common.cuh"
#include "philox.cuh"

// Mirrors ops::diffusion::StepCoefs.
struct StepCoefs {
    float eps_scale;      // x̂0 = (x_t − eps_scale·ε̂)·inv_sqrt_abar
    float inv_sqrt_abar;
    float clip;           // clip x̂0 to [−clip, clip] when > 0
    float c_x0;           // x_prev = c_x0·x̂0 + c_xt·x_t + c_eps·ε̂ + sigma·z
    float c_xt;
    float c_eps;
    float sigma;
};

// x_t[i] = a[s]·x0[i] + b[s]·ε_i and eps[i] = ε_i, s = i / per_sample,
// a = √ᾱ_t, b = √(1 − ᾱ_t) of sample s's timestep.
extern "C" __global__ void diffusion_noisify(float* xt, float* eps, const float* x0, const float* a, const float* b,
                                             int per_sample, unsigned long long seed, unsigned long long offset,
                                             unsigned long long start, int n) {
    const int first = (int)(start & 3);
    const int blocks = (first + n + 3) / 4;
    for (int k = global_index(); k < blocks; k += grid_stride()) {
        const philox::F4 z = philox::to_normals(philox::block(seed, offset, (start >> 2) + (unsigned long long)k));
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
            const int i = 4 * k + lane - first;
            if (i < 0 || i >= n) continue;
            const int s = i / per_sample;
            const float e = z.v[lane];
            eps[i] = e;
            xt[i] = __fadd_rn(__fmul_rn(a[s], x0[i]), __fmul_rn(b[s], e));
        }
    }
}

// One sampler update for every element:
//   x̂0 = clip((x_t − eps_scale·ε̂)·inv_sqrt_abar)
//   x_prev = c_x0·x̂0 + c_xt·x_t + c_eps·ε̂ (+ sigma·z when sigma > 0)
// x0_out may be null (x̂0 not wanted).
extern "C" __global__ void diffusion_step(float* prev, float* x0_out, const float* xt, const float* eps, StepCoefs c,
                                          unsigned long long seed, unsigned long long offset, unsigned long long start,
                                          int n) {
    const int first = (int)(start & 3);
    const int blocks = (first + n + 3) / 4;
    for (int k = global_index(); k < blocks; k += grid_stride()) {
        philox::F4 z = {{0.0f, 0.0f, 0.0f, 0.0f}};
        if (c.sigma > 0.0f) z = philox::to_normals(philox::block(seed, offset, (start >> 2) + (unsigned long long)k));
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
            const int i = 4 * k + lane - first;
            if (i < 0 || i >= n) continue;
            float x0 = __fmul_rn(__fsub_rn(xt[i], __fmul_rn(c.eps_scale, eps[i])), c.inv_sqrt_abar);
            if (c.clip > 0.0f) x0 = fminf(fmaxf(x0, -c.clip), c.clip);
            float v = __fadd_rn(__fadd_rn(__fmul_rn(c.c_x0, x0), __fmul_rn(c.c_xt, xt[i])), __fmul_rn(c.c_eps, eps[i]));
            if (c.sigma > 0.0f) v = __fadd_rn(v, __fmul_rn(c.sigma, z.v[lane]));
            prev[i] = v;
            if (x0_out) x0_out[i] = x0;
        }
    }
}
