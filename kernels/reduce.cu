// Sums over any set of axes (sum, mean, sum_to, the bias gradients), with
// f64 accumulation as the CPU twin does.
#include "common.cuh"

// A reduction seen as: output element o (row-major over `kept`) sums the
// input over every index r of `reduced`; input offset =
// strided(kept, o) + strided(reduced, r). Mirrors ops::reduce::cuda::ReduceParams.
struct ReduceParams {
    Strided1 kept;     // dims of the kept axes, input strides of those axes
    Strided1 reduced;  // dims of the summed axes, input strides of those axes
    int reduce_count;  // product of reduced.dims
};

// One block per output element: threads stride over the reduced indices,
// then a block reduction. out[o] = Σ_r in[base(o) + off(r)].
extern "C" __global__ void __launch_bounds__(256) reduce_sum(float* out, const float* in, ReduceParams p, int out_count) {
    __shared__ double scratch[32];
    for (int o = blockIdx.x; o < out_count; o += gridDim.x) {
        const int base = strided_offset(p.kept, o);
        double acc = 0.0;
        for (int r = threadIdx.x; r < p.reduce_count; r += blockDim.x) acc += in[base + strided_offset(p.reduced, r)];
        acc = block_sum_d(acc, scratch);
        if (threadIdx.x == 0) out[o] = (float)acc;
    }
}

// Few outputs over many inputs (a conv bias gradient: C sums of N·H·W each)
// would give the GPU only C blocks. Split each sum into `splits` chunks of
// `chunk` reduced indices: block b sums chunk b % splits of output b / splits
//   part[b] = Σ_{r ∈ [s·chunk, min(count, (s + 1)·chunk))} in[base(o) + off(r)]
// in f64, and reduce_sum_finish adds the parts of each output in chunk order
// (deterministic). part holds out_count·splits doubles.
extern "C" __global__ void __launch_bounds__(256)
    reduce_sum_split(double* part, const float* in, ReduceParams p, int out_count, int splits, int chunk) {
    __shared__ double scratch[32];
    for (int b = blockIdx.x; b < out_count * splits; b += gridDim.x) {
        const int o = b / splits, s = b - o * splits;
        const int base = strided_offset(p.kept, o);
        const int r_end = min(p.reduce_count, (s + 1) * chunk);
        double acc = 0.0;
        for (int r = s * chunk + threadIdx.x; r < r_end; r += blockDim.x) acc += in[base + strided_offset(p.reduced, r)];
        acc = block_sum_d(acc, scratch);
        if (threadIdx.x == 0) part[b] = acc;
    }
}

// out[o] = Σ_{s < splits} part[o·splits + s], in order.
extern "C" __global__ void reduce_sum_finish(float* out, const double* part, int out_count, int splits) {
    for (int o = global_index(); o < out_count; o += grid_stride()) {
        double acc = 0.0;
        for (int s = 0; s < splits; ++s) acc += part[o * splits + s];
        out[o] = (float)acc;
    }
}

// Sums of contiguous runs, for reductions whose last axes are summed (a
// conv's bias and per-image bias gradients: [N, C, H·W] → [N, C] rows):
//   out[row] = Σ_{l < len} in[row·len + l]
// One warp per row, 8 rows per 256-thread block; each lane adds every 32nd
// element (float4 loads when len % 4 == 0, so the warp reads 512 contiguous
// bytes a step) in f64, then a warp sum. The generic reduce_sum gives each
// output a whole block and an index division per term; this reads at memory
// speed. grid = ⌈rows/8⌉, block = 256.
extern "C" __global__ void __launch_bounds__(256) reduce_sum_rows(float* out, const float* in, int rows, int len) {
    const int row = (int)blockIdx.x * 8 + (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp leaves together
    const float* r = in + (long long)row * len;
    double acc = 0.0;
    if (len % 4 == 0) {
        const float4* r4 = reinterpret_cast<const float4*>(r);
        for (int i = lane; i < len / 4; i += 32) {
            const float4 v = r4[i];
            acc += (double)v.x;
            acc += (double)v.y;
            acc += (double)v.z;
            acc += (double)v.w;
        }
    } else {
        for (int i = lane; i < len; i += 32) acc += (double)r[i];
    }
    acc = warp_sum_d(acc);
    if (lane == 0) out[row] = (float)acc;
}
