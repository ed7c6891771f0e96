// Optimiser updates in place on device buffers.
//
// AdamW, element for element the f32 operation order of src/optim/adamw_math.rs
// (PyTorch's single-tensor AdamW: mul_, lerp_, mul_+addcmul_, addcdiv_). The
// scalar factors are computed on the host in f64 and rounded to f32 there. Every
// product, sum, quotient and square root is an explicitly rounded intrinsic so
// that nvcc cannot contract a product and a sum into a fused multiply-add:
//
//   p = p·decay
//   m = m + w·(g − m)                 when |w| < 0.5 (else m = g − (g − m)·(1 − w))
//   v = v·b2 + (c2·g)·g
//   d = sqrt(v) / bc2_sqrt + eps
//   p = p + (neg_step·m) / d
#include "common.cuh"

// Mirrors optim::cuda::AdamWScalars (src/optim/cuda.rs).
struct AdamWScalars {
    float decay;     // f32(1 − lr·wd)
    float weight;    // f32(1 − β1), lerp weight
    float b2;        // β2
    float c2;        // f32(1 − β2), addcmul value
    float bc2_sqrt;  // f32(sqrt(1 − β2^t))
    float neg_step;  // f32(−lr / (1 − β1^t)), addcdiv value
    float eps;
    int n;
};

// Element i's update, as above.
__device__ __forceinline__ void adamw_update(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                                             int i, const AdamWScalars& s) {
    // ATen's lerp picks its formula by the size of the weight (Lerp.h is_lerp_weight_small).
    const bool small = fabsf(s.weight) < 0.5f;
    const float g = grad[i], m = exp_avg[i], v = exp_avg_sq[i];
    const float pd = __fmul_rn(param[i], s.decay);
    const float mi = small ? __fadd_rn(m, __fmul_rn(s.weight, __fsub_rn(g, m)))
                           : __fsub_rn(g, __fmul_rn(__fsub_rn(g, m), __fsub_rn(1.0f, s.weight)));
    const float vi = __fadd_rn(__fmul_rn(v, s.b2), __fmul_rn(__fmul_rn(s.c2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
    param[i] = __fadd_rn(pd, __fdiv_rn(__fmul_rn(s.neg_step, mi), denom));
    exp_avg[i] = mi;
    exp_avg_sq[i] = vi;
}

// All parameters of a step in one launch (the seed UNet has ~430 tensors; a
// launch each, mostly launch latency, was 2.8 % of run 6's training step). Mirrors
// optim::cuda::AdamWSegment: one parameter's buffers and step factors, and
// the first of its ⌈n / ADAMW_CHUNK⌉ blocks.
struct AdamWSegment {
    float* param;
    const float* grad;
    float* exp_avg;
    float* exp_avg_sq;
    AdamWScalars s;
    int first_block;
    int pad;
};
#define ADAMW_CHUNK 2048  // elements a block updates

// grid = Σ ⌈n_k / ADAMW_CHUNK⌉ blocks, block = 256; segments by first_block,
// ascending. Block b finds its segment (the last with first_block ≤ b) by
// binary search and updates that segment's chunk b − first_block.
extern "C" __global__ void __launch_bounds__(256) adamw_step_multi_f32(const AdamWSegment* segs, int count) {
    const int b = (int)blockIdx.x;
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (segs[mid].first_block <= b) lo = mid;
        else hi = mid - 1;
    }
    const AdamWSegment& seg = segs[lo];
    const int start = (b - seg.first_block) * ADAMW_CHUNK, end = min(start + ADAMW_CHUNK, seg.s.n);
    for (int i = start + (int)threadIdx.x; i < end; i += (int)blockDim.x)
        adamw_update(seg.param, seg.grad, seg.exp_avg, seg.exp_avg_sq, i, seg.s);
}
