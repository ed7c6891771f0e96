// 2-D convolution, NCHW, weight [OC, C, KH, KW], as implicit GEMM: the three
// matrix products of ops/conv2d (forward, input gradient, weight gradient) run
// through one shared-memory tile routine, and each operand tile is gathered
// straight from the tensors, so no im2col matrix is ever written.
//
// Notation: P = OH·OW output pixels per image, KK = KH·KW kernel taps,
// s = stride, p = padding. Every GEMM is C[m, n] = Σ_k A[m, k]·B[k, n]:
//
//   forward          M = OC, N = N·OH·OW, K = C·KH·KW
//     A[oc, (c,kh,kw)]          = W[oc, c, kh, kw]
//     B[(c,kh,kw), (n,oh,ow)]   = x[n, c, oh·s − p + kh, ow·s − p + kw]    (0 outside the image)
//     y[n, oc, oh, ow]          = C[oc, (n,oh,ow)] + b[oc]
//   backward input   M = C, N = N·H·W, K = OC·KH·KW
//     A[c, (oc,kh,kw)]          = W[oc, c, kh, kw]
//     B[(oc,kh,kw), (n,h,w)]    = dy[n, oc, (h + p − kh)/s, (w + p − kw)/s] when both divisions
//                                 are exact and land inside [0, OH) × [0, OW), else 0
//     dx[n, c, h, w]            = C[c, (n,h,w)]
//   backward weight  M = OC, N = C·KH·KW, K = N·OH·OW (split over gridDim.z)
//     A[oc, (n,oh,ow)]          = dy[n, oc, oh, ow]
//     B[(n,oh,ow), (c,kh,kw)]   = x[n, c, oh·s − p + kh, ow·s − p + kw]   (0 outside the image)
//     dW_z[oc, (c,kh,kw)]       = C restricted to split z's k range; dW = Σ_z dW_z
//
// Tiling: a block of 256 threads computes a 64×64 tile of C. It walks K in
// slices of 16 words: each thread gathers 4 words of the 64×16 A slice and 4
// of the 16×64 B slice into shared memory (As[k][m], Bs[k][n]), then, after a
// barrier, the block's 8 warps multiply the slice on the tensor cores: warp w
// owns rows 32·(w % 2).. and columns 16·(w / 2).. of the tile. A word is one
// f32 at f32 accuracy (3xTF32, kernels/mma.cuh) or two consecutive k values
// as bf16 at the bf16 compute precision (mma::Bf16: K slices of 32, one
// m16n8k16 instruction per 16 k). Rows of As/Bs are padded to 68 words so
// the fragment reads (lanes 4 rows × 8 columns apart) hit distinct banks
// pairwise at worst.
#include "common.cuh"
#include "conv2d.cuh"
#include "mma.cuh"

namespace conv {

constexpr int BM = 64;       // tile rows (m)
constexpr int BN = 64;       // tile columns (n)
constexpr int BK = 16;       // K slice in staged words (16 k at f32, 32 at bf16)
constexpr int THREADS = 256; // 8 warps
constexpr int SLOTS = 4;     // words of each operand slice a thread loads: 64·16 / 256
constexpr int LDS = BM + 4;  // shared row length (see Tiling)
static_assert(BM == BN, "fetch_slice/store_slice fill both tiles with the same shape");

// Which thread loads which word of a 64×16 operand slice (rows = the m or
// n index, columns = k words). Word e = tid + 256·i of the slice, i < SLOTS:
//   K_FAST  (operand contiguous along k):  k = e % 16, row = e / 16
//   !K_FAST (operand contiguous along m/n): row = e % 64, k = e / 64
// so consecutive threads read consecutive addresses in either case.
template <bool K_FAST>
__device__ __forceinline__ int slot_row(int tid, int i) {
    return K_FAST ? tid / BK + (THREADS / BK) * i : tid % BM;
}
template <bool K_FAST>
__device__ __forceinline__ int slot_k(int tid, int i) {
    return K_FAST ? tid % BK : tid / BM + (THREADS / BM) * i;
}

// ---- Operands. Each has a per-row context `Ctx`, computed once per thread
// and slot (the row of a slot is the same for every K slice), and `load`,
// the element at (row, k) for an in-range row and k. ----

// Forward A: W seen as [OC, K] row-major.  A[oc, k] = W[oc·K + k].
struct WeightRows {
    static constexpr bool K_FAST = true;
    const float* w;
    int K;
    struct Ctx { int base; };
    __device__ Ctx ctx(int oc) const { return Ctx{oc * K}; }
    __device__ float load(const Ctx& c, int k) const { return w[c.base + k]; }
};

// Backward-input A: A[c, (oc,r)] = W[(oc·C + c)·KK + r], r = kh·KW + kw.
// Consecutive k within one oc are consecutive in W.
struct WeightCols {
    static constexpr bool K_FAST = true;
    const float* w;
    Shape s;
    struct Ctx { int c; };
    __device__ Ctx ctx(int c) const { return Ctx{c}; }
    __device__ float load(const Ctx& c, int k) const {
        const int kk = s.kh * s.kw;
        const int oc = k / kk, r = k - oc * kk;
        return w[(oc * s.c + c.c) * kk + r];
    }
};

// Output column n = (img, oh, ow) of the forward GEMM: its image and the
// top-left input pixel (iy0, ix0) = (oh·s − p, ow·s − p) of its window.
struct Window { int img, iy0, ix0; };
__device__ __forceinline__ Window window(const Shape& s, int n) {
    const int P = s.oh * s.ow;
    const int img = n / P, pix = n - img * P;
    const int oh = pix / s.ow, ow = pix - oh * s.ow;
    return Window{img, oh * s.stride - s.pad, ow * s.stride - s.pad};
}

// Forward B (an im2col column, gathered): for n = (img, oh, ow) and k = (c, kh, kw)
//   B[k, n] = x[img, c, iy, ix],  iy = oh·s − p + kh,  ix = ow·s − p + kw,  0 unless
//   0 ≤ iy < H and 0 ≤ ix < W.  The context keeps img·C·H·W and the window corner.
struct ImageCols {
    static constexpr bool K_FAST = false;
    const float* x;
    Shape s;
    struct Ctx { int base, iy0, ix0; };
    __device__ Ctx ctx(int n) const {
        const Window win = window(s, n);
        return Ctx{win.img * s.c * s.h * s.w, win.iy0, win.ix0};
    }
    __device__ float load(const Ctx& c, int k) const {
        const int kk = s.kh * s.kw;
        const int ch = k / kk, r = k - ch * kk;
        const int kh = r / s.kw, kw = r - kh * s.kw;
        const int iy = c.iy0 + kh, ix = c.ix0 + kw;
        if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) return 0.0f;
        return x[c.base + (ch * s.h + iy) * s.w + ix];
    }
};

// Forward B through a table: the k → (c, kh, kw) split of ImageCols costs two
// integer divisions per element and slice; with K ≤ TAB_MAX the block makes
// it once, into shared memory: tab[k] = (c·H·W + kh·W + kw) << 8 | kh << 4 | kw
// (needs KH, KW ≤ 16 and C·H·W < 2²³). The context keeps the address of the
// window's corner, img·C·H·W + iy0·W + ix0 (outside the image when padded:
// only in-range taps are read).
constexpr int TAB_MAX = 4608;  // 512 channels × 3×3
struct ImageColsTab {
    static constexpr bool K_FAST = false;
    const float* x;
    const int* tab;
    Shape s;
    struct Ctx { int corner, iy0, ix0; };
    __device__ Ctx ctx(int n) const {
        const Window win = window(s, n);
        return Ctx{win.img * s.c * s.h * s.w + win.iy0 * s.w + win.ix0, win.iy0, win.ix0};
    }
    __device__ float load(const Ctx& c, int k) const {
        const int t = tab[k];
        const int iy = c.iy0 + ((t >> 4) & 15), ix = c.ix0 + (t & 15);
        if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) return 0.0f;
        return x[c.corner + (t >> 8)];
    }
    __device__ static bool fits(const Shape& s) {
        return s.c * s.kh * s.kw <= TAB_MAX && s.kh <= 16 && s.kw <= 16 && s.c * s.h * s.w < (1 << 23);
    }
};

// Backward-input B: for n = (img, h, w) and k = (oc, kh, kw), the output pixel
// whose window put tap (kh, kw) on (h, w): oy·s − p + kh = h ⇔ oy = (h + p − kh)/s.
//   B[k, n] = dy[img, oc, oy, ox] when h + p − kh ≥ 0 is a multiple of s with oy < OH
//             (and the same along w), else 0.
struct GradCols {
    static constexpr bool K_FAST = false;
    const float* dy;
    Shape s;
    struct Ctx { int base, ty0, tx0; };
    __device__ Ctx ctx(int n) const {
        const int hw = s.h * s.w;
        const int img = n / hw, pix = n - img * hw;
        const int h = pix / s.w, w = pix - h * s.w;
        return Ctx{img * s.oc * s.oh * s.ow, h + s.pad, w + s.pad};
    }
    __device__ float load(const Ctx& c, int k) const {
        const int kk = s.kh * s.kw;
        const int oc = k / kk, r = k - oc * kk;
        const int kh = r / s.kw, kw = r - kh * s.kw;
        const int ty = c.ty0 - kh, tx = c.tx0 - kw;  // oy·s and ox·s
        if (ty < 0 || tx < 0) return 0.0f;
        const int oy = ty / s.stride, ox = tx / s.stride;
        if (oy * s.stride != ty || ox * s.stride != tx || oy >= s.oh || ox >= s.ow) return 0.0f;
        return dy[c.base + (oc * s.oh + oy) * s.ow + ox];
    }
};

// Backward-weight A: A[oc, (img,pix)] = dy[(img·OC + oc)·P + pix]; consecutive k
// within one image are consecutive in dy.
struct GradRows {
    static constexpr bool K_FAST = true;
    const float* dy;
    Shape s;
    struct Ctx { int oc; };
    __device__ Ctx ctx(int oc) const { return Ctx{oc}; }
    __device__ float load(const Ctx& c, int k) const {
        const int P = s.oh * s.ow;
        const int img = k / P, pix = k - img * P;
        return dy[(img * s.oc + c.oc) * P + pix];
    }
};

// Backward-weight B (an im2col row, gathered): for k = (img, oh, ow) and
// n = (c, kh, kw)
//   B[k, n] = x[img, c, oh·s − p + kh, ow·s − p + kw]  (0 outside the image).
// The context keeps c·H·W and the tap offsets kh − p, kw − p.
struct ImageRows {
    static constexpr bool K_FAST = true;
    const float* x;
    Shape s;
    struct Ctx { int plane, dy0, dx0; };
    __device__ Ctx ctx(int n) const {
        const int kk = s.kh * s.kw;
        const int ch = n / kk, r = n - ch * kk;
        const int kh = r / s.kw, kw = r - kh * s.kw;
        return Ctx{ch * s.h * s.w, kh - s.pad, kw - s.pad};
    }
    __device__ float load(const Ctx& c, int k) const {
        const int P = s.oh * s.ow;
        const int img = k / P, pix = k - img * P;
        const int oh = pix / s.ow, ow = pix - oh * s.ow;
        const int iy = oh * s.stride + c.dy0, ix = ow * s.stride + c.dx0;
        if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) return 0.0f;
        return x[img * s.c * s.h * s.w + c.plane + iy * s.w + ix];
    }
};

// ---- Outputs: `col(n)` is the per-column part of the address (computed once
// per thread and column), `store(m, col, v)` writes C[m, n] = v. ----

// Backward input: dx[img, c, pix] = C[c, (img,pix)]; col = img·C·H·W + pix.
struct InputGradOut {
    float* dx;
    Shape s;
    __device__ int col(int n) const {
        const int hw = s.h * s.w;
        const int img = n / hw;
        return img * s.c * hw + (n - img * hw);
    }
    __device__ void store(int c, int col, float v) const { dx[col + c * s.h * s.w] = v; }
};

// Backward weight: dW_z[oc, n] row-major, N = C·KH·KW columns.
struct WeightGradOut {
    float* dw;  // this split's [OC, N] slab
    int N;
    __device__ int col(int n) const { return n; }
    __device__ void store(int oc, int col, float v) const { dw[oc * N + col] = v; }
};

// Reads this thread's SLOTS words of the 64×16-word slice of operand `op` at
// rows row0.., k = k0.. into registers: word (row, j) holds the PER_WORD
// values k0 + PER_WORD·j + e, e < PER_WORD, packed by Math. Rows ≥ rows and
// k ≥ k_end read as 0, so partial tiles add nothing.
template <class Math, class Op>
__device__ __forceinline__ void fetch_slice(const Op& op, const typename Op::Ctx* ctx, const bool* row_ok,
                                            typename Math::Word* regs, int k0, int k_end, int tid) {
#pragma unroll
    for (int i = 0; i < SLOTS; ++i) {
        const int k = k0 + Math::PER_WORD * slot_k<Op::K_FAST>(tid, i);
        float v[Math::PER_WORD];
#pragma unroll
        for (int e = 0; e < Math::PER_WORD; ++e) v[e] = (row_ok[i] && k + e < k_end) ? op.load(ctx[i], k + e) : 0.0f;
        regs[i] = Math::pack(v);
    }
}

// Writes the fetched words into tile[k word][row].
template <class Math, class Op>
__device__ __forceinline__ void store_slice(const typename Math::Word* regs, typename Math::Word (*tile)[LDS], int tid) {
#pragma unroll
    for (int i = 0; i < SLOTS; ++i) tile[slot_k<Op::K_FAST>(tid, i)][slot_row<Op::K_FAST>(tid, i)] = regs[i];
}

// One 64×64 tile of C = A·B over k in [blockIdx.z·k_chunk, min(K, (blockIdx.z + 1)·k_chunk)),
// tile origin (m0, n0) = (64·blockIdx.y, 64·blockIdx.x), products at the
// precision of Math (mma::Tf32x3: f32 accuracy; mma::Bf16: operands rounded
// to bf16, f32 sums), K slices of 16·Math::PER_WORD. Launch with 256 threads.
template <class Math, class OpA, class OpB, class Out>
__device__ __forceinline__ void gemm_tile(const OpA& A, const OpB& B, const Out& out, int M, int N, int K, int k_chunk) {
    using Word = typename Math::Word;
    constexpr int K_SLICE = BK * Math::PER_WORD;
    __shared__ Word As[BK][LDS];  // As[k word][m]
    __shared__ Word Bs[BK][LDS];  // Bs[k word][n]
    const int tid = threadIdx.x;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int k_begin = blockIdx.z * k_chunk;
    const int k_end = min(K, k_begin + k_chunk);

    // Per-slot row contexts: the gather index math that does not depend on k.
    typename OpA::Ctx a_ctx[SLOTS];
    typename OpB::Ctx b_ctx[SLOTS];
    bool a_ok[SLOTS], b_ok[SLOTS];
#pragma unroll
    for (int i = 0; i < SLOTS; ++i) {
        const int m = m0 + slot_row<OpA::K_FAST>(tid, i);
        const int n = n0 + slot_row<OpB::K_FAST>(tid, i);
        a_ok[i] = m < M;
        b_ok[i] = n < N;
        a_ctx[i] = A.ctx(a_ok[i] ? m : 0);
        b_ctx[i] = B.ctx(b_ok[i] ? n : 0);
    }

    // Software pipeline: the next slice's global reads are issued before the
    // tensor cores work on this one, so their latency overlaps the products.
    Word a_regs[SLOTS], b_regs[SLOTS];
    fetch_slice<Math>(A, a_ctx, a_ok, a_regs, k_begin, k_end, tid);
    fetch_slice<Math>(B, b_ctx, b_ok, b_regs, k_begin, k_end, tid);
    mma::Acc acc;
    acc.zero();
    for (int k0 = k_begin; k0 < k_end; k0 += K_SLICE) {
        store_slice<Math, OpA>(a_regs, As, tid);
        store_slice<Math, OpB>(b_regs, Bs, tid);
        __syncthreads();
        if (k0 + K_SLICE < k_end) {
            fetch_slice<Math>(A, a_ctx, a_ok, a_regs, k0 + K_SLICE, k_end, tid);
            fetch_slice<Math>(B, b_ctx, b_ok, b_regs, k0 + K_SLICE, k_end, tid);
        }
        Math::template slice<LDS>(As, Bs, acc);  // acc += As[k][rows]ᵀ·Bs[k][cols]
        __syncthreads();  // the next slice overwrites As, Bs
    }

#pragma unroll
    for (int ni = 0; ni < 2; ++ni)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int n = n0 + mma::acc_col(ni, q);
            if (n >= N) continue;
            const int col = out.col(n);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int m = m0 + mma::acc_row(mi, q);
                if (m < M) out.store(m, col, acc.get(mi, ni, q));
            }
        }
}

// ---- The three convolution GEMMs, at either compute precision (Math). ----

// y [N, OC, OH, OW] = conv(x, W) + b + sb + r. Grid (⌈N·OH·OW/64⌉, ⌈OC/64⌉, 1),
// 256 threads. bias, sample_bias and residual may each be null.
template <class Math>
__device__ __forceinline__ void forward(float* y, const float* x, const float* w, const float* bias,
                                        const float* sample_bias, const float* residual, const Shape& s) {
    const int M = s.oc, N = s.n * s.oh * s.ow, K = s.c * s.kh * s.kw;
    const ForwardOut out{y, bias, sample_bias, residual, s};
    if (ImageColsTab::fits(s)) {
        __shared__ int tab[TAB_MAX];
        for (int k = threadIdx.x; k < K; k += blockDim.x) {
            const int kk = s.kh * s.kw, ch = k / kk, r = k - ch * kk, kh = r / s.kw, kw = r - kh * s.kw;
            tab[k] = ((ch * s.h + kh) * s.w + kw) << 8 | kh << 4 | kw;
        }
        __syncthreads();
        gemm_tile<Math>(WeightRows{w, K}, ImageColsTab{x, tab, s}, out, M, N, K, K);
    } else {
        gemm_tile<Math>(WeightRows{w, K}, ImageCols{x, s}, out, M, N, K, K);
    }
}

// dx [N, C, H, W] from dy [N, OC, OH, OW] and W. Grid (⌈N·H·W/64⌉, ⌈C/64⌉, 1), 256 threads.
template <class Math>
__device__ __forceinline__ void backward_input(float* dx, const float* dy, const float* w, const Shape& s) {
    const int M = s.c, N = s.n * s.h * s.w, K = s.oc * s.kh * s.kw;
    gemm_tile<Math>(WeightCols{w, s}, GradCols{dy, s}, InputGradOut{dx, s}, M, N, K, K);
}

// Partial weight gradients dw_part [splits, OC, C·KH·KW]: split z = blockIdx.z sums
// k = (img, oh, ow) over [z·k_chunk, (z + 1)·k_chunk). Grid (⌈C·KH·KW/64⌉, ⌈OC/64⌉, splits).
template <class Math>
__device__ __forceinline__ void backward_weight(float* dw_part, const float* dy, const float* x, const Shape& s, int k_chunk) {
    const int M = s.oc, N = s.c * s.kh * s.kw, K = s.n * s.oh * s.ow;
    float* slab = dw_part + (size_t)blockIdx.z * M * N;
    gemm_tile<Math>(GradRows{dy, s}, ImageRows{x, s}, WeightGradOut{slab, N}, M, N, K, k_chunk);
}

}  // namespace conv

// The launchable kernels: _f32 at f32 accuracy (3xTF32), _bf16 with bf16
// operands and f32 sums (the bf16 compute precision). Same arguments.
extern "C" __global__ void __launch_bounds__(256)
    conv2d_forward_f32(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                       const float* residual, conv::Shape s) {
    conv::forward<mma::Tf32x3>(y, x, w, bias, sample_bias, residual, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_forward_bf16(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                        const float* residual, conv::Shape s) {
    conv::forward<mma::Bf16>(y, x, w, bias, sample_bias, residual, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_backward_input_f32(float* dx, const float* dy, const float* w, conv::Shape s) {
    conv::backward_input<mma::Tf32x3>(dx, dy, w, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_backward_input_bf16(float* dx, const float* dy, const float* w, conv::Shape s) {
    conv::backward_input<mma::Bf16>(dx, dy, w, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_backward_weight_f32(float* dw_part, const float* dy, const float* x, conv::Shape s, int k_chunk) {
    conv::backward_weight<mma::Tf32x3>(dw_part, dy, x, s, k_chunk);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_backward_weight_bf16(float* dw_part, const float* dy, const float* x, conv::Shape s, int k_chunk) {
    conv::backward_weight<mma::Bf16>(dw_part, dy, x, s, k_chunk);
}

// The input gradient of a stride-2, 3×3, pad-1 conv over an even H × W map
// is a same conv (stride 1, pad 1, the weight flipped: conv2d_same.cu) of dY
// with zeros between its pixels:
//   dX[m] = Σ_k dY[(m + 1 − k)/2]·W[k] over the k with m + 1 − k even
//         = Σ_k up[m + 1 − k]·W[k],  up[2i] = dY[i], up[odd] = 0,
// at four times the products of the strided gather, on the same-conv kernels.
// up [N·C, 2·OH, 2·OW] from dy [N·C, OH, OW]: thread i writes up's 2×2 block
// (dY value, 0; 0, 0) of dy's pixel i (grid-stride).
// (The host keeps up under 2³¹ elements; pairs are 8-byte aligned: 2·OW even.)
extern "C" __global__ void conv2d_zero_upsample2x_f32(float* up, const float* dy, int planes, int oh, int ow) {
    const int p = oh * ow, len = planes * p;
    for (int i = global_index(); i < len; i += grid_stride()) {
        const int plane = i / p, y = (i - plane * p) / ow, x = i - plane * p - y * ow;
        float* at = up + 4 * plane * p + 2 * y * (2 * ow) + 2 * x;
        *reinterpret_cast<float2*>(at) = make_float2(dy[i], 0.0f);
        *reinterpret_cast<float2*>(at + 2 * ow) = make_float2(0.0f, 0.0f);
    }
}

// out[i] = Σ_{z < splits} part[z·len + i], in split order (deterministic).
extern "C" __global__ void conv2d_sum_splits_f32(float* out, const float* part, int splits, int len) {
    for (int i = global_index(); i < len; i += grid_stride()) {
        float acc = 0.0f;
        for (int z = 0; z < splits; ++z) acc += part[(size_t)z * len + i];
        out[i] = acc;
    }
}
