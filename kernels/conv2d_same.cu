// Stride-1 "same" convolutions (K×K kernel, K = 1 or 3, padding (K − 1)/2):
// the UNet's 3×3 and 1×1 convolutions — forward, input gradient and weight
// gradient — at f32 accuracy (3xTF32, as conv2d.cu) and at the bf16 compute
// precision. The input gradient of a stride-1 same conv is the same conv of
// dY with the weight transposed over channels and flipped:
//   dX[n, c, y, x] = Σ_{oc, kh, kw} W[oc, c, K−1−kh, K−1−kw] · dY[n, oc, y − p + kh, x − p + kw].
//
// The generic implicit GEMM (conv2d.cu) gathers each im2col element from
// global memory: K² loads per input value, each with its own index math.
// Here a block stages an input *patch* once per channel chunk — the rows its
// output pixels need plus the halo — and reads the K² shifted windows of it
// from shared memory.
//
// GEMM view: C[m, n] = Σ_{chunk, tap, c} A[m, (c, tap)] · B[(c, tap), n]
//   m = output channel, n = (image, oh, ow) over N·OH·OW. A chunk is 8 words
//   a pixel: 8 channels as f32 (one m16n8k8 step per tap, three TF32 mma for
//   f32 accuracy) or 16 as bf16 pairs (one m16n8k16 step per tap).
// Block tile: BM (32 or 64) channels × 128 pixels, 8 warps as WARPS_M × WARPS_N,
// each warp 32 channels × WN pixels (2 × WN/8 mma tiles of 16 × 8).
//
// Pixel tiles. 128 consecutive pixels n0.. are whole output rows: either one
// image's rows oh0..oh0+S−1 (P = OH·OW a multiple of 128, OW divides 128,
// S = 128/OW) or 128/P whole images (P divides 128, S = OH). Each of these
// `segments` needs input rows oh0 − p … oh0 + S − 1 + p, columns −p … OW − 1 + p:
// the patch holds (S + 2p) × (OW + 2p) pixels per segment (zeros outside the
// image or past the batch), PATCH_STRIDE words per pixel: the chunk's 8 words
// (word j = channel 8·chunk + j, or the bf16 pair of channels 16·chunk + 2j, +1)
// and 4 words of padding, so a warp's B fragment reads (8 pixels × 4 words)
// hit 32 distinct banks.
//
// Weights. A host-launched pack (conv2d_pack_same_f32 / _bf16) writes A in
// the order the mma fragments want it: for chunk q, 16-row block mb, tap,
// lane l = 4g + t, the four words
//   {A[16mb + g][w t], A[16mb + g + 8][w t], A[16mb + g][w t + 4], A[16mb + g + 8][w t + 4]}
// (w = word within the chunk), so staging is a straight copy and a fragment
// is one 16-byte shared load. Rows are padded to a multiple of 64 and chunks
// to whole chunks with zeros, so the kernel reads A without bounds.
#include "common.cuh"
#include "conv2d.cuh"
#include "mma.cuh"

namespace same {

constexpr int BN = 128;              // pixels per block tile
constexpr int THREADS = 256;         // 8 warps
constexpr int CHUNK_WORDS = 8;       // words per patch pixel and chunk: 8 channels (f32) or 8 pairs (bf16)
constexpr int PATCH_STRIDE = 12;     // words per patch pixel: 8 + 4 padding (conflict-free fragments)
constexpr int PATCH_MAX = 288;       // patch pixels a block can stage (host checks the geometry): 4×4 maps need 288
constexpr int DOWN_PATCH_MAX = 648;  // … for a stride-2 conv (DOWN): 8 images' 9 × 9 input pixels for 4×4 outputs
constexpr int WIDE_BN = 256;         // pixels per block tile of the wide forwards (forward's TN)
constexpr int WIDE_PATCH_MAX = 352;  // … and their patch pixels: 10 rows of 34 at 32×32, 18 of 18 at 16×16
constexpr int M_ALIGN = 64;          // packed weight rows are padded to this
// A staging slot's dst: its patch word (< DOWN_PATCH_MAX·PATCH_STRIDE = 7776)
// in bits 0–12, its segment (the image after the tile's first, < 128) in
// 13–19, its word j within the pixel (0–7: channels PER_WORD·j, …) in 20–22.
constexpr int DST_BITS = 13, DST_MASK = (1 << DST_BITS) - 1, SEG_SHIFT = 13, J_SHIFT = 20;
static_assert(PATCH_MAX <= DOWN_PATCH_MAX && WIDE_PATCH_MAX <= DOWN_PATCH_MAX && DOWN_PATCH_MAX * PATCH_STRIDE <= DST_MASK + 1,
              "patch words fit DST_BITS");
__device__ __forceinline__ int slot_dst(int dst, int seg, int j) { return dst | seg << SEG_SHIFT | j << J_SHIFT; }
__device__ __forceinline__ int slot_seg(int dst) { return dst >> SEG_SHIFT & 127; }
__device__ __forceinline__ int slot_j(int dst) { return dst >> J_SHIFT & 7; }

// One digit of a mixed-radix sum (the staging positions are stepped this way
// instead of divided out): digit += step + carry_in, kept below radix (step <
// radix), and the carry out.
__device__ __forceinline__ int add_digit(int& digit, int step, int carry_in, int radix) {
    digit += step + carry_in;
    const int carry = digit >= radix;
    digit -= carry * radix;
    return carry;
}

using conv::normed_value;

// Where a block's patch comes from: the geometry of the 128-pixel tile.
struct Tile {
    int rows;     // S: output rows per segment
    int seg_pix;  // S·OW output pixels per segment
    int pw;       // OW + 2p: patch pixels per patch row
    int seg_rows; // S + 2p: patch rows per segment
    int pixels;   // patch pixels in all: segments · seg_rows · pw
};

// DOWN: a stride-2 3×3 conv with padding 1 (OH = H/2, OW = W/2): its S
// output rows read input rows 2·oh0 − 1 … 2·(oh0 + S − 1) + 1 and columns
// −1 … 2·OW − 1, so 2S + 1 patch rows of 2·OW + 1 pixels a segment.
// TN: the tile's pixels (BN, or WIDE_BN for the wide forwards).
template <bool DOWN = false, int TN = BN>
__device__ __forceinline__ Tile tile_of(const conv::Shape& s) {
    const int P = s.oh * s.ow;
    Tile t;
    t.rows = P >= TN ? TN / s.ow : s.oh;
    t.seg_pix = t.rows * s.ow;
    t.pw = DOWN ? 2 * s.ow + 1 : s.ow + 2 * s.pad;
    t.seg_rows = DOWN ? 2 * t.rows + 1 : t.rows + 2 * s.pad;
    t.pixels = (TN / t.seg_pix) * t.seg_rows * t.pw;
    return t;
}

using conv::quad_words;

// A staged word as its bits (f32 words stay f32 bits).
__device__ __forceinline__ unsigned int word_bits(unsigned int w) { return w; }
__device__ __forceinline__ unsigned int word_bits(float w) { return __float_as_uint(w); }

// One mma step of a chunk's tap (8 words of k) at each precision: the A
// fragment as staged (4 words), prepared once per tap; acc += A·B.
template <class Math> struct Step;
template <> struct Step<mma::Bf16> {
    struct A { unsigned int w[4]; };
    struct Acc {
        float d[4];
        __device__ void zero() { d[0] = d[1] = d[2] = d[3] = 0.0f; }
        __device__ float get(int r) const { return d[r]; }
    };
    __device__ static A prep(const uint4 v) { return A{{v.x, v.y, v.z, v.w}}; }
    __device__ static void mma(Acc& acc, const A& a, unsigned int b0, unsigned int b1) {
        const unsigned int b[2] = {b0, b1};
        mma::mma_bf16(acc.d, a.w, b);
    }
};
template <> struct Step<mma::Tf32x3> {
    struct A { unsigned int hi[4], lo[4]; };
    struct Acc {
        float big[4], small[4];
        __device__ void zero() {
#pragma unroll
            for (int r = 0; r < 4; ++r) big[r] = small[r] = 0.0f;
        }
        __device__ float get(int r) const { return big[r] + small[r]; }
    };
    __device__ static A prep(const uint4 v) {
        A a;
        const unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) mma::split(__uint_as_float(w[i]), a.hi[i], a.lo[i]);
        return a;
    }
    __device__ static void mma(Acc& acc, const A& a, unsigned int b0, unsigned int b1) {
        unsigned int hi[2], lo[2];
        mma::split(__uint_as_float(b0), hi[0], lo[0]);
        mma::split(__uint_as_float(b1), hi[1], lo[1]);
        mma::mma_3xtf32(acc.big, acc.small, a.hi, a.lo, hi, lo);
    }
};

// acc[mi][ni] += the chunk's products, tap by tap. Warp tile: rows m_w..m_w+31,
// pixels n_w..n_w+WN−1. The B fragments of n8 tiles 2np and 2np + 1 come in
// one ldmatrix_x4 whose rows are their 8 + 8 pixels (row = the pixel's words
// 0–3 or 4–7: b0 or b1): this lane gives the row of output pixel
// n_w + 16np + 8(lane / 16) + lane % 8, whose patch pixel for tap (0, 0) is
// pixq[np], at word 4·(lane / 8 % 2). (PATCH_STRIDE 12 puts a matrix's 8 rows
// in distinct banks, 16-byte aligned.)
template <class Math, int BM, int KS, int NI>
__device__ __forceinline__ void chunk_products(const uint4* As, const unsigned int* patch, const int* pixq, int pw,
                                               typename Step<Math>::Acc (&acc)[2][NI]) {
    constexpr int KK = KS * KS;
    static_assert(NI % 2 == 0, "n8 tiles in pairs");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int word = 4 * (lane / 8 % 2);
    const int mb0 = 2 * (warp % (BM / 32));  // this warp's first 16-row block
    // fully unrolled at bf16; at f32 (twice the accumulators) by rows of taps, to stay in registers
    constexpr int UNROLL = Math::PER_WORD == 2 ? KK : KS;
#pragma unroll UNROLL
    for (int tap = 0; tap < KK; ++tap) {
        const int shift = (tap / KS) * pw + tap % KS;
        typename Step<Math>::A a[2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) a[mi] = Step<Math>::prep(As[((mb0 + mi) * KK + tap) * 32 + lane]);
#pragma unroll
        for (int np = 0; np < NI / 2; ++np) {
            unsigned int b[4];  // b0, b1 of tile 2np, then of 2np + 1
            mma::ldmatrix_x4(b, patch + (pixq[np] + shift) * PATCH_STRIDE + word);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                Step<Math>::mma(acc[mi][2 * np], a[mi], b[0], b[1]);
                Step<Math>::mma(acc[mi][2 * np + 1], a[mi], b[2], b[3]);
            }
        }
    }
}

// Stores a block's tile of y = acc + the epilogue (conv::ForwardOut): block
// rows m0 … m0 + BM − 1, pixels n0 … n0 + TN − 1, warps tiled BM/32 × 8/(BM/32)
// over it (warp w: rows 32·(w % WARPS_M)…, pixels WN·(w / WARPS_M)…), acc[mi][ni]
// as chunk_products leaves it. Shared by the same-conv forwards.
// (g, t: the lane's mma group and thread; img0 = n0 / P; n_w: the warp's first
// pixel in the tile — values its caller has at hand.)
template <class Math, int BM, int NI, int TN = BN, class Out = conv::ForwardOut>
__device__ __forceinline__ void store_tile(const Out& out, const conv::Shape& s,
                                           const typename Step<Math>::Acc (&acc)[2][NI], int n0, int m0, int img0,
                                           int n_w, int warp, int g, int t) {
    constexpr int WARPS_M = BM / 32;
    static_assert(TN / (8 / WARPS_M) == 8 * NI, "the warp tile's n8 tiles");
    const int P = s.oh * s.ow, total = s.n * P;
    // acc[mi][ni][r]: channel m0 + m_w + 16mi + g + 8(r/2), pixel n0 + n_w + 8ni + 2t + r%2
    // (image and pixel of this lane's first column by one division, the others by carries).
    // Per n8 tile the epilogue terms of its 8 outputs are loaded, then the 8 stored.
    const int m_w = 32 * (warp % WARPS_M);
    const auto channel = [&](int mi, int r2) { return m0 + m_w + 16 * mi + g + 8 * r2; };  // of acc[mi][·][2·r2 + ·]
    // With P even (every map of the UNet) this lane's two pixels of a tile,
    // 2t and 2t + 1, lie side by side in one image and one row of y: stored
    // as a pair (ForwardOut::store_pair: the sums of store_terms, so the same
    // bits, with one load of each term).
    const bool pairs = P % 2 == 0 && ((reinterpret_cast<unsigned long long>(out.y) |
                                        reinterpret_cast<unsigned long long>(out.residual)) & 7) == 0;
    if (pairs && P >= TN && m0 + BM <= s.oc) {
        // The tile inside one image (P a multiple of TN: the UNet's 32×32 and
        // 16×16 maps) with every channel live: no test per output, and a
        // channel's bias and time-embedding terms loaded once; a lane's pairs
        // lie 8·ni pixels after its first (no division: the image is img0).
        const int pix0 = n0 - img0 * P + n_w + 2 * t;
        typename Out::PairTerms first[2][2];  // [r / 2][mi]
#pragma unroll
        for (int r2 = 0; r2 < 2; ++r2)
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) first[r2][mi] = out.pair_terms_at(img0, pix0, channel(mi, r2));
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            typename Out::PairTerms terms[2][2];
#pragma unroll
            for (int r2 = 0; r2 < 2; ++r2)
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) terms[r2][mi] = ni == 0 ? first[r2][mi] : out.pair_terms_after(first[r2][mi], 8 * ni);
#pragma unroll
            for (int r2 = 0; r2 < 2; ++r2)
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
                    out.store_pair(terms[r2][mi], channel(mi, r2), acc[mi][ni].get(2 * r2),
                                   acc[mi][ni].get(2 * r2 + 1));
        }
        return;
    }
    const int first_img = (n0 + n_w + 2 * t) / P, first_pix = n0 + n_w + 2 * t - first_img * P;
    if (pairs) {
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            const int n = n0 + n_w + 8 * ni + 2 * t;  // even, and total is even: n + 1 < total with n
            int img = first_img, pix = first_pix + 8 * ni;
            while (pix >= P) {
                pix -= P;
                ++img;
            }
            typename Out::PairTerms terms[2][2];  // [r / 2][mi]
            bool live[2][2];
#pragma unroll
            for (int r2 = 0; r2 < 2; ++r2)
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    const int m = channel(mi, r2);
                    live[r2][mi] = n < total && m < s.oc;
                    if (live[r2][mi]) terms[r2][mi] = out.pair_terms_at(img, pix, m);
                }
#pragma unroll
            for (int r2 = 0; r2 < 2; ++r2)
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
                    if (live[r2][mi])
                        out.store_pair(terms[r2][mi], channel(mi, r2), acc[mi][ni].get(2 * r2),
                                       acc[mi][ni].get(2 * r2 + 1));
        }
        return;
    }
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
        typename Out::Terms terms[2][2][2];  // [half][r / 2][mi]
        bool live[2][2][2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int n = n0 + n_w + 8 * ni + 2 * t + half;
            int img = first_img, pix = first_pix + 8 * ni + half;
            while (pix >= P) {
                pix -= P;
                ++img;
            }
#pragma unroll
            for (int r2 = 0; r2 < 2; ++r2)
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    const int m = channel(mi, r2);
                    live[half][r2][mi] = n < total && m < s.oc;
                    if (live[half][r2][mi]) terms[half][r2][mi] = out.terms_at(img, pix, m);
                }
        }
#pragma unroll
        for (int half = 0; half < 2; ++half)
#pragma unroll
            for (int r2 = 0; r2 < 2; ++r2)
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
                    if (live[half][r2][mi])
                        out.store_terms(terms[half][r2][mi], channel(mi, r2), acc[mi][ni].get(half + 2 * r2));
    }
}

// y = same-conv(x, A) + epilogue at the precision of Math, A packed by
// conv2d_pack_same_<precision> for this shape (M = s.oc rows, s.c channels).
// x is f32, or bf16 storage (TX = unsigned short: the bf16 path's GroupNorm
// + SiLU output, staged as it is — the values the f32 input would round to).
// Grid ⌈N·OH·OW/128⌉ · ⌈OC/BM⌉ (conv::block_tile), 256 threads.
//
// Staging the patch. Element by element (VEC false): thread tid stages word
// j = tid % 64 / 8 of patch pixels 8·(tid / 64) + tid % 8 + 32·i (a warp's
// stores: 4 words of 8 pixels, 32 banks), one load per channel. With float4s (VEC, the _v kernels: f32 input, W a multiple of 4,
// x 16-byte aligned, as the host checks; or bf16 storage, 8-byte aligned,
// 4 pixels of a channel an 8-byte load): the patch's zeros — the halo
// columns, rows outside the image or past the batch — are the same for every
// chunk and written once; item v = tid + 256·i is word j = v % 8 of patch row
// pr, columns pad + 4g … pad + 4g + 3 (g = v / 8 % (W/4), pr = v / (8·W/4)),
// one float4 per channel: a quarter of the load instructions, the same
// values in the same places. W is a power of two here (OW divides 128, or
// OH·OW does), so a 3×3 patch (R rows, R·(W + 2) ≤ PATCH_MAX) has at most
// 8·R·W/4 ≤ 512 items, two per thread; a 1×1 patch at most 576, three.
// UP: x is [N, C, H/2, W/2] and the conv's input (H × W, as s says) its
// nearest 2× upsampling, read in place: input pixel (iy, ix) is x's
// (iy/2, ix/2) — the upsampled map is never written (the UNet's upsamplers
// at inference). Element-by-element staging only.
// DOWN: a stride-2 3×3 conv with padding 1 (the UNet's downsamplers; s
// says so: OH = H/2, OW = W/2): output pixel (r, c) of a segment reads patch
// pixels from (2r, 2c) (tile_of<true>), element-by-element staging, up to
// DOWN_PATCH_MAX patch pixels (BM = 32 blocks: the larger patch and the A
// chunk stay within 48 KB of shared memory).
// TN: pixels a block tile, BN or WIDE_BN (the wide kernels: 32-row blocks
// whose warps hold 32 rows × 32 pixels instead of 32 × 16, so that each A
// fragment read from shared memory feeds 4 mma instead of 2, and the A
// chunk and the patch's halo rows are staged for twice the pixels. GPU run
// 8's ncu: the 3×3 forwards wait on the L1's load/store pipe — 78 % of its
// wavefronts at 32×32 — and per mma the 32 × 16 warp tile takes ~3 of
// them in fragments where 32 × 32 takes ~2.) Element-by-element staging.
// Out: how y is stored (conv::ForwardOut f32, conv::ForwardOutBf16 rounded).
template <class Math, int BM, int KS, class TX = float, bool NORM = false, bool VEC = false, bool UP = false,
          bool DOWN = false, int TN = BN, class Out = conv::ForwardOut>
__device__ __forceinline__ void forward(const Out& out, const TX* x, const uint4* wp, const conv::Shape& s,
                                        const conv::Prologue& pro = conv::Prologue{}) {
    static_assert(!VEC || sizeof(TX) == sizeof(float) || (Math::PER_WORD == 2 && !NORM),
                  "vector staging reads f32, or bf16 storage at bf16 without the norm");
    static_assert(!(VEC && UP), "an upsampled input is staged element by element");
    static_assert(!DOWN || (KS == 3 && !VEC && !UP && !NORM && BM == 32), "a stride-2 3x3 forward, staged element by element");
    static_assert(TN == BN || (TN == WIDE_BN && !VEC && !DOWN), "wide tiles are staged element by element");
    constexpr int PMAX = DOWN ? DOWN_PATCH_MAX : TN == WIDE_BN ? WIDE_PATCH_MAX : PATCH_MAX;  // patch pixels
    constexpr int KK = KS * KS;
    constexpr int PER_WORD = Math::PER_WORD;        // channels per patch word
    constexpr int CHUNK = CHUNK_WORDS * PER_WORD;   // channels per chunk
    constexpr int WARPS_M = BM / 32, WARPS_N = 8 / WARPS_M;
    constexpr int WN = TN / WARPS_N, NI = WN / 8;
    constexpr int A_VECS = BM / 16 * KK * 32;                       // uint4 of A per chunk
    constexpr int A_LOADS = (A_VECS + THREADS - 1) / THREADS;
    // patch words (element by element) or 4-word items (float4s) per thread, at most
    constexpr int P_LOADS = VEC ? (KS == 3 ? 2 : 3) : (PMAX * CHUNK_WORDS + THREADS - 1) / THREADS;
    constexpr int P_WORDS = VEC ? 4 : 1;  // words per item
    __shared__ uint4 As[A_VECS];
    __shared__ unsigned int patch[PMAX * PATCH_STRIDE];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int P = s.oh * s.ow;
    const int XW = UP ? s.w / 2 : s.w, HW = UP ? (s.h / 2) * XW : s.h * s.w;  // x's row and channel strides
    const conv::BlockTile bt = conv::block_tile((s.oc + BM - 1) / BM);
    const int n0 = bt.n_tile * TN, m0 = bt.m_block * BM;
    const Tile tile = tile_of<DOWN, TN>(s);
    const int img0 = n0 / P, oh0 = (n0 - img0 * P) / s.ow;
    const int chunks = (s.c + CHUNK - 1) / CHUNK;
    const int m_blocks = (s.oc + M_ALIGN - 1) / M_ALIGN * (M_ALIGN / 16);  // 16-row blocks per chunk in wp

    // This thread's patch words. Element by element, a warp's 32 stores are
    // words j0 … j0 + 3 of 8 consecutive pixels: 8 pixels PATCH_STRIDE = 12
    // words apart start on 8 distinct multiples of 4 banks, so the 32 words
    // take 32 banks (32 pixels' word j, the order before, took 8: four
    // wavefronts a store; run 6's ncu: 2.4 M shared-store bank conflicts),
    // and each of its 4 channels' loads is 8 consecutive pixels of a row.
    // Thread tid takes word j = tid % 64 / 8 of pixels p = 8·(tid / 64) +
    // tid % 8 + 32·i. Its source offset (without the chunk's channel) and its
    // shared address are the same for every chunk; dst also holds the word's
    // segment and j (slot_dst), so the chunk loop needs no division for the
    // word's channel or image.
    // (float4s: src is the item's first pixel, dst its first word, the next
    // three PATCH_STRIDE apart; items outside the image stay at the zeros)
    // Element by element, p's digits (seg, pr, pc) in the radices (seg_rows·pw;
    // pw) are worked out for i = 0 and then stepped by 32 with carries: the
    // divisions once, not per slot.
    const int seg_size = tile.seg_rows * tile.pw, segments = tile.pixels / seg_size;
    const int wj = tid % 64 / 8;
    int wp_ = 8 * (tid / 64) + tid % 8;
    int wseg = wp_ / seg_size, wpr = (wp_ - wseg * seg_size) / tile.pw, wpc = wp_ - wseg * seg_size - wpr * tile.pw;
    constexpr int step_p = 32;
    const int step_seg = step_p / seg_size, step_pr = (step_p - step_seg * seg_size) / tile.pw;
    const int step_pc = step_p - step_seg * seg_size - step_pr * tile.pw;
    int src[P_LOADS], dst[P_LOADS];
#pragma unroll
    for (int i = 0; i < P_LOADS; ++i) {
        const int e = tid + THREADS * i;
        if constexpr (VEC) {
            const int groups = s.w / 4, rows = tile.pixels / tile.pw;
            const int j = e % CHUNK_WORDS, g = e / CHUNK_WORDS % groups, pr = e / CHUNK_WORDS / groups;
            const int seg = pr / tile.seg_rows, r = pr - seg * tile.seg_rows;
            const int img = img0 + seg, iy = oh0 - s.pad + r;
            const bool inside = pr < rows && img < s.n && iy >= 0 && iy < s.h;
            src[i] = inside ? img * s.c * HW + PER_WORD * j * HW + iy * s.w + 4 * g : -1;
            dst[i] = inside ? slot_dst((pr * tile.pw + s.pad + 4 * g) * PATCH_STRIDE + j, seg, j) : -1;
        } else {
            if (i > 0) {  // p = p − 32 + 32, digit by digit (past the last segment: past the patch)
                int carry = add_digit(wpc, step_pc, 0, tile.pw);
                carry = add_digit(wpr, step_pr, carry, tile.seg_rows);
                wseg += step_seg + carry;
                wp_ = (wseg * tile.seg_rows + wpr) * tile.pw + wpc;
            }
            const int img = img0 + wseg, iy = (DOWN ? 2 * oh0 : oh0) - s.pad + wpr, ix = wpc - s.pad;
            const bool in_patch = wseg < segments;
            const bool inside = in_patch && img < s.n && iy >= 0 && iy < s.h && ix >= 0 && ix < s.w;
            const int at = UP ? (iy >> 1) * XW + (ix >> 1) : iy * s.w + ix;
            src[i] = inside ? img * s.c * HW + PER_WORD * wj * HW + at : -1;
            dst[i] = in_patch ? slot_dst(wp_ * PATCH_STRIDE + wj, wseg, wj) : -1;
        }
    }
    if constexpr (VEC) {
        for (int i = tid; i < PMAX * PATCH_STRIDE; i += THREADS) patch[i] = 0u;
        __syncthreads();  // before any chunk's words land
    }
    // The patch pixel, for tap (0, 0), of the B row this lane gives each
    // ldmatrix (chunk_products): output pixel n = n_w + 16np + 8(lane / 16) +
    // lane % 8 as digits (segment, row, column), + 16 per np with carries.
    const int n_w = (warp / WARPS_M) * WN;
    int pixq[NI / 2];
    {
        const int n = n_w + 8 * (lane / 16) + lane % 8;
        int nseg = n / tile.seg_pix, r = (n - nseg * tile.seg_pix) / s.ow, col = n - nseg * tile.seg_pix - r * s.ow;
        const int nstep_seg = 16 / tile.seg_pix, step_r = (16 - nstep_seg * tile.seg_pix) / s.ow;
        const int step_col = 16 - nstep_seg * tile.seg_pix - step_r * s.ow;
#pragma unroll
        for (int np = 0; np < NI / 2; ++np) {
            if (np > 0) {
                int carry = add_digit(col, step_col, 0, s.ow);
                carry = add_digit(r, step_r, carry, tile.rows);
                nseg += nstep_seg + carry;
            }
            pixq[np] = DOWN ? (nseg * tile.seg_rows + 2 * r) * tile.pw + 2 * col : (nseg * tile.seg_rows + r) * tile.pw + col;
        }
    }

    // chunk q's operands into registers: A straight from wp, the patch as words
    uint4 a_regs[A_LOADS];
    unsigned int p_regs[P_LOADS][P_WORDS];
    const uint4 zero4 = {0u, 0u, 0u, 0u};
    auto fetch = [&](int q) {
        const uint4* a_src = wp + ((size_t)q * m_blocks + m0 / 16) * KK * 32;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int v = tid + THREADS * i;
            a_regs[i] = v < A_VECS ? a_src[v] : zero4;
        }
        const int c0 = CHUNK * q;
        // the group norm (+ SiLU) of channels c, c + 1, … of slot i's image img0 + segment
        auto normed = [&](float (&v)[PER_WORD], int i, int c) {
            const int nc0 = (img0 + slot_seg(dst[i])) * s.c + c;
#pragma unroll
            for (int e = 0; e < PER_WORD; ++e) {
                if (c + e >= s.c) continue;
                v[e] = normed_value(v[e], pro.affine[nc0 + e], pro.silu);
            }
        };
        if constexpr (VEC) {
#pragma unroll
            for (int i = 0; i < P_LOADS; ++i) {
                if (src[i] < 0) continue;
                const int c = c0 + PER_WORD * slot_j(dst[i]);
                if constexpr (sizeof(TX) != sizeof(float)) {
                    // bf16 storage: the 4 pixels of channels c and c + 1 as two 8-byte loads, their
                    // 4 pair-words by selecting halves (quad_words) — the f32 path's words, bit for bit
                    const uint2 zero2 = {0u, 0u};
                    const uint2 lo = c < s.c ? *reinterpret_cast<const uint2*>(x + src[i] + c0 * HW) : zero2;
                    const uint2 hi = c + 1 < s.c ? *reinterpret_cast<const uint2*>(x + src[i] + (c0 + 1) * HW) : zero2;
                    quad_words(p_regs[i], lo, hi);
                } else {
                    float4 v4[PER_WORD];
#pragma unroll
                    for (int e = 0; e < PER_WORD; ++e) {
                        v4[e] = float4{0.0f, 0.0f, 0.0f, 0.0f};
                        if (c + e < s.c) v4[e] = *reinterpret_cast<const float4*>(reinterpret_cast<const float*>(x) + src[i] + (c0 + e) * HW);
                    }
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        float v[PER_WORD];
#pragma unroll
                        for (int e = 0; e < PER_WORD; ++e) v[e] = k == 0 ? v4[e].x : k == 1 ? v4[e].y : k == 2 ? v4[e].z : v4[e].w;
                        if (NORM) normed(v, i, c);
                        p_regs[i][k] = word_bits(Math::pack(v));
                    }
                }
            }
        } else if (c0 + CHUNK <= s.c) {
            // A whole chunk (every conv of the UNet after conv_in): no test per
            // channel, and a word's channels from one chunk base, HW apart
            // (SASS: ~7 instructions a word instead of ~20, the staging being
            // most of what these issue-bound kernels issue).
            const int chunk_at = c0 * HW;  // (every index fits an int, as in the general path)
#pragma unroll
            for (int i = 0; i < P_LOADS; ++i) {
                float v[PER_WORD];
                if (src[i] >= 0) {
                    const int at = src[i] + chunk_at;
#pragma unroll
                    for (int e = 0; e < PER_WORD; ++e) v[e] = load_f32(x, at + e * HW);
                    if (NORM) normed(v, i, c0 + PER_WORD * slot_j(dst[i]));
                } else {
#pragma unroll
                    for (int e = 0; e < PER_WORD; ++e) v[e] = 0.0f;
                }
                p_regs[i][0] = word_bits(Math::pack(v));
            }
        } else {
#pragma unroll
            for (int i = 0; i < P_LOADS; ++i) {
                const int c = c0 + PER_WORD * slot_j(dst[i]);
                float v[PER_WORD];
#pragma unroll
                for (int e = 0; e < PER_WORD; ++e) v[e] = src[i] >= 0 && c + e < s.c ? load_f32(x, src[i] + (c0 + e) * HW) : 0.0f;
                if (NORM && src[i] >= 0) normed(v, i, c);
                p_regs[i][0] = word_bits(Math::pack(v));
            }
        }
    };
    auto stage = [&]() {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i)
            if (tid + THREADS * i < A_VECS) As[tid + THREADS * i] = a_regs[i];
#pragma unroll
        for (int i = 0; i < P_LOADS; ++i)
            if (dst[i] >= 0)
#pragma unroll
                for (int k = 0; k < P_WORDS; ++k) patch[(dst[i] & DST_MASK) + k * PATCH_STRIDE] = p_regs[i][k];
    };

    typename Step<Math>::Acc acc[2][NI];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) acc[mi][ni].zero();

    // Software pipeline: the next chunk's global reads are issued before the
    // tensor cores work on this one.
    fetch(0);
    for (int q = 0; q < chunks; ++q) {
        stage();
        __syncthreads();
        if (q + 1 < chunks) fetch(q + 1);
        chunk_products<Math, BM, KS, NI>(As, patch, pixq, tile.pw, acc);
        __syncthreads();  // the next chunk overwrites As and the patch
    }

    store_tile<Math, BM, NI, TN, Out>(out, s, acc, n0, m0, img0, n_w, warp, g, t);
}

// ---- The 1×1 forward ----
//
// A stride-1 1×1 conv has no halo and no taps: per image it is the GEMM
// y[img] [OC, P] = A [OC, C] · x[img] [C, P], so a block stages no patch,
// only its 128 pixels × a slice of 32 channels (S1_CHUNKS chunks: two at
// bf16, four at f32), pixel-major,
//   bs[pixel·S1_LDB + word]   (word 8·cl + j: chunk cl's word j, as the patch holds it),
// from float4 loads along the pixels of one channel (P % 4 == 0: four pixels
// never straddle two images, the host checks): at bf16 a thread reads
// channels 2j and 2j + 1 of 4 pixels and writes their 4 pair-words, at f32
// one channel of 4 pixels. The forward's element-by-element staging made a
// load a word for the same bytes (run 7: `_m64_k1` at 105 registers, 23 %
// occupancy, long-scoreboard stalls, 42 % of DRAM bandwidth at 16×16×64).
// The slice's packed A (conv2d_pack_same_*, the same-conv weights) is copied
// beside it; the next slice's loads are in registers while this one's
// products run. The warp tiling, the fragments (ldmatrix_x4 of 8 pixels' 4
// words), the chunk order of the mma steps and the epilogue (store_tile) are
// the same-conv forward's: the same sums in the same order, bit for bit.
constexpr int S1_CHUNKS_BF16 = 2, S1_CHUNKS_F32 = 4;  // chunks a slice: 32 channels
// words a staged pixel: the slice's 16 words and 4 of padding (a ldmatrix's
// 8 pixels, 16-byte rows S1_LDB words apart, fall on 8 distinct bank quads)
__host__ __device__ constexpr int s1_ldb(int chunks) { return chunks * CHUNK_WORDS + 4; }

// y = conv1x1(x, A) + epilogue at the precision of Math, A packed by
// conv2d_pack_same_<precision> for this shape (M = s.oc rows, s.c channels),
// x f32 or bf16 storage (TX = unsigned short, bf16 only). Grid
// (⌈N·P/128⌉, ⌈OC/BM⌉), 256 threads.
// NORM: x (f32) group-normalised (+ SiLU) by pro as it is staged — the
// attention block's norm → q, k, v at inference, with no normalised map
// written. A 1×1 conv stages each input value once, so each is normalised
// once (a 3×3 patch's halo is staged by two blocks). Each item's affine
// quadruples are loaded with its values and applied when it is staged;
// items outside the batch or past C get zeros, which stay 0 (silu(0) = 0).
// CAT: x is the concatenation x ⧺ x2 along the channels (the UNet's up-path
// shortcut over a skip joined to the map), never written: channels below c1
// from x [N, c1, H, W], the rest from x2 [N, C − c1, H, W], c1 a multiple of
// the 32-channel slice (so a slice lies in one part); the same staged words,
// so the same bits, as from the written concatenation.
template <class Math, int BM, class TX = float, bool NORM = false, class Out = conv::ForwardOut, bool CAT = false>
__device__ __forceinline__ void forward_1x1(const Out& out, const TX* x, const uint4* wp, const conv::Shape& s,
                                            const conv::Prologue& pro = conv::Prologue{}, const TX* x2 = nullptr,
                                            int c1 = 0) {
    constexpr int PER_WORD = Math::PER_WORD;
    static_assert(PER_WORD == 2 || sizeof(TX) == sizeof(float), "f32 products read f32 input");
    static_assert(!NORM || sizeof(TX) == sizeof(float), "the norm is applied to f32 input");
    static_assert(!(CAT && NORM), "a concatenation is read as it is");
    constexpr int CHUNKS = PER_WORD == 2 ? S1_CHUNKS_BF16 : S1_CHUNKS_F32;
    constexpr int WORDS = CHUNKS * CHUNK_WORDS, LDB = s1_ldb(CHUNKS);
    constexpr int SLICE_CH = WORDS * PER_WORD;                 // 32 channels
    constexpr int QUADS = BN / 4;                              // 4-pixel groups of the tile
    constexpr int B_LOADS = WORDS * QUADS / THREADS;           // (word, quad) items a thread stages
    constexpr int MB = BM / 16;                                // 16-row blocks of the tile
    constexpr int A_VECS = CHUNKS * MB * 32;                   // uint4 of A a slice
    constexpr int A_LOADS = (A_VECS + THREADS - 1) / THREADS;  // … a thread stages, at most
    constexpr int WARPS_M = BM / 32, WARPS_N = 8 / WARPS_M;
    constexpr int WN = BN / WARPS_N, NI = WN / 8;
    static_assert(WORDS * QUADS % THREADS == 0, "whole items a thread");
    __shared__ uint4 as[A_VECS];
    __shared__ unsigned int bs[BN * LDB];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4;
    const int P = s.oh * s.ow, HW = s.h * s.w, total = s.n * P;
    const conv::BlockTile bt = conv::block_tile((s.oc + BM - 1) / BM);
    const int n0 = bt.n_tile * BN, m0 = bt.m_block * BM;
    const int img0 = n0 / P;
    const int chunks = (s.c + CHUNK_WORDS * PER_WORD - 1) / (CHUNK_WORDS * PER_WORD);
    const int slices = (s.c + SLICE_CH - 1) / SLICE_CH;
    const int m_blocks = (s.oc + M_ALIGN - 1) / M_ALIGN * (M_ALIGN / 16);

    // item i of this thread: word j = e % WORDS of quad q = e / WORDS (e = tid + 256·i);
    // its pixels' offset in x (channel 0) or −1 past the batch
    // (CAT: at in x [N, c1, …], at2 in x2 [N, C − c1, …])
    int j[B_LOADS], at[B_LOADS];
    [[maybe_unused]] int nc[B_LOADS];   // the item's image · C (NORM)
    [[maybe_unused]] int at2[B_LOADS];  // (CAT)
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i) {
        const int e = tid + THREADS * i, q = e / WORDS, n = n0 + 4 * q;
        j[i] = e % WORDS;
        const int img = n / P;
        at[i] = n < total ? img * (CAT ? c1 : s.c) * HW + (n - img * P) : -1;
        nc[i] = img * s.c;
        if constexpr (CAT) at2[i] = n < total ? img * (s.c - c1) * HW + (n - img * P) : -1;
    }

    uint4 a_regs[A_LOADS];
    typename mma::Quad<TX>::Reg b_regs[B_LOADS][PER_WORD];
    [[maybe_unused]] float4 affine[NORM ? B_LOADS : 1][PER_WORD];  // (mean, scale, shift, 0) of each item's channels
    auto fetch = [&](int slice) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            const int v = tid + THREADS * i, l = v % 32, mbl = v / 32 % MB, cl = v / 32 / MB, q = CHUNKS * slice + cl;
            a_regs[i] = v < A_VECS && q < chunks ? wp[((size_t)q * m_blocks + m0 / 16 + mbl) * 32 + l] : uint4{0u, 0u, 0u, 0u};
        }
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i)
#pragma unroll
            for (int e = 0; e < PER_WORD; ++e) {
                const int c = SLICE_CH * slice + PER_WORD * j[i] + e;
                const bool live = at[i] >= 0 && c < s.c;
                const TX* src = x;
                int off = at[i] + c * HW;
                if constexpr (CAT) {
                    if (SLICE_CH * slice >= c1) src = x2, off = at2[i] + (c - c1) * HW;
                }
                b_regs[i][e] = live ? mma::Quad<TX>::load(src, off) : mma::Quad<TX>::zero();
                if constexpr (NORM) affine[i][e] = live ? pro.affine[nc[i] + c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
    };
    auto stage = [&]() {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i)
            if (tid + THREADS * i < A_VECS) as[tid + THREADS * i] = a_regs[i];
#pragma unroll
        for (int i = 0; i < B_LOADS; ++i) {
            const int q = (tid + THREADS * i) / WORDS;
            if constexpr (NORM) {
#pragma unroll
                for (int e = 0; e < PER_WORD; ++e) {
                    float4& v = b_regs[i][e];
                    const float4 a = affine[i][e];
                    v = make_float4(normed_value(v.x, a, pro.silu), normed_value(v.y, a, pro.silu), normed_value(v.z, a, pro.silu),
                                    normed_value(v.w, a, pro.silu));
                }
            }
            unsigned int w[4];
            if constexpr (PER_WORD == 2) {
                quad_words(w, b_regs[i][0], b_regs[i][1]);
            } else {
                const float4 v = b_regs[i][0];
                w[0] = __float_as_uint(v.x), w[1] = __float_as_uint(v.y), w[2] = __float_as_uint(v.z), w[3] = __float_as_uint(v.w);
            }
#pragma unroll
            for (int r = 0; r < 4; ++r) bs[(4 * q + r) * LDB + j[i]] = w[r];
        }
    };

    typename Step<Math>::Acc acc[2][NI];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) acc[mi][ni].zero();
    const int n_w = (warp / WARPS_M) * WN, mb0 = 2 * (warp % WARPS_M);
    const int word = 4 * (lane / 8 % 2);  // this lane's ldmatrix row: words 0–3 (b0) or 4–7 (b1)

    fetch(0);
    for (int sl = 0; sl < slices; ++sl) {
        stage();
        __syncthreads();
        if (sl + 1 < slices) fetch(sl + 1);
#pragma unroll
        for (int cl = 0; cl < CHUNKS; ++cl) {
            typename Step<Math>::A a[2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) a[mi] = Step<Math>::prep(as[(cl * MB + mb0 + mi) * 32 + lane]);
#pragma unroll
            for (int np = 0; np < NI / 2; ++np) {
                unsigned int b[4];  // b0, b1 of tile 2np, then of 2np + 1
                const int pixel = n_w + 16 * np + 8 * (lane / 16) + lane % 8;
                mma::ldmatrix_x4(b, bs + pixel * LDB + CHUNK_WORDS * cl + word);
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    Step<Math>::mma(acc[mi][2 * np], a[mi], b[0], b[1]);
                    Step<Math>::mma(acc[mi][2 * np + 1], a[mi], b[2], b[3]);
                }
            }
        }
        __syncthreads();  // the next slice overwrites as and bs
    }
    store_tile<Math, BM, NI, BN, Out>(out, s, acc, n0, m0, img0, n_w, warp, g, t);
}

// ---- Weight gradient ----
//
//   dW[oc, c, tap] = Σ_{img, y, x} dY[img, oc, y, x] · x[img, c, y − p + kh, x − p + kw]
//
// GEMM view: M = OC, N = (c, tap) over C·K², K = the N·OH·OW pixels, split
// over gridDim.z (each split sums whole 128-pixel tiles into its own slab,
// conv2d_sum_splits_f32 adds the slabs). The mma's k runs along pixels: a
// word is one pixel (f32, m16n8k8 steps) or a bf16 pair of two neighbouring
// pixels of one row (bf16, m16n8k16; OW even):
//   A[oc][word] = dY at the word's pixels      (contiguous in dY)
//   B[word][(c, tap)] = the patch at those pixels shifted by the tap.
// At bf16 a shifted pair starts at an even or odd patch position (the tap's
// kw), so the patch is staged twice, from even and from odd positions, and
// either is one aligned 32-bit shared load:
//   words[0][c][q] = (P[c][2q], P[c][2q + 1]),  words[1][c][q] = (P[c][2q + 1], P[c][2q + 2]);
// at f32 once: words[0][c][q] = P[c][q]. dY is staged 64 words at a time
// (one phase of a tile at bf16, two at f32).
// Block tile: BM output channels × CT input channels (BM 64: CT 16; BM 32:
// CT 32), all taps; warp w owns rows 16·(w % WARPS_M).. and K² n8 tiles.
constexpr int WG_PHASE = 64;             // dY words staged at a time
constexpr int WG_A_LD = WG_PHASE + 4;    // words per dY row in shared (+4: conflict-free A fragments)
constexpr int OUTSIDE = -2147483647 - 1;  // a patch column left or right of the image
constexpr int WG_BATCH = 4;              // staging items whose loads a thread issues together

// Where the staged patch's words sit (src/ops/conv2d/wg_layout.rs): word
// (parity, c, segment, row, col) at
//   parity·plane + c·chan + segment·seg + row·row + col / PER_WORD.
// A warp's B fragments read 8 (channel, tap) columns × 4 pixel words, each
// column at its tap's shift; with rows back to back the taps' rows fell on
// the same banks (2.0 wavefronts a load at 32×32, 8×8 and 4×4; run 7's ncu:
// 5.5 M bank conflicts a launch). The host picks the strides per shape by
// simulating the loads (one wavefront each at the seed UNet's shapes); the
// padding between rows, segments and channels is never read.
struct WgLayout {
    int row, seg, chan, plane;  // words
};
// The largest patch (pixels) the weight gradient stages: BM 32 blocks stage
// twice the channels, so they take smaller patches.
__host__ __device__ constexpr int wg_patch_max(int bm) { return bm == 64 ? PATCH_MAX : 256; }
// Shared words for the patch: what 48 KB of static shared memory leaves
// beside the dY tile and the tables (wg_layout.rs's WORDS_M32 / _M64).
__host__ __device__ constexpr int wg_words(int bm) { return bm == 64 ? 5664 : 8952; }

template <class Math, int BM, int KS, class TX = float>
__device__ __forceinline__ void weight_grad(float* dw_part, const float* dy, const TX* x, const conv::Shape& s,
                                            WgLayout L, int tiles_per_split) {
    constexpr int KK = KS * KS;
    constexpr int PER_WORD = Math::PER_WORD;        // pixels per word
    constexpr int TILE_WORDS = BN / PER_WORD;       // words of pixels per tile
    constexpr int CT = BM == 64 ? 16 : 32;          // input channels per block
    constexpr int WARPS_M = BM / 16, WARPS_N = 8 / WARPS_M;
    constexpr int NT = CT * KK / 8 / WARPS_N;       // n8 tiles per warp (= K²)
    constexpr int PX_MAX = wg_patch_max(BM);
    __shared__ unsigned int a_tile[BM * WG_A_LD];   // dY words [oc][word] of one phase
    __shared__ unsigned int words[wg_words(BM)];    // the patch, laid out by L
    __shared__ int patch_src[PX_MAX];               // patch pixel → offset from (img0, oh0) (negative in the top
                                                    // halo), OUTSIDE past the left or right edge
    __shared__ int patch_row[PX_MAX];               // patch pixel → (segment, input row relative to oh0)
    __shared__ int tile_src[PX_MAX + PER_WORD + 1]; // this tile's patch pixel → patch_src, OUTSIDE where it reads 0
    __shared__ int word_src[TILE_WORDS];            // tile word → dY offset of its first pixel from (img0, oh0)
    __shared__ int word_seg[TILE_WORDS];            // tile word → its image after the tile's first
    __shared__ int word_patch[TILE_WORDS];          // tile word → its first pixel's patch word for tap (0, 0)

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
    for (int j = tid; j < TILE_WORDS; j += THREADS) {
        const int n = PER_WORD * j, seg = n / tile.seg_pix, local = n - seg * tile.seg_pix;
        const int r = local / s.ow, col = local - r * s.ow;
        word_src[j] = seg * s.oc * P + local;
        word_seg[j] = seg;
        word_patch[j] = seg * L.seg + r * L.row + col / PER_WORD;  // col even at bf16 (OW is)
    }

    // This lane's B columns: n8 tile nt = warp_n·NT + ni, column 8·nt + g = (c, tap),
    // tap = (dy, dx): dy rows down, dx pixels right (at bf16 the pair from an odd
    // position is in the second plane)
    const int warp_n = warp / WARPS_M, m_w = 16 * (warp % WARPS_M);
    int col_off[NT];
#pragma unroll
    for (int ni = 0; ni < NT; ++ni) {
        const int col = 8 * (warp_n * NT + ni) + g, c = col / KK, tap = col % KK;
        const int dy = tap / KS, dx = tap % KS;
        col_off[ni] = (dx % PER_WORD) * L.plane + c * L.chan + dy * L.row + dx / PER_WORD;
    }
    typename Step<Math>::Acc acc[NT];
#pragma unroll
    for (int ni = 0; ni < NT; ++ni) acc[ni].zero();
    __syncthreads();

    for (int tl = tile_begin; tl < tile_end; ++tl) {
        const int n0 = tl * BN, img0 = n0 / P, oh0 = (n0 - img0 * P) / s.ow;
        // which patch pixels this tile reads (inside the image and the batch), and from where
        // (items read up to PER_WORD + 1 past the last pixel: zeros)
        for (int i = tid; i < tile.pixels + PER_WORD + 1; i += THREADS) {
            int src = OUTSIDE;
            if (i < tile.pixels && patch_src[i] != OUTSIDE) {
                const int seg = patch_row[i] >> 16, iy = oh0 - s.pad + (patch_row[i] & 0xffff);
                if (img0 + seg < s.n && iy >= 0 && iy < s.h) src = patch_src[i];
            }
            tile_src[i] = src;
        }
        __syncthreads();
        // the patch of channels c0.. (0 outside the image, past the batch or past C); item (c, q):
        // channel c's word of patch pixels PER_WORD·q.. (at bf16 also the pair from PER_WORD·q + 1),
        // (c, q) the digits of e = tid + 256·pass in the radix row_items, advanced with a carry
        // (int offsets, as the forward's: the host keeps x under 2³¹ elements)
        // WG_BATCH items at a time: all their loads are issued before the
        // first is used, so a thread has that many in flight, not one
        const int x_tile = (img0 * s.c + c0) * HW + oh0 * s.w;
        const int row_items = tile.pixels / PER_WORD;
        const int step_c = THREADS / row_items, step_q = THREADS - step_c * row_items;
        for (int c = tid / row_items, q = tid - c * row_items; c < CT;) {
            int item_dst[WG_BATCH];  // the item's word in the patch (−1: past the block's channels)
            float v[WG_BATCH][PER_WORD + 1];
#pragma unroll
            for (int b = 0; b < WG_BATCH; ++b) {
                // where the word goes: pixel PER_WORD·q is (segment, row, col) of the patch
                // (a pair never straddles a row: the patch rows are even at bf16; the odd
                // pair from a row's last pixel is never read)
                const int pix = PER_WORD * q, seg = patch_row[pix] >> 16, pr = patch_row[pix] & 0xffff;
                item_dst[b] = c < CT ? c * L.chan + seg * L.seg + pr * L.row + (pix - (seg * tile.seg_rows + pr) * tile.pw) / PER_WORD
                                     : -1;
                const bool chan = c < CT && c0 + c < s.c;
                const int x_chan = chan ? x_tile + c * HW : 0;
#pragma unroll
                for (int k = 0; k <= PER_WORD; ++k) {
                    const int src = tile_src[PER_WORD * q + k];
                    v[b][k] = chan && src != OUTSIDE ? load_f32(x, x_chan + src) : 0.0f;
                }
                q += step_q;
                c += step_c;
                if (q >= row_items) {
                    q -= row_items;
                    ++c;
                }
            }
#pragma unroll
            for (int b = 0; b < WG_BATCH; ++b) {
                if (item_dst[b] < 0) break;
#pragma unroll
                for (int parity = 0; parity < PER_WORD; ++parity) {
                    float w[PER_WORD];
#pragma unroll
                    for (int k = 0; k < PER_WORD; ++k) w[k] = v[b][parity + k];
                    words[parity * L.plane + item_dst[b]] = word_bits(Math::pack(w));
                }
            }
        }
        for (int phase = 0; phase < TILE_WORDS / WG_PHASE; ++phase) {
            // dY words of this phase: a_tile[oc][j] = dY at word phase·64 + j (0 past the batch or OC),
            // the loads of WG_BATCH words before their stores
            static_assert(BM * WG_PHASE % (THREADS * WG_BATCH) == 0, "whole batches of dY words");
            for (int e0 = tid; e0 < BM * WG_PHASE; e0 += THREADS * WG_BATCH) {
                float v[WG_BATCH][PER_WORD];
#pragma unroll
                for (int b = 0; b < WG_BATCH; ++b) {
                    const int e = e0 + THREADS * b, oc = e / WG_PHASE, j = e - oc * WG_PHASE, w = phase * WG_PHASE + j;
#pragma unroll
                    for (int k = 0; k < PER_WORD; ++k) v[b][k] = 0.0f;
                    if (m0 + oc < s.oc && img0 + word_seg[w] < s.n) {
                        const float* at = dy + (img0 * s.oc * P + oh0 * s.ow + word_src[w] + (m0 + oc) * P);
                        if constexpr (PER_WORD == 2) {
                            // one 8-byte load: a pair starts at an even offset (OW, so P, even;
                            // the host checks dY's alignment)
                            const float2 pair = *reinterpret_cast<const float2*>(at);
                            v[b][0] = pair.x;
                            v[b][1] = pair.y;
                        } else {
                            v[b][0] = at[0];
                        }
                    }
                }
#pragma unroll
                for (int b = 0; b < WG_BATCH; ++b) {
                    const int e = e0 + THREADS * b, oc = e / WG_PHASE, j = e - oc * WG_PHASE;
                    a_tile[oc * WG_A_LD + j] = word_bits(Math::pack(v[b]));
                }
            }
            __syncthreads();
#pragma unroll 2
            for (int ks = 0; ks < WG_PHASE / 8; ++ks) {
                const int j0 = 8 * ks + t;  // this lane's k words j0 and j0 + 4 of the step
                const unsigned int* ar = a_tile + (m_w + g) * WG_A_LD;
                const typename Step<Math>::A a =
                    Step<Math>::prep(uint4{ar[j0], ar[8 * WG_A_LD + j0], ar[j0 + 4], ar[8 * WG_A_LD + j0 + 4]});
                const int q0 = word_patch[phase * WG_PHASE + j0], q1 = word_patch[phase * WG_PHASE + j0 + 4];
#pragma unroll
                for (int ni = 0; ni < NT; ++ni) Step<Math>::mma(acc[ni], a, words[col_off[ni] + q0], words[col_off[ni] + q1]);
            }
            __syncthreads();  // the next phase or tile overwrites the staged operands
        }
    }

    // acc[ni]: row m0 + m_w + g + 8(r/2), column 8·nt + 2t + r%2 = (c, tap)
    float* slab = dw_part + (size_t)blockIdx.z * s.oc * s.c * KK;
#pragma unroll
    for (int ni = 0; ni < NT; ++ni)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int m = m0 + m_w + g + 8 * (r / 2);
            const int col = 8 * (warp_n * NT + ni) + 2 * t + r % 2, c = c0 + col / KK, tap = col % KK;
            if (m < s.oc && c < s.c) slab[((size_t)m * s.c + c) * KK + tap] = acc[ni].get(r);
        }
}

}  // namespace same

namespace same {

// Packs W [OC, C, K, K] for forward<Math>, as documented at the top. The
// GEMM's rows m < M and channels c < CG are, for the forward (flip = 0):
//   A[m, c, tap] = W[m, c, tap]                 (M = OC, CG = C)
// and for the input gradient (flip = 1):
//   A[m, c, tap] = W[c, m, K² − 1 − tap]        (M = C, CG = OC)
// wp holds ⌈CG/chunk⌉ chunks × ⌈M/64⌉·4 row blocks × K² taps × 32 lanes × 4 words.
// wc: input channels a row of W holds (C; more when w points at a window of
// them, the first of a part of the input: a conv of one part of a
// concatenation, ops::conv2d_concat).
template <class Math>
__device__ __forceinline__ void pack(unsigned int* wp, const float* w, int M, int CG, int ks, int flip, int wc) {
    constexpr int PER_WORD = Math::PER_WORD;
    const int kk = ks * ks;
    const int m_blocks = (M + M_ALIGN - 1) / M_ALIGN * (M_ALIGN / 16);
    const int chunks = (CG + CHUNK_WORDS * PER_WORD - 1) / (CHUNK_WORDS * PER_WORD);
    const int len = chunks * m_blocks * kk * 128;
    for (int idx = global_index(); idx < len; idx += grid_stride()) {
        const int r = idx % 4, lane = idx / 4 % 32;
        const int rest = idx / 128;  // (chunk·m_blocks + mb)·kk + tap
        const int tap = rest % kk, mb = rest / kk % m_blocks, chunk = rest / kk / m_blocks;
        const int m = 16 * mb + lane / 4 + 8 * (r & 1);
        const int c = PER_WORD * (CHUNK_WORDS * chunk + lane % 4 + 4 * (r >> 1));
        float v[PER_WORD];
#pragma unroll
        for (int e = 0; e < PER_WORD; ++e) {
            v[e] = 0.0f;
            if (m >= M || c + e >= CG) continue;
            v[e] = flip ? w[((c + e) * wc + m) * kk + (kk - 1 - tap)] : w[(m * wc + c + e) * kk + tap];
        }
        wp[idx] = word_bits(Math::pack(v));
    }
}

}  // namespace same

extern "C" __global__ void conv2d_pack_same_f32(unsigned int* wp, const float* w, int M, int CG, int ks, int flip, int wc) {
    same::pack<mma::Tf32x3>(wp, w, M, CG, ks, flip, wc);
}
extern "C" __global__ void conv2d_pack_same_bf16(unsigned int* wp, const float* w, int M, int CG, int ks, int flip, int wc) {
    same::pack<mma::Bf16>(wp, w, M, CG, ks, flip, wc);
}

// Both orientations of W [OC, C, K, K] in one launch (training: the
// forward's pack in wp, the input gradient's, flipped, in wp_flip, for the
// backward of the same step): grid y = 0 packs the first, y = 1 the second.
extern "C" __global__ void conv2d_pack_same_pair_f32(unsigned int* wp, unsigned int* wp_flip, const float* w, int OC, int C,
                                                     int ks) {
    if (blockIdx.y == 0) same::pack<mma::Tf32x3>(wp, w, OC, C, ks, 0, C);
    else same::pack<mma::Tf32x3>(wp_flip, w, C, OC, ks, 1, C);
}
extern "C" __global__ void conv2d_pack_same_pair_bf16(unsigned int* wp, unsigned int* wp_flip, const float* w, int OC, int C,
                                                      int ks) {
    if (blockIdx.y == 0) same::pack<mma::Bf16>(wp, w, OC, C, ks, 0, C);
    else same::pack<mma::Bf16>(wp_flip, w, C, OC, ks, 1, C);
}

// y [N, OC, OH, OW] = same-conv(x [N, C, H, W]) + bias + sample_bias + residual
// (each may be null) with the weights packed by conv2d_pack_same_<precision>
// (flip 0): _f32 at f32 accuracy (3xTF32), _bf16 with bf16 operands. For the
// input gradient: y = dX, x = dY, the shape with C ↔ OC, H ↔ OH, W ↔ OW
// swapped, weights packed with flip 1, no epilogue.
// Grid ⌈N·OH·OW/128⌉ · ⌈OC/BM⌉ (conv::block_tile), 256 threads.
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_m32_k1(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 32, 1>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_m32_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 32, 3>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_m64_k1(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 64, 1>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_m64_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 64, 3>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
// (the 32-row 1×1 bf16 kernels are bound to three blocks an SM: they fit 80
// registers without spills, and the epilogue's batched loads took them to 87,
// two blocks, unbound)
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_m32_k1(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 1>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m32_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m64_k1(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 1>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m64_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 3>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}

// The bf16 forward reading x from bf16 storage.
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_xbf16_m32_k1(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 1>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_m32_k3(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_m64_k1(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 1>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_m64_k3(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 3>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}

// … staging it 4 pixels a load (VEC: W a multiple of 4, x 8-byte aligned, as
// the host checks): two 8-byte loads for 4 pair-words where the element
// staging makes 8 two-byte loads, and half the bytes of the f32 float4s.
// (The _b3 twins below: three blocks an SM.)
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_xbf16_m32_k1_v(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 1, unsigned short, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_m32_k3_v(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3, unsigned short, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_m64_k1_v(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 1, unsigned short, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_m64_k3_v(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 3, unsigned short, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}

// The forward with the input's group norm (+ SiLU) applied as it is staged
// (pro, conv::Prologue): the UNet's norm → conv at inference, with no
// normalised map written. Separate kernels, so that the plain ones keep
// their registers (the transform costs the bf16 3×3 kernel a spill).
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_gn_m32_k1(float* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Tf32x3, 32, 1, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_gn_m32_k3(float* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Tf32x3, 32, 3, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_gn_m64_k1(float* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Tf32x3, 64, 1, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_gn_m64_k3(float* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Tf32x3, 64, 3, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_m32_k1(float* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 32, 1, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_m32_k3(float* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 32, 3, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_m64_k1(float* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 64, 1, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_m64_k3(float* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 64, 3, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}

// The bf16 forwards of at most 32 output channels (the UNet's first level,
// its largest maps) compiled for three blocks an SM instead of two (at most
// 80 registers a thread: 24 warps an SM instead of 16), the A/B of
// MINIDIFFUSION_CONV_BLOCKS=3: with two channel chunks a tile at 32 channels,
// each block waits for its first loads with little to overlap them but other
// blocks. Same code, same results; ptxas spills 24 bytes in _k3, 44 in
// gn_k3, 32 in gn_k3_v and 52 in gn_k1_v at this bound, none in the others
// (m32_k1 is the default kernel again: it runs at three blocks already).
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_m32_k1_b3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                                 const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 1>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_m32_k3_b3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                                 const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_gn_m32_k1_b3(float* y, const float* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 32, 1, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_gn_m32_k3_b3(float* y, const float* x, const uint4* wp, const float* bias,
                                    const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 32, 3, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_m32_k1_v_b3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 1, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_m32_k3_v_b3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_gn_m32_k1_v_b3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 32, 1, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_gn_m32_k3_v_b3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 32, 3, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}

extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_xbf16_m32_k3_b3(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                     const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3, unsigned short>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_xbf16_m32_k3_v_b3(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                       const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3, unsigned short, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}

// The bf16 3×3 forwards of bf16 storage storing y in bf16 too
// (conv::ForwardOutBf16, times 1 where the host asks no factor): the
// resnets' conv1 at inference with MINIDIFFUSION_BF16_ACTIVATIONS=on, whose
// one reader, norm2, widens it — autocast's bf16 conv output. The sums of
// the f32-output _v kernels, rounded as they are stored.
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_xbf16_ybf16_m32_k3_v_b3(unsigned short* y, const unsigned short* x, const uint4* wp,
                                             const float* bias, const float* sample_bias, const float* residual,
                                             conv::Shape s, float times, int times_rows) {
    same::forward<mma::Bf16, 32, 3, unsigned short, false, true, false, false, same::BN, conv::ForwardOutBf16>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_ybf16_m64_k3_v(unsigned short* y, const unsigned short* x, const uint4* wp,
                                          const float* bias, const float* sample_bias, const float* residual,
                                          conv::Shape s, float times, int times_rows) {
    same::forward<mma::Bf16, 64, 3, unsigned short, false, true, false, false, same::BN, conv::ForwardOutBf16>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s);
}

// … reading a bf16 residual (conv::ForwardOutT<unsigned short>, widened as
// loaded) into f32 y: the up resnets' conv2 with bf16 activations, whose
// skip (the 1×1 shortcut over x ⧺ skip) is stored in bf16. The sums of the
// f32-residual kernels on the widened residual, bit for bit.
extern "C" __global__ void __launch_bounds__(256, 3)
    conv2d_same_bf16_xbf16_rbf16_m32_k3_v_b3(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                             const float* sample_bias, const unsigned short* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3, unsigned short, false, true, false, false, same::BN,
                  conv::ForwardOutT<unsigned short>>(conv::ForwardOutT<unsigned short>{y, bias, sample_bias, residual, s},
                                                     x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_rbf16_m64_k3_v(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                                          const float* sample_bias, const unsigned short* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 3, unsigned short, false, true, false, false, same::BN,
                  conv::ForwardOutT<unsigned short>>(conv::ForwardOutT<unsigned short>{y, bias, sample_bias, residual, s},
                                                     x, wp, s);
}

// The bf16 3×3 forward of at most 32 output channels over 256-pixel tiles
// (same::forward's TN = WIDE_BN: 32 × 32 warp tiles), the A/B of
// MINIDIFFUSION_CONV_WIDE=on. The host takes it where a 256-pixel tile is
// whole rows of one image or whole images with a patch of at most
// WIDE_PATCH_MAX pixels (the UNet's 32×32 and 16×16 maps). The same sums in
// the same order as the 128-pixel kernels, bit for bit.
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m32_k3_wide(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                                 const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3, float, false, false, false, false, same::WIDE_BN>(
        conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}

// The 3×3 forward of x's nearest 2× upsampling (x [N, C, H/2, W/2], s the
// conv's shape at H × W), read in place: same::forward's UP.
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_up_m32_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                                 const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 32, 3, float, false, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_up_m64_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                                 const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 64, 3, float, false, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_up_m32_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                                  const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3, float, false, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_up_m64_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                                  const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 3, float, false, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}

// The stride-2 3×3 forward with padding 1 (s: OH = H/2, OW = W/2, H and W
// even): same::forward's DOWN, 32-row blocks. The UNet's downsamplers,
// which the generic implicit GEMM ran at ~27 TFLOP/s (GPU run 8: 360 µs a
// call at n 2048, 2.7 % of sampling).
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_f32_down_m32_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                                const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 32, 3, float, false, false, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s},
                                                                        x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_down_m32_k3(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                                 const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3, float, false, false, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s},
                                                                      x, wp, s);
}

// The forward kernels above that read f32 input, staging their patch with
// float4s: the same values in the same places (see forward). The host takes
// them for an f32 input with W a multiple of 4 at a 16-byte aligned address.
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_m32_k1_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 32, 1, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_m32_k3_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 32, 3, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_m64_k1_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 64, 1, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_m64_k3_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Tf32x3, 64, 3, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m32_k1_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 1, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m32_k3_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 32, 3, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m64_k1_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 1, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_m64_k3_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    same::forward<mma::Bf16, 64, 3, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_gn_m32_k1_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Tf32x3, 32, 1, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_gn_m32_k3_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Tf32x3, 32, 3, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_gn_m64_k1_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Tf32x3, 64, 1, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_f32_gn_m64_k3_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Tf32x3, 64, 3, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_m32_k1_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 32, 1, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_m32_k3_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 32, 3, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_m64_k1_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 64, 1, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_m64_k3_v(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward<mma::Bf16, 64, 3, float, true, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}

// Partial weight gradients dw_part [splits, OC, C, K, K] of a same conv
// (OW even at bf16): split z = blockIdx.z sums 128-pixel tiles
// [z·tiles_per_split, …), the patch staged as `layout` says (its words within
// wg_words(BM)). Grid (⌈C/CT⌉, ⌈OC/BM⌉, splits), 256 threads; CT = 16 for
// BM 64, 32 for BM 32. (The bf16 1×1 kernels are bound to four blocks an
// SM: the patch layout's strides took them from 63 to 69 registers, three.)
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_weight_grad_f32_m32_k1(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Tf32x3, 32, 1>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_weight_grad_f32_m32_k3(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Tf32x3, 32, 3>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_weight_grad_f32_m64_k1(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Tf32x3, 64, 1>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_same_weight_grad_f32_m64_k3(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Tf32x3, 64, 3>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 4)
    conv2d_same_weight_grad_bf16_m32_k1(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Bf16, 32, 1>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_weight_grad_bf16_m32_k3(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Bf16, 32, 3>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 4)
    conv2d_same_weight_grad_bf16_m64_k1(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Bf16, 64, 1>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_weight_grad_bf16_m64_k3(float* dw_part, const float* dy, const float* x, conv::Shape s,
                                          same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Bf16, 64, 3>(dw_part, dy, x, s, layout, tiles_per_split);
}

// The bf16 weight gradient reading x from bf16 storage.
extern "C" __global__ void __launch_bounds__(256, 4)
    conv2d_same_weight_grad_bf16_xbf16_m32_k1(float* dw_part, const float* dy, const unsigned short* x, conv::Shape s,
                                                same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Bf16, 32, 1>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_weight_grad_bf16_xbf16_m32_k3(float* dw_part, const float* dy, const unsigned short* x, conv::Shape s,
                                                same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Bf16, 32, 3>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 4)
    conv2d_same_weight_grad_bf16_xbf16_m64_k1(float* dw_part, const float* dy, const unsigned short* x, conv::Shape s,
                                                same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Bf16, 64, 1>(dw_part, dy, x, s, layout, tiles_per_split);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_weight_grad_bf16_xbf16_m64_k3(float* dw_part, const float* dy, const unsigned short* x, conv::Shape s,
                                                same::WgLayout layout, int tiles_per_split) {
    same::weight_grad<mma::Bf16, 64, 3>(dw_part, dy, x, s, layout, tiles_per_split);
}

// The 1×1 forward (same::forward_1x1): y [N, OC, OH, OW] = conv1x1(x) +
// bias + sample_bias + residual with the same-conv packed weights, the same
// bits as conv2d_same_<precision>_m<BM>_k1; P a multiple of 4, x 16-byte
// aligned (the host checks). Grid ⌈N·P/128⌉ · ⌈OC/BM⌉ (conv::block_tile), 256
// threads.
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_f32_m32(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                       const float* residual, conv::Shape s) {
    same::forward_1x1<mma::Tf32x3, 32>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_f32_m64(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                       const float* residual, conv::Shape s) {
    same::forward_1x1<mma::Tf32x3, 64>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_m32(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                        const float* residual, conv::Shape s) {
    same::forward_1x1<mma::Bf16, 32>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_m64(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                        const float* residual, conv::Shape s) {
    same::forward_1x1<mma::Bf16, 64>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
// The 1×1 forward with the input's group norm (+ SiLU) applied as it is
// staged (NORM; pro as the same convs' _gn_ kernels take it): the bits of
// the norm written out and conv2d_1x1_<precision>_m<BM> after it.
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_f32_gn_m32(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                          const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward_1x1<mma::Tf32x3, 32, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_f32_gn_m64(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                          const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward_1x1<mma::Tf32x3, 64, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_gn_m32(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                           const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward_1x1<mma::Bf16, 32, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_gn_m64(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                           const float* residual, conv::Shape s, conv::Prologue pro) {
    same::forward_1x1<mma::Bf16, 64, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
// The 1×1 forward of a concatenation x ⧺ x2 along the channels, read
// where its parts lie (forward_1x1's CAT; x [N, c1, H, W], x2 [N, C − c1, H,
// W], c1 a multiple of 32): the bits of the 1×1 over the written concatenation.
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_f32_cat_m32(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                           const float* residual, conv::Shape s, const float* x2, int c1) {
    same::forward_1x1<mma::Tf32x3, 32, float, false, conv::ForwardOut, true>(
        conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{}, x2, c1);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_f32_cat_m64(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                           const float* residual, conv::Shape s, const float* x2, int c1) {
    same::forward_1x1<mma::Tf32x3, 64, float, false, conv::ForwardOut, true>(
        conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{}, x2, c1);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_cat_m32(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                            const float* residual, conv::Shape s, const float* x2, int c1) {
    same::forward_1x1<mma::Bf16, 32, float, false, conv::ForwardOut, true>(
        conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{}, x2, c1);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_cat_m64(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
                            const float* residual, conv::Shape s, const float* x2, int c1) {
    same::forward_1x1<mma::Bf16, 64, float, false, conv::ForwardOut, true>(
        conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{}, x2, c1);
}
// The bf16 1×1 forward of a concatenation storing y in bf16 (times 1 where
// the host asks no factor): the up resnets' shortcut with bf16 activations,
// read only by conv2's epilogue (conv2d_same_bf16_xbf16_rbf16_*).
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_cat_ybf16_m32(unsigned short* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, const float* x2, int c1,
                                  float times, int times_rows) {
    same::forward_1x1<mma::Bf16, 32, float, false, conv::ForwardOutBf16, true>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s,
        conv::Prologue{}, x2, c1);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_cat_ybf16_m64(unsigned short* y, const float* x, const uint4* wp, const float* bias,
                                  const float* sample_bias, const float* residual, conv::Shape s, const float* x2, int c1,
                                  float times, int times_rows) {
    same::forward_1x1<mma::Bf16, 64, float, false, conv::ForwardOutBf16, true>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s,
        conv::Prologue{}, x2, c1);
}
// The bf16 1×1 forwards storing y in bf16, its channels below times_rows
// times `times` (conv::ForwardOutBf16), plain and with the input's norm: the
// attention block's q, k and v projections at inference, apart or packed,
// whose one reader (the attention's bf16 products) rounds them to bf16 as it
// stages them (q times c) — the same bits, half the bytes written and read.
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_ybf16_m32(unsigned short* y, const float* x, const uint4* wp, const float* bias,
                              const float* sample_bias, const float* residual, conv::Shape s, float times,
                              int times_rows) {
    same::forward_1x1<mma::Bf16, 32, float, false, conv::ForwardOutBf16>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_ybf16_m64(unsigned short* y, const float* x, const uint4* wp, const float* bias,
                              const float* sample_bias, const float* residual, conv::Shape s, float times,
                              int times_rows) {
    same::forward_1x1<mma::Bf16, 64, float, false, conv::ForwardOutBf16>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_gn_ybf16_m32(unsigned short* y, const float* x, const uint4* wp, const float* bias,
                                 const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro,
                                 float times, int times_rows) {
    same::forward_1x1<mma::Bf16, 32, float, true, conv::ForwardOutBf16>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_gn_ybf16_m64(unsigned short* y, const float* x, const uint4* wp, const float* bias,
                                 const float* sample_bias, const float* residual, conv::Shape s, conv::Prologue pro,
                                 float times, int times_rows) {
    same::forward_1x1<mma::Bf16, 64, float, true, conv::ForwardOutBf16>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_xbf16_m32(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                              const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward_1x1<mma::Bf16, 32, unsigned short>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
extern "C" __global__ void __launch_bounds__(256)
    conv2d_1x1_bf16_xbf16_m64(float* y, const unsigned short* x, const uint4* wp, const float* bias,
                              const float* sample_bias, const float* residual, conv::Shape s) {
    same::forward_1x1<mma::Bf16, 64, unsigned short>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s);
}
