// Copies that move data: strided gather (permute, broadcast) and slab copies
// along one axis (concat, narrow). Writes are coalesced: consecutive threads
// write consecutive output elements.
#include "common.cuh"

// out[i] = in[offset(i)], offset under p.strides (0 along broadcast axes).
extern "C" __global__ void strided_copy(float* out, const float* in, Strided1 p, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) out[i] = in[strided_offset(p, i)];
}

// Tensors seen as [outer, axis, inner]: copies `len` entries of the axis,
// in[(o·in_axis + in_start + j)·inner + k] → out[(o·out_axis + out_start + j)·inner + k].
// For each o the slab is one contiguous run of run = len·inner values on both
// sides, from in_base + o·in_step to out_base + o·out_step, so no element
// needs a division: x over the run, y over outer (grid-stride: the host
// caps the grid's y). With `vec4` (the host checks run, bases, steps and
// pointers are multiples of 4 floats) a thread copies a float4.
extern "C" __global__ void slab_copy(float* __restrict__ out, const float* __restrict__ in, int outer, int run,
                                     int in_base, int in_step, int out_base, int out_step, int vec4) {
    for (int o = blockIdx.y; o < outer; o += gridDim.y) {
        const float* src = in + in_base + (long long)o * in_step;
        float* dst = out + out_base + (long long)o * out_step;
        if (vec4) {
            const float4* src4 = reinterpret_cast<const float4*>(src);
            float4* dst4 = reinterpret_cast<float4*>(dst);
            for (int i = global_index(); i < run / 4; i += grid_stride()) dst4[i] = src4[i];
        } else {
            for (int i = global_index(); i < run; i += grid_stride()) dst[i] = src[i];
        }
    }
}

// Row gather: out[r] = in[rows[r]] for rows of `row_len` elements (batches
// from a dataset kept on the device). `rows` holds int32 values.
extern "C" __global__ void gather_rows(float* out, const float* in, const int* rows, int row_len, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) {
        const int r = i / row_len;
        out[i] = in[rows[r] * row_len + (i - r * row_len)];
    }
}

// out[i] = in[0] for i < n: one value repeated (the gradient of a sum or a
// mean over its input's shape) without strided_copy's per-element index
// math; with vec4 (out 16-byte aligned, as the host checks) float4 stores and
// the tail one by one. grid-stride.
extern "C" __global__ void broadcast_value_f32(float* out, const float* in, int n, int vec4) {
    const float v = in[0];
    const int n4 = vec4 ? n / 4 : 0;
    float4* out4 = reinterpret_cast<float4*>(out);
    for (int i = global_index(); i < n4; i += grid_stride()) out4[i] = make_float4(v, v, v, v);
    for (int i = 4 * n4 + global_index(); i < n; i += grid_stride()) out[i] = v;
}
