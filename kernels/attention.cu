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

namespace attention {

constexpr float LOG2_E = 1.4426950408889634f;  // log2(e)
constexpr float LN_2 = 0.6931471805599453f;     // ln(2)
constexpr int KEY_CHUNK = 64;         // keys (or queries) staged in shared memory at a time

// The fused kernels are compiled per head size H ∈ {8, 16, 32} (D, Dv ≤ H;
// the UNet's heads have 8 features): every loop over a head's features is
// unrolled H times with no predicate, and the features past D (or Dv) are 0
// in registers and in shared memory, so they add nothing to a sum.

// One chunk of a [rows, len] sequence matrix in shared memory, transposed to
// staged[jj][c] = mul·src[c·len + j0 + jj] for the chunk's 64 positions jj
// (0 past n) and c < H (0 from rows on): a position's H features are
// contiguous, read as H/4 float4 broadcasts. Loaded by the whole block,
// coalesced along jj.
template <int H>
__device__ __forceinline__ void stage_chunk(float4* staged4, const float* src, int rows, int len, int j0, int n,
                                            float mul = 1.0f) {
    float* staged = reinterpret_cast<float*>(staged4);
    for (int t = threadIdx.x; t < H * KEY_CHUNK; t += blockDim.x) {
        const int c = t / KEY_CHUNK, jj = t - c * KEY_CHUNK;
        staged[jj * H + c] = (jj < n && c < rows) ? mul * src[(long long)c * len + j0 + jj] : 0.0f;
    }
}

// Σ_c a[c]·staged[jj][c]: a score q·k_j (or dO·v_j, …) against a staged position.
template <int H>
__device__ __forceinline__ float staged_dot(const float (&a)[H], const float4* staged4, int jj) {
    float s = 0.0f;
#pragma unroll
    for (int c4 = 0; c4 < H / 4; ++c4) {
        const float4 x = staged4[jj * (H / 4) + c4];
        s = fmaf(a[4 * c4], x.x, s);
        s = fmaf(a[4 * c4 + 1], x.y, s);
        s = fmaf(a[4 * c4 + 2], x.z, s);
        s = fmaf(a[4 * c4 + 3], x.w, s);
    }
    return s;
}

// acc[c] += w·staged[jj][c] for every c < H.
template <int H>
__device__ __forceinline__ void staged_axpy(float (&acc)[H], float w, const float4* staged4, int jj) {
#pragma unroll
    for (int c4 = 0; c4 < H / 4; ++c4) {
        const float4 x = staged4[jj * (H / 4) + c4];
        acc[4 * c4] = fmaf(w, x.x, acc[4 * c4]);
        acc[4 * c4 + 1] = fmaf(w, x.y, acc[4 * c4 + 1]);
        acc[4 * c4 + 2] = fmaf(w, x.z, acc[4 * c4 + 2]);
        acc[4 * c4 + 3] = fmaf(w, x.w, acc[4 * c4 + 3]);
    }
}

// reg[c] = mul·src[c·len + i] for c < rows, else 0 (one position's features).
template <int H>
__device__ __forceinline__ void load_column(float (&reg)[H], const float* src, int rows, int len, int i, bool live,
                                            float mul = 1.0f) {
#pragma unroll
    for (int c = 0; c < H; ++c) reg[c] = (c < rows && live) ? mul * src[(long long)c * len + i] : 0.0f;
}

// The block's batch entry and first position: blocks run along x, ⌈len/threads⌉
// per batch entry (x has room for 2³¹ − 1 blocks; y and z only for 65,535,
// which batch × heads passes at 2,048 images).
__device__ __forceinline__ void block_place(int len, long long& b, int& first) {
    const int tiles = (len + (int)blockDim.x - 1) / (int)blockDim.x;
    b = (long long)blockIdx.x / tiles;
    first = (int)(blockIdx.x - b * tiles) * (int)blockDim.x;
}

// Inference attention in the Columns layout (the UNet's channels-first maps),
// with no probability matrix: per batch entry b, Q [D, Lq], K [D, Lk],
// V [Dv, Lk] → O [Dv, Lq],
//   O[c, i] = Σ_j e^(s_ij − m_i) V[c, j] / Σ_j e^(s_ij − m_i),  s_ij = scale·Σ_d Q[d,i] K[d,j]
// One query per thread (coalesced reads of Q and writes of O along i). Keys
// come in chunks of 64 staged in shared memory (every thread reads the same
// entry: a broadcast). Each key is visited once (the online softmax): when
// s_ij passes the running max m, the sum l and accumulator acc so far are
// rescaled by e^(m − s_ij) and m = s_ij; then l += e^(s_ij − m) and
// acc += e^(s_ij − m)·V[:, j]. (The max rises O(log Lk) times for keys in
// random order, so the rescale branch is rare.) The scores are kept in base 2,
// s_ij·log2(e) (the factor folded into Q with the scale), so that each
// e^x is exp2f's one ex2 instead of expf's eight-instruction sequence (run 6:
// the kernel issue-bound at 91 %, 15 % of a sampling step).
// With lse non-null (training) it also writes each query's log-sum-exp,
// lse[b, i] = m·ln 2 + log l = log Σ_j e^(s_ij), from which backward recomputes P.
// Batch entry b is head b % heads of image b / heads; an image's Q, K, V
// start q_image, k_image, v_image floats after the previous image's, and its
// heads lie one after another (D·Lq, D·Lk, Dv·Lk apart). Separate tensors:
// heads 1 and strides D·Lq, D·Lk, Dv·Lk; one packed [B, 3·heads·D, L] tensor
// (the q, k, v projections as one conv): strides 3·heads·D·L, K and V from
// heads·D·L and 2·heads·D·L on. O is always [batch, Dv, Lq].
template <int H>
__device__ void infer(float* o, float* lse, const float* q, const float* k, const float* v, int lq, int lk, int d,
                      int dv, float scale, int heads, long long q_image, long long k_image, long long v_image) {
    __shared__ float4 ks[KEY_CHUNK * H / 4];
    __shared__ float4 vs[KEY_CHUNK * H / 4];
    long long b;
    int first;
    block_place(lq, b, first);
    const long long image = b / heads, head = b - image * heads;
    const int i = first + (int)threadIdx.x;
    const bool live = i < lq;
    float qr[H], acc[H];
    load_column<H>(qr, q + image * q_image + head * d * lq, d, lq, i, live, scale * LOG2_E);
#pragma unroll
    for (int c = 0; c < H; ++c) acc[c] = 0.0f;
    // m: the running max (base 2); m_sub: what e subtracts, m once a key has
    // raised it, 0 before (every score so far −∞: e = 2^(−∞) = 0, no NaN)
    float m = MD_NEG_INF, m_sub = 0.0f, l = 0.0f;
    const float* kb = k + image * k_image + head * d * lk;
    const float* vb = v + image * v_image + head * dv * lk;
    for (int j0 = 0; j0 < lk; j0 += KEY_CHUNK) {
        const int n = min(KEY_CHUNK, lk - j0);
        __syncthreads();  // the previous chunk is no longer read
        stage_chunk<H>(ks, kb, d, lk, j0, n);
        stage_chunk<H>(vs, vb, dv, lk, j0, n);
        __syncthreads();
        for (int jj = 0; jj < n; ++jj) {
            const float s = staged_dot<H>(qr, ks, jj);
            if (s > m) {
                // 2^(m − s) rescales what was summed so far (0 at the first key)
                const float r = exp2f(m - s);
                l *= r;
#pragma unroll
                for (int c = 0; c < H; ++c) acc[c] *= r;
                m = s;
                m_sub = s;
            }
            const float e = exp2f(s - m_sub);
            l += e;
            staged_axpy<H>(acc, e, vs, jj);
        }
    }
    if (!live) return;
    if (lse != nullptr) lse[b * lq + i] = m * LN_2 + logf(l);
    float* ob = o + b * dv * lq;
    const float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < H; ++c)
        if (c < dv) ob[(long long)c * lq + i] = acc[c] * inv;
}

// ---- Fused training backward (Columns layout), no P ----
//
// From Q, K, V, O, dO and each query's log-sum-exp L_i (the forward's), with
//   P_ij = e^(s_ij − L_i),  s_ij = scale·Σ_d Q[d,i] K[d,j],  dP_ij = Σ_c dO[c,i] V[c,j],
//   δ_i = Σ_j P_ij dP_ij = Σ_c dO[c,i] O[c,i],  dS_ij = scale·P_ij (dP_ij − δ_i):
//   dQ[:, i] = Σ_j dS_ij K[:, j],  dK[:, j] = Σ_i dS_ij Q[:, i],  dV[:, j] = Σ_i P_ij dO[:, i]
// in two kernels that recompute P_ij on the fly (flash attention's backward,
// one sequence position per thread): by query (δ from O and dO, then dQ in
// one pass over the keys, staged 64 at a time), then by key (dK and dV: one
// pass over the queries, staged 64 at a time with their L and δ). Nothing of
// size Lq·Lk is written: the GEMM path writes P, dP and dS, each [batch, Lq, Lk].

// δ [batch, Lq] and dQ [batch, D, Lq], one query per thread.
template <int H>
__device__ void backward_query(float* dq, float* delta, const float* q, const float* k, const float* v, const float* o,
                               const float* d_o, const float* lse, int lq, int lk, int d, int dv, float scale) {
    __shared__ float4 ks[KEY_CHUNK * H / 4];
    __shared__ float4 vs[KEY_CHUNK * H / 4];
    long long b;
    int first;
    block_place(lq, b, first);
    const int i = first + (int)threadIdx.x;
    const bool live = i < lq;
    float qr[H], dor[H], acc[H];
    load_column<H>(qr, q + b * d * lq, d, lq, i, live, scale);
    load_column<H>(dor, d_o + b * dv * lq, dv, lq, i, live);
    // δ_i = Σ_c dO[c,i]·O[c,i] (acc holds O's column for the moment)
    load_column<H>(acc, o + b * dv * lq, dv, lq, i, live);
    float di = 0.0f;
#pragma unroll
    for (int c = 0; c < H; ++c) {
        di = fmaf(dor[c], acc[c], di);
        acc[c] = 0.0f;
    }
    const float li = live ? lse[b * lq + i] : 0.0f;
    const float* kb = k + b * d * lk;
    const float* vb = v + b * dv * lk;
    for (int j0 = 0; j0 < lk; j0 += KEY_CHUNK) {
        const int n = min(KEY_CHUNK, lk - j0);
        __syncthreads();  // the previous chunk is no longer read
        stage_chunk<H>(ks, kb, d, lk, j0, n);
        stage_chunk<H>(vs, vb, dv, lk, j0, n);
        __syncthreads();
        for (int jj = 0; jj < n; ++jj) {
            const float p = expf(staged_dot<H>(qr, ks, jj) - li);
            const float dp = staged_dot<H>(dor, vs, jj);
            staged_axpy<H>(acc, p * (dp - di), ks, jj);  // dQ_i += P_ij (dP_ij − δ_i) K_j
        }
    }
    if (!live) return;
    delta[b * lq + i] = di;
#pragma unroll
    for (int c = 0; c < H; ++c)
        if (c < d) dq[(b * d + c) * lq + i] = scale * acc[c];
}

// dK [batch, D, Lk] and dV [batch, Dv, Lk], one key per thread, from δ of
// backward_query.
template <int H>
__device__ void backward_key(float* dk, float* dvv, const float* q, const float* k, const float* v, const float* d_o,
                             const float* lse, const float* delta, int lq, int lk, int d, int dv, float scale) {
    __shared__ float4 qs[KEY_CHUNK * H / 4];   // scale·Q of 64 queries
    __shared__ float4 dos[KEY_CHUNK * H / 4];  // their dO
    __shared__ float ls[KEY_CHUNK], deltas[KEY_CHUNK];
    long long b;
    int first;
    block_place(lk, b, first);
    const int j = first + (int)threadIdx.x;
    const bool live = j < lk;
    float kr[H], vr[H], dk_acc[H], dv_acc[H];
    load_column<H>(kr, k + b * d * lk, d, lk, j, live);
    load_column<H>(vr, v + b * dv * lk, dv, lk, j, live);
#pragma unroll
    for (int c = 0; c < H; ++c) dk_acc[c] = dv_acc[c] = 0.0f;
    const float* qb = q + b * d * lq;
    const float* dob = d_o + b * dv * lq;
    for (int i0 = 0; i0 < lq; i0 += KEY_CHUNK) {
        const int n = min(KEY_CHUNK, lq - i0);
        __syncthreads();  // the previous chunk is no longer read
        stage_chunk<H>(qs, qb, d, lq, i0, n, scale);
        stage_chunk<H>(dos, dob, dv, lq, i0, n);
        for (int ii = threadIdx.x; ii < KEY_CHUNK; ii += blockDim.x) {
            ls[ii] = ii < n ? lse[b * lq + i0 + ii] : 0.0f;
            deltas[ii] = ii < n ? delta[b * lq + i0 + ii] : 0.0f;
        }
        __syncthreads();
        for (int ii = 0; ii < n; ++ii) {
            const float p = expf(staged_dot<H>(kr, qs, ii) - ls[ii]);  // s_ij: qs holds scale·Q
            const float dp = staged_dot<H>(vr, dos, ii);
            staged_axpy<H>(dv_acc, p, dos, ii);
            staged_axpy<H>(dk_acc, p * (dp - deltas[ii]), qs, ii);
        }
    }
    if (!live) return;
#pragma unroll
    for (int c = 0; c < H; ++c) {
        if (c < d) dk[(b * d + c) * lk + j] = dk_acc[c];  // qs held scale·Q: dK = scale·Σ_i P (dP − δ) Q
        if (c < dv) dvv[(b * dv + c) * lk + j] = dv_acc[c];
    }
}

}  // namespace attention

// The fused kernels per head size H (D, Dv ≤ H). grid = (batch·⌈L/threads⌉),
// block = threads ≤ 128 (a multiple of 32 covering L when L < 128), with L = Lq
// for infer and backward_query, Lk for backward_key.
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_infer_h8(float* o, float* lse, const float* q, const float* k, const float* v, int lq, int lk,
                                int d, int dv, float scale, int heads, long long q_image, long long k_image,
                                long long v_image) {
    attention::infer<8>(o, lse, q, k, v, lq, lk, d, dv, scale, heads, q_image, k_image, v_image);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_backward_query_h8(float* dq, float* delta, const float* q, const float* k, const float* v,
                                        const float* o, const float* d_o, const float* lse, int lq, int lk, int d,
                                        int dv, float scale) {
    attention::backward_query<8>(dq, delta, q, k, v, o, d_o, lse, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_backward_key_h8(float* dk, float* dvv, const float* q, const float* k, const float* v,
                                      const float* d_o, const float* lse, const float* delta, int lq, int lk, int d,
                                      int dv, float scale) {
    attention::backward_key<8>(dk, dvv, q, k, v, d_o, lse, delta, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_infer_h16(float* o, float* lse, const float* q, const float* k, const float* v, int lq, int lk,
                                int d, int dv, float scale, int heads, long long q_image, long long k_image,
                                long long v_image) {
    attention::infer<16>(o, lse, q, k, v, lq, lk, d, dv, scale, heads, q_image, k_image, v_image);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_backward_query_h16(float* dq, float* delta, const float* q, const float* k, const float* v,
                                        const float* o, const float* d_o, const float* lse, int lq, int lk, int d,
                                        int dv, float scale) {
    attention::backward_query<16>(dq, delta, q, k, v, o, d_o, lse, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_backward_key_h16(float* dk, float* dvv, const float* q, const float* k, const float* v,
                                      const float* d_o, const float* lse, const float* delta, int lq, int lk, int d,
                                      int dv, float scale) {
    attention::backward_key<16>(dk, dvv, q, k, v, d_o, lse, delta, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_infer_h32(float* o, float* lse, const float* q, const float* k, const float* v, int lq, int lk,
                                int d, int dv, float scale, int heads, long long q_image, long long k_image,
                                long long v_image) {
    attention::infer<32>(o, lse, q, k, v, lq, lk, d, dv, scale, heads, q_image, k_image, v_image);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_backward_query_h32(float* dq, float* delta, const float* q, const float* k, const float* v,
                                        const float* o, const float* d_o, const float* lse, int lq, int lk, int d,
                                        int dv, float scale) {
    attention::backward_query<32>(dq, delta, q, k, v, o, d_o, lse, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_backward_key_h32(float* dk, float* dvv, const float* q, const float* k, const float* v,
                                      const float* d_o, const float* lse, const float* delta, int lq, int lk, int d,
                                      int dv, float scale) {
    attention::backward_key<32>(dk, dvv, q, k, v, d_o, lse, delta, lq, lk, d, dv, scale);
}
