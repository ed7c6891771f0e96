//! The compute precision of the matrix products: convolutions ([`conv2d`],
//! [`conv2d_fused`]) and [`matmul`]/[`linear`], forward and backward.
//!
//! - [`Precision::F32`] (the default): f32 operands, f32 accuracy (on CUDA
//!   the tensor cores at 3xTF32).
//! - [`Precision::Bf16`]: each operand element is rounded to bfloat16 (round
//!   to nearest, ties to even) before it is multiplied; products are exact in
//!   f32 (8 + 8 mantissa bits) and summed in f32. Storage stays f32: inputs,
//!   outputs, weights (the f32 master copy the optimizer updates), gradients,
//!   and every other op (norms, the loss) run as at f32. Attention of
//!   channels-first heads of at most 32 features (the UNet's) rounds its
//!   operands too: Q·Kᵀ from bf16 Q and K, P·V from bf16 P and V, the
//!   softmax in f32, and in training dP, dQ, dK, dV from bf16 dO, V, dS, K,
//!   Q and P (`ops::attention`; [`attention_bf16`] turns it off). These are
//!   the numbers of PyTorch's `torch.autocast(dtype=torch.bfloat16)` for the
//!   products, with f32 outputs instead of bf16 ones. bf16 has f32's exponent
//!   range, so training needs no loss scaling. On CUDA the products run one
//!   bf16 tensor-core instruction per 16 k (`*_bf16` kernels) instead of three
//!   TF32 ones per 8; on the CPU the operands are rounded and the f32 kernels
//!   run (the reference the CUDA parity tests compare against).
//!
//! Storage: at bf16 the activations whose only consumer is a convolution —
//! the UNet's GroupNorm + SiLU outputs, its attention blocks' GroupNorm
//! output (read by the 1×1 projections) and its upsampled maps — can be
//! stored in bf16 ([`conv_input_storage`], `MINIDIFFUSION_BF16_STORAGE=1`):
//! the convolution rounds its input to bf16 anyway (forward and weight
//! gradient), and the producers' backward does not read their output, so
//! forward and gradients are the same bit for bit, with half the memory
//! traffic (and saved memory) for those tensors. It is off by default: on an
//! H100 (run 5) the convolutions reading bf16 input are slower than those
//! reading f32 (0.029 vs 0.026 ms at 64×32×32×32, 0.090 vs 0.055 at
//! 64×256×4×4), and DDIM-100 at n 2048 ran at 204 samples/s with the storage,
//! 245 without; training at batch 512 at 4,319 images/s with it, 4,552 without.
//! (Since then, at inference on CUDA the group norm outputs are not stored at
//! all: the convolutions apply the norm as they read, `ops::conv2d_after_norm`.)
//!
//! Like PyTorch's autocast the setting is per thread and scoped
//! ([`with_precision`]); an op reads it when it runs forward and its backward
//! uses the same precision, whatever the setting is when backward runs.
//!
//! [`conv2d`]: crate::ops::conv2d
//! [`conv2d_fused`]: crate::ops::conv2d_fused
//! [`matmul`]: crate::ops::matmul
//! [`linear`]: crate::ops::linear

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

/// How matrix products multiply (see the module docs). Serialized as "f32" / "bf16".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands and sums.
    #[default]
    F32,
    /// bf16-rounded operands, exact products, f32 sums.
    Bf16,
}

impl Precision {
    /// The name the CLI and the run records use: `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision '{s}' (expected f32 or bf16)")),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// This thread's compute precision for the matrix products.
pub fn current() -> Precision {
    CURRENT.with(Cell::get)
}

/// Restores the previous precision when dropped.
#[must_use = "the precision applies only while the guard lives"]
pub struct PrecisionGuard {
    previous: Precision,
}

impl Drop for PrecisionGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// Sets this thread's compute precision until the returned guard drops
/// (`torch.autocast`'s scope).
pub fn with_precision(p: Precision) -> PrecisionGuard {
    let previous = CURRENT.with(|c| c.replace(p));
    PrecisionGuard { previous }
}

/// x rounded to the nearest bfloat16 (ties to even), as an f32; NaN stays
/// NaN, values past bf16's largest finite round to ±inf. The same rounding
/// as `mma::bf16_bits` in kernels/mma.cuh.
pub fn round_bf16(x: f32) -> f32 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return f32::from_bits((u | 0x0040_0000) & 0xffff_0000);
    }
    let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1));
    f32::from_bits(rounded & 0xffff_0000)
}

/// The operand a product at precision `p` multiplies: `values` itself at
/// f32, a bf16-rounded copy at bf16.
pub fn operand(values: &[f32], p: Precision) -> std::borrow::Cow<'_, [f32]> {
    use rayon::prelude::*;
    match p {
        Precision::F32 => std::borrow::Cow::Borrowed(values),
        Precision::Bf16 => std::borrow::Cow::Owned(values.par_iter().with_min_len(1 << 14).map(|&x| round_bf16(x)).collect()),
    }
}

thread_local! {
    static CONV_INPUT_STORAGE: Cell<Option<crate::tensor::DType>> = const { Cell::new(None) };
}

/// How to store an activation whose only consumer is a convolution: f32,
/// or bf16 at the bf16 precision when `MINIDIFFUSION_BF16_STORAGE=1` (see the
/// module docs); a [`with_conv_input_storage`] scope overrides both.
pub fn conv_input_storage() -> crate::tensor::DType {
    use crate::tensor::DType;
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if let Some(forced) = CONV_INPUT_STORAGE.with(Cell::get) {
        return forced;
    }
    let enabled = *ENABLED.get_or_init(|| std::env::var("MINIDIFFUSION_BF16_STORAGE").is_ok_and(|v| v == "1"));
    if (enabled || bf16_activations()) && current() == Precision::Bf16 { DType::BF16 } else { DType::F32 }
}

thread_local! {
    static BF16_ACTIVATIONS: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether activations that are not convolution inputs are stored in bf16
/// too, as autocast stores a bf16 convolution's output: so far the resnets'
/// conv1 output h, whose one reader, norm2, widens it to f32 (its kernel
/// reads the bf16 words; the conv stores them), and their shortcut convs'
/// output, whose one reader, conv2's epilogue, widens it as it adds it.
/// Unlike the conv-input storage this rounds values nothing else rounds, so
/// ε̂ moves by bf16's relative 2⁻⁹ in those maps. At the bf16 precision at inference (no gradient
/// recorded, `autograd::no_grad`) with `MINIDIFFUSION_BF16_ACTIVATIONS=on`
/// (off until a GPU times it) or inside [`with_bf16_activations`]; it
/// implies the conv-input storage ([`conv_input_storage`] bf16).
pub fn bf16_activations() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = super::ab_switch::switch(&BF16_ACTIVATIONS, &ENV, || std::env::var("MINIDIFFUSION_BF16_ACTIVATIONS").is_ok_and(|v| v == "on"));
    on && current() == Precision::Bf16 && !crate::autograd::is_grad_enabled()
}

/// Run `f` with bf16 activations on or off on this thread (tests, A/B).
pub fn with_bf16_activations<R>(on: bool, f: impl FnOnce() -> R) -> R {
    super::ab_switch::with_switch(&BF16_ACTIVATIONS, on, f)
}

/// Restores the previous conv-input storage when dropped.
pub struct StorageGuard(Option<crate::tensor::DType>);

impl Drop for StorageGuard {
    fn drop(&mut self) {
        CONV_INPUT_STORAGE.with(|s| s.set(self.0));
    }
}

/// Store conv inputs as `dtype` on this thread until the guard is dropped
/// (bf16 at either precision; the numbers are the same as with f32).
pub fn with_conv_input_storage(dtype: crate::tensor::DType) -> StorageGuard {
    StorageGuard(CONV_INPUT_STORAGE.with(|s| s.replace(Some(dtype))))
}

thread_local! {
    static ATTENTION_BF16: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether attention multiplies bf16 operands at the bf16 precision
/// (`ops::attention`: its products, forward and backward, as autocast's
/// attention does them, on CUDA on the tensor cores). On by default;
/// `MINIDIFFUSION_ATTENTION=f32` keeps it at f32 (the A/B), as does a
/// [`with_attention_bf16`] scope.
pub fn attention_bf16() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    super::ab_switch::switch(&ATTENTION_BF16, &ENV, || std::env::var("MINIDIFFUSION_ATTENTION").map_or(true, |v| v != "f32"))
}

/// Run `f` with bf16 attention products on or off on this thread (tests, A/B).
pub fn with_attention_bf16<R>(on: bool, f: impl FnOnce() -> R) -> R {
    super::ab_switch::with_switch(&ATTENTION_BF16, on, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_half_crate_and_ties_go_to_even() {
        // every bf16 neighbourhood edge case: ties, carries into the exponent, subnormals, signs
        let mut cases = vec![0.0f32, -0.0, 1.0, -1.0, f32::MIN_POSITIVE, 1e-40, -1e-40, f32::MAX, -f32::MAX, f32::INFINITY];
        for base in [1.0f32, 3.0, 1e-3, 65504.0, 1e30, 1e-38] {
            let b = base.to_bits();
            for off in [0x7fffu32, 0x8000, 0x8001, 0x17fff, 0x18000, 0x18001, 0xffff] {
                cases.push(f32::from_bits(b + off));
                cases.push(-f32::from_bits(b + off));
            }
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f32::from_bits(state as u32);
            if x.is_finite() {
                cases.push(x);
            }
        }
        for x in cases {
            let want = half::bf16::from_f32(x).to_f32();
            assert_eq!(round_bf16(x).to_bits(), want.to_bits(), "{x:e} ({:#010x})", x.to_bits());
        }
        // explicit ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 → even (1); 1 + 3·2^-8 → 1 + 2^-6
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    }

    #[test]
    fn scope_restores_the_previous_precision() {
        assert_eq!(current(), Precision::F32);
        {
            let _outer = with_precision(Precision::Bf16);
            assert_eq!(current(), Precision::Bf16);
            {
                let _inner = with_precision(Precision::F32);
                assert_eq!(current(), Precision::F32);
            }
            assert_eq!(current(), Precision::Bf16);
            // other threads keep their own
            std::thread::spawn(|| assert_eq!(current(), Precision::F32)).join().unwrap();
        }
        assert_eq!(current(), Precision::F32);
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("f16".parse::<Precision>().unwrap_err().contains("f32 or bf16"));
    }
}

