// Elementwise kernels: fill, binary ops with broadcasting, affine maps and
// activations with their derivatives. One thread per output element in a
// grid-stride loop; consecutive threads touch consecutive addresses.
#include "common.cuh"

// Binary op codes (match ops::binary::BinaryOp).
#define OP_ADD 0
#define OP_SUB 1
#define OP_MUL 2
#define OP_DIV 3

__device__ __forceinline__ float apply_binary(int op, float a, float b) {
    switch (op) {
        case OP_ADD: return a + b;
        case OP_SUB: return a - b;
        case OP_MUL: return a * b;
        default: return a / b;
    }
}

// out[i] = value
extern "C" __global__ void fill_f32(float* out, float value, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) out[i] = value;
}

// out[i] = a[i] op b[i] (same shapes)
extern "C" __global__ void binary_same(float* out, const float* a, const float* b, int op, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) out[i] = apply_binary(op, a[i], b[i]);
}

// out[i] = a[a_off(i)] op b[b_off(i)] with numpy broadcasting
extern "C" __global__ void binary_broadcast(float* out, const float* a, const float* b, int op, Broadcast2 p, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) {
        int ia, ib;
        broadcast_offsets(p, i, &ia, &ib);
        out[i] = apply_binary(op, a[ia], b[ib]);
    }
}

// out = x·scale + shift
extern "C" __global__ void affine_f32(float* out, const float* x, float scale, float shift, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) out[i] = x[i] * scale + shift;
}

// Activation codes (match ops::activation::Activation::code).
#define ACT_SILU 0
#define ACT_RELU 1
#define ACT_LEAKY 2    // x > 0 ? x : leak·x
#define ACT_GENERAL 3  // leaky − sub (miniai's GeneralRelu)
#define ACT_MISH 4     // x·tanh(softplus(x))
#define ACT_GELU 5     // x·Φ(x) = x·(1 + erf(x/√2))/2 (exact, not the tanh form)

__device__ __forceinline__ float activation_value(int act, float x, float leak, float sub) {
    switch (act) {
        case ACT_SILU: return silu_fast(x);  // x·σ(x)
        case ACT_RELU: return fmaxf(x, 0.0f);
        case ACT_LEAKY: return x > 0.0f ? x : leak * x;
        case ACT_MISH: return x * tanhf(log1pf(expf(x)));
        case ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678f));
        default: return (x > 0.0f ? x : leak * x) - sub;
    }
}

__device__ __forceinline__ float activation_slope(int act, float x, float leak) {
    switch (act) {
        case ACT_SILU: {  // σ(x)·(1 + x·(1 − σ(x)))
            float s = sigmoid_fast(x);
            return s * (1.0f + x * (1.0f - s));
        }
        case ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
        case ACT_MISH: {  // t + x·σ(x)·(1 − t²), t = tanh(softplus(x))
            float t = tanhf(log1pf(expf(x)));
            float s = 1.0f / (1.0f + expf(-x));
            return t + x * s * (1.0f - t * t);
        }
        case ACT_GELU:  // Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π)
            return 0.5f * (1.0f + erff(x * 0.70710678f)) + x * expf(-0.5f * x * x) * 0.39894228f;
        default: return x > 0.0f ? 1.0f : leak;
    }
}

// y = f(x)
extern "C" __global__ void activation_forward(float* y, const float* x, int act, float leak, float sub, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) y[i] = activation_value(act, x[i], leak, sub);
}

// dx = dy·f'(x)
extern "C" __global__ void activation_backward(float* dx, const float* x, const float* dy, int act, float leak, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) dx[i] = dy[i] * activation_slope(act, x[i], leak);
}

// Storage casts (ops::cast): f32 → bf16 rounds to nearest even (NaN kept),
// bf16 → f32 is exact.
extern "C" __global__ void cast_f32_to_bf16(unsigned short* y, const float* x, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) store_as(y, i, x[i]);
}

extern "C" __global__ void cast_bf16_to_f32(float* y, const unsigned short* x, int n) {
    for (int i = global_index(); i < n; i += grid_stride()) y[i] = bf16_value(x[i]);
}
