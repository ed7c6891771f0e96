//! Every op the UNet and the classifier need. One op family, one room:
//! `<op>/mod.rs` holds the op, its backward rule and the device dispatch;
//! `<op>/cpu.rs` holds the plain-Rust kernels that are the reference for the
//! CUDA twins.

pub(crate) mod ab_switch;
pub mod activation;
pub mod attention;
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod batch_norm;
pub mod binary;
pub mod cast;
pub mod conv2d;
pub mod diffusion;
pub mod dropout;
pub mod fast_math;
pub mod group_norm;
pub mod layout;
pub mod lookup;
pub mod loss;
pub mod matmul;
pub mod precision;
pub mod reduce;
pub mod random;
pub mod resample;
pub mod softmax;
pub mod timestep_embedding;

pub use activation::{Activation, activation, gelu, general_relu, leaky_relu, mish, relu, silu};
pub use attention::{attention, attention_columns, attention_columns_packed, attention_columns_packed_scaled_query, attention_columns_scaled_query};
pub use batch_norm::{BatchNormMode, batch_norm};
pub use binary::{add, add_scalar, affine, div, mul, mul_scalar, sub};
pub use cast::cast;
pub use dropout::dropout;
pub use conv2d::{Bf16Store, ConvAfter, Conv2dParams, ConvAdd, NormFirst, conv2d, conv2d_after_norm, conv2d_after_upsample, conv2d_concat, conv2d_concat_stored, conv2d_fused, convs_after_norm};
pub use group_norm::{group_norm, group_norm_silu};
pub use layout::{concat, index_select, narrow, permute, reshape, transpose};
pub use lookup::embedding_lookup;
pub use loss::{cross_entropy, mse_loss};
pub use matmul::{linear, matmul, matmul_t};
pub use precision::{Precision, with_precision};
pub use reduce::{broadcast_to, mean, mean_all, sum, sum_all, sum_to};
pub use resample::{avg_pool2x2, fir_downsample2x, fir_upsample2x, upsample_nearest2x};
pub use softmax::softmax;
pub use timestep_embedding::{fourier_embedding, timestep_embedding};

/// Below this many elements, elementwise kernels run on one thread.
pub(crate) const PARALLEL_THRESHOLD: usize = 1 << 15;

/// An n-long output computed `chunk` values at a time by `fill(i, out)`
/// (out = values i·chunk…, the last chunk shorter), on the rayon threads
/// from [`PARALLEL_THRESHOLD`] values on, each chunk [`zeroed`] just before.
pub(crate) fn filled(n: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    // SAFETY: `zeroed` writes every value of each chunk
    unsafe { written(n, chunk, |i, c| fill(i, zeroed(c))) }
}

/// An n-long output written `chunk` values at a time by `write(i, out)`
/// into its spare capacity (out = values i·chunk…, the last chunk shorter),
/// on the rayon threads from [`PARALLEL_THRESHOLD`] values on.
///
/// # Safety
/// `write` must write every value of the chunk it is given.
pub(crate) unsafe fn written(n: usize, chunk: usize, write: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(n);
    if n > 0 {
        let out = &mut v.spare_capacity_mut()[..n];
        if n < PARALLEL_THRESHOLD {
            out.chunks_mut(chunk).enumerate().for_each(|(i, c)| write(i, c));
        } else {
            out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| write(i, c));
        }
    }
    // SAFETY: the chunks cover all n values, each written (the caller's promise)
    unsafe { v.set_len(n) };
    v
}

/// `part` of an output's spare capacity, written with zeros, as floats.
/// Zeroing a part just before a task fills it, while it is in cache, costs
/// little; zeroing the whole output first ([`zeros`]) is a pass over memory
/// as long as the fill's writes.
pub(crate) fn zeroed(part: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    for v in part.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every value of part was written just above
    unsafe { &mut *(part as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// n zeros for an output that parallel work then fills. From
/// [`PARALLEL_THRESHOLD`] values on they are written by the rayon threads: a
/// `vec![0.0; n]` of a reused heap block is one memset on the calling thread
/// while the pool waits (3 % of a CPU training step's samples, 5 % of its time).
pub(crate) fn zeros(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    if n < PARALLEL_THRESHOLD {
        return vec![0.0; n];
    }
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(0.0f32, n));
    v
}
