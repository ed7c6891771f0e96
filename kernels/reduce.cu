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
