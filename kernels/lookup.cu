// Embedding lookup (PyTorch's nn.Embedding) and its table gradient.
// Indices arrive as f32 (the UNet's timesteps and class labels are f32 [N]);
// an index that is not a whole number in [0, rows) gives a NaN row, as the
// host cannot check device-resident indices without a sync (the CPU twin
// refuses them instead: src/ops/lookup).
#include "common.cuh"

// The table row index[i] names, or −1 when it names none.
__device__ __forceinline__ int lookup_row(float f, int rows) {
    return (f >= 0.0f && f < (float)rows && f == floorf(f)) ? (int)f : -1;
}

// out[i, c] = table[index[i], c]; one thread per output element.
extern "C" __global__ void embedding_lookup_f32(float* out, const float* table, const float* index, int n, int rows, int dim) {
    const int total = n * dim;
    for (int idx = global_index(); idx < total; idx += grid_stride()) {
        const int i = idx / dim, c = idx % dim;
        const int r = lookup_row(index[i], rows);
        out[idx] = r >= 0 ? table[r * dim + c] : __int_as_float(0x7fc00000);
    }
}

// dtable[r, c] = Σ_{i : index[i] = r} dy[i, c]; one thread per table element,
// summing the N rows in order (deterministic, no atomics: N is a batch).
extern "C" __global__ void embedding_lookup_backward_f32(float* dtable, const float* dy, const float* index, int n, int rows, int dim) {
    const int total = rows * dim;
    for (int idx = global_index(); idx < total; idx += grid_stride()) {
        const int r = idx / dim, c = idx % dim;
        float sum = 0.0f;
        for (int i = 0; i < n; ++i) {
            if (lookup_row(index[i], rows) == r) sum += dy[i * dim + c];
        }
        dtable[idx] = sum;
    }
}
