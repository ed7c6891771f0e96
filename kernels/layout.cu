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
extern "C" __global__ void slab_copy(float* out, const float* in, int outer, int len, int inner, int in_axis, int in_start,
                                     int out_axis, int out_start) {
    const int n = outer * len * inner;
    for (int i = global_index(); i < n; i += grid_stride()) {
        const int k = i % inner;
        const int j = (i / inner) % len;
        const int o = i / (inner * len);
        out[(o * out_axis + out_start + j) * inner + k] = in[(o * in_axis + in_start + j) * inner + k];
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
