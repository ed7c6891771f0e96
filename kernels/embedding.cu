// Sinusoidal timestep embedding (diffusers' get_timestep_embedding), one
// thread per output element of the [N, dim] result, in the f32 order of
// operations of the CPU twin (src/ops/timestep_embedding):
//
//   f_i = expf((neg_log_period · i) / denom),  denom = f32(half) − freq_shift,
//   neg_log_period = f32(−ln(max_period)) computed on the host in f64
//   arg = t · f_i;  slot i: sin(arg), slot half + i: cos(arg)   (swapped with flip)
//   odd dim: the last column is 0.
//
// And diffusers' GaussianFourierProjection (log=True) for noise levels σ:
//   p_j = ((ln σ · W_j) · 2) · π;  slot j: sin(p_j), slot D + j: cos(p_j)   (swapped with flip)
#include "common.cuh"

extern "C" __global__ void timestep_embedding_f32(float* out, const float* t, int rows, int dim, int half, int flip,
                                                  float neg_log_period, float denom) {
    const int n = rows * dim;
    for (int idx = global_index(); idx < n; idx += grid_stride()) {
        const int row = idx / dim, col = idx % dim;
        if (col >= 2 * half) {
            out[idx] = 0.0f;
            continue;
        }
        const bool first_half = col < half;
        const int i = first_half ? col : col - half;
        const float freq = expf(__fdiv_rn(__fmul_rn(neg_log_period, (float)i), denom));
        const float arg = __fmul_rn(t[row], freq);
        // Without flip the first half is sin; with flip it is cos.
        const bool is_sin = first_half != (flip != 0);
        out[idx] = is_sin ? sinf(arg) : cosf(arg);
    }
}

// out [N, 2D] from σ [N] and W [D]; one thread per output element.
extern "C" __global__ void fourier_embedding_f32(float* out, const float* sigma, const float* w, int rows, int dim, int flip,
                                                 float pi) {
    const int n = rows * 2 * dim;
    for (int idx = global_index(); idx < n; idx += grid_stride()) {
        const int row = idx / (2 * dim), col = idx % (2 * dim);
        const bool first_half = col < dim;
        const int j = first_half ? col : col - dim;
        // (the multiplies kept apart: no fused multiply-add, as on the CPU)
        const float p = __fmul_rn(__fmul_rn(__fmul_rn(logf(sigma[row]), w[j]), 2.0f), pi);
        const bool is_sin = first_half != (flip != 0);
        out[idx] = is_sin ? sinf(p) : cosf(p);
    }
}
