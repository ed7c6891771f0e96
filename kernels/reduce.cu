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
