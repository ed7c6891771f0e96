// Sinusoidal timestep embedding (diffusers' get_timestep_embedding), one
// thread per output element of the [N, dim] result, in the f32 order of
// operations of the CPU twin (src/ops/timestep_embedding):
//
//   f_i = expf((neg_log_period · i) / denom),  denom = f32(half) − freq_shift,
//   neg_log_period = f32(−ln(max_period)) computed on the host in f64
//   arg = t · f_i;  slot i: sin(arg), slot half + i: cos(arg)   (swapped with flip)
//   odd dim: the last column is 0.
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
