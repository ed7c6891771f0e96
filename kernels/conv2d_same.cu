// Stride-1 "same" convolutions (K×K kernel, K = 1 or 3, padding (K − 1)/2) at
// the bf16 compute precision: the UNet's 3×3 and 1×1 convolutions, forward,
// and their input gradients (the input gradient of a stride-1 same conv is
// the same conv of dY with the weight transposed over channels and flipped:
//   dX[n, c, y, x] = Σ_{oc, kh, kw} W[oc, c, K−1−kh, K−1−kw] · dY[n, oc, y − p + kh, x − p + kw]).
//
// The generic implicit GEMM (conv2d.cu) gathers each im2col element from
// global memory: K² loads per input value, each with its own index math.
// Here a block stages an input *patch* once per 16-channel chunk — the rows
// its output pixels need plus the halo, converted to bf16 — and reads the K²
// shifted windows of it from shared memory.
//
// GEMM view: C[m, n] = Σ_{chunk, tap, c} A[m, (c, tap)] · B[(c, tap), n]
//   m = output channel, n = (image, oh, ow) over N·OH·OW, 16 channels a chunk.
// Block tile: BM (32 or 64) channels × 128 pixels, 8 warps as WARPS_M × WARPS_N,
// each warp 32 channels × WN pixels (2 × WN/8 m16n8k16 tiles).
//
// Pixel tiles. 128 consecutive pixels n0.. are whole output rows: either one
// image's rows oh0..oh0+S−1 (P = OH·OW a multiple of 128, OW divides 128,
// S = 128/OW) or 128/P whole images (P divides 128, S = OH). Each of these
// `segments` needs input rows oh0 − p … oh0 + S − 1 + p, columns −p … OW − 1 + p:
// the patch holds (S + 2p) × (OW + 2p) pixels per segment (zeros outside the
// image or past the batch), PATCH_STRIDE words per pixel: the chunk's 8 channel
// pairs as bf16x2 (pair j = channels 16·chunk + 2j, +1) and 4 words of padding,
// so a warp's B fragment reads (8 pixels × 4 pairs) hit 32 distinct banks.
//
// Weights. A host-launched pack (conv2d_pack_same_bf16) writes A in the
// order the mma fragments want it: for chunk q, 16-row block mb, tap, lane
// l = 4g + t, the four words
//   {A[16mb + g][kp t], A[16mb + g + 8][kp t], A[16mb + g][kp t + 4], A[16mb + g + 8][kp t + 4]}
// (kp = pair within the chunk), so staging is a straight copy and a fragment
// is one 16-byte shared load. Rows are padded to a multiple of 64 and chunks
// to whole 16-channel chunks with zeros, so the kernel reads A without bounds.
#include "common.cuh"
#include "conv2d.cuh"
#include "mma.cuh"

namespace same {

constexpr int BN = 128;              // pixels per block tile
constexpr int THREADS = 256;         // 8 warps
constexpr int PAIRS = 8;             // channel pairs per chunk (16 channels: one k16 step per tap)
constexpr int PATCH_STRIDE = 12;     // words per patch pixel: 8 pairs + 4 padding (conflict-free fragments)
constexpr int PATCH_MAX = 288;       // patch pixels a block can stage (host checks the geometry): 4×4 maps need 288
constexpr int M_ALIGN = 64;          // packed weight rows are padded to this

// Where a block's patch comes from: the geometry of the 128-pixel tile.
struct Tile {
    int rows;     // S: output rows per segment
    int seg_pix;  // S·OW output pixels per segment
    int pw;       // OW + 2p: patch pixels per patch row
    int seg_rows; // S + 2p: patch rows per segment
    int pixels;   // patch pixels in all: segments · seg_rows · pw
};

__device__ __forceinline__ Tile tile_of(const conv::Shape& s) {
    const int P = s.oh * s.ow;
    Tile t;
    t.rows = P >= BN ? BN / s.ow : s.oh;
    t.seg_pix = t.rows * s.ow;
    t.pw = s.ow + 2 * s.pad;
    t.seg_rows = t.rows + 2 * s.pad;
    t.pixels = (BN / t.seg_pix) * t.seg_rows * t.pw;
    return t;
}

// acc[mi][ni][q] += the chunk's products, tap by tap. Warp tile: rows m_w..m_w+31,
// pixels n_w..n_w+WN−1; pix0[ni] is the patch pixel of output pixel n_w + 8ni + g
// (this lane's B column) for tap (0, 0).
template <int BM, int KS, int NI>
__device__ __forceinline__ void chunk_products(const uint4* As, const unsigned int* patch, const int* pix0, int pw,
                                               float (&acc)[2][NI][4]) {
    constexpr int KK = KS * KS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t = lane % 4;
    const int mb0 = 2 * (warp % (BM / 32));  // this warp's first 16-row block
#pragma unroll
    for (int tap = 0; tap < KK; ++tap) {
        const int shift = (tap / KS) * pw + tap % KS;
        unsigned int a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            const uint4 v = As[((mb0 + mi) * KK + tap) * 32 + lane];
            a[mi][0] = v.x, a[mi][1] = v.y, a[mi][2] = v.z, a[mi][3] = v.w;
        }
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            const unsigned int* px = patch + (pix0[ni] + shift) * PATCH_STRIDE;
            const unsigned int b[2] = {px[t], px[t + 4]};
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) mma::mma_bf16(acc[mi][ni], a[mi], b);
        }
    }
}

// y = same-conv(x, A) + epilogue, A packed by conv2d_pack_same_bf16 for this
// shape (M = s.oc rows, s.c channels). Grid (⌈N·OH·OW/128⌉, ⌈OC/BM⌉), 256 threads.
template <int BM, int KS>
__device__ __forceinline__ void forward(const conv::ForwardOut& out, const float* x, const uint4* wp, const conv::Shape& s) {
    constexpr int KK = KS * KS;
    constexpr int WARPS_M = BM / 32, WARPS_N = 8 / WARPS_M;
    constexpr int WN = BN / WARPS_N, NI = WN / 8;
    constexpr int A_VECS = BM / 16 * KK * 32;                       // uint4 of A per chunk
    constexpr int A_LOADS = (A_VECS + THREADS - 1) / THREADS;
    constexpr int P_LOADS = (PATCH_MAX * PAIRS + THREADS - 1) / THREADS;  // patch words per thread, at most
    __shared__ uint4 As[A_VECS];
    __shared__ unsigned int patch[PATCH_MAX * PATCH_STRIDE];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int P = s.oh * s.ow, HW = s.h * s.w;
    const int total = s.n * P;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    const Tile tile = tile_of(s);
    const int img0 = n0 / P, oh0 = (n0 - img0 * P) / s.ow;
    const int chunks = (s.c + 2 * PAIRS - 1) / (2 * PAIRS);
    const int m_blocks = (s.oc + M_ALIGN - 1) / M_ALIGN * (M_ALIGN / 16);  // 16-row blocks per chunk in wp

    // This thread's patch words: word e = tid + 256·i is pair j = e / pixels of
    // patch pixel p = e % pixels. Its source offset (without the chunk's
    // channel) and its shared address are the same for every chunk.
    int src[P_LOADS], dst[P_LOADS];
#pragma unroll
    for (int i = 0; i < P_LOADS; ++i) {
        const int e = tid + THREADS * i;
        const int j = e / tile.pixels, p = e - j * tile.pixels;
        const int seg = p / (tile.seg_rows * tile.pw), q = p - seg * tile.seg_rows * tile.pw;
        const int pr = q / tile.pw, pc = q - pr * tile.pw;
        const int img = img0 + seg, iy = oh0 - s.pad + pr, ix = pc - s.pad;
        const bool inside = j < PAIRS && img < s.n && iy >= 0 && iy < s.h && ix >= 0 && ix < s.w;
        src[i] = inside ? img * s.c * HW + 2 * j * HW + iy * s.w + ix : -1;
        dst[i] = j < PAIRS ? p * PATCH_STRIDE + j : -1;  // j = dst % PATCH_STRIDE
    }
    // The patch pixel of this lane's B columns for tap (0, 0).
    const int n_w = (warp / WARPS_M) * WN;
    int pix0[NI];
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
        const int n = n_w + 8 * ni + g;
        const int seg = n / tile.seg_pix, r = (n - seg * tile.seg_pix) / s.ow, col = n % s.ow;
        pix0[ni] = (seg * tile.seg_rows + r) * tile.pw + col;
    }

    // chunk q's operands into registers: A straight from wp, the patch as bf16 pairs
    uint4 a_regs[A_LOADS];
    unsigned int p_regs[P_LOADS];
    const uint4 zero4 = {0u, 0u, 0u, 0u};
    auto fetch = [&](int q) {
        const uint4* a_src = wp + ((size_t)q * m_blocks + m0 / 16) * KK * 32;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int v = tid + THREADS * i;
            a_regs[i] = v < A_VECS ? a_src[v] : zero4;
        }
        const int c0 = 2 * PAIRS * q;
#pragma unroll
        for (int i = 0; i < P_LOADS; ++i) {
            const int c = c0 + 2 * (dst[i] % PATCH_STRIDE);
            float lo = 0.0f, hi = 0.0f;
            if (src[i] >= 0 && c < s.c) {
                lo = x[src[i] + c0 * HW];
                if (c + 1 < s.c) hi = x[src[i] + c0 * HW + HW];
            }
            p_regs[i] = mma::bf16_pair(lo, hi);
        }
    };
    auto stage = [&]() {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i)
            if (tid + THREADS * i < A_VECS) As[tid + THREADS * i] = a_regs[i];
#pragma unroll
        for (int i = 0; i < P_LOADS; ++i)
            if (dst[i] >= 0) patch[dst[i]] = p_regs[i];
    };

    float acc[2][NI][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.0f;

    // Software pipeline: the next chunk's global reads are issued before the
    // tensor cores work on this one.
    fetch(0);
    for (int q = 0; q < chunks; ++q) {
        stage();
        __syncthreads();
        if (q + 1 < chunks) fetch(q + 1);
        chunk_products<BM, KS, NI>(As, patch, pix0, tile.pw, acc);
        __syncthreads();  // the next chunk overwrites As and the patch
    }

    // acc[mi][ni][r]: channel m0 + m_w + 16mi + g + 8(r/2), pixel n0 + n_w + 8ni + 2t + r%2
    const int m_w = 32 * (warp % WARPS_M);
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int n = n0 + n_w + 8 * ni + 2 * t + r % 2;
            if (n >= total) continue;
            const int col = out.col(n);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int m = m0 + m_w + 16 * mi + g + 8 * (r / 2);
                if (m < s.oc) out.store(m, col, acc[mi][ni][r]);
            }
        }
}

// ---- Weight gradient ----
//
//   dW[oc, c, tap] = Σ_{img, y, x} dY[img, oc, y, x] · x[img, c, y − p + kh, x − p + kw]
//
// GEMM view: M = OC, N = (c, tap) over C·K², K = the N·OH·OW pixels, split
// over gridDim.z (each split sums whole 128-pixel tiles into its own slab,
// conv2d_sum_splits_f32 adds the slabs). The mma's k runs along pixels, so
// its bf16 pairs are two neighbouring pixels of one row (OW even):
//   A[oc][pair] = dY at pixels 2j, 2j + 1 of the tile    (contiguous in dY)
//   B[pair][(c, tap)] = the patch at those pixels shifted by the tap: two
//       neighbouring patch pixels, at an even or odd position (the tap's kw).
// The patch is staged twice as bf16 pairs, from even and from odd positions,
// so either is one aligned 32-bit shared load:
//   pairs[0][c][q] = (P[c][2q], P[c][2q + 1]),  pairs[1][c][q] = (P[c][2q + 1], P[c][2q + 2]).
// Block tile: BM output channels × CT input channels (BM 64: CT 16; BM 32:
// CT 32), all taps; warp w owns rows 16·(w % WARPS_M).. and K² n8 tiles.
constexpr int WG_A_LD = BN / 2 + 4;  // words per dY row in shared (64 pairs + 4: conflict-free A fragments)
constexpr int OUTSIDE = -2147483647 - 1;  // a patch column left or right of the image

// The pair row length of the staged patch: ≥ pixels/2 + 1, and ≡ 4 (mod 8)
// so that 8 channels' rows start in distinct banks.
__host__ __device__ constexpr int pair_row(int pixels) { return (pixels / 2 + 1 + 3) / 8 * 8 + 4; }
// The largest patch (pixels) the weight gradient stages: BM 32 blocks stage
// twice the channels, so they take smaller patches (48 KB of shared memory).
__host__ __device__ constexpr int wg_patch_max(int bm) { return bm == 64 ? PATCH_MAX : 256; }

template <int BM, int KS>
__device__ __forceinline__ void weight_grad(float* dw_part, const float* dy, const float* x, const conv::Shape& s,
                                            int tiles_per_split) {
    constexpr int KK = KS * KS;
    constexpr int CT = BM == 64 ? 16 : 32;          // input channels per block
    constexpr int WARPS_M = BM / 16, WARPS_N = 8 / WARPS_M;
    constexpr int NT = CT * KK / 8 / WARPS_N;       // n8 tiles per warp (= K²)
    constexpr int PX_MAX = wg_patch_max(BM);
    constexpr int CS = pair_row(PX_MAX);            // patch pair row, for the largest patch
    __shared__ unsigned int a_tile[BM * WG_A_LD];   // dY pairs [oc][pair]
    __shared__ unsigned int pairs[2 * CT * CS];     // [parity][c][q]
    __shared__ int patch_src[PX_MAX];               // patch pixel → offset from (img0, oh0) (negative in the top
                                                    // halo), OUTSIDE past the left or right edge
    __shared__ int patch_row[PX_MAX];               // patch pixel → (segment, input row relative to oh0)
    __shared__ int pair_src[BN / 2];                // tile pixel pair → dY offset of pixel 2j from (img0, oh0)
    __shared__ int pair_patch[BN / 2];              // tile pixel pair → its patch pixel for tap (0, 0), halved

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int P = s.oh * s.ow, HW = s.h * s.w;
    const int m0 = blockIdx.y * BM, c0 = blockIdx.x * CT;
    const Tile tile = tile_of(s);
    const int tiles = (s.n * P + BN - 1) / BN;
    const int tile_begin = blockIdx.z * tiles_per_split;
    const int tile_end = min(tiles, tile_begin + tiles_per_split);

    // The tile geometry, the same for every tile.
    for (int i = tid; i < tile.pixels; i += THREADS) {
        const int seg = i / (tile.seg_rows * tile.pw), q = i - seg * tile.seg_rows * tile.pw;
        const int pr = q / tile.pw, pc = q - pr * tile.pw;
        const int ix = pc - s.pad;
        patch_src[i] = ix >= 0 && ix < s.w ? seg * s.c * HW + (pr - s.pad) * s.w + ix : OUTSIDE;
        patch_row[i] = seg << 16 | pr;
    }
    for (int j = tid; j < BN / 2; j += THREADS) {
        const int n = 2 * j, seg = n / tile.seg_pix, local = n - seg * tile.seg_pix;
        const int r = local / s.ow, col = local - r * s.ow;
        pair_src[j] = seg * s.oc * P + local;
        pair_patch[j] = ((seg * tile.seg_rows + r) * tile.pw + col) / 2;  // even: OW and col are even
    }

    // This lane's B columns: n8 tile nt = warp_n·NT + ni, column 8·nt + g = (c, tap).
    const int warp_n = warp / WARPS_M, m_w = 16 * (warp % WARPS_M);
    int col_off[NT];
#pragma unroll
    for (int ni = 0; ni < NT; ++ni) {
        const int col = 8 * (warp_n * NT + ni) + g, c = col / KK, tap = col % KK;
        const int shift = (tap / KS) * tile.pw + tap % KS;
        col_off[ni] = ((shift & 1) * CT + c) * CS + (shift >> 1);
    }
    float acc[NT][4];
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[ni][r] = 0.0f;
    __syncthreads();

    for (int tl = tile_begin; tl < tile_end; ++tl) {
        const int n0 = tl * BN, img0 = n0 / P, oh0 = (n0 - img0 * P) / s.ow;
        // dY pairs: a_tile[oc][j] = (dY at tile pixels 2j, 2j + 1), 0 past the batch or OC
        for (int e = tid; e < BM * (BN / 2); e += THREADS) {
            const int oc = e / (BN / 2), j = e - oc * (BN / 2);
            const int img = img0 + pair_src[j] / (s.oc * P);
            float lo = 0.0f, hi = 0.0f;
            if (m0 + oc < s.oc && img < s.n) {
                const float* at = dy + (size_t)img0 * s.oc * P + oh0 * s.ow + pair_src[j] + (m0 + oc) * P;
                lo = at[0];
                hi = at[1];
            }
            a_tile[oc * WG_A_LD + j] = mma::bf16_pair(lo, hi);
        }
        // the patch of channels c0.., as pairs from even and odd positions
        const int half = tile.pixels / 2 + 1;
        for (int e = tid; e < CT * half; e += THREADS) {
            const int c = e / half, q = e - c * half;
            float v[3];
#pragma unroll
            for (int k = 0; k < 3; ++k) {
                const int i = 2 * q + k;
                v[k] = 0.0f;
                if (i < tile.pixels && c0 + c < s.c && patch_src[i] != OUTSIDE) {
                    const int seg = patch_row[i] >> 16, iy = oh0 - s.pad + (patch_row[i] & 0xffff);
                    if (img0 + seg < s.n && iy >= 0 && iy < s.h)
                        v[k] = x[(size_t)img0 * s.c * HW + (size_t)(c0 + c) * HW + oh0 * s.w + patch_src[i]];
                }
            }
            pairs[c * CS + q] = mma::bf16_pair(v[0], v[1]);
            pairs[(CT + c) * CS + q] = mma::bf16_pair(v[1], v[2]);
        }
        __syncthreads();
#pragma unroll 2
        for (int ks = 0; ks < BN / 16; ++ks) {
            const int j0 = 8 * ks + t;  // pairs 2t.. of this k16 step: pixel pairs j0 and j0 + 4
            const unsigned int* ar = a_tile + (m_w + g) * WG_A_LD;
            const unsigned int a[4] = {ar[j0], ar[8 * WG_A_LD + j0], ar[j0 + 4], ar[8 * WG_A_LD + j0 + 4]};
            const int q0 = pair_patch[j0], q1 = pair_patch[j0 + 4];
#pragma unroll
            for (int ni = 0; ni < NT; ++ni) {
                const unsigned int b[2] = {pairs[col_off[ni] + q0], pairs[col_off[ni] + q1]};
                mma::mma_bf16(acc[ni], a, b);
            }
        }
        __syncthreads();  // the next tile overwrites the staged operands
    }

    // acc[ni][r]: row m0 + m_w + g + 8(r/2), column 8·nt + 2t + r%2 = (c, tap)
    float* slab = dw_part + (size_t)blockIdx.z * s.oc * s.c * KK;
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int m = m0 + m_w + g + 8 * (r / 2);
            const int col = 8 * (warp_n * NT + ni) + 2 * t + r % 2, c = c0 + col / KK, tap = col % KK;
            if (m < s.oc && c < s.c) slab[((size_t)m * s.c + c) * KK + tap] = acc[ni][r];
        }
}

}  // namespace same

// Packs W [OC, C, K, K] for the kernels below, as documented at the top. The
// GEMM's rows m < M and channels c < CG are, for the forward (flip = 0):
//   A[m, c, tap] = W[m, c, tap]                 (M = OC, CG = C)
// and for the input gradient (flip = 1):
//   A[m, c, tap] = W[c, m, K² − 1 − tap]        (M = C, CG = OC)
// wp holds ⌈CG/16⌉ chunks × ⌈M/64⌉·4 row blocks × K² taps × 32 lanes × 4 words.
extern "C" __global__ void conv2d_pack_same_bf16(unsigned int* wp, const float* w, int M, int CG, int ks, int flip) {
    const int kk = ks * ks;
    const int m_blocks = (M + same::M_ALIGN - 1) / same::M_ALIGN * (same::M_ALIGN / 16);
    const int chunks = (CG + 2 * same::PAIRS - 1) / (2 * same::PAIRS);
    const int len = chunks * m_blocks * kk * 128;
    for (int idx = global_index(); idx < len; idx += grid_stride()) {
        const int r = idx % 4, lane = idx / 4 % 32;
        const int rest = idx / 128;  // (chunk·m_blocks + mb)·kk + tap
        const int tap = rest % kk, mb = rest / kk % m_blocks, chunk = rest / kk / m_blocks;
        const int m = 16 * mb + lane / 4 + 8 * (r & 1);
        const int c = 2 * (same::PAIRS * chunk + lane % 4 + 4 * (r >> 1));
        float v[2] = {0.0f, 0.0f};
        for (int e = 0; e < 2; ++e) {
            if (m >= M || c + e >= CG) continue;
            v[e] = flip ? w[((c + e) * M + m) * kk + (kk - 1 - tap)] : w[(m * CG + c + e) * kk + tap];
        }
        wp[idx] = mma::bf16_pair(v[0], v[1]);
    }
}

// y [N, OC, OH, OW] = same-conv(x [N, C, H, W]) + bias + sample_bias + residual
// (each may be null) with the weights packed by conv2d_pack_same_bf16 (flip 0).
// For the input gradient: y = dX, x = dY, the shape with C ↔ OC, H ↔ OH,
// W ↔ OW swapped, weights packed with flip 1, no epilogue.
// Grid (⌈N·OH·OW/128⌉, ⌈OC/BM⌉), 256 threads.
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m32_k1(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<32, 1>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m32_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<32, 3>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m64_k1(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<64, 1>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m64_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<64, 3>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}

// Partial weight gradients dw_part [splits, OC, C, K, K] of a same conv (OW
// even): split z = blockIdx.z sums 128-pixel tiles [z·tiles_per_split, …).
// Grid (⌈C/CT⌉, ⌈OC/BM⌉, splits), 256 threads; CT = 16 for BM 64, 32 for BM 32.
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_weight_grad_bf16_m32_k1(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          int tiles_per_split) {
    same::weight_grad<32, 1>(dw_part, dy, x, s, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_weight_grad_bf16_m32_k3(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          int tiles_per_split) {
    same::weight_grad<32, 3>(dw_part, dy, x, s, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_weight_grad_bf16_m64_k1(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          int tiles_per_split) {
    same::weight_grad<64, 1>(dw_part, dy, x, s, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_weight_grad_bf16_m64_k3(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          int tiles_per_split) {
    same::weight_grad<64, 3>(dw_part, dy, x, s, tiles_per_split);
}
