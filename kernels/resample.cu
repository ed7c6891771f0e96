// 2× resampling of NCHW images, plane by plane (a plane is one (n, c) image of
// H×W values): nearest 2× upsampling and 2×2 average pooling with ceil mode
// (PyTorch's AvgPool2d(2, ceil_mode=True)), forward and backward. One thread
// per output element in a grid-stride loop, so consecutive threads write
// consecutive addresses; the sums are taken in the CPU twin's order.
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
