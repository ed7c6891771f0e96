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
//
// where g is the gradient times the step's clipping factor (1 without
// clipping; x·1 = x, so the same bits as unscaled).
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
                                             int i, const AdamWScalars& s, float clip) {
    // ATen's lerp picks its formula by the size of the weight (Lerp.h is_lerp_weight_small).
    const bool small = fabsf(s.weight) < 0.5f;
    const float g = __fmul_rn(grad[i], clip), m = exp_avg[i], v = exp_avg_sq[i];
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

// The segment holding block b: the last with first_block ≤ b (segments by
// first_block, ascending), by binary search.
__device__ __forceinline__ const AdamWSegment& segment_of(const AdamWSegment* segs, int count, int b) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (segs[mid].first_block <= b) lo = mid;
        else hi = mid - 1;
    }
    return segs[lo];
}

// grid = Σ ⌈n_k / ADAMW_CHUNK⌉ blocks, block = 256. Block b updates chunk
// b − first_block of its segment; every gradient is read times clip[0] (the
// factor grad_clip_factor wrote; 1 without clipping).
extern "C" __global__ void __launch_bounds__(256) adamw_step_multi_f32(const AdamWSegment* segs, int count, const float* clip) {
    const AdamWSegment& seg = segment_of(segs, count, (int)blockIdx.x);
    const int start = ((int)blockIdx.x - seg.first_block) * ADAMW_CHUNK, end = min(start + ADAMW_CHUNK, seg.s.n);
    const float factor = clip[0];
    for (int i = start + (int)threadIdx.x; i < end; i += (int)blockDim.x)
        adamw_update(seg.param, seg.grad, seg.exp_avg, seg.exp_avg_sq, i, seg.s, factor);
}

// Clipping by the global L2 norm, as PyTorch's clip_grad_norm_(max_norm):
//   ‖g‖ = sqrt(Σ_k Σ_i g_k[i]²),  clip = min(1, max_norm / (‖g‖ + 1e-6))
// First the sums of squares, in f64, a chunk a block over the same blocks as
// the update: partials[b] = Σ_{i in chunk b} g[i]².
extern "C" __global__ void __launch_bounds__(256) grad_sumsq_multi_f32(const AdamWSegment* segs, int count, double* partials) {
    __shared__ double scratch[32];
    const AdamWSegment& seg = segment_of(segs, count, (int)blockIdx.x);
    const int start = ((int)blockIdx.x - seg.first_block) * ADAMW_CHUNK, end = min(start + ADAMW_CHUNK, seg.s.n);
    double acc = 0.0;
    for (int i = start + (int)threadIdx.x; i < end; i += (int)blockDim.x) {
        const double g = (double)seg.grad[i];
        acc += g * g;
    }
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Then one block: the partials summed in a fixed order (the same bits every
// run), out[0] = the factor (1 when max_norm ≤ 0: no clipping, the norm
// reported only), out[1] = ‖g‖ as f32.
extern "C" __global__ void __launch_bounds__(256) grad_clip_factor(const double* partials, int blocks, float max_norm, float* out) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (int b = (int)threadIdx.x; b < blocks; b += (int)blockDim.x) acc += partials[b];
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) {
        const float norm = (float)sqrt(acc);
        const float coef = __fdiv_rn(max_norm, __fadd_rn(norm, 1e-6f));
        out[0] = max_norm > 0.0f && coef < 1.0f ? coef : 1.0f;
        out[1] = norm;
    }
}
