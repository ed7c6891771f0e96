// 2× resampling of NCHW images, plane by plane (a plane is one (n, c) image of
// H×W values): nearest 2× upsampling and 2×2 average pooling with ceil mode
// (PyTorch's AvgPool2d(2, ceil_mode=True)), forward and backward. One thread
// per output element in a grid-stride loop (nearest upsampling of even rows:
// one per pair of input values), so consecutive threads write consecutive
// addresses; the sums are taken in the CPU twin's order.
#include "common.cuh"

namespace resample {

// The in-bounds part of window i along a dim of length len: [2i, min(2i + 2, len)).
__device__ __forceinline__ int window_end(int i, int len) { return min(2 * i + 2, len); }

// y [planes, 2H, 2W]: y[pl, oy, ox] = x[pl, oy/2, ox/2] (stored as TY: f32,
// or rounded to bf16 for the bf16 path's upsampler conv).
template <class TY>
__device__ __forceinline__ void upsample(TY* y, const float* x, int planes, int h, int w) {
    const int ow = 2 * w, per_plane = 4 * h * w, n = planes * per_plane;
    for (int i = global_index(); i < n; i += grid_stride()) {
        const int pl = i / per_plane, r = i - pl * per_plane;
        const int oy = r / ow, ox = r - oy * ow;
        store_as(y, i, x[pl * h * w + (oy / 2) * w + ox / 2]);
    }
}

}  // namespace resample

extern "C" __global__ void upsample_nearest2x_f32(float* y, const float* x, int planes, int h, int w) {
    resample::upsample(y, x, planes, h, w);
}

// The same for W even, f32: thread i takes x's pair of values 2i, 2i + 1
// (one row of one plane, as rows have an even length) and writes the 2×4
// block they become, (a, a, b, b) in rows 2r and 2r + 1, as two float4
// stores: a quarter of the threads, one division each instead of two per
// value (GPU run 7: the per-value kernel moved 1.08 TB/s, 2 % of sampling).
// x 8-byte and y 16-byte aligned.
extern "C" __global__ void upsample_nearest2x_pairs_f32(float* y, const float* x, int planes, int h, int w) {
    const int half = w / 2, n = planes * h * half;
    for (int i = global_index(); i < n; i += grid_stride()) {
        const int row = i / half, c = i - row * half;  // row = plane·H + r
        const float2 v = reinterpret_cast<const float2*>(x)[i];
        float* at = y + 4 * row * w + 4 * c;  // y's row 2·row (of 2W values), column 4c
        *reinterpret_cast<float4*>(at) = float4{v.x, v.x, v.y, v.y};
        *reinterpret_cast<float4*>(at + 2 * w) = float4{v.x, v.x, v.y, v.y};
    }
}

extern "C" __global__ void upsample_nearest2x_bf16(unsigned short* y, const float* x, int planes, int h, int w) {
    resample::upsample(y, x, planes, h, w);
}

// dx [planes, H, W] from dy [planes, 2H, 2W]:
//   dx[pl, i, j] = dy[2i, 2j] + dy[2i, 2j + 1] + dy[2i + 1, 2j] + dy[2i + 1, 2j + 1]   (that order)
extern "C" __global__ void upsample_nearest2x_backward_f32(float* dx, const float* dy, int planes, int h, int w) {
    const int ow = 2 * w, n = planes * h * w;
    for (int idx = global_index(); idx < n; idx += grid_stride()) {
        const int pl = idx / (h * w), r = idx - pl * h * w;
        const int i = r / w, j = r - i * w;
        const float* r0 = dy + (size_t)pl * 4 * h * w + (2 * i) * ow;  // row 2i of the plane
        const float* r1 = r0 + ow;                                     // row 2i + 1
        dx[idx] = r0[2 * j] + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1];
    }
}

// y [planes, ⌈H/2⌉, ⌈W/2⌉]: y[pl, i, j] = (Σ_{r ∈ [2i, min(2i+2, H)), c ∈ [2j, min(2j+2, W))} x[pl, r, c]) / count,
// count = the number of in-bounds terms (4 inside, 2 on an odd edge, 1 in an odd corner).
extern "C" __global__ void avg_pool2x2_f32(float* y, const float* x, int planes, int h, int w) {
    const int oh = (h + 1) / 2, ow = (w + 1) / 2, n = planes * oh * ow;
    for (int idx = global_index(); idx < n; idx += grid_stride()) {
        const int pl = idx / (oh * ow), rem = idx - pl * oh * ow;
        const int i = rem / ow, j = rem - i * ow;
        const int r1 = resample::window_end(i, h), c1 = resample::window_end(j, w);
        const float* plane = x + (size_t)pl * h * w;
        float sum = 0.0f;
        for (int r = 2 * i; r < r1; ++r)
            for (int c = 2 * j; c < c1; ++c) sum += plane[r * w + c];
        y[idx] = sum / (float)((r1 - 2 * i) * (c1 - 2 * j));
    }
}

// dx [planes, H, W] from dy [planes, ⌈H/2⌉, ⌈W/2⌉]: dx[pl, r, c] = dy[pl, r/2, c/2] / count(r/2, c/2).
extern "C" __global__ void avg_pool2x2_backward_f32(float* dx, const float* dy, int planes, int h, int w) {
    const int oh = (h + 1) / 2, ow = (w + 1) / 2, n = planes * h * w;
    for (int idx = global_index(); idx < n; idx += grid_stride()) {
        const int pl = idx / (h * w), rem = idx - pl * h * w;
        const int r = rem / w, c = rem - r * w;
        const int i = r / 2, j = c / 2;
        const int count = (resample::window_end(i, h) - 2 * i) * (resample::window_end(j, w) - 2 * j);
        dx[idx] = dy[(size_t)pl * oh * ow + i * ow + j] / (float)count;
    }
}

// ---- FIR 2× resampling (diffusers' upsample_2d / downsample_2d with the
// default FIR kernel (1, 3, 3, 1), as the score-SDE Skip blocks use it) ----
//
// Per axis, taps a = 0..3 with k = (1, 3, 3, 1); the 2-D weight of taps (a, b)
// is k_a·k_b/64 down and k_a·k_b/16 up (exact in f32):
//   down: y[o] = Σ_a w_a·x[2o + a − 1]                 (zeros outside; L_out = (L − 2)/2 + 1)
//   up:   y[o] = Σ_a w_a·x[(o + a − 2)/2], o + a even  (zeros outside; L_out = 2L)
// (upfirdn2d with pad (1, 1) down, (2, 1) up.) The backward is the adjoint:
// each input element gathers the outputs whose taps read it. The sums run
// over a (rows) then b (columns), one fused multiply-add each, as the CPU
// twin's (so the two agree bit for bit).
namespace fir {

// The input index output o reads with tap a along an axis of `len` inputs, or −1.
__device__ __forceinline__ int source(int o, int a, int len, bool up) {
    int i;
    if (up) {
        if ((o + a) & 1) return -1;
        i = (o + a - 2) / 2;
        if (o + a < 2) return -1;
    } else {
        i = 2 * o + a - 1;
    }
    return i >= 0 && i < len ? i : -1;
}

// The output index whose tap a reads input i (the adjoint of `source`), or −1.
__device__ __forceinline__ int reader(int i, int a, int out_len, bool up) {
    int o;
    if (up) {
        o = 2 * i + 2 - a;
    } else {
        if ((i + 1 - a) & 1) return -1;
        o = (i + 1 - a) / 2;
        if (i + 1 - a < 0) return -1;
    }
    return o >= 0 && o < out_len ? o : -1;
}

__device__ __forceinline__ float weight(int a, int b, bool up) {
    const float k[4] = {1.0f, 3.0f, 3.0f, 1.0f};
    return k[a] * k[b] * (up ? 1.0f / 16.0f : 1.0f / 64.0f);
}

}  // namespace fir

// y [planes, OH, OW] from x [planes, H, W] (OH, OW as above).
extern "C" __global__ void fir2x_f32(float* y, const float* x, int planes, int h, int w, int up) {
    const int oh = up ? 2 * h : (h - 2) / 2 + 1, ow = up ? 2 * w : (w - 2) / 2 + 1;
    const int n = planes * oh * ow;
    for (int idx = global_index(); idx < n; idx += grid_stride()) {
        const int pl = idx / (oh * ow), rem = idx - pl * oh * ow;
        const int oy = rem / ow, ox = rem - oy * ow;
        const float* plane = x + (size_t)pl * h * w;
        float sum = 0.0f;
        for (int a = 0; a < 4; ++a) {
            const int iy = fir::source(oy, a, h, up);
            if (iy < 0) continue;
            for (int b = 0; b < 4; ++b) {
                const int ix = fir::source(ox, b, w, up);
                if (ix >= 0) sum = fmaf(fir::weight(a, b, up), plane[iy * w + ix], sum);
            }
        }
        y[idx] = sum;
    }
}

// dx [planes, H, W] from dy [planes, OH, OW]: dx[i, j] = Σ over the taps (a, b)
// and outputs (o, p) that read (i, j) of w_ab·dy[o, p].
extern "C" __global__ void fir2x_backward_f32(float* dx, const float* dy, int planes, int h, int w, int up) {
    const int oh = up ? 2 * h : (h - 2) / 2 + 1, ow = up ? 2 * w : (w - 2) / 2 + 1;
    const int n = planes * h * w;
    for (int idx = global_index(); idx < n; idx += grid_stride()) {
        const int pl = idx / (h * w), rem = idx - pl * h * w;
        const int i = rem / w, j = rem - i * w;
        const float* plane = dy + (size_t)pl * oh * ow;
        float sum = 0.0f;
        for (int a = 0; a < 4; ++a) {
            const int o = fir::reader(i, a, oh, up);
            if (o < 0) continue;
            for (int b = 0; b < 4; ++b) {
                const int p = fir::reader(j, b, ow, up);
                if (p >= 0) sum = fmaf(fir::weight(a, b, up), plane[o * ow + p], sum);
            }
        }
        dx[idx] = sum;
    }
}
