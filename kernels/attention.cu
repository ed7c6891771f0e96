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

constexpr int MAX_HEAD = 32;        // D and Dv of the fused kernel, at most
constexpr int KEY_CHUNK = 64;       // keys staged in shared memory at a time
constexpr int QUERY_THREADS = 128;  // queries (threads) per block

// Σ_c a[c]·staged[c][jj] over the first n of MAX_HEAD registers: a score
// q·k_j against a staged chunk of keys (or of queries, values, dO).
__device__ __forceinline__ float staged_dot(const float* a, const float* staged, int jj, int n) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < MAX_HEAD; ++c)
        if (c < n) s = fmaf(a[c], staged[c * KEY_CHUNK + jj], s);
    return s;
}

// staged[c][jj] = mul·src[c·len + j0 + jj] for c < rows and the chunk's 64
// positions jj (0 from n on): one chunk of a [rows, len] sequence matrix in
// shared memory, loaded by all QUERY_THREADS threads (coalesced along jj).
__device__ __forceinline__ void stage_chunk(float* staged, const float* src, int rows, int len, int j0, int n,
                                            float mul = 1.0f) {
    for (int t = threadIdx.x; t < rows * KEY_CHUNK; t += QUERY_THREADS) {
        const int c = t / KEY_CHUNK, jj = t - c * KEY_CHUNK;
        staged[t] = jj < n ? mul * src[(long long)c * len + j0 + jj] : 0.0f;
    }
}

}  // namespace attention

// Inference attention in the Columns layout (the UNet's channels-first maps),
// with no probability matrix: per batch entry b, Q [D, Lq], K [D, Lk],
// V [Dv, Lk] → O [Dv, Lq],
//   O[c, i] = Σ_j e^(s_ij − m_i) V[c, j] / Σ_j e^(s_ij − m_i),  s_ij = scale·Σ_d Q[d,i] K[d,j]
// One query per thread (coalesced reads of Q and writes of O along i). Keys
// come in chunks of 64 staged in shared memory (every thread reads the same
// entry: a broadcast); per chunk a thread first takes the chunk's score max,
// rescales its running sum l and accumulator acc[c] once by e^(m_old − m_new)
// (the online softmax), then adds the chunk's e^(s − m)·V. Scores are
// computed twice per chunk (2·D FMAs per key) instead of stored.
// With lse non-null (training) it also writes each query's log-sum-exp,
// lse[b, i] = m + log l = log Σ_j e^(s_ij), from which backward recomputes P.
// grid = (⌈Lq/128⌉, batch), block = 128; D, Dv ≤ 32.
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_infer_f32(float* o, float* lse, const float* q, const float* k, const float* v, int lq, int lk,
                                int d, int dv, float scale) {
    using namespace attention;
    __shared__ float ks[MAX_HEAD * KEY_CHUNK];
    __shared__ float vs[MAX_HEAD * KEY_CHUNK];
    const long long b = blockIdx.y;
    const int i = (int)blockIdx.x * QUERY_THREADS + (int)threadIdx.x;
    const float* qb = q + b * d * lq;
    const float* kb = k + b * d * lk;
    const float* vb = v + b * dv * lk;

    float qr[MAX_HEAD], acc[MAX_HEAD];
#pragma unroll
    for (int dd = 0; dd < MAX_HEAD; ++dd) {
        qr[dd] = (dd < d && i < lq) ? scale * qb[(long long)dd * lq + i] : 0.0f;
        acc[dd] = 0.0f;
    }
    float m = MD_NEG_INF, l = 0.0f;
    for (int j0 = 0; j0 < lk; j0 += KEY_CHUNK) {
        const int n = min(KEY_CHUNK, lk - j0);
        __syncthreads();  // the previous chunk is no longer read
        stage_chunk(ks, kb, d, lk, j0, n);
        stage_chunk(vs, vb, dv, lk, j0, n);
        __syncthreads();
        float chunk_max = MD_NEG_INF;
        for (int jj = 0; jj < n; ++jj) chunk_max = fmaxf(chunk_max, staged_dot(qr, ks, jj, d));
        const float m_new = fmaxf(m, chunk_max);
        // e^(m − m_new) rescales what was summed so far (0 before the first
        // chunk; 1 while every score is −∞, so nothing turns into NaN)
        const float rescale = m_new == MD_NEG_INF ? 1.0f : expf(m - m_new);
        l *= rescale;
#pragma unroll
        for (int c = 0; c < MAX_HEAD; ++c) acc[c] *= rescale;
        for (int jj = 0; jj < n; ++jj) {
            const float e = m_new == MD_NEG_INF ? 0.0f : expf(staged_dot(qr, ks, jj, d) - m_new);
            l += e;
#pragma unroll
            for (int c = 0; c < MAX_HEAD; ++c)
                if (c < dv) acc[c] = fmaf(e, vs[c * KEY_CHUNK + jj], acc[c]);
        }
        m = m_new;
    }
    if (i >= lq) return;
    if (lse != nullptr) lse[b * lq + i] = m + logf(l);
    float* ob = o + b * dv * lq;
    const float inv = 1.0f / l;
#pragma unroll
    for (int c = 0; c < MAX_HEAD; ++c)
        if (c < dv) ob[(long long)c * lq + i] = acc[c] * inv;
}

// ---- Fused training backward (Columns layout, D, Dv ≤ 32), no P ----
//
// From Q, K, V, dO and each query's log-sum-exp L_i (the forward's), with
//   P_ij = e^(s_ij − L_i),  s_ij = scale·Σ_d Q[d,i] K[d,j],  dP_ij = Σ_c dO[c,i] V[c,j],
//   δ_i = Σ_j P_ij dP_ij  (= Σ_c dO[c,i] O[c,i]),  dS_ij = scale·P_ij (dP_ij − δ_i):
//   dQ[:, i] = Σ_j dS_ij K[:, j],  dK[:, j] = Σ_i dS_ij Q[:, i],  dV[:, j] = Σ_i P_ij dO[:, i]
// in two kernels that recompute P_ij on the fly (flash attention's backward,
// one sequence position per thread): by query (δ and dQ: two passes over the
// keys, staged 64 at a time), then by key (dK and dV: one pass over the
// queries, staged 64 at a time with their L and δ). Nothing of size Lq·Lk is
// written: the GEMM path wrote P, dP and dS, each [batch, Lq, Lk].


// δ [batch, Lq] and dQ [batch, D, Lq], one query per thread.
// grid = (⌈Lq/128⌉, batch), block = 128.
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_backward_query_f32(float* dq, float* delta, const float* q, const float* k, const float* v,
                                         const float* d_o, const float* lse, int lq, int lk, int d, int dv, float scale) {
    using namespace attention;
    __shared__ float ks[MAX_HEAD * KEY_CHUNK];
    __shared__ float vs[MAX_HEAD * KEY_CHUNK];
    const long long b = blockIdx.y;
    const int i = (int)blockIdx.x * QUERY_THREADS + (int)threadIdx.x;
    const bool live = i < lq;
    const float* kb = k + b * d * lk;
    const float* vb = v + b * dv * lk;
    float qr[MAX_HEAD], dor[MAX_HEAD], acc[MAX_HEAD];
#pragma unroll
    for (int c = 0; c < MAX_HEAD; ++c) {
        qr[c] = (c < d && live) ? scale * q[(b * d + c) * lq + i] : 0.0f;
        dor[c] = (c < dv && live) ? d_o[(b * dv + c) * lq + i] : 0.0f;
        acc[c] = 0.0f;
    }
    const float li = live ? lse[b * lq + i] : 0.0f;
    float di = 0.0f;
    // pass 0: δ_i = Σ_j P_ij dP_ij; pass 1: dQ_i += P_ij (dP_ij − δ_i) K_j
    for (int pass = 0; pass < 2; ++pass) {
        for (int j0 = 0; j0 < lk; j0 += KEY_CHUNK) {
            const int n = min(KEY_CHUNK, lk - j0);
            __syncthreads();  // the previous chunk is no longer read
            stage_chunk(ks, kb, d, lk, j0, n);
            stage_chunk(vs, vb, dv, lk, j0, n);
            __syncthreads();
            for (int jj = 0; jj < n; ++jj) {
                const float p = expf(staged_dot(qr, ks, jj, d) - li);
                const float dp = staged_dot(dor, vs, jj, dv);
                if (pass == 0) {
                    di = fmaf(p, dp, di);
                } else {
                    const float ds = p * (dp - di);
#pragma unroll
                    for (int c = 0; c < MAX_HEAD; ++c)
                        if (c < d) acc[c] = fmaf(ds, ks[c * KEY_CHUNK + jj], acc[c]);
                }
            }
        }
    }
    if (!live) return;
    delta[b * lq + i] = di;
#pragma unroll
    for (int c = 0; c < MAX_HEAD; ++c)
        if (c < d) dq[(b * d + c) * lq + i] = scale * acc[c];
}

// dK [batch, D, Lk] and dV [batch, Dv, Lk], one key per thread, from δ of
// attention_columns_backward_query_f32. grid = (⌈Lk/128⌉, batch), block = 128.
extern "C" __global__ void __launch_bounds__(128)
    attention_columns_backward_key_f32(float* dk, float* dvv, const float* q, const float* k, const float* v,
                                       const float* d_o, const float* lse, const float* delta, int lq, int lk, int d,
                                       int dv, float scale) {
    using namespace attention;
    __shared__ float qs[MAX_HEAD * KEY_CHUNK];   // scale·Q of 64 queries
    __shared__ float dos[MAX_HEAD * KEY_CHUNK];  // their dO
    __shared__ float ls[KEY_CHUNK], deltas[KEY_CHUNK];
    const long long b = blockIdx.y;
    const int j = (int)blockIdx.x * QUERY_THREADS + (int)threadIdx.x;
    const bool live = j < lk;
    const float* qb = q + b * d * lq;
    const float* dob = d_o + b * dv * lq;
    float kr[MAX_HEAD], vr[MAX_HEAD], dk_acc[MAX_HEAD], dv_acc[MAX_HEAD];
#pragma unroll
    for (int c = 0; c < MAX_HEAD; ++c) {
        kr[c] = (c < d && live) ? k[(b * d + c) * lk + j] : 0.0f;
        vr[c] = (c < dv && live) ? v[(b * dv + c) * lk + j] : 0.0f;
        dk_acc[c] = dv_acc[c] = 0.0f;
    }
    for (int i0 = 0; i0 < lq; i0 += KEY_CHUNK) {
        const int n = min(KEY_CHUNK, lq - i0);
        __syncthreads();  // the previous chunk is no longer read
        stage_chunk(qs, qb, d, lq, i0, n, scale);
        stage_chunk(dos, dob, dv, lq, i0, n);
        for (int ii = threadIdx.x; ii < KEY_CHUNK; ii += QUERY_THREADS) {
            ls[ii] = ii < n ? lse[b * lq + i0 + ii] : 0.0f;
            deltas[ii] = ii < n ? delta[b * lq + i0 + ii] : 0.0f;
        }
        __syncthreads();
        for (int ii = 0; ii < n; ++ii) {
            const float p = expf(staged_dot(kr, qs, ii, d) - ls[ii]);  // s_ij: qs holds scale·Q
            const float dp = staged_dot(vr, dos, ii, dv);
            const float ds = p * (dp - deltas[ii]);
#pragma unroll
            for (int c = 0; c < MAX_HEAD; ++c) {
                if (c < dv) dv_acc[c] = fmaf(p, dos[c * KEY_CHUNK + ii], dv_acc[c]);
                if (c < d) dk_acc[c] = fmaf(ds, qs[c * KEY_CHUNK + ii], dk_acc[c]);
            }
        }
    }
    if (!live) return;
#pragma unroll
    for (int c = 0; c < MAX_HEAD; ++c) {
        if (c < d) dk[(b * d + c) * lk + j] = dk_acc[c];  // qs held scale·Q: dK = scale·Σ_i P (dP − δ) Q
        if (c < dv) dvv[(b * dv + c) * lk + j] = dv_acc[c];
    }
}
