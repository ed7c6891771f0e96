// The fused diffusion updates: noisify for training and one sampler step
// (DDPM and DDIM share it). Noise element i is normal number start + i of the
// Philox stream (seed, offset) — the same numbers as the CPU twin. One thread
// per Philox block of 4 elements; products and sums are rounded one by one
// (__fmul_rn/__fadd_rn) in the CPU's order, so the results match it exactly.
#include "common.cuh"
#include "philox.cuh"

// Mirrors ops::diffusion::StepCoefs.
struct StepCoefs {
    float eps_scale;      // x̂0 = (x_t − eps_scale·ε̂)·inv_sqrt_abar
    float inv_sqrt_abar;
    float clip;           // clip x̂0 to [−clip, clip] when > 0
    float c_x0;           // x_prev = c_x0·x̂0 + c_xt·x_t + c_eps·ε̂ + sigma·z
    float c_xt;
    float c_eps;
    float sigma;
};

// A noise level per element from the model's variance output var (the DDPM
// variance_type "learned" and "learned_range" of diffusers), in place of the
// scalar sigma: σ_i = sigma·s_i with
//   mode 0 (learned):       s_i = √var_i                 (var is the variance)
//   mode 1 (learned_range): s_i = exp(a + b·var_i)       (var interpolates log β̃_t … log β_t:
//                           ½·(frac·log β_t + (1−frac)·log β̃_t), frac = (var+1)/2, as a + b·var)
// Mirrors ops::diffusion::LearnedSigma.
struct LearnedSigma {
    int mode;
    float a;
    float b;
};

__device__ __forceinline__ float learned_scale(const LearnedSigma& ls, float var) {
    return ls.mode == 0 ? sqrtf(var) : expf(__fadd_rn(ls.a, __fmul_rn(ls.b, var)));
}

// x_t[i] = a[s]·x0[i] + b[s]·ε_i and eps[i] = ε_i, s = i / per_sample,
// a = √ᾱ_t, b = √(1 − ᾱ_t) of sample s's timestep.
extern "C" __global__ void diffusion_noisify(float* xt, float* eps, const float* x0, const float* a, const float* b,
                                             int per_sample, unsigned long long seed, unsigned long long offset,
                                             unsigned long long start, int n) {
    const int first = (int)(start & 3);
    const int blocks = (first + n + 3) / 4;
    for (int k = global_index(); k < blocks; k += grid_stride()) {
        const philox::F4 z = philox::to_normals(philox::block(seed, offset, (start >> 2) + (unsigned long long)k));
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
            const int i = 4 * k + lane - first;
            if (i < 0 || i >= n) continue;
            const int s = i / per_sample;
            const float e = z.v[lane];
            eps[i] = e;
            xt[i] = __fadd_rn(__fmul_rn(a[s], x0[i]), __fmul_rn(b[s], e));
        }
    }
}

// One sampler update for every element:
//   x̂0 = clip((x_t − eps_scale·ε̂)·inv_sqrt_abar)
//   x_prev = c_x0·x̂0 + c_xt·x_t + c_eps·ε̂ (+ sigma·z when sigma > 0)
// x0_out may be null (x̂0 not wanted). prev may be xt (each element is read
// before it is written, by the same thread). With var (not null) the noise
// is sigma·s_i·z, s_i from var as `ls` says.
__device__ void step_elements(float* prev, float* x0_out, const float* xt, const float* eps, const StepCoefs& c,
                              unsigned long long seed, unsigned long long offset, unsigned long long start, int n,
                              const float* var = nullptr, LearnedSigma ls = LearnedSigma{}) {
    const int first = (int)(start & 3);
    const int blocks = (first + n + 3) / 4;
    for (int k = global_index(); k < blocks; k += grid_stride()) {
        philox::F4 z = {{0.0f, 0.0f, 0.0f, 0.0f}};
        if (c.sigma > 0.0f) z = philox::to_normals(philox::block(seed, offset, (start >> 2) + (unsigned long long)k));
#pragma unroll
        for (int lane = 0; lane < 4; ++lane) {
            const int i = 4 * k + lane - first;
            if (i < 0 || i >= n) continue;
            float x0 = __fmul_rn(__fsub_rn(xt[i], __fmul_rn(c.eps_scale, eps[i])), c.inv_sqrt_abar);
            if (c.clip > 0.0f) x0 = fminf(fmaxf(x0, -c.clip), c.clip);
            float v = __fadd_rn(__fadd_rn(__fmul_rn(c.c_x0, x0), __fmul_rn(c.c_xt, xt[i])), __fmul_rn(c.c_eps, eps[i]));
            if (c.sigma > 0.0f) {
                const float sigma = var ? __fmul_rn(c.sigma, learned_scale(ls, var[i])) : c.sigma;
                v = __fadd_rn(v, __fmul_rn(sigma, z.v[lane]));
            }
            prev[i] = v;
            if (x0_out) x0_out[i] = x0;
        }
    }
}

extern "C" __global__ void diffusion_step(float* prev, float* x0_out, const float* xt, const float* eps, StepCoefs c,
                                          unsigned long long seed, unsigned long long offset, unsigned long long start,
                                          int n) {
    step_elements(prev, x0_out, xt, eps, c, seed, offset, start, n);
}

// diffusion_step with the noise level of each element from the model's
// variance output var (same shape as x_t).
extern "C" __global__ void diffusion_step_learned(float* prev, float* x0_out, const float* xt, const float* eps,
                                                  const float* var, StepCoefs c, LearnedSigma ls,
                                                  unsigned long long seed, unsigned long long offset,
                                                  unsigned long long start, int n) {
    step_elements(prev, x0_out, xt, eps, c, seed, offset, start, n, var, ls);
}

// A sampler step's values in device memory, so that a step captured once in
// a CUDA graph reads each step's values when it is replayed. Mirrors
// ops::diffusion::StepParams.
struct StepParams {
    StepCoefs c;
    float t;                   // the timestep the model is called with
    unsigned long long seed;   // the noise: Philox stream (seed, offset),
    unsigned long long offset; // element i is normal number start + i
    unsigned long long start;
    float* x0_out;             // where x̂0 goes, or null
};

// *p = value and timesteps[0..batch) = value.t: one launch before each
// replay of a captured step (it is not part of the graph).
extern "C" __global__ void diffusion_set_step(StepParams* p, float* timesteps, int batch, StepParams value) {
    const int i = global_index();
    if (i == 0) *p = value;
    if (i < batch) timesteps[i] = value.t;
}

// The sampler update in place, x ← x_prev, with the values in *p: the same
// arithmetic as diffusion_step.
extern "C" __global__ void diffusion_step_in_place(float* x, const float* eps, const StepParams* p, int n) {
    const StepParams q = *p;
    step_elements(x, q.x0_out, x, eps, q.c, q.seed, q.offset, q.start, n);
}

// ---- Dynamic thresholding of x̂0 (diffusers' _threshold_sample) ----
//
// Per sample of `per` elements (one block a sample):
//   r = ratio·(per − 1) (rounded in f32), lo = ⌊r⌋, frac = r − lo
//   a, b = the lo-th and (lo + 1)-th smallest |x| (b = a past the end)
//   q = a + frac·(b − a) when frac < 0.5, else b − (b − a)·(1 − frac)   (torch.lerp)
//   s = min(max(q, 1), max_value)     (torch.clamp(q, 1, max): the max wins when < 1)
//   out = clamp(x, −s, s)/s           (NaN stays NaN)
// a and b are found exactly by radix selection on the bits of |x|: for
// non-negative floats (NaN included) the unsigned order of the bits is the
// host's total order. Four passes of 8 bits, most significant first, each a
// histogram of the elements whose bits match the prefix found so far.
constexpr int THRESHOLD_THREADS = 256;

// The bits of the k-th smallest |x[i]|, i < per (0 ≤ k < per). Every thread
// of the block calls it; the same value comes back to each.
__device__ unsigned int select_abs_bits(const float* x, int per, unsigned int k) {
    __shared__ unsigned int hist[256];
    __shared__ unsigned int found[2];  // prefix, k within it
    unsigned int prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < per; i += blockDim.x) {
            const unsigned int key = __float_as_uint(x[i]) & 0x7fffffffu;
            if ((key & mask) == prefix) atomicAdd(&hist[key >> shift & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            // the bin holding rank k among the matching elements (k < their count)
            unsigned int bin = 0;
            while (hist[bin] <= k) k -= hist[bin++];
            found[0] = prefix | bin << shift;
            found[1] = k;
        }
        __syncthreads();
        prefix = found[0];
        k = found[1];
        mask |= 255u << shift;
        __syncthreads();  // hist and found are rewritten next pass
    }
    return prefix;
}

// out[s·per + i] = thresholded x0[s·per + i] for sample s = blockIdx.x.
// 0 ≤ ratio ≤ 1 (the host checks).
extern "C" __global__ void __launch_bounds__(THRESHOLD_THREADS)
diffusion_threshold(float* out, const float* x0, int per, float ratio, float max_value) {
    const float* x = x0 + (size_t)blockIdx.x * per;
    float* y = out + (size_t)blockIdx.x * per;
    const float rank = __fmul_rn(ratio, (float)(per - 1));
    const float lo = floorf(rank), frac = __fsub_rn(rank, lo);
    const unsigned int k = (unsigned int)lo;
    const float a = __uint_as_float(select_abs_bits(x, per, k));
    const float b = __uint_as_float(select_abs_bits(x, per, min(k + 1, (unsigned int)per - 1)));
    const float d = __fsub_rn(b, a);
    const float q = frac < 0.5f ? __fadd_rn(a, __fmul_rn(frac, d)) : __fsub_rn(b, __fmul_rn(d, __fsub_rn(1.0f, frac)));
    const float s = fminf(fmaxf(q, 1.0f), max_value);  // (fmaxf/fminf drop a NaN, as Rust's max/min)
    for (int i = threadIdx.x; i < per; i += blockDim.x) {
        const float v = x[i];
        y[i] = v != v ? v : __fdiv_rn(fminf(fmaxf(v, -s), s), s);
    }
}
