// Row softmax over the last axis, forward and backward: the softmax op and the
// middle step of attention (S = scale·Q·Kᵀ and O = P·V are kernels/gemm.cu).
//
// One warp per row, 8 rows per 256-thread block. The 32 lanes stride over the
// row (lane, lane + 32, …), so each pass reads the row coalesced, and the row
// statistics are warp reductions (common.cuh):
//   forward   m = max_j x_j,   s = Σ_j exp(x_j − m),   y_j = exp(x_j − m)/s
//   backward  d = Σ_j dy_j·y_j,   dx_j = scale·y_j·(dy_j − d)
// A row is re-read from global memory in each pass (it is small and stays in
// cache); any row length works, odd ones included.
#include "common.cuh"

namespace attention {

constexpr int ROWS_PER_BLOCK = 8;  // warps per 256-thread block

// Row handled by this warp, or −1 past the end (the whole warp leaves together,
// so the shuffles below always run with the full warp).
__device__ __forceinline__ int warp_row(int rows) {
    const int row = (int)blockIdx.x * ROWS_PER_BLOCK + (int)threadIdx.x / 32;
    return row < rows ? row : -1;
}

}  // namespace attention

// y = softmax(x) row-wise; x, y are [rows, cols] row-major. y may alias x:
// each lane rewrites only the entries it read. grid = ⌈rows/8⌉, block = 256.
extern "C" __global__ void __launch_bounds__(256) softmax_rows_forward(float* y, const float* x, int rows, int cols) {
    const int row = attention::warp_row(rows);
    if (row < 0) return;
    const int lane = threadIdx.x % 32;
    const float* xr = x + (long long)row * cols;
    float* yr = y + (long long)row * cols;

    float m = MD_NEG_INF;  // m = max_j x_j
    for (int j = lane; j < cols; j += 32) m = fmaxf(m, xr[j]);
    m = warp_max(m);

    float s = 0.0f;  // s = Σ_j exp(x_j − m)
    for (int j = lane; j < cols; j += 32) s += expf(xr[j] - m);
    s = warp_sum(s);

    const float inv = 1.0f / s;  // y_j = exp(x_j − m)/s
    for (int j = lane; j < cols; j += 32) yr[j] = expf(xr[j] - m) * inv;
}

// dx = scale·y ⊙ (dy − Σ_j dy_j·y_j) row-wise, from the saved output y.
// scale = 1 for softmax; attention folds its score scale in here (dS·scale).
extern "C" __global__ void __launch_bounds__(256) softmax_rows_backward(float* dx, const float* y, const float* dy, float scale,
                                                                         int rows, int cols) {
    const int row = attention::warp_row(rows);
    if (row < 0) return;
    const int lane = threadIdx.x % 32;
    const long long base = (long long)row * cols;

    float d = 0.0f;  // d = Σ_j dy_j·y_j
    for (int j = lane; j < cols; j += 32) d += dy[base + j] * y[base + j];
    d = warp_sum(d);

    for (int j = lane; j < cols; j += 32) dx[base + j] = scale * y[base + j] * (dy[base + j] - d);
}
