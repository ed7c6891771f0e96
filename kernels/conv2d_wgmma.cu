// The bf16 3×3 same-conv forward on Hopper's warpgroup MMA (wgmma, sm_90a):
// the UNet's 3×3 convolutions at inference, beside conv2d_same.cu's
// mma.sync kernels (the host's MINIDIFFUSION_CONV_WGMMA switch; taken only on
// a compute-capability 9.0 GPU running sm_90a code, or emulated).
//
// Why: GPU run 8's ncu found the same-conv forwards waiting on the L1's
// load/store pipe (67–78 % of its wavefronts, the tensor pipe 15–29 % busy),
// about half of those wavefronts the mma.sync fragment loads. wgmma's tensor
// cores read both operands from shared memory themselves; the load/store
// pipe is left with the staging.
//
// The GEMM, as conv2d_same.cu's: D[m, n] = Σ_{chunk, tap, k} A[m, (k, tap)] · B[(k, tap), n]
// with m an output channel (64 a block: wgmma's M; the packing pads rows
// to 64 with zeros), k 16 input channels a chunk, n an output pixel.
//
// The patch. A block computes 128 output pixels — S whole rows of one
// image, or 128/P whole images ("segments"), the tiles of conv2d_same.cu —
// from a patch laid out so that each tap's B is one strided matrix. Patch
// rows R = −1 … segs·(S+1) − 1 are pw = OW + 1 pixels each (OW columns and a
// zero column) at pixel p = (R + 1)·pw + col + 1; row R = seg·(S+1) + r holds
// input row oh0 + r of image img0 + seg (r = S: the row below the tile, 0
// past the image), R = −1 the row above the tile. A row's zero column is the
// next row's left halo (pixel 0 the first row's), and in a multi-image tile
// the row below one image (zeros) is the next one's top halo. Output pixel
// (seg, r, c) is "virtual pixel" v = (seg·(S+1) + r)·pw + c, and its tap
// (dy, dx) ∈ {−1, 0, 1}² reads patch pixel
//   v + (dy + 1)·pw + (dx + 1),
// the same shift for every v: B of a tap is the patch from its shift on,
// one virtual pixel after another. Virtual pixels on zero columns or halo
// rows are computed and dropped. The block's two warpgroups split them:
// warpgroup h takes v = h·N … h·N + N − 1, N = 72 where all NV ≤ 144 (the
// 32×32 and 16×16 maps: NV = 131, 135) or 128 where NV ≤ 256 (8×8: 152,
// 4×4: 194) — the host picks the kernel and checks every read falls in the
// patch.
//
// Shared memory of a chunk. The patch: a pixel's 16 channels as two 16-byte
// halves, channels 0–7 and 8–15 as bf16 pairs, each half in its own plane —
// pair j of pixel p at word (j / 4)·PLANE + 4p + j % 4 — so that B's core
// matrices (8 pixels × 8 channels) are 128 contiguous bytes (SBO 128) and
// its two k halves a plane apart (LBO). A: each tap's 64 × 16 tile of the
// chunk in core matrices, pair kp of row m at word
//   tap·512 + (m / 8)·64 + (kp / 4)·32 + (m % 8)·4 + kp % 4   (LBO 128, SBO 256 bytes),
// scattered from the packing the mma.sync kernels read
// (conv2d_pack_same_bf16: a 16-byte load holds rows g and g + 8 of a
// 16-row block at pairs t and t + 4, four words that land in four core
// matrices, each warp store 32 consecutive words).
//
// Per chunk: stage (the next chunk's loads were issued during this one's
// products), fence the proxies, barrier, issue the next chunk's loads, 9
// wgmma a warpgroup (one a tap), wait, barrier. Staging is by 4-pixel
// groups, as conv2d_same.cu's _v kernels: an item is pair j of 4 pixels of a
// row, two 16-byte loads of f32 (x 16-byte aligned, OW a multiple of 4: the
// host checks) or two 8-byte loads of bf16 storage, 4 words stored; items
// outside the image, the zero columns and the pixels past the patch hold the
// zeros written at the start.
#include "common.cuh"
#include "conv2d.cuh"
#include "mma.cuh"

namespace wg {

constexpr int THREADS = 256;                  // two warpgroups
constexpr int BM = 64;                        // output channels a block (wgmma's M)
constexpr int TILE = 128;                     // output pixels a block
constexpr int KK = 9;                         // taps
constexpr int CHUNK = 16;                     // input channels a chunk (wgmma's K)
constexpr int PLANE = 320;                    // patch pixels a plane holds (host: WGMMA_PLANE)
constexpr int A_TAP_WORDS = BM * CHUNK / 2;   // 512 pair-words: one tap's 64 × 16 tile
constexpr int A_VECS = BM / 16 * KK * 32;     // 16-byte loads of a chunk's A (1152)
constexpr int A_LOADS = (A_VECS + THREADS - 1) / THREADS;
constexpr int ITEMS = 2;                      // patch items a thread, at most (host: WGMMA_ITEMS / 256)
constexpr int M_ALIGN = 64;                   // the packing's row padding (conv2d_same.cu's)

// y = conv3x3(x, A) + epilogue at bf16 (products of bf16 operands summed in
// f32), A packed by conv2d_pack_same_bf16 for this shape; x f32 or bf16
// storage (TX = unsigned short); NORM: x's group norm (+ SiLU) applied as it
// is staged (pro, as conv2d_same.cu's _gn kernels); UP: x is [N, C, H/2,
// W/2] (f32) and the conv's input (H × W, as s says) its nearest 2×
// upsampling, read in place (the UNet's upsamplers: an item's 4 pixels are
// 2 of x's, one 8-byte load a channel). Grid ⌈N·P/128⌉ · ⌈OC/64⌉
// (conv::block_tile), 256 threads; N: the virtual pixels a warpgroup (72 or 128).
// Out: how y is stored (conv::ForwardOut f32, conv::ForwardOutBf16 rounded).
template <int N, class TX, bool NORM, bool UP = false, class Out = conv::ForwardOut>
__device__ __forceinline__ void forward(const Out& out, const TX* x, const uint4* wp, const conv::Shape& s,
                                        const conv::Prologue& pro) {
    static_assert(!NORM || sizeof(TX) == sizeof(float), "the norm is applied to f32 input");
    static_assert(!UP || (sizeof(TX) == sizeof(float) && !NORM), "an upsampled input is f32, read as it is");
    using Reg = typename mma::Quad<TX>::Reg;
    alignas(16) __shared__ unsigned int As[KK * A_TAP_WORDS];
    alignas(16) __shared__ unsigned int patch[2 * PLANE * 4];

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, t = lane % 4, h = warp / 4;
    const int P = s.oh * s.ow;
    const int XW = UP ? s.w / 2 : s.w, HW = UP ? (s.h / 2) * XW : s.h * s.w;  // x's row and channel strides
    const conv::BlockTile bt = conv::block_tile((s.oc + BM - 1) / BM);
    const int n0 = bt.n_tile * TILE, m0 = bt.m_block * BM;
    const int img0 = n0 / P, oh0 = (n0 - img0 * P) / s.ow;
    const int S = P >= TILE ? TILE / s.ow : s.oh, segs = P >= TILE ? 1 : TILE / P;
    const int pw = s.ow + 1, groups = s.ow / 4;
    const int chunks = (s.c + CHUNK - 1) / CHUNK;
    const int m_blocks = (s.oc + M_ALIGN - 1) / M_ALIGN * (M_ALIGN / 16);

    // Item i: pair j of the 4 pixels 4·grp … of patch row R (from −1): its
    // offset in x at the chunk's first channel (−1 outside the image), its
    // first patch word, its image · C + 2j (the affine of its first channel
    // at the chunk's first), and 2j.
    int src[ITEMS], dst[ITEMS], nc[ITEMS], pair[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int e = tid + THREADS * i, j = e % 8, grp = e / 8 % groups, R = e / 8 / groups - 1;
        const int seg = R < 0 ? 0 : R / (S + 1), r = R < 0 ? -1 : R - seg * (S + 1);
        const int img = img0 + seg, iy = oh0 + r;
        const bool inside = R < segs * (S + 1) && img < s.n && iy >= 0 && iy < s.h;
        const int at = UP ? (iy / 2) * XW + 2 * grp : iy * XW + 4 * grp;
        src[i] = inside ? img * s.c * HW + at + 2 * j * HW : -1;
        dst[i] = (j / 4) * PLANE * 4 + ((R + 1) * pw + 4 * grp + 1) * 4 + j % 4;
        nc[i] = img * s.c + 2 * j;
        pair[i] = 2 * j;
    }

    for (int i = tid; i < 2 * PLANE * 4; i += THREADS) patch[i] = 0u;
    // A's 16-row blocks past OC are zeros in the packing: zeroed here once and
    // never staged (a 32-channel conv loads half the A of a 64-row block)
    for (int i = tid; i < KK * A_TAP_WORDS; i += THREADS) As[i] = 0u;
    bool a_live[A_LOADS];
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        const int v = tid + THREADS * i;
        a_live[i] = v < A_VECS && m0 + 16 * (v / 32 / KK) < s.oc;
    }

    uint4 a_regs[A_LOADS];
    Reg lo[ITEMS], hi[ITEMS];
    [[maybe_unused]] float4 aff_lo[NORM ? ITEMS : 1], aff_hi[NORM ? ITEMS : 1];
    auto fetch = [&](int q) {
        const uint4* a_src = wp + ((size_t)q * m_blocks + m0 / 16) * KK * 32;
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i)
            if (a_live[i]) a_regs[i] = a_src[tid + THREADS * i];
        const int c0 = CHUNK * q;
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            if (src[i] < 0) continue;
            const int c = c0 + pair[i];  // the item's channels c, c + 1 (zeros past C)
            if constexpr (UP) {
                // pixels 2g', 2g' + 1 of x's row, each twice
                const float2 zero2 = make_float2(0.0f, 0.0f);
                const float* xf = reinterpret_cast<const float*>(x);
                const float2 a = c < s.c ? *reinterpret_cast<const float2*>(xf + src[i] + c0 * HW) : zero2;
                const float2 b = c + 1 < s.c ? *reinterpret_cast<const float2*>(xf + src[i] + (c0 + 1) * HW) : zero2;
                lo[i] = make_float4(a.x, a.x, a.y, a.y);
                hi[i] = make_float4(b.x, b.x, b.y, b.y);
            } else {
                lo[i] = c < s.c ? mma::Quad<TX>::load(x, src[i] + c0 * HW) : mma::Quad<TX>::zero();
                hi[i] = c + 1 < s.c ? mma::Quad<TX>::load(x, src[i] + (c0 + 1) * HW) : mma::Quad<TX>::zero();
            }
            if constexpr (NORM) {
                aff_lo[i] = c < s.c ? pro.affine[nc[i] + c0] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                aff_hi[i] = c + 1 < s.c ? pro.affine[nc[i] + c0 + 1] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
    };
    auto stage = [&](int q) {
#pragma unroll
        for (int i = 0; i < A_LOADS; ++i) {
            if (!a_live[i]) continue;
            const int v = tid + THREADS * i;
            // v = (16-row block mb, tap, lane 4g' + t'): rows 16mb + g', + 8 at pairs t', t' + 4
            const int l = v % 32, tap = v / 32 % KK, mb = v / 32 / KK;
            unsigned int* a = As + tap * A_TAP_WORDS + 2 * mb * 64 + l;  // (m/8)·64 + (m%8)·4 + kp%4, m % 8 = l / 4
            a[0] = a_regs[i].x;
            a[64] = a_regs[i].y;
            a[32] = a_regs[i].z;
            a[96] = a_regs[i].w;
        }
        const int c0 = CHUNK * q;
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            if (src[i] < 0) continue;
            unsigned int w[4];
            if constexpr (NORM) {
                const int c = c0 + pair[i];  // (zeros past C stay 0)
                float4& a = lo[i];
                float4& b = hi[i];
                if (c < s.c)
                    a = make_float4(conv::normed_value(a.x, aff_lo[i], pro.silu), conv::normed_value(a.y, aff_lo[i], pro.silu),
                                    conv::normed_value(a.z, aff_lo[i], pro.silu), conv::normed_value(a.w, aff_lo[i], pro.silu));
                if (c + 1 < s.c)
                    b = make_float4(conv::normed_value(b.x, aff_hi[i], pro.silu), conv::normed_value(b.y, aff_hi[i], pro.silu),
                                    conv::normed_value(b.z, aff_hi[i], pro.silu), conv::normed_value(b.w, aff_hi[i], pro.silu));
            }
            conv::quad_words(w, lo[i], hi[i]);
#pragma unroll
            for (int k = 0; k < 4; ++k) patch[dst[i] + 4 * k] = w[k];
        }
    };

    float acc[N / 2];
#pragma unroll
    for (int r = 0; r < N / 2; ++r) acc[r] = 0.0f;

    fetch(0);
    __syncthreads();  // the zeros before any chunk's words
    for (int q = 0; q < chunks; ++q) {
        stage(q);
        mma::fence_proxy_async();
        __syncthreads();
        if (q + 1 < chunks) fetch(q + 1);
        mma::wgmma_fence();
#pragma unroll
        for (int tap = 0; tap < KK; ++tap) {
            const unsigned int* a = As + tap * A_TAP_WORDS;
            const unsigned int* b = patch + 4 * (h * N + (tap / 3) * pw + tap % 3);
            mma::Wgmma<N>::ss(acc, mma::smem_desc(a, 128, 256), a, mma::smem_desc(b, PLANE * 16, 128), b);
        }
        mma::wgmma_commit();
        mma::wgmma_wait<0>();
#pragma unroll
        for (int r = 0; r < N / 2; ++r) mma::fence_operand(acc[r]);
        __syncthreads();  // the next chunk overwrites As and the patch
    }

    // The epilogue: acc[4i + 2rr + half] is channel m[rr] at virtual pixel
    // v = h·N + 8i + 2t + half, stored (with its terms, summed as
    // conv::ForwardOut::sum) where v is an output pixel of the batch. y may
    // alias the residual, so the residual loads of BATCH n8 blocks are issued
    // before their stores (one load latency a batch, not one an output).
    int m[2];
    m[0] = m0 + 16 * (warp % 4) + g, m[1] = m[0] + 8;
    float bias[2] = {0.0f, 0.0f};
#pragma unroll
    for (int rr = 0; rr < 2; ++rr)
        if (out.bias != nullptr && m[rr] < s.oc) bias[rr] = out.bias[m[rr]];
    // Virtual pixel v → (segment, row, column) by float reciprocals: (v + ½)/pw
    // is at least ½/pw from an integer, far above the f32 error at v < 2¹⁰.
    const float per_pw = 1.0f / pw, per_rows = 1.0f / (S + 1);
    const int v0 = h * N + 2 * t;
    constexpr int BATCH = 4;
#pragma unroll
    for (int i0 = 0; i0 < N / 8; i0 += BATCH) {
        int at[BATCH][2][2];  // output index, −1 where none
        int sb_at[BATCH][2][2];
        float r_[BATCH][2][2];  // residual terms
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
            if (i0 + b >= N / 8) break;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int v = v0 + 8 * (i0 + b) + half;
                const int R = (int)((v + 0.5f) * per_pw), c = v - R * pw;
                const int seg = (int)((R + 0.5f) * per_rows), r = R - seg * (S + 1), img = img0 + seg;
                const bool pixel = c < s.ow && r < S && seg < segs && img < s.n;
#pragma unroll
                for (int rr = 0; rr < 2; ++rr) {
                    const bool live = pixel && m[rr] < s.oc;
                    at[b][half][rr] = live ? (img * s.oc + m[rr]) * P + (oh0 + r) * s.ow + c : -1;
                    sb_at[b][half][rr] = img * s.oc + m[rr];
                    r_[b][half][rr] = live && out.residual != nullptr ? load_f32(out.residual, at[b][half][rr]) : 0.0f;
                }
            }
        }
#pragma unroll
        for (int b = 0; b < BATCH; ++b) {
            if (i0 + b >= N / 8) break;
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
                for (int rr = 0; rr < 2; ++rr) {
                    if (at[b][half][rr] < 0) continue;
                    float v = acc[4 * (i0 + b) + 2 * rr + half];
                    if (out.bias != nullptr) v += bias[rr];
                    if (out.sample_bias != nullptr) v += out.sample_bias[sb_at[b][half][rr]];
                    if (out.residual != nullptr) v += r_[b][half][rr];
                    out.put(at[b][half][rr], m[rr], v);
                }
        }
    }
}

}  // namespace wg

// y [N, OC, OH, OW] = conv3x3(x [N, C, H, W]) + bias + sample_bias + residual
// (each may be null) at bf16 with wgmma, the weights packed by
// conv2d_pack_same_bf16: x f32 (16-byte aligned), bf16 storage (_xbf16,
// 8-byte aligned), f32 group-normalised (+ SiLU) as it is staged (_gn), or
// f32 [N, C, H/2, W/2] upsampled 2× as it is staged (_up);
// _n72 / _n128 the virtual pixels a warpgroup. Grid ⌈N·OH·OW/128⌉ ·
// ⌈OC/64⌉ (conv::block_tile), 256 threads, two blocks an SM (28 KB of
// shared memory each; at that bound ptxas spills 8 bytes in _wg_n128 and 56
// in _gn_wg_n128, none in the others). sm_90a only (elsewhere they trap).
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_wg_n72(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    wg::forward<72, float, false>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{});
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_wg_n128(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    wg::forward<128, float, false>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{});
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_wg_n72(float* y, const unsigned short* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    wg::forward<72, unsigned short, false>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{});
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_wg_n128(float* y, const unsigned short* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    wg::forward<128, unsigned short, false>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{});
}
// … of bf16 storage storing y in bf16 too (conv::ForwardOutBf16): the
// resnets' conv1 with MINIDIFFUSION_BF16_ACTIVATIONS=on, as conv2d_same.cu's
// conv2d_same_bf16_xbf16_ybf16_* (the sums of the f32-output kernels, rounded).
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_ybf16_wg_n72(unsigned short* y, const unsigned short* x, const uint4* wp, const float* bias,
        const float* sample_bias, const float* residual, conv::Shape s, float times, int times_rows) {
    wg::forward<72, unsigned short, false, false, conv::ForwardOutBf16>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s, conv::Prologue{});
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_ybf16_wg_n128(unsigned short* y, const unsigned short* x, const uint4* wp, const float* bias,
        const float* sample_bias, const float* residual, conv::Shape s, float times, int times_rows) {
    wg::forward<128, unsigned short, false, false, conv::ForwardOutBf16>(
        conv::ForwardOutBf16{{nullptr, bias, sample_bias, residual, s}, y, times, times_rows}, x, wp, s, conv::Prologue{});
}
// … of bf16 storage reading a bf16 residual into f32 y: the up resnets'
// conv2 with bf16 activations, as conv2d_same.cu's _rbf16_ kernels.
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_rbf16_wg_n72(float* y, const unsigned short* x, const uint4* wp, const float* bias,
        const float* sample_bias, const unsigned short* residual, conv::Shape s) {
    wg::forward<72, unsigned short, false, false, conv::ForwardOutT<unsigned short>>(
        conv::ForwardOutT<unsigned short>{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{});
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_xbf16_rbf16_wg_n128(float* y, const unsigned short* x, const uint4* wp, const float* bias,
        const float* sample_bias, const unsigned short* residual, conv::Shape s) {
    wg::forward<128, unsigned short, false, false, conv::ForwardOutT<unsigned short>>(
        conv::ForwardOutT<unsigned short>{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{});
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_wg_n72(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    wg::forward<72, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_gn_wg_n128(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s, conv::Prologue pro) {
    wg::forward<128, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, pro);
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_up_wg_n72(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    wg::forward<72, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{});
}
extern "C" __global__ void __launch_bounds__(256, 2)
    conv2d_same_bf16_up_wg_n128(float* y, const float* x, const uint4* wp, const float* bias, const float* sample_bias,
        const float* residual, conv::Shape s) {
    wg::forward<128, float, false, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, wp, s, conv::Prologue{});
}
