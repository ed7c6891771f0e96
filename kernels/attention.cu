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
#include "mma.cuh"

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

// ---- Inference attention with bf16 products on the tensor cores ----
//
// The products of [infer] at the bf16 compute precision (ops::precision): the
// operands are rounded to bf16, the products are exact and summed in f32, as
// one mma.m16n8k16 does. In base 2 (c = scale·log2 e, folded into Q):
//   s_ij = Σ_d bf16(c·Q[d,i])·bf16(K[d,j]),   M_i = ⌈max_j s_ij⌉,
//   p_ij = 2^(s_ij − M_i),   l_i = Σ_j p_ij,
//   O[:, i] = Σ_j bf16(p_ij)·bf16(V[:, j]) / l_i.
// One pass over the keys with a running maximum that is a whole number: when
// a tile of keys raises a row's maximum from m to m + d, the sums so far are
// scaled by 2^−d, exactly, and rounding to bf16 commutes with a power of two,
// so each bf16(p_ij) is what it would be against the final M_i (as the CPU
// twin, ops::attention::cpu::forward_bf16, forms it), but for the rounding
// of s − m. An exact running maximum would scale by 2^(m − m'), rounding
// every p again; the two passes this kernel had before (the first for m,
// recomputing S) cost ~30 of its ~90 instructions a 16 × 16 tile (GPU run 8: issue-bound, 73 % issue, the
// ex2 pipe at 39 %). Per tile now: the scores' mma starts its sums at −m
// (no subtraction; at H = 8 one m16n8k8 step, no zero half), a sign test of
// the 8 scores a lane and one vote (the maximum rarely grows after the first
// tiles), 8 ex2 and the adds of l — ~40 instructions where the 8 ex2 alone
// take ~64 cycles of the SM quarter's 4-lane ex2 pipe: that pipe now bounds it.
//
// Warp w of a block owns queries i0 = 16·(tile) … +15 of one batch entry: the
// rows of the m16 tiles. Per 16 keys kb…kb+15 (two n8 tiles):
//   S (16 queries × 8 keys, per tile) = Q (16 × 16 features, A) · Kᵀ (B),
//     ⌈H/16⌉ k-steps, features past D zero (H = 8: half of a k-step);
//   P (16 queries × 16 keys, A) · V (16 keys × 8 values, B) into O's n8 tiles.
// S's accumulator layout (c0, c1: row g, columns 2t, 2t+1; c2, c3: row g + 8)
// is the A fragment layout of P (a0/a1: keys 2t.. of tile 0 at rows g / g + 8,
// a2/a3: tile 1), so P goes from registers to the next mma (g = lane / 4,
// t = lane % 4). A row's max is over the 4 lanes of a quad.
//
// The block stages up to KT keys at a time as bf16 pairs: K key-major,
// ks[key][w] = (K[2w, key], K[2w+1, key]) (K_LD words a key: a B fragment
// reads word w of 8 keys, one bank each), V value-major, vs[c][w] =
// (V[c, 2w], V[c, 2w+1]) (V_LD = KT/2 + 4 words a row: rows g = 0..7 of a
// fragment 4 banks apart). With Lk ≤ KT (the UNet's: 256, 64, 16 keys) one
// stage holds them all.
namespace attention_bf16 {

constexpr int KT = 256;            // keys staged at a time
constexpr int V_LD = KT / 2 + 4;   // words per staged V row

template <int H>
struct Tiles {
    static constexpr int K_STEPS = (H + 15) / 16;         // m16n8k16 steps over the features
    static constexpr int K_WORDS = H / 2;                  // bf16 pairs of a key's features
    static constexpr int K_LD = H == 8 ? 4 : H / 2 + 4;    // words per staged key (conflict-free B reads)
    static constexpr int V_TILES = H / 8;                  // n8 tiles of O's values
};

// A staged value and a pair of them as one bf16 word (lo in the low half):
// from f32, mul·value rounded (mma::bf16_pair); from bf16 storage (the
// projections' output at inference) the bits as they are — what bf16_pair
// makes of the f32 values they were rounded from, so the staged words are
// the same (mul unused: K and V take 1, and Q's c was applied by its
// projection before it rounded).
__device__ __forceinline__ float scaled(float v, float mul) { return mul * v; }
__device__ __forceinline__ unsigned short scaled(unsigned short v, float) { return v; }
__device__ __forceinline__ unsigned int pair_word(float lo, float hi) { return mma::bf16_pair(lo, hi); }
__device__ __forceinline__ unsigned int pair_word(unsigned short lo, unsigned short hi) {
    return (unsigned int)lo | (unsigned int)hi << 16;
}

// Positions p0 … p0 + n − 1 of a [rows, len] sequence matrix (features ×
// positions, Columns layout) as bf16 pairs, zeros past n or rows, `count`
// positions staged (from f32 or bf16 storage: pair_word). Position-major,
// dst[pos·K_LD + w] = (mul·src[2w, pos], mul·src[2w + 1, pos]): what a B
// fragment over features wants (products).
// Consecutive threads take consecutive positions (coalesced rows of src),
// except at H = 8: there a position's 4 words are consecutive threads', so a
// warp stores 32 consecutive words (positions K_LD = 4 words apart took 8
// banks: 4 wavefronts a store; run 7's ncu: 3.2 M shared-store bank
// conflicts in the inference kernel) and still reads whole 32-byte sectors
// (8 positions of 4 rows).
template <int H, class TS>
__device__ __forceinline__ void stage_position_major(unsigned int* dst, const TS* src, int rows, int len, int p0, int n,
                                                     int count, float mul) {
    using T = Tiles<H>;
    for (int e = threadIdx.x; e < count * T::K_WORDS; e += blockDim.x) {
        const int jj = H == 8 ? e / T::K_WORDS : e % count, w = H == 8 ? e % T::K_WORDS : e / count;
        const bool live = jj < n;
        const TS lo = live && 2 * w < rows ? scaled(src[(long long)(2 * w) * len + p0 + jj], mul) : TS(0);
        const TS hi = live && 2 * w + 1 < rows ? scaled(src[(long long)(2 * w + 1) * len + p0 + jj], mul) : TS(0);
        dst[jj * T::K_LD + w] = pair_word(lo, hi);
    }
}

// The same positions feature-major, dst[f·ld + w] = (src[f, 2w], src[f, 2w + 1])
// (positions relative to p0) for f < H: what a B fragment over positions
// wants (accumulate). ld = count/2 + 4 words: a fragment's rows g = 0..7 lie
// 4 banks apart.
template <int H, class TS>
__device__ __forceinline__ void stage_feature_major(unsigned int* dst, int ld, const TS* src, int rows, int len, int p0,
                                                    int n, int count) {
    for (int e = threadIdx.x; e < H * (count / 2); e += blockDim.x) {
        const int w = e % (count / 2), f = e / (count / 2);
        const int j = 2 * w;
        const TS lo = f < rows && j < n ? src[(long long)f * len + p0 + j] : TS(0);
        const TS hi = f < rows && j + 1 < n ? src[(long long)f * len + p0 + j + 1] : TS(0);
        dst[f * ld + w] = pair_word(lo, hi);
    }
}

// Stage keys j0 … j0 + n − 1 for the forward (zeros past n, past D or Dv),
// from f32 or bf16 storage (TKV).
template <int H, class TKV>
__device__ __forceinline__ void stage(unsigned int* ks, unsigned int* vs, const TKV* kb, const TKV* vb, int d, int dv,
                                      int lk, int j0, int n) {
    stage_position_major<H>(ks, kb, d, lk, j0, n, KT, 1.0f);
    stage_feature_major<H>(vs, V_LD, vb, dv, lk, j0, n, KT);
}

// A fragments of this warp's 16 rows, positions p0 … p0 + 15 of a [rows, len]
// sequence matrix (mul folded, 0 past rows or len; from f32 or bf16 storage:
// pair_word), k = the features:
// a[ks] = {(x[16ks + 2t], x[16ks + 2t + 1]) at p0 + g, the same at p0 + g + 8,
// then both 8 features further}.
template <int H, class TS>
__device__ __forceinline__ void load_rows(unsigned int (&a)[Tiles<H>::K_STEPS][4], const TS* src, int rows, int len,
                                          int p0, float mul) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    auto x = [&](int f, int i) { return f < rows && i < len ? scaled(src[(long long)f * len + i], mul) : TS(0); };
#pragma unroll
    for (int kstep = 0; kstep < Tiles<H>::K_STEPS; ++kstep) {
        const int f = 16 * kstep + 2 * t;
        a[kstep][0] = pair_word(x(f, p0 + g), x(f + 1, p0 + g));
        a[kstep][1] = pair_word(x(f, p0 + g + 8), x(f + 1, p0 + g + 8));
        a[kstep][2] = pair_word(x(f + 8, p0 + g), x(f + 9, p0 + g));
        a[kstep][3] = pair_word(x(f + 8, p0 + g + 8), x(f + 9, p0 + g + 8));
    }
}

// acc[nt] = A · B for the 16 staged positions kb … kb + 15 (two n8 tiles):
// A this warp's rows (load_rows), B position-major (stage_position_major),
// the sum over the features.
// `from`: where the sums start (the mma's C operand, in C's layout); at
// H = 8 one m16n8k8 step (no zero half).
template <int H>
__device__ __forceinline__ void products(float (&acc)[2][4], const unsigned int (&a)[Tiles<H>::K_STEPS][4],
                                         const unsigned int* staged, int kb, const float (&from)[4]) {
    using T = Tiles<H>;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
        const unsigned int* pos = staged + (kb + 8 * nt + g) * T::K_LD;
        if constexpr (H == 8) {
            mma::mma_bf16_k8_from(acc[nt], a[0][0], a[0][1], pos[t], from);
        } else {
#pragma unroll
            for (int kstep = 0; kstep < T::K_STEPS; ++kstep) {
                // b0: features 16·kstep + 2t, +1 of position g; b1: 8 features further (none past H)
                const int w0 = 8 * kstep + t, w1 = w0 + 4;
                const unsigned int b[2] = {pos[w0], w1 < T::K_WORDS ? pos[w1] : 0u};
                if (kstep == 0) {
                    mma::mma_bf16_from(acc[nt], a[kstep], b, from);
                } else {
                    mma::mma_bf16(acc[nt], a[kstep], b);
                }
            }
        }
    }
}
template <int H>
__device__ __forceinline__ void products(float (&acc)[2][4], const unsigned int (&a)[Tiles<H>::K_STEPS][4],
                                         const unsigned int* staged, int kb) {
    const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    products<H>(acc, a, staged, kb, zero);
}

// x (two n8 tiles of accumulators, columns = 16 positions) as the A fragment
// of those 16 positions: C's layout (c0, c1: row g, columns 2t, 2t + 1; c2, c3:
// row g + 8) is A's (a0/a1: k 2t.. of tile 0 at rows g / g + 8, a2/a3: tile 1).
__device__ __forceinline__ void as_a(unsigned int (&a)[4], const float (&x)[2][4]) {
    a[0] = mma::bf16_pair(x[0][0], x[0][1]);
    a[1] = mma::bf16_pair(x[0][2], x[0][3]);
    a[2] = mma::bf16_pair(x[1][0], x[1][1]);
    a[3] = mma::bf16_pair(x[1][2], x[1][3]);
}

// acc[ft] += A · B: A (16 rows × positions kb … kb + 15, as_a), B those
// positions' features 8ft … 8ft + 7, feature-major (stage_feature_major).
template <int H>
__device__ __forceinline__ void accumulate(float (&acc)[H / 8][4], const unsigned int (&a)[4], const unsigned int* staged,
                                           int ld, int kb) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int ft = 0; ft < H / 8; ++ft) {
        // b0: positions kb + 2t, +1 of feature 8ft + g; b1: positions kb + 8 + 2t, +1
        const unsigned int* row = staged + (8 * ft + g) * ld + kb / 2 + t;
        const unsigned int b[2] = {row[0], row[4]};
        mma::mma_bf16(acc[ft], a, b);
    }
}

// −∞ for the scores s[nt] (keys kb + 8·nt …) of keys at or past n.
__device__ __forceinline__ void mask_past(float (&s)[2][4], int kb, int n) {
    const int t = threadIdx.x % 4;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r)
            if (kb + 8 * nt + 2 * t + r % 2 >= n) s[nt][r] = MD_NEG_INF;
}

// s[nt] = the scores of keys kb + 8·nt … (two n8 tiles) for this warp's 16
// queries, −∞ for keys at or past n.
template <int H>
__device__ __forceinline__ void scores(float (&s)[2][4], const unsigned int (&qa)[Tiles<H>::K_STEPS][4],
                                       const unsigned int* ks, int kb, int n) {
    products<H>(s, qa, ks, kb);
    if (kb + 16 > n) mask_past(s, kb, n);
}

// (exp2_ftz, 2^x by one ex2.approx.ftz, is in common.cuh.)

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// 2^−d for a whole d ≥ 0, built from its exponent bits (exact; 0 past f32's
// normal range, where the scaled sums would flush anyway).
__device__ __forceinline__ float pow2_neg(float d) {
    return d > 126.0f ? 0.0f : __int_as_float((127 - (int)d) << 23);
}

// A tile's scores x against the running maxima m (held as the mma's start,
// neg_m = {−m, −m, −m', −m'} for rows g and g + 8) where some score of the
// warp's rows reached its row's maximum, or the first tile: a row's maximum
// becomes m + d, d = ⌈the tile's largest x⌉ (at least 0 after the first
// tile), its sums so far (O's, and this lane's part of l) are scaled by 2^−d
// and its x shifted by −d.
template <int V_TILES>
__device__ __forceinline__ void raise_max(float (&x)[2][4], float (&neg_m)[4], float (&acc)[V_TILES][4],
                                          float (&l)[2], bool first) {
    float d[2];  // rows g, g + 8: C's registers 0, 1 and 2, 3
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        d[h] = ceilf(quad_max(fmaxf(fmaxf(x[0][2 * h], x[0][2 * h + 1]), fmaxf(x[1][2 * h], x[1][2 * h + 1]))));
        if (!first) d[h] = fmaxf(d[h], 0.0f);
    }
    if (!first) {
        const float f[2] = {pow2_neg(d[0]), pow2_neg(d[1])};
        l[0] *= f[0];
        l[1] *= f[1];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int vt = 0; vt < V_TILES; ++vt) acc[vt][r] *= f[r / 2];
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const float dr = d[r / 2];
        neg_m[r] -= dr;
        x[0][r] -= dr;
        x[1][r] -= dr;
    }
}

// One tile of 16 keys kb … kb + 15 of the forward's pass (see infer):
// FIRST for the first tile of a row, PARTIAL where keys at or past n are masked.
template <int H, bool FIRST, bool PARTIAL>
__device__ __forceinline__ void infer_tile(float (&acc)[Tiles<H>::V_TILES][4], float (&l)[2], float (&neg_m)[4],
                                           const unsigned int (&qa)[Tiles<H>::K_STEPS][4], const unsigned int* ks,
                                           const unsigned int* vs, int kb, int n) {
    float x[2][4];
    products<H>(x, qa, ks + kb * Tiles<H>::K_LD, 0, neg_m);  // x = s − m (the tile's keys from 0)
    if (PARTIAL) mask_past(x, kb, n);
    // x ≥ +0 somewhere (a sign bit clear): a row's maximum grows
    const unsigned int signs = __float_as_uint(x[0][0]) & __float_as_uint(x[0][1]) & __float_as_uint(x[0][2]) &
                               __float_as_uint(x[0][3]) & __float_as_uint(x[1][0]) & __float_as_uint(x[1][1]) &
                               __float_as_uint(x[1][2]) & __float_as_uint(x[1][3]);
    if (FIRST || __any_sync(0xffffffffu, (int)signs >= 0)) raise_max(x, neg_m, acc, l, FIRST);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
        x[nt][0] = exp2_ftz(x[nt][0]);
        x[nt][1] = exp2_ftz(x[nt][1]);
        x[nt][2] = exp2_ftz(x[nt][2]);
        x[nt][3] = exp2_ftz(x[nt][3]);
        l[0] += x[nt][0] + x[nt][1];
        l[1] += x[nt][2] + x[nt][3];
    }
    unsigned int pa[4];
    as_a(pa, x);
    accumulate<H>(acc, pa, vs, V_LD, kb);
}

// The block: batch entry b, query tiles; see the section comment. Batch
// entries and heads as in [attention::infer]. With lse non-null (training)
// it also writes each query's log-sum-exp in base 2, L_i = m_i + log2 l_i
// (log2 Σ_j 2^(s_ij)), from which the backward recomputes p_ij = 2^(s_ij − L_i).
// TKV, TO: K and V read from, O stored to, f32 or bf16 (unsigned short; O
// rounded to nearest even). TQ: Q read from f32 and multiplied by c = scale·
// log2 e here, or from bf16 storage already multiplied and rounded by its
// projection (the same words; `scale` then unused).
template <int H, class TQ = float, class TKV = float, class TO = float>
__device__ void infer(TO* o, float* lse, const TQ* q, const TKV* k, const TKV* v, int lq, int lk, int d,
                      int dv, float scale, int heads, long long q_image, long long k_image, long long v_image) {
    using T = Tiles<H>;
    __shared__ unsigned int ks[KT * T::K_LD];
    __shared__ unsigned int vs[H * V_LD];
    const int warps = (int)blockDim.x / 32, warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int tiles = (lq + 16 * warps - 1) / (16 * warps);  // blocks per batch entry
    const long long b = (long long)blockIdx.x / tiles;
    const int i0 = (int)(blockIdx.x - b * tiles) * 16 * warps + 16 * warp;
    const long long image = b / heads, head = b - image * heads;
    const TQ* qb = q + image * q_image + head * d * lq;
    const TKV* kb = k + image * k_image + head * d * lk;
    const TKV* vb = v + image * v_image + head * dv * lk;

    // Q's A fragments, c·Q
    unsigned int qa[T::K_STEPS][4];
    load_rows<H>(qa, qb, d, lq, i0, scale * attention::LOG2_E);

    // One pass over the keys, 16 at a time (infer_tile): x = s − m against
    // running whole maxima m, the scores' mma starting its sums at −m; p =
    // 2^x; O's sums and this lane's part of l (rows g, g + 8) as they go.
    float neg_m[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float acc[T::V_TILES][4], l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int vt = 0; vt < T::V_TILES; ++vt) acc[vt][0] = acc[vt][1] = acc[vt][2] = acc[vt][3] = 0.0f;
    for (int j0 = 0; j0 < lk; j0 += KT) {
        const int n = min(KT, lk - j0), whole = n & ~15;  // keys staged, keys in whole tiles
        __syncthreads();  // the previous stage is no longer read
        stage<H>(ks, vs, kb, vb, d, dv, lk, j0, n);
        __syncthreads();
        int kb16 = 0;
        if (j0 == 0) {
            if (whole > 0) {
                infer_tile<H, true, false>(acc, l, neg_m, qa, ks, vs, 0, n);
            } else {
                infer_tile<H, true, true>(acc, l, neg_m, qa, ks, vs, 0, n);
            }
            kb16 = 16;
        }
        for (; kb16 < whole; kb16 += 16) infer_tile<H, false, false>(acc, l, neg_m, qa, ks, vs, kb16, n);
        if (kb16 < n) infer_tile<H, false, true>(acc, l, neg_m, qa, ks, vs, kb16, n);
    }
    const float m_lo = -neg_m[0], m_hi = -neg_m[2];
    const float l_lo = quad_sum(l[0]), l_hi = quad_sum(l[1]);

    // acc[vt]: O[8vt + 2t (+1), i0 + g] in r = 0 (1), at i0 + g + 8 in r = 2 (3)
    TO* ob = o + b * dv * lq;
    const float inv[2] = {1.0f / l_lo, 1.0f / l_hi};
#pragma unroll
    for (int vt = 0; vt < T::V_TILES; ++vt)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int cv = 8 * vt + 2 * t + r % 2, i = i0 + g + 8 * (r / 2);
            if (cv < dv && i < lq) store_as(ob, (long long)cv * lq + i, acc[vt][r] * inv[r / 2]);
        }
    if (lse != nullptr && t == 0) {
        if (i0 + g < lq) lse[b * lq + i0 + g] = m_lo + log2f(l_lo);
        if (i0 + g + 8 < lq) lse[b * lq + i0 + g + 8] = m_hi + log2f(l_hi);
    }
}

// ---- Training backward with bf16 products on the tensor cores ----
//
// The gradients of the forward above (twin: ops::attention::cpu::backward_bf16),
// in base 2 with c = scale·log2 e and L_i the forward's base-2 log-sum-exp:
//   s_ij = Σ_d bf16(c·Q[d,i])·bf16(K[d,j])   (the forward's scores)
//   p_ij = 2^(s_ij − L_i),   δ_i = Σ_c dO[c,i]·O[c,i]   (f32, fma in c order)
//   dP_ij = Σ_c bf16(dO[c,i])·bf16(V[c,j]),   dS_ij = p_ij·(dP_ij − δ_i)
//   dQ[:,i] = scale·Σ_j bf16(dS_ij)·bf16(K[:,j])
//   dK[:,j] = scale·Σ_i bf16(dS_ij)·bf16(Q[:,i])
//   dV[:,j] = Σ_i bf16(p_ij)·bf16(dO[:,i])
// (autocast's numbers: bf16 operands, f32 sums; dS and P rounded once.)
// Two kernels, as the f32 ones: by query (δ, dQ) and by key (dK, dV), each
// recomputing S and P from L, 16 rows a warp; every product is an m16n8k16
// mma whose A rows are the warp's positions, and the accumulators of S, dP
// become the A fragments of dS and P for the next mma in registers (as_a).
// Per 16 partner positions: S and dP (two n8 tiles each), then one mma per
// 8 features for each gradient. SASS at h8: ~80 instructions a warp per
// 16 × 16 block of scores (0.31 a score) against ~1.3 (by query) and ~1.7
// (by key) a score for the f32 kernels.
constexpr int BT = 128;           // partner positions (keys, or queries) staged at a time
constexpr int BT_LD = BT / 2 + 4;  // words per feature-major row

// δ [batch, Lq] and dQ [batch, D, Lq]: warp w owns queries i0 … i0 + 15 (the
// rows of its tiles); the keys come BT at a time, K position-major (S) and
// feature-major (dQ), V position-major (dP). Per 16 keys:
//   S = c·Q · Kᵀ, dP = dO · Vᵀ   (A: Q, dO in registers; B: ks, vk)
//   dS = p·(dP − δ)              (keys past Lk: p = 0, as S = −∞ there)
//   dQ += bf16(dS) · K           (A: dS; B: kf)
template <int H>
__device__ void backward_query(float* dq, float* delta, const float* q, const float* k, const float* v, const float* o,
                               const float* d_o, const float* lse, int lq, int lk, int d, int dv, float scale) {
    using T = Tiles<H>;
    __shared__ unsigned int ks[BT * T::K_LD];
    __shared__ unsigned int vk[BT * T::K_LD];
    __shared__ unsigned int kf[H * BT_LD];
    const int warps = (int)blockDim.x / 32, warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int tiles = (lq + 16 * warps - 1) / (16 * warps);
    const long long b = (long long)blockIdx.x / tiles;
    const int i0 = (int)(blockIdx.x - b * tiles) * 16 * warps + 16 * warp;
    const float* qb = q + b * d * lq;
    const float* kb = k + b * d * lk;
    const float* vb = v + b * dv * lk;
    const float* dob = d_o + b * dv * lq;
    const float* ob = o + b * dv * lq;

    unsigned int qa[T::K_STEPS][4], da[T::K_STEPS][4];
    load_rows<H>(qa, qb, d, lq, i0, scale * attention::LOG2_E);
    load_rows<H>(da, dob, dv, lq, i0, 1.0f);
    // rows g (h = 0) and g + 8 (h = 1): L_i and δ_i (rows past Lq: 0, so dS = 0)
    float row_l[2], row_delta[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int i = i0 + g + 8 * h;
        float di = 0.0f;
        if (i < lq)
            for (int c = 0; c < dv; ++c) di = fmaf(dob[(long long)c * lq + i], ob[(long long)c * lq + i], di);
        row_l[h] = i < lq ? lse[b * lq + i] : 0.0f;
        row_delta[h] = di;
    }
    float acc[H / 8][4];
#pragma unroll
    for (int ft = 0; ft < H / 8; ++ft) acc[ft][0] = acc[ft][1] = acc[ft][2] = acc[ft][3] = 0.0f;

    for (int j0 = 0; j0 < lk; j0 += BT) {
        const int n = min(BT, lk - j0);
        __syncthreads();  // the previous keys are no longer read
        stage_position_major<H>(ks, kb, d, lk, j0, n, BT, 1.0f);
        stage_position_major<H>(vk, vb, dv, lk, j0, n, BT, 1.0f);
        stage_feature_major<H>(kf, BT_LD, kb, d, lk, j0, n, BT);
        __syncthreads();
        for (int kb16 = 0; kb16 < n; kb16 += 16) {
            float s[2][4], dp[2][4];
            scores<H>(s, qa, ks, kb16, n);
            products<H>(dp, da, vk, kb16);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const float p = exp2_ftz(s[nt][r] - row_l[r / 2]);
                    s[nt][r] = p * (dp[nt][r] - row_delta[r / 2]);  // dS
                }
            unsigned int dsa[4];
            as_a(dsa, s);
            accumulate<H>(acc, dsa, kf, BT_LD, kb16);
        }
    }
    // acc[ft]: dQ[8ft + 2t (+1), i0 + g] in r = 0 (1), at i0 + g + 8 in r = 2 (3)
#pragma unroll
    for (int ft = 0; ft < H / 8; ++ft)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int f = 8 * ft + 2 * t + r % 2, i = i0 + g + 8 * (r / 2);
            if (f < d && i < lq) dq[(b * d + f) * lq + i] = scale * acc[ft][r];
        }
    if (t == 0) {
        if (i0 + g < lq) delta[b * lq + i0 + g] = row_delta[0];
        if (i0 + g + 8 < lq) delta[b * lq + i0 + g + 8] = row_delta[1];
    }
}

// dK [batch, D, Lk] and dV [batch, Dv, Lk], from δ of backward_query: warp w
// owns keys j0 … j0 + 15; the queries come BT at a time with their L and δ,
// c·Q and dO position-major (Sᵀ, dPᵀ), Q and dO feature-major (dK, dV). Per
// 16 queries:
//   Sᵀ = K · (c·Q)ᵀ, dPᵀ = V · dOᵀ   (A: K, V in registers; B: qs, dos)
//   Pᵀ = 2^(Sᵀ − L), dSᵀ = Pᵀ·(dPᵀ − δ)   (queries past Lq: Q, dO, L and δ
//                                         staged 0, so their terms are 0)
//   dK += bf16(dSᵀ) · Q,  dV += bf16(Pᵀ) · dO   (B: qf, dof)
template <int H>
__device__ void backward_key(float* dk, float* dvv, const float* q, const float* k, const float* v, const float* d_o,
                             const float* lse, const float* delta, int lq, int lk, int d, int dv, float scale) {
    using T = Tiles<H>;
    __shared__ unsigned int qs[BT * T::K_LD];
    __shared__ unsigned int dos[BT * T::K_LD];
    __shared__ unsigned int qf[H * BT_LD];
    __shared__ unsigned int dof[H * BT_LD];
    __shared__ float ls[BT], deltas[BT];
    const int warps = (int)blockDim.x / 32, warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int tiles = (lk + 16 * warps - 1) / (16 * warps);
    const long long b = (long long)blockIdx.x / tiles;
    const int j0 = (int)(blockIdx.x - b * tiles) * 16 * warps + 16 * warp;
    const float* qb = q + b * d * lq;
    const float* kb = k + b * d * lk;
    const float* vb = v + b * dv * lk;
    const float* dob = d_o + b * dv * lq;
    const float c = scale * attention::LOG2_E;

    unsigned int ka[T::K_STEPS][4], va[T::K_STEPS][4];
    load_rows<H>(ka, kb, d, lk, j0, 1.0f);
    load_rows<H>(va, vb, dv, lk, j0, 1.0f);
    float acc_k[H / 8][4], acc_v[H / 8][4];
#pragma unroll
    for (int ft = 0; ft < H / 8; ++ft)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc_k[ft][r] = acc_v[ft][r] = 0.0f;

    for (int i0 = 0; i0 < lq; i0 += BT) {
        const int n = min(BT, lq - i0);
        __syncthreads();  // the previous queries are no longer read
        stage_position_major<H>(qs, qb, d, lq, i0, n, BT, c);
        stage_position_major<H>(dos, dob, dv, lq, i0, n, BT, 1.0f);
        stage_feature_major<H>(qf, BT_LD, qb, d, lq, i0, n, BT);
        stage_feature_major<H>(dof, BT_LD, dob, dv, lq, i0, n, BT);
        for (int ii = threadIdx.x; ii < BT; ii += blockDim.x) {
            ls[ii] = ii < n ? lse[b * lq + i0 + ii] : 0.0f;
            deltas[ii] = ii < n ? delta[b * lq + i0 + ii] : 0.0f;
        }
        __syncthreads();
        for (int ib = 0; ib < n; ib += 16) {
            float s[2][4], dp[2][4];
            products<H>(s, ka, qs, ib);
            products<H>(dp, va, dos, ib);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int col = ib + 8 * nt + 2 * t + r % 2;
                    s[nt][r] = exp2_ftz(s[nt][r] - ls[col]);           // Pᵀ
                    dp[nt][r] = s[nt][r] * (dp[nt][r] - deltas[col]);  // dSᵀ
                }
            unsigned int pa[4], dsa[4];
            as_a(pa, s);
            as_a(dsa, dp);
            accumulate<H>(acc_k, dsa, qf, BT_LD, ib);
            accumulate<H>(acc_v, pa, dof, BT_LD, ib);
        }
    }
    // acc[ft]: feature 8ft + 2t (+1) of key j0 + g in r = 0 (1), of key j0 + g + 8 in r = 2 (3)
#pragma unroll
    for (int ft = 0; ft < H / 8; ++ft)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int f = 8 * ft + 2 * t + r % 2, j = j0 + g + 8 * (r / 2);
            if (j >= lk) continue;
            if (f < d) dk[(b * d + f) * lk + j] = scale * acc_k[ft][r];
            if (f < dv) dvv[(b * dv + f) * lk + j] = acc_v[ft][r];
        }
}

}  // namespace attention_bf16

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

// The bf16-product kernels per head size (D, Dv ≤ H). grid =
// batch·⌈L/(16·warps)⌉, block = 32·warps threads, warps = min(8, ⌈L/16⌉)
// (8 warps: a block's staged keys serve 128 queries), with L = Lq for infer
// and backward_query, Lk for backward_key. infer writes the base-2
// log-sum-exp where lse is non-null (training).
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_infer_bf16_h8(float* o, float* lse, const float* q, const float* k, const float* v, int lq, int lk,
                                   int d, int dv, float scale, int heads, long long q_image, long long k_image,
                                   long long v_image) {
    attention_bf16::infer<8>(o, lse, q, k, v, lq, lk, d, dv, scale, heads, q_image, k_image, v_image);
}
// Inference from Q, K and V stored in bf16, O stored in bf16 (the UNet's
// attention block at inference: its q, k and v projections write bf16 — q
// multiplied by c = scale·log2 e first — and its to_out reads bf16; each
// rounds them to bf16 anyway, so the words staged are those made from f32);
// lse unused (null), scale unused (in q).
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_infer_bf16_io_h8(unsigned short* o, float* lse, const unsigned short* q, const unsigned short* k,
                                       const unsigned short* v, int lq, int lk, int d, int dv, float scale, int heads,
                                       long long q_image, long long k_image, long long v_image) {
    attention_bf16::infer<8>(o, lse, q, k, v, lq, lk, d, dv, scale, heads, q_image, k_image, v_image);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_infer_bf16_io_h16(unsigned short* o, float* lse, const unsigned short* q, const unsigned short* k,
                                        const unsigned short* v, int lq, int lk, int d, int dv, float scale, int heads,
                                        long long q_image, long long k_image, long long v_image) {
    attention_bf16::infer<16>(o, lse, q, k, v, lq, lk, d, dv, scale, heads, q_image, k_image, v_image);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_infer_bf16_io_h32(unsigned short* o, float* lse, const unsigned short* q, const unsigned short* k,
                                        const unsigned short* v, int lq, int lk, int d, int dv, float scale, int heads,
                                        long long q_image, long long k_image, long long v_image) {
    attention_bf16::infer<32>(o, lse, q, k, v, lq, lk, d, dv, scale, heads, q_image, k_image, v_image);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_backward_query_bf16_h8(float* dq, float* delta, const float* q, const float* k, const float* v,
                                             const float* o, const float* d_o, const float* lse, int lq, int lk,
                                             int d, int dv, float scale) {
    attention_bf16::backward_query<8>(dq, delta, q, k, v, o, d_o, lse, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_backward_key_bf16_h8(float* dk, float* dvv, const float* q, const float* k, const float* v,
                                           const float* d_o, const float* lse, const float* delta, int lq, int lk,
                                           int d, int dv, float scale) {
    attention_bf16::backward_key<8>(dk, dvv, q, k, v, d_o, lse, delta, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_infer_bf16_h16(float* o, float* lse, const float* q, const float* k, const float* v, int lq, int lk,
                                    int d, int dv, float scale, int heads, long long q_image, long long k_image,
                                    long long v_image) {
    attention_bf16::infer<16>(o, lse, q, k, v, lq, lk, d, dv, scale, heads, q_image, k_image, v_image);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_backward_query_bf16_h16(float* dq, float* delta, const float* q, const float* k, const float* v,
                                             const float* o, const float* d_o, const float* lse, int lq, int lk,
                                             int d, int dv, float scale) {
    attention_bf16::backward_query<16>(dq, delta, q, k, v, o, d_o, lse, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_backward_key_bf16_h16(float* dk, float* dvv, const float* q, const float* k, const float* v,
                                           const float* d_o, const float* lse, const float* delta, int lq, int lk,
                                           int d, int dv, float scale) {
    attention_bf16::backward_key<16>(dk, dvv, q, k, v, d_o, lse, delta, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_infer_bf16_h32(float* o, float* lse, const float* q, const float* k, const float* v, int lq, int lk,
                                    int d, int dv, float scale, int heads, long long q_image, long long k_image,
                                    long long v_image) {
    attention_bf16::infer<32>(o, lse, q, k, v, lq, lk, d, dv, scale, heads, q_image, k_image, v_image);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_backward_query_bf16_h32(float* dq, float* delta, const float* q, const float* k, const float* v,
                                             const float* o, const float* d_o, const float* lse, int lq, int lk,
                                             int d, int dv, float scale) {
    attention_bf16::backward_query<32>(dq, delta, q, k, v, o, d_o, lse, lq, lk, d, dv, scale);
}
extern "C" __global__ void __launch_bounds__(256)
    attention_columns_backward_key_bf16_h32(float* dk, float* dvv, const float* q, const float* k, const float* v,
                                           const float* d_o, const float* lse, const float* delta, int lq, int lk,
                                           int d, int dv, float scale) {
    attention_bf16::backward_key<32>(dk, dvv, q, k, v, d_o, lse, delta, lq, lk, d, dv, scale);
}
