// Direct 3×3 same convolution (stride 1, padding 1) where one side has few
// channels: the UNet's conv_in (1 → 32) and conv_out (32 → 1). The
// tensor-core same conv (conv2d_same.cu) computes tiles of 32 output rows
// and 16-channel chunks: for conv_out 1 row of 32 is live, for conv_in 1
// channel of 16, and they cost what a 32 → 32 conv costs (GPU run 8's ncu
// at n 2048: conv_in 212 µs where writing its output takes ~65).
//
//   y[n, oc, i, j] = Σ_c Σ_{di,dj} W[oc, c, di, dj] · X[n, c, i + di − 1, j + dj − 1]  (+ epilogue)
//
// X outside the image is 0. At f32 the products are f32 FMAs; at bf16 both
// operands are rounded to bf16 first (the products are then exact in f32)
// and summed in f32 — the bf16 compute precision of ops::precision.
//
// Block: a TILE × TILE tile of one image's output pixels (a thread two,
// one above the other; blockIdx.x: image, then tile) and OCB output
// channels (blockIdx.y). Per chunk of CH input channels the block stages
// the (TILE + 2)² input window of each channel (zeros outside the image),
// group-normalised (+ SiLU) as it is staged when the conv applies the
// input's norm (conv::Prologue: the value groupnorm_forward writes, bit for
// bit), rounded as the precision wants, and the chunk's weights of its OCB
// channels; each thread then sums its pixels' 9 taps × CH channels into OCB
// accumulators each, the weights read by every thread at once
// (shared-memory broadcasts).
#include "common.cuh"
#include "conv2d.cuh"

namespace direct {

constexpr int TILE = 16;            // output pixels a block side
constexpr int WIN = TILE + 2;       // staged input pixels a side
constexpr int CH = 8;               // input channels a chunk
constexpr int THREADS = TILE * TILE / 2;  // a thread two pixels, one above the other

// A staged operand at the precision: as it is (f32), or rounded to bf16.
template <bool BF16>
__device__ __forceinline__ float operand(float v) {
    return BF16 ? bf16_value((unsigned short)bf16_bits(v)) : v;
}

// y = conv3x3(x, w) + epilogue for OCB output channels a block. x f32, or
// bf16 storage (TX = unsigned short: the values a bf16 operand rounds to).
// Grid (N·⌈H/TILE⌉·⌈W/TILE⌉, ⌈OC/OCB⌉), THREADS threads.
template <int OCB, bool BF16, class TX = float, bool NORM = false>
__device__ __forceinline__ void forward(const conv::ForwardOut& out, const TX* __restrict__ x,
                                        const float* __restrict__ w, const conv::Shape& s,
                                        const conv::Prologue& pro = conv::Prologue{}) {
    __shared__ float xs[CH][WIN * WIN];
    alignas(16) __shared__ float ws[CH][9][OCB];  // [channel][tap][output channel]: a tap's weights side by side
    const int tiles_w = (s.w + TILE - 1) / TILE, tiles = (s.h + TILE - 1) / TILE * tiles_w;
    const int n = blockIdx.x / tiles, tile = blockIdx.x - n * tiles;
    const int ti = tile / tiles_w, tj = tile - ti * tiles_w;
    const int oc0 = blockIdx.y * OCB, ocs = min(OCB, s.oc - oc0);  // live output channels
    const long long hw = (long long)s.h * s.w;
    const TX* xn = x + (long long)n * s.c * hw;

    // this thread's pixels: rows 2r and 2r + 1 of the tile, column lj
    const int r = threadIdx.x / TILE, lj = threadIdx.x % TILE;
    const int i = ti * TILE + 2 * r, j = tj * TILE + lj;
    float acc[2][OCB];
#pragma unroll
    for (int o = 0; o < OCB; ++o) acc[0][o] = acc[1][o] = 0.0f;

    for (int c0 = 0; c0 < s.c; c0 += CH) {
        const int live = min(CH, s.c - c0);
        __syncthreads();  // the previous chunk is no longer read
        // the window: input rows ti·TILE − 1 … + TILE, columns likewise
        for (int e = threadIdx.x; e < CH * WIN * WIN; e += THREADS) {
            const int c = e / (WIN * WIN), p = e - c * (WIN * WIN);
            const int yi = ti * TILE - 1 + p / WIN, xj = tj * TILE - 1 + p % WIN;
            float v = 0.0f;
            if (c < live && yi >= 0 && yi < s.h && xj >= 0 && xj < s.w) {
                v = load_f32(xn, (c0 + c) * hw + (long long)yi * s.w + xj);
                if (NORM) v = conv::normed_value(v, pro.affine[(long long)n * s.c + c0 + c], pro.silu);
                v = operand<BF16>(v);
            }
            xs[c][p] = v;
        }
        // the weights of output channels oc0 … oc0 + OCB − 1 (0 past OC or the chunk)
        for (int e = threadIdx.x; e < CH * 9 * OCB; e += THREADS) {
            const int o = e % OCB, tap = e / OCB % 9, c = e / (9 * OCB);
            const int oc = oc0 + o;
            ws[c][tap][o] = c < live && oc < s.oc ? operand<BF16>(w[((long long)oc * s.c + c0 + c) * 9 + tap]) : 0.0f;
        }
        __syncthreads();
        // per channel: the 4 × 3 window of the two pixels (12 loads for 18
        // taps), a tap's OCB weights in OCB/4 16-byte loads, 18·OCB FMAs (the
        // weights of channels past OC are 0)
        for (int c = 0; c < live; ++c) {
            float v[4][3];
#pragma unroll
            for (int dy = 0; dy < 4; ++dy)
#pragma unroll
                for (int dx = 0; dx < 3; ++dx) v[dy][dx] = xs[c][(2 * r + dy) * WIN + lj + dx];
#pragma unroll
            for (int tap = 0; tap < 9; ++tap)
#pragma unroll
                for (int o4 = 0; o4 < OCB; o4 += 4) {
                    const float4 wv = *reinterpret_cast<const float4*>(&ws[c][tap][o4]);
                    const float wo[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
                    for (int q = 0; q < 4; ++q)
#pragma unroll
                        for (int h = 0; h < 2; ++h) acc[h][o4 + q] = fmaf(wo[q], v[h + tap / 3][tap % 3], acc[h][o4 + q]);
                }
        }
    }
    if (j >= s.w) return;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (i + h >= s.h) continue;
        const int pix = (i + h) * s.w + j;
#pragma unroll
        for (int o = 0; o < OCB; ++o)
            if (o < ocs) out.store_terms(out.terms_at(n, pix, oc0 + o), oc0 + o, acc[h][o]);
    }
}

}  // namespace direct

// y [N, OC, H, W] = conv3x3(x [N, C, H, W], w [OC, C, 3, 3]), stride 1,
// padding 1, + bias + sample_bias + residual (each may be null), w as it is
// (not packed). _o4: up to 4 output channels a block (few outputs:
// conv_out); _o32: up to 32 (few inputs: conv_in). _f32 / _bf16: the precision; _xbf16: x
// from bf16 storage; _gn: the input's group norm (+ SiLU) applied as it is
// staged (pro). Grid (N·⌈H/16⌉·⌈W/16⌉, ⌈OC/OCB⌉), 128 threads.
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_f32_o4(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                         const float* residual, conv::Shape s) {
    direct::forward<4, false>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s);
}
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_f32_o32(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                          const float* residual, conv::Shape s) {
    direct::forward<32, false>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s);
}
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_bf16_o4(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                          const float* residual, conv::Shape s) {
    direct::forward<4, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s);
}
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_bf16_o32(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                           const float* residual, conv::Shape s) {
    direct::forward<32, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s);
}
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_bf16_xbf16_o4(float* y, const unsigned short* x, const float* w, const float* bias,
                                const float* sample_bias, const float* residual, conv::Shape s) {
    direct::forward<4, true, unsigned short>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s);
}
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_bf16_xbf16_o32(float* y, const unsigned short* x, const float* w, const float* bias,
                                 const float* sample_bias, const float* residual, conv::Shape s) {
    direct::forward<32, true, unsigned short>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s);
}
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_f32_gn_o4(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                            const float* residual, conv::Shape s, conv::Prologue pro) {
    direct::forward<4, false, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s, pro);
}
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_f32_gn_o32(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                             const float* residual, conv::Shape s, conv::Prologue pro) {
    direct::forward<32, false, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s, pro);
}
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_bf16_gn_o4(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                             const float* residual, conv::Shape s, conv::Prologue pro) {
    direct::forward<4, true, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s, pro);
}
extern "C" __global__ void __launch_bounds__(128)
    conv2d_direct_bf16_gn_o32(float* y, const float* x, const float* w, const float* bias, const float* sample_bias,
                              const float* residual, conv::Shape s, conv::Prologue pro) {
    direct::forward<32, true, float, true>(conv::ForwardOut{y, bias, sample_bias, residual, s}, x, w, s, pro);
}
