// Batch normalisation (train and eval), forward and backward. Mirrors
// src/ops/batch_norm/cpu.rs and the running-statistics update in
// src/ops/batch_norm/mod.rs.
//
// x is [N, C, S] contiguous (S = the flattened spatial dims, 1 for [N, C]);
// channel c owns the N runs x[n, c, 0..S], M = N·S values in all. Element i of
// channel c (i = n·S + si) lives at (n·C + c)·S + si.
//   Train: μ_c = Σx/M, σ²_c = Σ(x−μ)²/M (biased; two passes in f64), and in place
//     running_mean ← (1−m)·running_mean + m·μ
//     running_var  ← (1−m)·running_var  + m·σ²·M/(M−1)   (unbiased)
//   Eval:  μ_c = running_mean_c, σ²_c = running_var_c.
//   y = (x − μ_c)·rstd_c·γ_c + β_c,  rstd_c = 1/√(σ²_c + eps)   (γ = 1, β = 0 when null)
#include "common.cuh"

#define BN_THREADS 256

namespace batchnorm {

// Offset of element i (= n·S + si) of channel ch in a [N, C, S] buffer.
__device__ __forceinline__ long long offset(int i, int ch, int c, int s) {
    const int n = i / s, si = i - (i / s) * s;
    return ((long long)n * c + ch) * s + si;
}

}  // namespace batchnorm

// Forward: one block per channel (grid-stride over channels). In train mode
// the block computes the batch statistics and updates the running statistics;
// in eval mode it reads them. Then it writes y for its channel. mean[c] and
// rstd[c] are saved (f32, rounded as on the CPU) for the backward pass.
extern "C" __global__ void __launch_bounds__(BN_THREADS)
    batchnorm_forward(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                      const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                      float* __restrict__ running_mean, float* __restrict__ running_var, int n, int c, int s,
                      float eps, float momentum, int train) {
    __shared__ double scratch[32];
    const int m = n * s;
    for (int ch = blockIdx.x; ch < c; ch += gridDim.x) {
        float mu, rs;
        if (train) {
            // μ = Σx / M
            double acc = 0.0;
            for (int i = threadIdx.x; i < m; i += blockDim.x) acc += (double)x[batchnorm::offset(i, ch, c, s)];
            const double mean_d = block_sum_d(acc, scratch) / (double)m;
            // σ² = Σ(x − μ)² / M
            acc = 0.0;
            for (int i = threadIdx.x; i < m; i += blockDim.x) {
                const double dv = (double)x[batchnorm::offset(i, ch, c, s)] - mean_d;
                acc += dv * dv;
            }
            const double var = block_sum_d(acc, scratch) / (double)m;
            mu = (float)mean_d;
            rs = (float)(1.0 / sqrt(var + (double)eps));
            if (threadIdx.x == 0) {
                // Running statistics, in f64 as the CPU twin: unbiased variance σ²·M/(M−1).
                const double mo = (double)momentum, unbias = (double)m / (double)(m - 1);
                running_mean[ch] = (float)((1.0 - mo) * (double)running_mean[ch] + mo * mean_d);
                running_var[ch] = (float)((1.0 - mo) * (double)running_var[ch] + mo * var * unbias);
            }
        } else {
            mu = running_mean[ch];
            rs = (float)(1.0 / sqrt((double)running_var[ch] + (double)eps));
        }
        if (threadIdx.x == 0) {
            mean_out[ch] = mu;
            rstd_out[ch] = rs;
        }
        // y = (x − μ)·(rstd·γ) + β
        const float scale = rs * (gamma ? gamma[ch] : 1.0f);
        const float shift = beta ? beta[ch] : 0.0f;
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            const long long o = batchnorm::offset(i, ch, c, s);
            y[o] = (x[o] - mu) * scale + shift;
        }
    }
}

// Backward: one block per channel (grid-stride over channels).
//   A = Σ dy,  B = Σ dy·x̂   (f64 block sums),  x̂ = (x − μ)·rstd
//   dβ_c = A,  dγ_c = B
//   dx (skipped if null):  train  γ·rstd·(dy − A/M − x̂·B/M)
//                          eval   γ·rstd·dy
extern "C" __global__ void __launch_bounds__(BN_THREADS)
    batchnorm_backward(float* __restrict__ dx, float* __restrict__ dgamma, float* __restrict__ dbeta,
                       const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ mean,
                       const float* __restrict__ rstd, const float* __restrict__ gamma, int n, int c, int s,
                       int train) {
    __shared__ double scratch[32];
    const int m = n * s;
    for (int ch = blockIdx.x; ch < c; ch += gridDim.x) {
        const float mu = mean[ch], rs = rstd[ch];
        double a = 0.0, b = 0.0;
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            const long long o = batchnorm::offset(i, ch, c, s);
            const float xhat = (x[o] - mu) * rs;
            a += (double)dy[o];
            b += (double)dy[o] * (double)xhat;
        }
        a = block_sum_d(a, scratch);
        b = block_sum_d(b, scratch);
        if (threadIdx.x == 0) {
            dbeta[ch] = (float)a;
            dgamma[ch] = (float)b;
        }
        if (dx == nullptr) continue;  // uniform over the block
        const float scale = rs * (gamma ? gamma[ch] : 1.0f);
        const float mean_dy = (float)(a / (double)m), mean_dy_xhat = (float)(b / (double)m);
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            const long long o = batchnorm::offset(i, ch, c, s);
            if (train) {
                const float xhat = (x[o] - mu) * rs;
                dx[o] = scale * (dy[o] - mean_dy - xhat * mean_dy_xhat);
            } else {
                dx[o] = scale * dy[o];
            }
        }
    }
}
