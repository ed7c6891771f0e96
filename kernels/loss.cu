// Cross-entropy of logits z [N, K] against class labels y (int32, len N):
//   loss = (1/N)·Σ_i (lse_i − z_i[y_i]),   lse_i = m_i + log Σ_j exp(z_ij − m_i),  m_i = max_j z_ij
//   dz_ij = g·(p_ij − [j = y_i])/N,        p_ij = exp(z_ij − lse_i)  (softmax, saved by the forward)
// The forward is two launches: one warp per row for (lse_i − z_i[y_i]) and
// p_i, then one block that sums the N row losses in f64 in a fixed order
// (deterministic, no atomics).
#include "common.cuh"

namespace loss {

constexpr int ROWS_PER_BLOCK = 8;  // warps per 256-thread block

}  // namespace loss

// row_loss[i] = lse_i − z_i[y_i] and probs[i, :] = softmax(z_i).
// grid = ⌈N/8⌉, block = 256; a warp per row (lanes stride over the K classes).
extern "C" __global__ void __launch_bounds__(256) cross_entropy_rows(float* row_loss, float* probs, const float* logits,
                                                                      const int* labels, int rows, int cols) {
    const int row = (int)blockIdx.x * loss::ROWS_PER_BLOCK + (int)threadIdx.x / 32;
    if (row >= rows) return;  // whole warps leave together
    const int lane = threadIdx.x % 32;
    const float* z = logits + (long long)row * cols;
    float* p = probs + (long long)row * cols;

    float m = MD_NEG_INF;  // m = max_j z_j
    for (int j = lane; j < cols; j += 32) m = fmaxf(m, z[j]);
    m = warp_max(m);

    float s = 0.0f;  // s = Σ_j exp(z_j − m)
    for (int j = lane; j < cols; j += 32) s += expf(z[j] - m);
    s = warp_sum(s);

    const float inv = 1.0f / s;
    for (int j = lane; j < cols; j += 32) p[j] = expf(z[j] - m) * inv;
    if (lane == 0) row_loss[row] = m + logf(s) - z[labels[row]];
}

// out[0] = (1/N)·Σ_i row_loss[i], summed in f64. grid = 1, block = 256.
extern "C" __global__ void __launch_bounds__(256) cross_entropy_mean(float* out, const float* row_loss, int rows) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < rows; i += blockDim.x) acc += row_loss[i];
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) out[0] = rows > 0 ? (float)(acc / rows) : 0.0f;
}

// dz[i, j] = g[0]·inv_n·(p[i, j] − [j = y_i]); g is the incoming gradient (a
// device scalar, read here so the host never waits for it). One thread per element.
extern "C" __global__ void cross_entropy_backward(float* dz, const float* probs, const int* labels, const float* g, float inv_n,
                                                  int rows, int cols) {
    const float scale = g[0] * inv_n;
    const int n = rows * cols;
    for (int e = global_index(); e < n; e += grid_stride()) {
        const int i = e / cols, j = e % cols;
        const float onehot = j == labels[i] ? 1.0f : 0.0f;
        dz[e] = (probs[e] - onehot) * scale;
    }
}
