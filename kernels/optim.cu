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

extern "C" __global__ void adamw_step_f32(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                                          AdamWScalars s) {
    // ATen's lerp picks its formula by the size of the weight (Lerp.h is_lerp_weight_small).
    const bool small = fabsf(s.weight) < 0.5f;
    const float one_minus_weight = __fsub_rn(1.0f, s.weight);
    for (int i = global_index(); i < s.n; i += grid_stride()) {
        const float g = grad[i], m = exp_avg[i], v = exp_avg_sq[i];
        const float pd = __fmul_rn(param[i], s.decay);
        const float mi = small ? __fadd_rn(m, __fmul_rn(s.weight, __fsub_rn(g, m)))
                               : __fsub_rn(g, __fmul_rn(__fsub_rn(g, m), one_minus_weight));
        const float vi = __fadd_rn(__fmul_rn(v, s.b2), __fmul_rn(__fmul_rn(s.c2, g), g));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
        param[i] = __fadd_rn(pd, __fdiv_rn(__fmul_rn(s.neg_step, mi), denom));
        exp_avg[i] = mi;
        exp_avg_sq[i] = vi;
    }
}
