//! CUDA against the CPU twin: nearest 2× upsampling and 2×2 ceil-mode average
//! pooling (kernels/resample.cu), forward and backward, on odd sizes (5×4,
//! 3×3, 1×1, 7×9). On a machine without a GPU these run on the CPU emulation
//! of CUDA (kernels/emu).
//!
//! Tolerance: ParityTol::EXACTISH — the kernels add the same (at most four)
//! terms in the CPU twin's order and divide by the same count, so the results
//! agree to the last bit; EXACTISH leaves a few ulp for a GPU's fma contraction.

use minidiffusion::ops::{avg_pool2x2, fir_downsample2x, fir_upsample2x, upsample_nearest2x};
use minidiffusion::testing::{ParityTol, parity_check};

const SHAPES: [[usize; 4]; 4] = [[2, 3, 5, 4], [1, 2, 3, 3], [3, 1, 1, 1], [1, 2, 7, 9]];

#[test]
fn upsample_nearest2x_parity() {
    for s in SHAPES {
        parity_check(&format!("upsample_nearest2x {s:?}"), &[&s], |x| upsample_nearest2x(&x[0]), ParityTol::EXACTISH);
    }
}

/// Even rows take the kernel writing a pair's 2×4 block with two float4
/// stores (`[2, 3, 5, 4]` above: parity with the CPU twin); odd rows the
/// per-value one.
#[test]
fn upsample_of_even_rows_writes_blocks() {
    use minidiffusion::Tensor;
    use minidiffusion::testing::{kernels_launched, parity_device, randn};
    for (s, kernel) in [([2, 3, 5, 4], "upsample_nearest2x_pairs_f32"), ([1, 2, 7, 9], "upsample_nearest2x_f32")] {
        let x = Tensor::from_vec_on(randn(&s, 3), s.to_vec(), parity_device()).unwrap();
        let kernels = kernels_launched(|| drop(upsample_nearest2x(&x).unwrap()));
        assert_eq!(kernels, [kernel], "{s:?}");
    }
}

#[test]
fn avg_pool2x2_parity() {
    for s in SHAPES {
        parity_check(&format!("avg_pool2x2 {s:?}"), &[&s], |x| avg_pool2x2(&x[0]), ParityTol::EXACTISH);
    }
}

/// The FIR 2× resampling (diffusers' upsample_2d / downsample_2d, kernel
/// (1, 3, 3, 1)) and its adjoint backward: one fused multiply-add per tap in
/// the CPU twin's order, so exact; odd sizes and 2×2 down (the edges' taps).
#[test]
fn fir_resampling_parity() {
    for s in [[2, 3, 6, 4], [1, 2, 5, 7], [3, 1, 2, 2], [1, 2, 1, 3]] {
        parity_check(&format!("fir_upsample2x {s:?}"), &[&s], |x| fir_upsample2x(&x[0]), ParityTol::EXACTISH);
        if s[2] >= 2 && s[3] >= 2 {
            parity_check(&format!("fir_downsample2x {s:?}"), &[&s], |x| fir_downsample2x(&x[0]), ParityTol::EXACTISH);
        }
    }
}

#[test]
fn pool_then_upsample_parity() {
    // the UNet's down and up path around one level, on an odd size
    parity_check("avg_pool2x2 ∘ upsample_nearest2x", &[&[2, 3, 5, 7]], |x| upsample_nearest2x(&avg_pool2x2(&x[0])?), ParityTol::EXACTISH);
}

/// Nearest upsampling stored as bf16 (the bf16 path's upsampler input):
/// the f32 result rounded, on the device as on the CPU, bit for bit, and
/// the same input gradient as with f32 storage.
#[test]
fn upsample_bf16_storage_parity() {
    use minidiffusion::ops::{self, resample::upsample_nearest2x_stored};
    use minidiffusion::Tensor;
    use minidiffusion::testing::parity_device;
    use minidiffusion::tensor::DType;
    let dims = [2, 3, 5, 7];
    let cpu = Tensor::from_vec(minidiffusion::testing::randn(&dims, 3), dims.to_vec()).unwrap();
    let dev = cpu.to_device(parity_device()).unwrap();
    let rounded: Vec<f32> = ops::upsample_nearest2x(&cpu).unwrap().to_vec().iter().map(|&v| minidiffusion::ops::precision::round_bf16(v)).collect();
    for x in [&cpu, &dev] {
        let y = upsample_nearest2x_stored(x, DType::BF16).unwrap();
        assert_eq!((y.dtype(), y.dims()), (DType::BF16, &[2, 3, 10, 14][..]));
        assert_eq!(y.to_vec(), rounded, "on {}", x.device());
        let xg = x.detach().requires_grad_();
        let r = Tensor::from_vec(minidiffusion::testing::randn(&[2, 3, 10, 14], 4), vec![2, 3, 10, 14]).unwrap().to_device(x.device()).unwrap();
        let grad = |store| {
            let y = ops::cast(&upsample_nearest2x_stored(&xg, store).unwrap(), DType::F32).unwrap();
            minidiffusion::backward(&ops::sum_all(&ops::mul(&y, &r).unwrap()).unwrap()).unwrap().get(&xg).unwrap().to_vec()
        };
        assert_eq!(grad(DType::BF16), grad(DType::F32), "gradient on {}", x.device());
    }
}
