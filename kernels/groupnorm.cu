// Group normalisation, optionally fused with SiLU (the UNet always chains
// them), forward and backward. Mirrors src/ops/group_norm/cpu.rs.
//
// x is [N, C, S] contiguous (S = the flattened spatial dims); the C channels
// split into G groups of Cg = C/G, and group (n, g) is the contiguous run of
// M = Cg·S values starting at (n·G + g)·M. Per group:
//   μ = Σx/M,  σ² = Σ(x−μ)²/M (biased, two passes in f64),  rstd = 1/√(σ²+eps)
//   x̂ = (x−μ)·rstd,  u = x̂·γ_c + β_c,  y = u            (plain group norm)
//                                       y = u·σ(u)       (fused SiLU)
// γ = 1, β = 0 when the pointers are null.
#include "common.cuh"

#define GN_THREADS 256

namespace groupnorm {

// σ(u) and silu'(u) = σ(u)·(1 + u·(1 − σ(u))), as ops::activation::cpu.
__device__ __forceinline__ float silu_slope(float u) {
    const float s = sigmoid_fast(u);
    return s * (1.0f + u * (1.0f - s));
}

// y = act((x − μ)·(rstd·γ_c) + β_c) for one value, act = SiLU or the identity.
__device__ __forceinline__ float normalise(float x, float mu, float scale, float shift, int silu) {
    const float u = (x - mu) * scale + shift;
    return silu ? silu_fast(u) : u;
}

// Four consecutive values y[i..i+4] (i a multiple of 4, y 16-byte aligned):
// one float4 store, or four bf16s (rounded to nearest even) in one 8-byte store.
__device__ __forceinline__ void store4(float* y, long long i, float4 v) { *reinterpret_cast<float4*>(y + i) = v; }
__device__ __forceinline__ void store4(unsigned short* y, long long i, float4 v) {
    *reinterpret_cast<uint2*>(y + i) = make_uint2(bf16_pair(v.x, v.y), bf16_pair(v.z, v.w));
}

// The gradient reaching u: dy itself, or dy·silu'(u) for the fused op, with
// u = x̂·γ + β recomputed from x and the saved statistics.
__device__ __forceinline__ float grad_u(float dy, float xhat, float gamma, float beta, int silu) {
    return silu ? dy * silu_slope(xhat * gamma + beta) : dy;
}

// The channel c = i / S of a thread's element i = threadIdx.x + k·blockDim.x
// within its group, stepped along k with a carry (no division an element).
struct ChannelStep {
    int c, si, step_c, step_s;
    __device__ explicit ChannelStep(int s) : ChannelStep(s, (int)threadIdx.x, (int)blockDim.x) {}
    // from index `first`, `stride` a step
    __device__ ChannelStep(int s, int first, int stride)
        : c(first / s), si(first % s), step_c(stride / s), step_s(stride % s) {}
    __device__ void next(int s) {
        c += step_c;
        si += step_s;
        if (si >= s) {
            si -= s;
            ++c;
        }
    }
};

// A group's statistics, by the whole block (every thread gets them):
//   μ = Σx/M, σ² = Σ(x − μ)²/M in f64 (two passes), rounded to f32 as the CPU twin:
//   mu = (float)μ, rs = (float)(1/√(σ² + eps)).
__device__ __forceinline__ void stats(const float* __restrict__ xg, int m, float eps, double* scratch, float& mu,
                                      float& rs) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < m; i += blockDim.x) acc += (double)xg[i];
    const double mean_d = block_sum_d(acc, scratch) / (double)m;
    acc = 0.0;
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        const double dv = (double)xg[i] - mean_d;
        acc += dv * dv;
    }
    const double var = block_sum_d(acc, scratch) / (double)m;
    mu = (float)mean_d;
    rs = (float)(1.0 / sqrt(var + (double)eps));
}

// Forward: one block per group (n, g), grid-stride over the N·G groups.
//   pass 1: Σx                → μ           (f64 block sum)
//   pass 2: Σ(x−μ)²           → σ², rstd    (f64 block sum, around the f64 μ)
//   pass 3: y = act((x − μ)·(rstd·γ_c) + β_c)
// The statistics are stored as f32, mean[n·G + g] and rstd[n·G + g], exactly
// as the CPU twin rounds them; pass 3 uses those f32 values, as the CPU does.
// Consecutive threads read consecutive elements of the group (coalesced).
template <class TY>
__device__ __forceinline__ void forward(TY* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                        const float* __restrict__ x, const float* __restrict__ gamma,
                                        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s,
                                        float eps, int silu) {
    __shared__ double scratch[32];
    const int m = cg * s;
    for (int ng = blockIdx.x; ng < num_groups_total; ng += gridDim.x) {
        const int g = ng % groups;
        const float* xg = x + (long long)ng * m;
        TY* yg = y + (long long)ng * m;

        float mu, rs;
        stats(xg, m, eps, scratch, mu, rs);
        if (threadIdx.x == 0) {
            mean_out[ng] = mu;
            rstd_out[ng] = rs;
        }

        // y = act((x − μ)·(rstd·γ_c) + β_c), c = g·Cg + i/S (rounded to bf16 when stored so)
        ChannelStep at(s);
        for (int i = threadIdx.x; i < m; i += blockDim.x, at.next(s)) {
            const int ch = g * cg + at.c;
            const float scale = rs * (gamma ? gamma[ch] : 1.0f);
            const float shift = beta ? beta[ch] : 0.0f;
            store_as(yg, i, normalise(xg[i], mu, scale, shift, silu));
        }
    }
}

// The resident variant, for groups of m ≤ R·4·blockDim values with m and S
// multiples of 4 and x 16-byte aligned: each thread loads its float4s of the
// group once, all up front (R 16-byte loads in flight where the loops above
// have one 4-byte load), and both statistics passes and the normalisation
// read them from registers — one read of x instead of three. Thread t holds
// the group's float4s t + k·blockDim (k < R), zeros past m/4. The sums are
// the same f64 sums over other partial orders (the CPU twin's tolerance), the
// same for every R that holds the group; y is the same f32 formula, element
// by element. R is the fewest that hold the group (1, 2, 4, 8 or 12): the
// float4s a thread keeps set its registers, and so the blocks an SM runs
// (run 7, ncu: 12 float4s at 98 registers, two blocks an SM, 51 % of DRAM
// bandwidth on a group of 4 float4s a thread). 12 float4s cover the seed
// UNet's largest group (96 channels / 8 × 32×32).
#define GN_RESIDENT 12

// Where a group's M values lie: the first ka at a, the rest at b. One
// tensor: a the group's first value, ka = M (b unread). Two (x, then x2, the
// channels of a concatenation x ⧺ x2 that is never written: the UNet's up
// path, where a skip joins the map), from x and x2 as of_concat finds them.
struct Parts {
    const float* a;
    const float* b;
    int ka;
};

// Group ng's parts in the concatenation along channels of x [N, Cx, S] and
// x2 [N, C − Cx, S], split = Cx·S values an image of x (split = C·S and x2
// unused for x alone). A group's values are the image's values g·M … g·M +
// M − 1; those before split come from x, the rest from x2.
__device__ __forceinline__ Parts of_concat(const float* x, const float* x2, int split, int ng, int groups, int m) {
    const int n = ng / groups, first = (ng - n * groups) * m;  // the group's first value within its image
    const long long rest = (long long)groups * m - split;      // values an image of x2
    const int ka = min(max(split - first, 0), m);
    const float* a = x + (long long)n * split + first;
    const float* b = ka < m ? x2 + n * rest + max(first - split, 0) : a;
    return Parts{a, b, ka};
}

// Who holds a group: the block (Holders::block(): thread t the float4s t +
// k·blockDim), or one warp (Holders::warp_of_group(): lane l the float4s l + 32k), the
// statistics summed over the block or the warp.
struct Holders {
    int first, stride;
    bool warp;
    __device__ static Holders block() { return Holders{(int)threadIdx.x, (int)blockDim.x, false}; }
    __device__ static Holders warp_of_group() { return Holders{(int)threadIdx.x % 32, 32, true}; }
};

template <int R>
struct Resident {
    float4 v[R];
    int m4;  // float4s in the group
    Holders h;

    __device__ Resident(const float* __restrict__ xg, int m, Holders h = Holders::block())
        : Resident(Parts{xg, xg, m}, m, h) {}
    __device__ Resident(const Parts& src, int m, Holders h = Holders::block()) : m4(m / 4), h(h) {
        // float4 i at a[i] before ka, else at b[i − ka/4]: one base chosen, then i
        const float4* a = reinterpret_cast<const float4*>(src.a);
        const long long b_from_a = reinterpret_cast<const float4*>(src.b) - a - src.ka / 4;
        const int ka4 = src.ka / 4;
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int i = index(k);
            v[k] = i < m4 ? a[i + (i < ka4 ? 0LL : b_from_a)] : float4{0.0f, 0.0f, 0.0f, 0.0f};
        }
    }
    // From bf16 storage (the resnets' conv1 output with bf16 activations):
    // 4 values an 8-byte load, widened exactly — the values, so the bits
    // after, of the f32 constructor on the widened map.
    __device__ Resident(const unsigned short* __restrict__ xg, int m, Holders h) : m4(m / 4), h(h) {
        const uint2* a = reinterpret_cast<const uint2*>(xg);
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int i = index(k);
            const uint2 w = i < m4 ? a[i] : make_uint2(0u, 0u);
            v[k] = float4{__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u), __uint_as_float(w.y << 16),
                          __uint_as_float(w.y & 0xffff0000u)};
        }
    }
    __device__ int index(int k) const { return h.first + k * h.stride; }  // of float4 k in the group
    __device__ bool holds(int k) const { return index(k) < m4; }
    __device__ double sum(double part, double* scratch) const { return h.warp ? warp_sum_d(part) : block_sum_d(part, scratch); }

    // μ = Σx/M in f64, σ² = Σ(x − μ)²/M, rounded to f32 as stats() rounds
    // them. The squared deviations from the f32 μ (the one the output
    // subtracts) of each float4 are added in f32 and only those partials in
    // f64: one conversion a float4 where one a value cost the kernel's
    // conversion and FP64 pipes (16 conversions a clock an SM) as much as the
    // rest of its work. A deviation is exact or one rounding, its square and
    // the partial three more: within the CPU twin's tolerance, also for a mean
    // far from 0 (the sum itself stays in f64: an f32 partial of values near
    // 40 moves μ by an ulp, 7.6e-5 of the output at σ = 0.05).
    __device__ void stats(float eps, double* scratch, float& mu, float& rs) const {
        double acc = 0.0;
#pragma unroll
        for (int k = 0; k < R; ++k)
            if (holds(k)) acc += (double)v[k].x + (double)v[k].y + (double)v[k].z + (double)v[k].w;
        mu = (float)(sum(acc, scratch) / (double)(4 * m4));
        acc = 0.0;
#pragma unroll
        for (int k = 0; k < R; ++k) {
            if (!holds(k)) continue;
            // fused and rounded explicitly: every kernel holding the group
            // (forward, concat, affine; any R) gets the same bits
            const float a = v[k].x - mu, b = v[k].y - mu, c = v[k].z - mu, d = v[k].w - mu;
            acc += (double)(__fmaf_rn(a, a, __fmul_rn(b, b)) + __fmaf_rn(c, c, __fmul_rn(d, d)));
        }
        const double var = sum(acc, scratch) / (double)(4 * m4);
        rs = (float)rsqrt(var + (double)eps);
    }
};

// Group ng of x (or of x ⧺ x2, CONCAT), held by `holders`.
template <int R, bool CONCAT>
__device__ __forceinline__ Resident<R> group_of(const float* x, const float* x2, int split, int ng, int groups, int m,
                                                Holders holders) {
    return Resident<R>(CONCAT ? of_concat(x, x2, split, ng, groups, m) : Parts{x + (long long)ng * m, x, m}, m, holders);
}
template <int R, bool CONCAT>
__device__ __forceinline__ Resident<R> group_of(const unsigned short* x, const float*, int, int ng, int, int m,
                                                Holders holders) {
    static_assert(!CONCAT, "a concatenation is read from f32");
    return Resident<R>(x + (long long)ng * m, m, holders);
}

// The forward, resident: as forward(), the channel of float4 i being i/(S/4)
// (a float4 never straddles channels when S is a multiple of 4).
// CONCAT: the input is the concatenation x ⧺ x2 along channels, split
// values an image of x (of_concat): the same values, so the same bits, as
// the norm of the written concatenation. (Separate kernels: the two sources
// cost the one-source kernels 4 registers, the 4-float4 one a block an SM.)
// WARP: a warp a group (groups of at most 32·R float4s), the block's warps
// over consecutive groups: the small groups of the 8×8 and 4×4 maps, where a
// block a group left most threads idle (one float4 of 256 threads' 128 at
// 4×4) and waited on two block-wide reductions (GPU run 8: the r1 kernel at
// 1–2 TB/s, 4.0 % of a sampling step). The sums are over the same float4
// partials in f64, in another tree (f64 sums of f32 values: exact in practice).
// TX: x in f32, or bf16 storage (unsigned short; not CONCAT).
template <class TY, int R, bool CONCAT = false, bool WARP = false, class TX = float>
__device__ __forceinline__ void forward_resident(TY* __restrict__ y, float* __restrict__ mean_out,
                                                 float* __restrict__ rstd_out, const TX* __restrict__ x,
                                                 const float* __restrict__ x2, int split,
                                                 const float* __restrict__ gamma, const float* __restrict__ beta,
                                                 int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    __shared__ double scratch[32];
    const int m = cg * s, s4 = s / 4;
    const Holders holders = WARP ? Holders::warp_of_group() : Holders::block();
    const int per_block = WARP ? (int)blockDim.x / 32 : 1, slot = WARP ? (int)threadIdx.x / 32 : 0;
    for (int ng = blockIdx.x * per_block + slot; ng < num_groups_total; ng += gridDim.x * per_block) {
        const int g = ng % groups;
        const Resident<R> r = group_of<R, CONCAT>(x, x2, split, ng, groups, m, holders);
        float mu, rs;
        r.stats(eps, scratch, mu, rs);
        if (holders.first == 0) {
            mean_out[ng] = mu;
            rstd_out[ng] = rs;
        }
        TY* yg = y + (long long)ng * m;
        ChannelStep at(s4, holders.first, holders.stride);
#pragma unroll
        for (int k = 0; k < R; ++k, at.next(s4)) {
            if (!r.holds(k)) continue;
            const int ch = g * cg + at.c;
            const float scale = rs * (gamma ? gamma[ch] : 1.0f);
            const float shift = beta ? beta[ch] : 0.0f;
            const float4 xv = r.v[k];
            float4 u{(xv.x - mu) * scale + shift, (xv.y - mu) * scale + shift, (xv.z - mu) * scale + shift,
                     (xv.w - mu) * scale + shift};  // normalise(), the SiLU tested once for the four
            if (silu) u = float4{silu_fast(u.x), silu_fast(u.y), silu_fast(u.z), silu_fast(u.w)};
            store4(yg, 4LL * r.index(k), u);
        }
    }
}

// Group ng's (mean, scale, shift, 0) of each of its channels c = g·Cg + i,
// at nc = (n·G + g)·Cg + i = n·C + c (the group's holders over the channels).
__device__ __forceinline__ void store_affine(float4* __restrict__ affine, int ng, int g, int cg, float mu, float rs,
                                             const float* __restrict__ gamma, const float* __restrict__ beta,
                                             Holders h = Holders::block()) {
    for (int i = h.first; i < cg; i += h.stride) {
        const int ch = g * cg + i;
        affine[(long long)ng * cg + i] = float4{mu, rs * (gamma ? gamma[ch] : 1.0f), beta ? beta[ch] : 0.0f, 0.0f};
    }
}

}  // namespace groupnorm

extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                      const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                      int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward(y, mean_out, rstd_out, x, gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}

// The group norm as a per-(image, channel) affine for a convolution to apply
// as it reads x (conv::Prologue), without writing the normalised map: per
// group (n, g) the statistics as groupnorm_forward computes them, then for
// each of its channels c (nc = n·C + c)
//   affine[nc] = (μ, rstd·γ_c, β_c, 0)  = (mean, scale, shift, 0),
// so (x − mean)·scale + shift is the value groupnorm_forward writes, bit for
// bit; one float4 per channel, so that the conv reads it in one load.
// One block per group, grid-stride; block = 256.
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_affine(float4* __restrict__ affine, const float* __restrict__ x, const float* __restrict__ gamma,
                     const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps) {
    __shared__ double scratch[32];
    const int m = cg * s;
    for (int ng = blockIdx.x; ng < num_groups_total; ng += gridDim.x) {
        const int g = ng % groups;
        float mu, rs;
        groupnorm::stats(x + (long long)ng * m, m, eps, scratch, mu, rs);
        groupnorm::store_affine(affine, ng, g, cg, mu, rs, gamma, beta);
    }
}

// groupnorm_forward with x resident in registers (groupnorm::Resident: m ≤
// R·4·256 with R = 1, 2, 4, 8 or 12 float4s a thread, m and S multiples of
// 4, x and y 16-byte aligned); the same grid. _bf16_rR: y stored as bf16
// (the bf16-storage A/B), in the same register rounds. _concat_: of x ⧺ x2
// along channels, split values an image of x (a multiple of 4), x2 16-byte
// aligned: the UNet's up path, where a skip joins the map unwritten.
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_r1(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 1>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_r2(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 2>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_r4(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 4>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_r8(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 8>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_r12(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 12>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_bf16_r1(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 1>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_bf16_r2(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 2>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_bf16_r4(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 4>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_bf16_r8(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 8>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_bf16_r12(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 12>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta, num_groups_total, groups, cg,
                                          s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_r1(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 1, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_r2(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 2, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_r4(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 4, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_r8(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 8, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_r12(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 12, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_bf16_r1(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 1, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_bf16_r2(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 2, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_bf16_r4(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 4, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_bf16_r8(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 8, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_concat_bf16_r12(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 12, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta, num_groups_total, groups,
                                                     cg, s, eps, silu);
}

// The same with a warp a group (groupnorm::forward_resident's WARP), groups
// of at most 32·R float4s (R = 1, 2, 4 or 8: at most 1,024 values), 8 groups a
// 256-thread block: groupnorm_forward_warp_[concat_][bf16_]rR.
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_r1(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 1, false, true>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_r2(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 2, false, true>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_r4(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 4, false, true>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_r8(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 8, false, true>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_bf16_r1(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 1, false, true>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_bf16_r2(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 2, false, true>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_bf16_r4(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 4, false, true>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_bf16_r8(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
        int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 8, false, true>(y, mean_out, rstd_out, x, nullptr, 0, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
// The forward of bf16 storage into bf16 (TX = TY = unsigned short), by a
// block (_resident_xbf16_bf16_rR, R = 1, 2, 4, 8, 12) or a warp a group
// (_warp_xbf16_bf16_rR, R ≤ 8): the resnets' norm2 at inference with
// MINIDIFFUSION_BF16_ACTIVATIONS=on, reading conv1's bf16 output (x 8-byte
// aligned). The bits of the f32-input kernels on the widened map.
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_xbf16_bf16_r1(unsigned short* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, const unsigned short* __restrict__ x, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 1, false, false, unsigned short>(y, mean_out, rstd_out, x, nullptr, 0,
        gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_xbf16_bf16_r2(unsigned short* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, const unsigned short* __restrict__ x, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 2, false, false, unsigned short>(y, mean_out, rstd_out, x, nullptr, 0,
        gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_xbf16_bf16_r4(unsigned short* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, const unsigned short* __restrict__ x, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 4, false, false, unsigned short>(y, mean_out, rstd_out, x, nullptr, 0,
        gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_xbf16_bf16_r8(unsigned short* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, const unsigned short* __restrict__ x, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 8, false, false, unsigned short>(y, mean_out, rstd_out, x, nullptr, 0,
        gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_resident_xbf16_bf16_r12(unsigned short* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, const unsigned short* __restrict__ x, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 12, false, false, unsigned short>(y, mean_out, rstd_out, x, nullptr, 0,
        gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_xbf16_bf16_r1(unsigned short* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, const unsigned short* __restrict__ x, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 1, false, true, unsigned short>(y, mean_out, rstd_out, x, nullptr, 0,
        gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_xbf16_bf16_r2(unsigned short* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, const unsigned short* __restrict__ x, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 2, false, true, unsigned short>(y, mean_out, rstd_out, x, nullptr, 0,
        gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_xbf16_bf16_r4(unsigned short* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, const unsigned short* __restrict__ x, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 4, false, true, unsigned short>(y, mean_out, rstd_out, x, nullptr, 0,
        gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_xbf16_bf16_r8(unsigned short* __restrict__ y, float* __restrict__ mean_out,
        float* __restrict__ rstd_out, const unsigned short* __restrict__ x, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 8, false, true, unsigned short>(y, mean_out, rstd_out, x, nullptr, 0,
        gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_concat_r1(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 1, true, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_concat_r2(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 2, true, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_concat_r4(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 4, true, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_concat_r8(float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<float, 8, true, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_concat_bf16_r1(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 1, true, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_concat_bf16_r2(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 2, true, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_concat_bf16_r4(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 4, true, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_warp_concat_bf16_r8(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
        const float* __restrict__ x, const float* __restrict__ x2, int split, const float* __restrict__ gamma,
        const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward_resident<unsigned short, 8, true, true>(y, mean_out, rstd_out, x, x2, split, gamma, beta,
                                                          num_groups_total, groups, cg, s, eps, silu);
}

// groupnorm_affine with the statistics from x resident in registers (when
// groupnorm_forward_resident would run, so that both give the same bits).
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_affine_resident(float4* __restrict__ affine, const float* __restrict__ x,
                              const float* __restrict__ gamma, const float* __restrict__ beta, int num_groups_total,
                              int groups, int cg, int s, float eps) {
    __shared__ double scratch[32];
    const int m = cg * s;
    for (int ng = blockIdx.x; ng < num_groups_total; ng += gridDim.x) {
        const int g = ng % groups;
        float mu, rs;
        groupnorm::Resident<GN_RESIDENT>(x + (long long)ng * m, m).stats(eps, scratch, mu, rs);
        groupnorm::store_affine(affine, ng, g, cg, mu, rs, gamma, beta);
    }
}

// groupnorm_affine_resident with a warp a group, 8 groups a block (when
// groupnorm_forward_warp_* would run: groups of at most 1,024 values).
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_affine_warp(float4* __restrict__ affine, const float* __restrict__ x, const float* __restrict__ gamma,
                          const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s, float eps) {
    const int m = cg * s, per_block = (int)blockDim.x / 32;
    const groupnorm::Holders holders = groupnorm::Holders::warp_of_group();
    for (int ng = blockIdx.x * per_block + (int)threadIdx.x / 32; ng < num_groups_total; ng += gridDim.x * per_block) {
        const int g = ng % groups;
        float mu, rs;
        groupnorm::Resident<8>(x + (long long)ng * m, m, holders).stats(eps, nullptr, mu, rs);
        groupnorm::store_affine(affine, ng, g, cg, mu, rs, gamma, beta, holders);
    }
}

// The same with y stored as bf16 (the inference path at the bf16 compute
// precision: y only feeds a convolution that rounds it to bf16 anyway).
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_forward_bf16(unsigned short* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                           const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                           int num_groups_total, int groups, int cg, int s, float eps, int silu) {
    groupnorm::forward(y, mean_out, rstd_out, x, gamma, beta, num_groups_total, groups, cg, s, eps, silu);
}

// With dz = dy (or dy·silu'(u) fused), x̂ = (x − μ)·rstd and g = dz·γ_c:
//   per channel c of the group:  A_nc = Σ_s dz,  B_nc = Σ_s dz·x̂   (f64, one warp
//     per channel, lanes striding over S), stored in partials[2·(n·C + c) + {0,1}]
//     for the parameter gradients (step 2);
//   mean(g) = Σ_c γ_c·A_nc / M,  mean(g·x̂) = Σ_c γ_c·B_nc / M   (block sums);
//   dx = rstd·(g − mean(g) − x̂·mean(g·x̂)) [+ dx_add]          (skipped if dx is null).
// dx_add (may be null): a gradient of x from its other uses, summed here
// instead of by a separate add (the residual beside a block's first norm).
// Every warp runs the same number of channel iterations, so the shuffles always
// see the whole warp.
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_backward(float* __restrict__ dx, const float* __restrict__ dx_add, double* __restrict__ partials,
                       const float* __restrict__ dy,
                       const float* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd,
                       const float* __restrict__ gamma, const float* __restrict__ beta, int num_groups_total,
                       int groups, int cg, int s, int silu) {
    __shared__ double scratch[32];
    const int m = cg * s;
    const int c = groups * cg;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int ng = blockIdx.x; ng < num_groups_total; ng += gridDim.x) {
        const int n = ng / groups, g = ng % groups;
        const float mu = mean[ng], rs = rstd[ng];
        const float* xg = x + (long long)ng * m;
        const float* dyg = dy + (long long)ng * m;
        double* part = partials + 2 * ((long long)n * c + (long long)g * cg);

        // A_nc, B_nc: warp w takes channels w, w + warps, ...
        const int rounds = (cg + warps - 1) / warps;
        for (int r = 0; r < rounds; ++r) {
            const int ci = r * warps + warp;
            double a = 0.0, b = 0.0;
            if (ci < cg) {
                const int ch = g * cg + ci;
                const float gm = gamma ? gamma[ch] : 1.0f, bt = beta ? beta[ch] : 0.0f;
                for (int si = lane; si < s; si += 32) {
                    const float xhat = (xg[ci * s + si] - mu) * rs;
                    const float dz = groupnorm::grad_u(dyg[ci * s + si], xhat, gm, bt, silu);
                    a += (double)dz;
                    b += (double)dz * (double)xhat;
                }
            }
            a = warp_sum_d(a);
            b = warp_sum_d(b);
            if (ci < cg && lane == 0) {
                part[2 * ci] = a;
                part[2 * ci + 1] = b;
            }
        }
        if (dx == nullptr) continue;  // uniform over the block
        __syncthreads();  // the partials of this group are visible to the whole block

        // mean(g) = Σ_c γ_c·A_nc / M,  mean(g·x̂) = Σ_c γ_c·B_nc / M
        double sa = 0.0, sb = 0.0;
        for (int ci = threadIdx.x; ci < cg; ci += blockDim.x) {
            const double gm = gamma ? (double)gamma[g * cg + ci] : 1.0;
            sa += gm * part[2 * ci];
            sb += gm * part[2 * ci + 1];
        }
        const float mean_g = (float)(block_sum_d(sa, scratch) / (double)m);
        const float mean_gx = (float)(block_sum_d(sb, scratch) / (double)m);

        // dx = rstd·(dz·γ − mean(g) − x̂·mean(g·x̂))
        float* dxg = dx + (long long)ng * m;
        groupnorm::ChannelStep at(s);
        for (int i = threadIdx.x; i < m; i += blockDim.x, at.next(s)) {
            const int ch = g * cg + at.c;
            const float gm = gamma ? gamma[ch] : 1.0f, bt = beta ? beta[ch] : 0.0f;
            const float xhat = (xg[i] - mu) * rs;
            const float dz = groupnorm::grad_u(dyg[i], xhat, gm, bt, silu);
            dxg[i] = rs * (dz * gm - mean_g - xhat * mean_gx) + (dx_add ? dx_add[(long long)ng * m + i] : 0.0f);
        }
    }
}

// groupnorm_backward with x and dy resident in registers (groups of m ≤
// R·4·blockDim values, R = 4, 8 or 12, the fewest that hold the group; S/4
// a multiple of 32, or 4, 8 or 16 with the group a whole number of warps'
// float4s; x, dy, dx and dx_add 16-byte aligned): each thread loads its float4s of
// x and dy once, up front, forms x̂ and dz there, and the dx pass reads them
// from registers — one read of x and dy instead of two, one silu' per value
// instead of two. Thread t holds the group's float4s e = t + k·blockDim
// (k < R). The 32 float4s a warp holds at one k lie in one channel (S/4 a
// multiple of 32: the 32×32 and 16×16 maps) or in segments of L = S/4
// lanes, one channel each (the 8×8 and 4×4 maps: 16 and 4 lanes), so the
// per-channel sums are segment sums (xor shuffles below L), kept per (k,
// warp, segment) in shared memory and added per channel in a fixed order
// (e rising): deterministic, and groupnorm_backward's f64 sums over another
// partial order, each float4's four terms added in f32 first (the CPU twin's
// tolerance).
namespace groupnorm {
template <int R>
__device__ __forceinline__ void backward_resident(float* __restrict__ dx, const float* __restrict__ dx_add,
                                                  double* __restrict__ partials,
                                                  const float* __restrict__ dy, const float* __restrict__ x,
                                                  const float* __restrict__ mean, const float* __restrict__ rstd,
                                                  const float* __restrict__ gamma, const float* __restrict__ beta,
                                                  int num_groups_total, int groups, int cg, int s, int silu) {
    constexpr int SEGMENTS = 8;  // channels a warp's float4s at one k may span (S/4 ≥ 4)
    __shared__ double scratch[32];
    __shared__ double warp_sums[R][GN_THREADS / 32][SEGMENTS][2];  // (Σ dz, Σ dz·x̂) of a segment of warp w's float4s at k
    const int m = cg * s, m4 = m / 4, s4 = s / 4, c = groups * cg;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, threads = blockDim.x;
    const int seg_lanes = min(32, s4);  // lanes whose float4s at one k are one channel's
    for (int ng = blockIdx.x; ng < num_groups_total; ng += gridDim.x) {
        const int n = ng / groups, g = ng % groups;
        const float mu = mean[ng], rs = rstd[ng];
        const float4* xg = reinterpret_cast<const float4*>(x + (long long)ng * m);
        const float4* dyg = reinterpret_cast<const float4*>(dy + (long long)ng * m);
        double* part = partials + 2 * ((long long)n * c + (long long)g * cg);

        // x̂ and dz of this thread's float4s (every load issued before any is used)
        float4 xhat[R], dz[R];
#pragma unroll
        for (int k = 0; k < R; ++k) {
            const int e = (int)threadIdx.x + k * threads;
            xhat[k] = e < m4 ? xg[e] : float4{0.0f, 0.0f, 0.0f, 0.0f};
            dz[k] = e < m4 ? dyg[e] : float4{0.0f, 0.0f, 0.0f, 0.0f};
        }
        ChannelStep at(s4);
#pragma unroll
        for (int k = 0; k < R; ++k, at.next(s4)) {
            // uniform over a warp: m4 = cg·s4 is a multiple of 32
            if ((int)threadIdx.x - lane + k * threads >= m4) continue;
            const int ch = g * cg + at.c;
            const float gm = gamma ? gamma[ch] : 1.0f, bt = beta ? beta[ch] : 0.0f;
            float* xv = &xhat[k].x;
            float* dv = &dz[k].x;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                xv[j] = (xv[j] - mu) * rs;
                dv[j] = grad_u(dv[j], xv[j], gm, bt, silu);
            }
            // the float4's Σ dz and Σ dz·x̂ in f32, then f64 (one conversion a
            // float4 and sum, where one a value cost as much as the rest)
            double a = (double)((dv[0] + dv[1]) + (dv[2] + dv[3]));
            double b = (double)(__fmaf_rn(dv[0], xv[0], __fmul_rn(dv[1], xv[1])) + __fmaf_rn(dv[2], xv[2], __fmul_rn(dv[3], xv[3])));
            // the sums over this lane's segment (the whole warp's at 32 lanes)
            for (int offset = seg_lanes / 2; offset > 0; offset >>= 1) {
                a += __shfl_xor_sync(0xffffffffu, a, offset);
                b += __shfl_xor_sync(0xffffffffu, b, offset);
            }
            if (lane % seg_lanes == 0) {
                warp_sums[k][warp][lane / seg_lanes][0] = a;
                warp_sums[k][warp][lane / seg_lanes][1] = b;
            }
        }
        __syncthreads();
        // A_nc, B_nc: channel ci's float4s are [ci·S/4, (ci + 1)·S/4), seg_lanes a (k, w, segment) entry
        double sa = 0.0, sb = 0.0;
        for (int ci = threadIdx.x; ci < cg; ci += threads) {
            double a = 0.0, b = 0.0;
            for (int e0 = ci * s4; e0 < (ci + 1) * s4; e0 += seg_lanes) {
                const int k = e0 / threads, w = (e0 - k * threads) / 32, seg = e0 % 32 / seg_lanes;
                a += warp_sums[k][w][seg][0];
                b += warp_sums[k][w][seg][1];
            }
            part[2 * ci] = a;
            part[2 * ci + 1] = b;
            const double gm = gamma ? (double)gamma[g * cg + ci] : 1.0;
            sa += gm * a;
            sb += gm * b;
        }
        if (dx == nullptr) {  // uniform over the block
            __syncthreads();  // warp_sums is read above before the next group writes it
            continue;
        }
        // mean(g) = Σ_c γ_c·A_nc / M,  mean(g·x̂) = Σ_c γ_c·B_nc / M (block_sum_d syncs: warp_sums is free after)
        const float mean_g = (float)(block_sum_d(sa, scratch) / (double)m);
        const float mean_gx = (float)(block_sum_d(sb, scratch) / (double)m);

        // dx = rstd·(dz·γ − mean(g) − x̂·mean(g·x̂)) [+ dx_add]
        float4* dxg = reinterpret_cast<float4*>(dx + (long long)ng * m);
        const float4* addg = dx_add ? reinterpret_cast<const float4*>(dx_add + (long long)ng * m) : nullptr;
        ChannelStep out(s4);
#pragma unroll
        for (int k = 0; k < R; ++k, out.next(s4)) {
            const int e = (int)threadIdx.x + k * threads;
            if (e >= m4) continue;
            const float gm = gamma ? gamma[g * cg + out.c] : 1.0f;
            const float4 xv = xhat[k], dv = dz[k];
            const float4 add = addg ? addg[e] : float4{0.0f, 0.0f, 0.0f, 0.0f};
            dxg[e] = float4{rs * (dv.x * gm - mean_g - xv.x * mean_gx) + add.x, rs * (dv.y * gm - mean_g - xv.y * mean_gx) + add.y,
                            rs * (dv.z * gm - mean_g - xv.z * mean_gx) + add.z, rs * (dv.w * gm - mean_g - xv.w * mean_gx) + add.w};
        }
    }
}
}  // namespace groupnorm

extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_backward_resident_r4(float* __restrict__ dx, const float* __restrict__ dx_add, double* __restrict__ partials,
                                    const float* __restrict__ dy,
                                    const float* __restrict__ x, const float* __restrict__ mean,
                                    const float* __restrict__ rstd, const float* __restrict__ gamma,
                                    const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s,
                                    int silu) {
    groupnorm::backward_resident<4>(dx, dx_add, partials, dy, x, mean, rstd, gamma, beta, num_groups_total, groups, cg, s, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_backward_resident_r8(float* __restrict__ dx, const float* __restrict__ dx_add, double* __restrict__ partials,
                                    const float* __restrict__ dy,
                                    const float* __restrict__ x, const float* __restrict__ mean,
                                    const float* __restrict__ rstd, const float* __restrict__ gamma,
                                    const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s,
                                    int silu) {
    groupnorm::backward_resident<8>(dx, dx_add, partials, dy, x, mean, rstd, gamma, beta, num_groups_total, groups, cg, s, silu);
}
extern "C" __global__ void __launch_bounds__(GN_THREADS)
    groupnorm_backward_resident_r12(float* __restrict__ dx, const float* __restrict__ dx_add, double* __restrict__ partials,
                                    const float* __restrict__ dy,
                                    const float* __restrict__ x, const float* __restrict__ mean,
                                    const float* __restrict__ rstd, const float* __restrict__ gamma,
                                    const float* __restrict__ beta, int num_groups_total, int groups, int cg, int s,
                                    int silu) {
    groupnorm::backward_resident<12>(dx, dx_add, partials, dy, x, mean, rstd, gamma, beta, num_groups_total, groups, cg, s, silu);
}

// Backward, step 2: the parameter gradients, one warp per channel c (8 per
// 256-thread block): lane l sums the per-sample partials n = l, l + 32, … in
// f64, then a warp sum (a fixed order: deterministic)
//   dβ_c = Σ_n A_nc,  dγ_c = Σ_n B_nc.
// (One thread per channel summed all N in order: at 32 channels and N = 512,
// 32 busy threads for 58 µs.) grid = ⌈C/8⌉, block = 256.
extern "C" __global__ void __launch_bounds__(256)
    groupnorm_backward_params(float* __restrict__ dgamma, float* __restrict__ dbeta,
                              const double* __restrict__ partials, int n, int c) {
    const int ch = (int)blockIdx.x * 8 + (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    if (ch >= c) return;  // the whole warp leaves together
    double a = 0.0, b = 0.0;
    for (int k = lane; k < n; k += 32) {
        a += partials[2 * ((long long)k * c + ch)];
        b += partials[2 * ((long long)k * c + ch) + 1];
    }
    a = warp_sum_d(a);
    b = warp_sum_d(b);
    if (lane == 0) {
        dbeta[ch] = (float)a;
        dgamma[ch] = (float)b;
    }
}
