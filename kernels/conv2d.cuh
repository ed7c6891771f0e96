// What the convolution kernels share (kernels/conv2d.cu, kernels/conv2d_same.cu):
// the geometry and the forward output with its fused epilogue.
#pragma once

namespace conv {

// Convolution geometry, mirrors ops::conv2d::cuda::ConvShape.
struct Shape {
    int n, c, h, w;  // input [N, C, H, W]
    int oc, kh, kw;  // weight [OC, C, KH, KW]
    int stride, pad;
    int oh, ow;  // output [N, OC, OH, OW]
};

// An optional transform of the input as a same conv stages it (the group
// norm + SiLU before the UNet's convolutions, at inference, so the normalised
// map is never written): inside the image, channel c of image n is read as
//   u = (x − mean)·scale + shift,  (mean, scale, shift, 0) = affine[n·C + c],
// then silu(u) when silu, exactly as kernels/groupnorm.cu writes its output;
// the zero padding stays 0. One 16-byte load per channel and word.
struct Prologue {
    const float4* affine;
    int silu;
};

// The input's group norm (+ SiLU) of one value as a conv stages it:
// u = (v − mean)·scale + shift from a = (mean, scale, shift, 0) of its
// (image, channel) (Prologue), the group norm kernel's own sums.
__device__ __forceinline__ float normed_value(float v, const float4 a, int silu) {
    const float u = (v - a.x) * a.y + a.z;
    return silu ? silu_fast(u) : u;
}

// 4 pixels of channels c and c + 1 (bf16 storage: their bf16 bits, 4 to a
// uint2) as the pair-words a bf16 1×1 slice or a vector-staged patch holds:
// word r = (c at pixel r, c + 1 at pixel r). From f32 the values are rounded
// (bf16_pair, as Math::pack); from bf16 storage they are the bits the f32 input would
// round to.
__device__ __forceinline__ void quad_words(unsigned int (&w)[4], const float4 a, const float4 b) {
    w[0] = bf16_pair(a.x, b.x);
    w[1] = bf16_pair(a.y, b.y);
    w[2] = bf16_pair(a.z, b.z);
    w[3] = bf16_pair(a.w, b.w);
}
__device__ __forceinline__ void quad_words(unsigned int (&w)[4], const uint2 a, const uint2 b) {
    w[0] = (a.x & 0xffffu) | (b.x << 16);
    w[1] = (a.x >> 16) | (b.x & 0xffff0000u);
    w[2] = (a.y & 0xffffu) | (b.y << 16);
    w[3] = (a.y >> 16) | (b.y & 0xffff0000u);
}
// Two consecutive values of f32 or bf16 storage (p 8- or 4-byte aligned), as f32.
__device__ __forceinline__ float2 load_pair(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load_pair(const unsigned short* p) {
    const unsigned int w = *reinterpret_cast<const unsigned int*>(p);
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}

// Forward: y[img, oc, pix] = C[oc, (img,pix)] + b[oc] + sb[img, oc] + r[img, oc, pix]
// (each term optional: the UNet's conv + bias + time embedding + residual in
// one store); col = img·OC·P + pix. The residual in f32 (ForwardOut) or bf16
// storage (ForwardOutT<unsigned short>: widened as loaded, exactly).
template <class TR>
struct ForwardOutT {
    float* y;
    const float* bias;         // [OC] or null
    const float* sample_bias;  // [N, OC] or null
    const TR* residual;        // [N, OC, OH, OW] or null
    Shape s;
    __device__ int col(int n) const {
        const int P = s.oh * s.ow;
        const int img = n / P;
        return img * s.oc * P + (n - img * P);
    }
    __device__ void store(int oc, int col, float v) const {
        const int at = col + oc * s.oh * s.ow;
        if (bias != nullptr) v += bias[oc];
        if (sample_bias != nullptr) v += sample_bias[col / (s.oc * s.oh * s.ow) * s.oc + oc];
        if (residual != nullptr) v += load_f32(residual, at);
        y[at] = v;
    }
    // store() of pixel pix of image img in two steps (the same sums, no
    // division; the generic GEMM's epilogue keeps col/store, the interface it
    // shares with the weight gradient's output): terms_at() loads the terms,
    // store_terms() adds them and stores. y may alias residual, so a store
    // keeps the loads after it from starting before it: a thread loads the
    // terms of several outputs first, to have those loads in flight together.
    struct Terms {
        int at;
        float b, sb, r;  // (those whose pointer is null are not read)
    };
    __device__ Terms terms_at(int img, int pix, int oc) const {
        Terms t{(img * s.oc + oc) * (s.oh * s.ow) + pix, 0.0f, 0.0f, 0.0f};
        if (bias != nullptr) t.b = bias[oc];
        if (sample_bias != nullptr) t.sb = sample_bias[img * s.oc + oc];
        if (residual != nullptr) t.r = load_f32(residual, t.at);
        return t;
    }
    __device__ float sum(const Terms& t, float v) const {
        if (bias != nullptr) v += t.b;
        if (sample_bias != nullptr) v += t.sb;
        if (residual != nullptr) v += t.r;
        return v;
    }
    __device__ void store_terms(const Terms& t, int /*oc*/, float v) const { y[t.at] = sum(t, v); }
    // Store v, its terms already added, at index `at` of channel oc.
    __device__ void put(int at, int /*oc*/, float v) const { y[at] = v; }
    // The same for pixels pix and pix + 1 of one image (same channel, so one
    // bias and time-embedding load; an 8-byte residual load and store): the
    // caller checks P even and y, residual 8-byte aligned, pix even.
    struct PairTerms {
        int at;
        float b, sb;
        float2 r;
    };
    __device__ PairTerms pair_terms_at(int img, int pix, int oc) const {
        PairTerms t{(img * s.oc + oc) * (s.oh * s.ow) + pix, 0.0f, 0.0f, make_float2(0.0f, 0.0f)};
        if (bias != nullptr) t.b = bias[oc];
        if (sample_bias != nullptr) t.sb = sample_bias[img * s.oc + oc];
        if (residual != nullptr) t.r = load_pair(residual + t.at);
        return t;
    }
    // The terms of the pair `offset` pixels after t's in the same image and
    // channel: the same bias and time-embedding terms, the residual loaded.
    __device__ PairTerms pair_terms_after(PairTerms t, int offset) const {
        t.at += offset;
        if (residual != nullptr) t.r = load_pair(residual + t.at);
        return t;
    }
    __device__ float2 pair_sum(const PairTerms& t, float v0, float v1) const {
        if (bias != nullptr) v0 += t.b, v1 += t.b;
        if (sample_bias != nullptr) v0 += t.sb, v1 += t.sb;
        if (residual != nullptr) v0 += t.r.x, v1 += t.r.y;
        return make_float2(v0, v1);
    }
    __device__ void store_pair(const PairTerms& t, int /*oc*/, float v0, float v1) const {
        *reinterpret_cast<float2*>(y + t.at) = pair_sum(t, v0, v1);
    }
};
using ForwardOut = ForwardOutT<float>;

// A same-conv forward block's pixel tile and block of output rows. Launched
// as a 1-D grid of tiles × row blocks (the host's default), the row blocks of
// one pixel tile are consecutive blocks, so they run side by side and the
// tile's input, which each of them stages, comes from DRAM once and from the
// L2 after. As a 2-D grid (x the tile, y the row block: the A/B) all the
// map's tiles run between two row blocks of one tile, and a map larger than
// the L2 (8×8×128 at n 2048: 67 MB in f32) is read from DRAM once a row block.
struct BlockTile {
    int n_tile, m_block;
};
__device__ __forceinline__ BlockTile block_tile(int m_blocks) {
    // row blocks along x: all of them (1-D grid) or one (2-D grid: y the row block)
    const int along_x = m_blocks / (int)gridDim.y;
    if (along_x == 1) return BlockTile{(int)blockIdx.x, (int)blockIdx.y};
    const int n_tile = (int)blockIdx.x / along_x;
    return BlockTile{n_tile, (int)blockIdx.x - n_tile * along_x};
}

// ForwardOut whose y is stored in bf16 (y16, rounded to nearest even as the
// bf16 products round an f32 operand: a reader multiplying bf16 operands
// sees the bits it would have made from the f32 y). y itself is unused (null).
// For store_tile's pair and element paths only (a bf16 pair is 4 bytes: y16
// 4-byte aligned).
// `times` multiplies the output channels below `times_rows` before the
// rounding (the others by 1, exact): the attention's q, stored as c·q, the
// operand its bf16 products stage (c = scale·log2 e; the same f32 product
// the attention would form from an f32 q) — all of a q projection's
// channels, the first third of a packed q, k, v projection's. (The store
// functions of both take the output channel oc; ForwardOut ignores it.)
struct ForwardOutBf16 : ForwardOut {
    unsigned short* y16;
    float times;
    int times_rows;
    __device__ float factor(int oc) const { return oc < times_rows ? times : 1.0f; }
    __device__ void store_terms(const Terms& t, int oc, float v) const {
        y16[t.at] = (unsigned short)bf16_bits(factor(oc) * sum(t, v));
    }
    __device__ void put(int at, int oc, float v) const { y16[at] = (unsigned short)bf16_bits(factor(oc) * v); }
    __device__ void store_pair(const PairTerms& t, int oc, float v0, float v1) const {
        const float2 v = pair_sum(t, v0, v1);
        const float f = factor(oc);
        *reinterpret_cast<unsigned int*>(y16 + t.at) = bf16_pair(f * v.x, f * v.y);
    }
};

}  // namespace conv
