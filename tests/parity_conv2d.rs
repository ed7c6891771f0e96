//! CUDA against the CPU twin: conv2d (implicit-GEMM kernels of
//! kernels/conv2d.cu) forward and the gradients of input, weight and bias, on
//! odd shapes: kernels 1, 3, 5 (and a non-square 3×1), stride 1 and 2,
//! padding 0, 1, 2, images like 7×9, channel counts that are not multiples of
//! the 64×64 tile or its 16-wide K slice (3, 5, 17, 67, 70), with and without
//! bias, N = 1 and N > 1. On a machine without a GPU these run on the CPU
//! emulation of CUDA (kernels/emu).
//!
//! Tolerance: ParityTol::TENSOR_CORE (atol 1e-4, rtol 1e-4): the three
//! products run on the tensor cores at f32 accuracy (3xTF32, kernels/mma.cuh),
//! whose truncating accumulation drifts a few ulp of the output's scale over
//! long sums (an H100 missed REDUCTION's 1e-5 + 1e-4 rel by 6e-5 at K = 603).
//! Each output is a sum of up to C·KH·KW = 603 (forward), OC·KH·KW = 630
//! (input gradient) or N·OH·OW = 126 (weight gradient) products of O(1)
//! values, summed in another order than the CPU's im2col + gemm.

use minidiffusion::ops::{Conv2dParams, conv2d};
use minidiffusion::testing::{ParityTol, parity_check, parity_check_at, randn};

/// The tests that profile the device to see which kernels ran share its
/// profiler: one at a time.
static PROFILER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One case: x [n, c, h, w], weight [oc, c, kh, kw], optional bias [oc].
#[allow(clippy::too_many_arguments)]
fn case(name: &str, x: [usize; 4], oc: usize, k: (usize, usize), stride: usize, padding: usize, bias: bool, tol: ParityTol) {
    let w = [oc, x[1], k.0, k.1];
    let b = [oc];
    let p = Conv2dParams { stride, padding };
    if bias {
        parity_check(name, &[&x, &w, &b], |t| conv2d(&t[0], &t[1], Some(&t[2]), p), tol);
    } else {
        parity_check(name, &[&x, &w], |t| conv2d(&t[0], &t[1], None, p), tol);
    }
}

#[test]
fn conv2d_3x3_parity() {
    // the UNet's 3×3, stride 1, pad 1 (weight gradient takes the split-K path: K = 2·63)
    case("k3_s1_p1_bias", [2, 3, 7, 9], 5, (3, 3), 1, 1, true, ParityTol::TENSOR_CORE);
    // no padding, N = 1
    case("k3_s1_p0_nobias", [1, 5, 7, 9], 17, (3, 3), 1, 0, false, ParityTol::TENSOR_CORE);
    // stride-2 downsampling, pad 1: the input gradient skips taps that do not divide
    case("k3_s2_p1_bias", [2, 17, 7, 9], 17, (3, 3), 2, 1, true, ParityTol::TENSOR_CORE);
    case("k3_s2_p0_nobias", [3, 5, 9, 7], 3, (3, 3), 2, 0, false, ParityTol::TENSOR_CORE);
}

#[test]
fn conv2d_1x1_parity() {
    case("k1_s1_p0_bias", [2, 17, 5, 7], 5, (1, 1), 1, 0, true, ParityTol::TENSOR_CORE);
    case("k1_s2_p1_nobias", [1, 3, 7, 9], 5, (1, 1), 2, 1, false, ParityTol::TENSOR_CORE);
}

#[test]
fn conv2d_5x5_parity() {
    case("k5_s1_p2_bias", [2, 5, 7, 9], 3, (5, 5), 1, 2, true, ParityTol::TENSOR_CORE);
    case("k5_s2_p2_nobias", [1, 3, 9, 7], 17, (5, 5), 2, 2, false, ParityTol::TENSOR_CORE);
    // the kernel covers the whole padded image: OH = OW = 1
    case("k5_s1_p0_single_pixel", [2, 3, 5, 5], 5, (5, 5), 1, 0, true, ParityTol::TENSOR_CORE);
}

#[test]
fn conv2d_nonsquare_and_multi_tile_parity() {
    case("k3x1_s1_p1", [2, 5, 7, 9], 3, (3, 1), 1, 1, true, ParityTol::TENSOR_CORE);
    // more than one 64-row tile in every GEMM: OC = 70 (forward, weight
    // gradient), C = 67 (input gradient), C·KH·KW = 603 columns of dW
    case("k3_multi_tile", [1, 67, 3, 5], 70, (3, 3), 1, 1, true, ParityTol::TENSOR_CORE);
    // K = 520·9 > 4608: the forward gathers without its shared k table
    case("k3_no_k_table", [1, 520, 3, 2], 3, (3, 3), 1, 1, true, ParityTol::TENSOR_CORE);
}

#[test]
fn conv2d_fused_epilogue_parity() {
    use minidiffusion::ops::{ConvAdd, conv2d_fused};
    // bias + per-image bias + residual added as the kernel stores, and their
    // gradients (Σ over pixels per image; the identity)
    let (x, w, b, sb, r) = ([3, 5, 7, 9], [6, 5, 3, 3], [6], [3, 6], [3, 6, 7, 9]);
    let p = Conv2dParams { stride: 1, padding: 1 };
    parity_check(
        "fused_all",
        &[&x, &w, &b, &sb, &r],
        |t| conv2d_fused(&t[0], &t[1], Some(&t[2]), ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) }, p),
        ParityTol::TENSOR_CORE,
    );
    // stride 2, only the residual
    let (x, w, r) = ([2, 17, 7, 9], [17, 17, 3, 3], [2, 17, 4, 5]);
    let p = Conv2dParams { stride: 2, padding: 1 };
    parity_check(
        "fused_residual_s2",
        &[&x, &w, &r],
        |t| conv2d_fused(&t[0], &t[1], None, ConvAdd { sample_bias: None, residual: Some(&t[2]) }, p),
        ParityTol::TENSOR_CORE,
    );
}

/// The `*_bf16` kernels (the bf16 compute precision: operands rounded to bf16
/// on load, one m16n8k16 tensor-core instruction per 16 k, f32 sums) against
/// the CPU twin at bf16 (f32 kernels on rounded operands). Both multiply the
/// same bf16 values exactly (ParityTol::BF16_TENSOR_CORE); bf16 against
/// f32 differs by ~1e-2 of the scale here (tests/precision.rs), so a kernel
/// that skipped the rounding fails.
#[test]
fn conv2d_bf16_parity() {
    use minidiffusion::ops::{ConvAdd, Precision, conv2d_fused, with_precision};
    let bf16 = |f: &dyn Fn() -> minidiffusion::Result<minidiffusion::Tensor>| {
        let _p = with_precision(Precision::Bf16);
        f()
    };
    let s1 = Conv2dParams { stride: 1, padding: 1 };
    // K = 27 (odd: the last bf16 pair is half padding), split-K weight gradient
    parity_check("bf16_k3_s1_p1", &[&[2, 3, 7, 9], &[5, 3, 3, 3], &[5]], |t| bf16(&|| conv2d(&t[0], &t[1], Some(&t[2]), s1)), ParityTol::BF16_TENSOR_CORE);
    // stride 2, K = 153 over five 32-wide slices
    let s2 = Conv2dParams { stride: 2, padding: 1 };
    parity_check("bf16_k3_s2", &[&[2, 17, 7, 9], &[17, 17, 3, 3]], |t| bf16(&|| conv2d(&t[0], &t[1], None, s2)), ParityTol::BF16_TENSOR_CORE);
    // two 64-row tiles in every GEMM, and the fused epilogue
    parity_check(
        "bf16_multi_tile_fused",
        &[&[1, 67, 3, 5], &[70, 67, 3, 3], &[70], &[1, 70], &[1, 70, 3, 5]],
        |t| bf16(&|| conv2d_fused(&t[0], &t[1], Some(&t[2]), ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) }, s1)),
        ParityTol::BF16_TENSOR_CORE,
    );
    // 1×1 over an odd channel count
    let p0 = Conv2dParams { stride: 1, padding: 0 };
    parity_check("bf16_k1", &[&[2, 17, 5, 7], &[5, 17, 1, 1]], |t| bf16(&|| conv2d(&t[0], &t[1], None, p0)), ParityTol::BF16_TENSOR_CORE);
}

/// parity_check's inputs (normal, seeds 2000 + i), input i times its scale.
fn scaled_randn(shapes: &[(&[usize], f32)]) -> Vec<(Vec<f32>, minidiffusion::Shape)> {
    let values = |(i, (shape, scale)): (usize, &(&[usize], f32))| {
        (randn(shape, 2000 + i as u64).iter().map(|v| v * scale).collect(), minidiffusion::Shape::from(*shape))
    };
    shapes.iter().enumerate().map(values).collect()
}

/// kernels/conv2d_same.cu (stride-1 1×1 and 3×3 same convs: a staged input
/// patch per channel chunk, weights packed in fragment order) for the forward
/// and, with the weight transposed and flipped, the input gradient; at bf16
/// also the weight gradient (pixel pairs along k). Against the CPU twin at
/// the same precision. Geometries: tiles of whole rows of one image (16×16,
/// 32×32, 8×16) and of several whole images (4×4: 8 a tile; 8×8: 2 a tile)
/// with the batch ending inside a tile; channel counts that leave the last
/// chunk partial (5, 17, 20, 33) and output channels past one 64-row block
/// (70) or under 32 (8); every epilogue term, on whole tiles (one image,
/// every channel: the epilogue's unchecked path) and on partial ones. The unit test
/// `same_conv_takes_the_unet_shapes` (ops/conv2d/cuda.rs) checks that these
/// shapes take these kernels.
fn same_conv_parity(precision: minidiffusion::ops::Precision) {
    use minidiffusion::ops::{ConvAdd, conv2d_fused, with_precision};
    let at = |f: &dyn Fn() -> minidiffusion::Result<minidiffusion::Tensor>| {
        let _p = with_precision(precision);
        f()
    };
    let name = |case: &str| format!("{precision}_{case}");
    let tol = if precision == minidiffusion::ops::Precision::Bf16 { ParityTol::BF16_TENSOR_CORE } else { ParityTol::TENSOR_CORE };
    let (same3, same1) = (Conv2dParams { stride: 1, padding: 1 }, Conv2dParams { stride: 1, padding: 0 });
    parity_check(
        &name("same_k3_16x16_fused"),
        &[&[2, 20, 16, 16], &[40, 20, 3, 3], &[40], &[2, 40], &[2, 40, 16, 16]],
        |t| at(&|| conv2d_fused(&t[0], &t[1], Some(&t[2]), ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) }, same3)),
        tol,
    );
    parity_check(&name("same_k3_32x32"), &[&[1, 16, 32, 32], &[32, 16, 3, 3], &[32]], |t| at(&|| conv2d(&t[0], &t[1], Some(&t[2]), same3)), tol);
    parity_check(&name("same_k3_8x16"), &[&[2, 5, 8, 16], &[6, 5, 3, 3]], |t| at(&|| conv2d(&t[0], &t[1], None, same3)), tol);
    parity_check(&name("same_k3_4x4_images"), &[&[3, 17, 4, 4], &[8, 17, 3, 3], &[8]], |t| at(&|| conv2d(&t[0], &t[1], Some(&t[2]), same3)), tol);
    parity_check(&name("same_k1_8x8_images"), &[&[3, 33, 8, 8], &[70, 33, 1, 1], &[70]], |t| at(&|| conv2d(&t[0], &t[1], Some(&t[2]), same1)), tol);
    // 64-row blocks over images smaller than a warp's pixel strip (a lane's
    // output pixels cross images), with every epilogue term; 2×2 maps: 32
    // images a tile, 8 pixels span two of them
    let fused = |t: &[minidiffusion::Tensor], p| conv2d_fused(&t[0], &t[1], Some(&t[2]), ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) }, p);
    parity_check(&name("same_k3_4x4_images_m64_fused"), &[&[3, 17, 4, 4], &[72, 17, 3, 3], &[72], &[3, 72], &[3, 72, 4, 4]], |t| at(&|| fused(t, same3)), tol);
    parity_check(&name("same_k1_2x2_images_fused"), &[&[37, 24, 2, 2], &[72, 24, 1, 1], &[72], &[37, 72], &[37, 72, 2, 2]], |t| at(&|| fused(t, same1)), tol);
    // whole tiles inside one image with every channel live (P ≥ 128, OC a
    // multiple of the block's rows: the UNet's 32×32 and 16×16 convs): the
    // epilogue's unchecked path, with every term, with two 64-row blocks, at
    // 1×1, and without the bias
    // (weights at the init's scale, 1/√fan-in: with unit weights the input
    // gradient sums 128·9 = 1152 products to values of ~34, where the mma's
    // rounding toward zero drifts past the bar — an H100 missed it by 5e-6 in
    // run 7, as does the emulation, which rounds as the GPU does)
    parity_check_at(
        &name("same_k3_16x16_m64_whole_fused"),
        scaled_randn(&[(&[2, 16, 16, 16], 1.0), (&[128, 16, 3, 3], 1.0 / 12.0), (&[128], 1.0), (&[2, 128], 1.0), (&[2, 128, 16, 16], 1.0)]),
        |t| at(&|| fused(t, same3)),
        tol,
    );
    parity_check(&name("same_k1_32x32_whole_fused"), &[&[1, 24, 32, 32], &[32, 24, 1, 1], &[32], &[1, 32], &[1, 32, 32, 32]], |t| at(&|| fused(t, same1)), tol);
    parity_check(
        &name("same_k3_32x32_whole_no_bias"),
        &[&[2, 8, 32, 32], &[32, 8, 3, 3], &[2, 32], &[2, 32, 32, 32]],
        |t| at(&|| conv2d_fused(&t[0], &t[1], None, ConvAdd { sample_bias: Some(&t[2]), residual: Some(&t[3]) }, same3)),
        tol,
    );
    // 1×1 maps: P = 1 is odd, so a lane's two pixels are two images and the
    // epilogue stores them one by one (every other map stores them as a pair)
    parity_check(&name("same_k1_1x1_images_fused"), &[&[137, 20, 1, 1], &[40, 20, 1, 1], &[40], &[137, 40], &[137, 40, 1, 1]], |t| at(&|| fused(t, same1)), tol);
}

#[test]
fn conv2d_same_f32_parity() {
    same_conv_parity(minidiffusion::ops::Precision::F32);
}

#[test]
fn conv2d_same_bf16_parity() {
    same_conv_parity(minidiffusion::ops::Precision::Bf16);
}

/// The bf16 same conv reading its input from bf16 storage (the bf16 path's
/// GroupNorm + SiLU output) equals the same kernels reading the f32
/// widening of those values, bit for bit — forward and weight gradient — on
/// the same geometries (both kernel rows, both K, partial chunks — odd
/// channel counts too —, multi-image tiles, epilogue). The forward stages
/// the storage 4 pixels a load (the `xbf16_*_v` kernels) exactly where W is a
/// multiple of 4 and the 1×1 forward does not take the conv, element by
/// element otherwise; 32-row 3×3 blocks at three an SM (`_b3`) unless
/// switched off, with the same bits.
#[test]
fn conv2d_same_bf16_reads_bf16_storage() {
    use minidiffusion::ops::conv2d::cuda::{with_conv_1x1, with_three_blocks_per_sm};
    use minidiffusion::ops::{ConvAdd, Precision, cast, conv2d_fused, with_precision};
    use minidiffusion::tensor::DType;
    use minidiffusion::testing::parity_device;
    use minidiffusion::{Tensor, no_grad};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let minidiffusion::Device::Cuda(d) = device else { panic!("parity_device is CUDA") };
    let backend = minidiffusion::device::cuda::backend(d).unwrap();
    let t = |dims: &[usize], seed: u64| Tensor::from_vec_on(randn(dims, seed), dims.to_vec(), device).unwrap();
    let _p = with_precision(Precision::Bf16);
    // (x, weight, padding, the 1×1 forward on)
    let cases: [(&[usize], &[usize], usize, bool); 9] = [
        (&[2, 20, 16, 16], &[40, 20, 3, 3], 1, true),
        (&[3, 17, 4, 4], &[8, 17, 3, 3], 1, true),
        (&[3, 33, 8, 8], &[70, 33, 1, 1], 0, true),
        (&[1, 16, 32, 32], &[32, 16, 3, 3], 1, true),
        (&[2, 5, 8, 16], &[6, 5, 3, 3], 1, true),
        (&[9, 8, 4, 4], &[72, 8, 3, 3], 1, true),
        (&[2, 8, 16, 2], &[8, 8, 3, 3], 1, true),
        (&[3, 33, 8, 8], &[24, 33, 1, 1], 0, false),
        (&[2, 24, 8, 8], &[40, 24, 1, 1], 0, false),
    ];
    for (k, (xd, wd, pad, one_by_one)) in cases.into_iter().enumerate() {
        let what = format!("case {k}: {xd:?} * {wd:?}");
        let stored = cast(&t(xd, 10 + k as u64), DType::BF16).unwrap();
        assert_eq!(stored.dtype(), DType::BF16);
        let widened = cast(&stored, DType::F32).unwrap();
        let (w, oc) = (t(wd, 20 + k as u64), wd[0]);
        let (sb, res) = (t(&[xd[0], oc], 30 + k as u64), t(&[xd[0], oc, xd[2], xd[3]], 40 + k as u64));
        let conv = |x: &Tensor, three: bool| {
            let add = ConvAdd { sample_bias: Some(&sb), residual: Some(&res) };
            backend.start_profiling();
            let forward = || no_grad(|| conv2d_fused(x, &w, None, add, Conv2dParams { stride: 1, padding: pad }));
            let y = with_conv_1x1(one_by_one, || with_three_blocks_per_sm(three, forward)).unwrap().to_vec();
            let kernels: Vec<&str> = backend.stop_profiling().unwrap().into_iter().map(|r| r.kernel).filter(|k| k.starts_with("conv2d_same_") || k.starts_with("conv2d_1x1_")).collect();
            (y, kernels)
        };
        let (from_f32, _) = conv(&widened, true);
        let (y, kernels) = conv(&stored, true);
        assert_eq!(y, from_f32, "{what}: the same bits");
        // and the CPU twin of the widened input at bf16, within its tolerance
        let on_cpu = |t: &Tensor| t.to_device(minidiffusion::Device::Cpu).unwrap();
        let twin = {
            let (sb, res) = (on_cpu(&sb), on_cpu(&res));
            let add = ConvAdd { sample_bias: Some(&sb), residual: Some(&res) };
            no_grad(|| conv2d_fused(&on_cpu(&widened), &on_cpu(&w), None, add, Conv2dParams { stride: 1, padding: pad })).unwrap().to_vec()
        };
        let tol = ParityTol::BF16_TENSOR_CORE;
        minidiffusion::testing::assert_close(&format!("{what}: against the CPU twin"), &y, &twin, tol.atol, tol.rtol);
        let vec = xd[3] % 4 == 0 && !(one_by_one && wd[2] == 1);
        let same_conv = !(one_by_one && wd[2] == 1);
        let b3 = oc <= 32 && wd[2] == 3;
        let name = format!("conv2d_same_bf16_xbf16_m{}_k{}{}{}", if oc <= 32 { 32 } else { 64 }, wd[2], if vec { "_v" } else { "" }, if b3 { "_b3" } else { "" });
        if same_conv {
            assert_eq!(kernels, [name.as_str()], "{what}");
        } else {
            assert_eq!(kernels, [if oc <= 32 { "conv2d_1x1_bf16_xbf16_m32" } else { "conv2d_1x1_bf16_xbf16_m64" }], "{what}");
        }
        let (two, kernels) = conv(&stored, false);
        assert_eq!(two, from_f32, "{what}: two blocks an SM, the same bits");
        assert!(!kernels.iter().any(|k| k.ends_with("_b3")), "{what}: {kernels:?}");
        // training: the weight gradient reads the stored x as it is, too
        let wg = w.detach().requires_grad_();
        let r = t(&[xd[0], oc, xd[2], xd[3]], 50 + k as u64);
        let dw = |x: &Tensor| {
            let y = conv2d_fused(x, &wg, None, ConvAdd::default(), Conv2dParams { stride: 1, padding: pad }).unwrap();
            let loss = minidiffusion::ops::sum_all(&minidiffusion::ops::mul(&y, &r).unwrap()).unwrap();
            minidiffusion::backward(&loss).unwrap().get(&wg).unwrap().to_vec()
        };
        assert_eq!(dw(&stored), dw(&widened), "{what}: weight gradient");
    }
}

/// The UNet's group norm (+ SiLU) → same conv at inference: on CUDA the conv
/// applies the norm as it stages its input (`groupnorm_affine`, then the
/// `conv2d_same_*_gn_*` kernels, or at 1×1 `conv2d_1x1_*_gn_*`, there the
/// default), and equals the two ops on the same device
/// bit for bit (the staged values are those groupnorm_forward writes), and
/// the CPU twin's conv of that normalised map within the conv's tolerance
/// (the map itself within the norm's of the CPU twin's: an ulp between the
/// two SiLUs may round an operand to the other bf16): both precisions, with
/// and without SiLU, both kernel rows and K, chunks left partial (20
/// channels), multi-image tiles (4×4), every epilogue term; and several convs
/// of one map (`convs_after_norm`) as each alone. With a gradient wanted it
/// is the two ops, and the gradient reaches the norm's weight.
#[test]
fn conv2d_after_norm_applies_the_norm_in_the_conv() {
    use minidiffusion::device::cuda;
    use minidiffusion::ops::conv2d::cuda as cuda_conv;
    use minidiffusion::ops::group_norm::{group_norm, group_norm_silu};
    use minidiffusion::ops::{ConvAdd, ConvAfter, NormFirst, Precision, conv2d_after_norm, conv2d_fused, convs_after_norm, with_precision};
    use minidiffusion::testing::{assert_close, parity_device};
    use minidiffusion::{Device, Tensor, no_grad};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let Device::Cuda(d) = device else { panic!("parity_device is CUDA") };
    let backend = cuda::backend(d).unwrap();
    let cases: [(&[usize], usize, &[usize], usize); 5] = [
        (&[2, 20, 16, 16], 4, &[40, 20, 3, 3], 1),
        (&[3, 16, 4, 4], 8, &[8, 16, 3, 3], 1),
        // eight images a tile (segments past 4, each its own statistics)
        (&[9, 24, 4, 4], 4, &[72, 24, 3, 3], 1),
        (&[3, 32, 8, 8], 8, &[70, 32, 1, 1], 0),
        (&[1, 16, 32, 32], 4, &[32, 16, 3, 3], 1),
    ];
    for (k, &(xd, groups, wd, pad)) in cases.iter().enumerate() {
        let (c, oc) = (xd[1], wd[0]);
        let values: Vec<(Vec<f32>, Vec<usize>)> = [xd.to_vec(), vec![c], vec![c], wd.to_vec(), vec![oc], vec![xd[0], oc], vec![xd[0], oc, xd[2], xd[3]]]
            .into_iter()
            .enumerate()
            .map(|(j, dims)| (randn(&dims, 60 + 10 * k as u64 + j as u64), dims))
            .collect();
        let on = |device: Device| -> Vec<Tensor> { values.iter().map(|(v, dims)| Tensor::from_vec_on(v.clone(), dims.clone(), device).unwrap()).collect() };
        let p = Conv2dParams { stride: 1, padding: pad };
        for precision in [Precision::F32, Precision::Bf16] {
            // the attention block's norm has no SiLU (its 1×1 case here)
            for silu in if k == 3 { vec![true, false] } else { vec![true] } {
                let _p = with_precision(precision);
                let what = format!("case {k} {xd:?} * {wd:?}, {precision}, silu {silu}");
                let composed = |t: &[Tensor]| {
                    let normed = if silu { group_norm_silu } else { group_norm }(&t[0], groups, Some(&t[1]), Some(&t[2]), 1e-5).unwrap();
                    let add = ConvAdd { sample_bias: Some(&t[5]), residual: Some(&t[6]) };
                    no_grad(|| conv2d_fused(&normed, &t[3], Some(&t[4]), add, p)).unwrap().to_vec()
                };
                let t = on(device);
                let norm = NormFirst { groups, weight: Some(&t[1]), bias: Some(&t[2]), eps: 1e-5, silu };
                let add = ConvAdd { sample_bias: Some(&t[5]), residual: Some(&t[6]) };
                // the conv after the norm with the switches `set` and the kernels it launched
                let profiled = |set: &dyn Fn(&mut dyn FnMut() -> Vec<f32>) -> Vec<f32>| {
                    backend.start_profiling();
                    let y = set(&mut || no_grad(|| conv2d_after_norm(&t[0], norm, &t[3], Some(&t[4]), add, p)).unwrap().to_vec());
                    let kernels: Vec<String> = backend.stop_profiling().unwrap().into_iter().map(|r| r.kernel.to_string()).collect();
                    (y, kernels)
                };
                let (fused, kernels) = profiled(&|f| cuda_conv::with_norm_in_conv(true, f));
                assert!(kernels.iter().any(|k| k.starts_with("groupnorm_affine")) && kernels.iter().any(|k| k.contains("_gn_m")), "{what}: {kernels:?}");
                // (the 1×1 case by the 1×1 forward's NORM, `conv2d_1x1_*_gn_*`)
                assert_eq!(kernels.iter().any(|k| k.starts_with("conv2d_1x1_")), wd[2] == 1, "{what}: {kernels:?}");
                assert_eq!(fused, composed(&t), "{what}: the conv's norm against the two ops on {device}");
                // the norm written out and read back (for 3×3 the default, MINIDIFFUSION_NORM_IN_CONV
                // unset; for 1×1 MINIDIFFUSION_NORM_IN_1X1=off): the same bits
                let (apart, kernels) = profiled(&|f| cuda_conv::with_norm_in_1x1(false, || cuda_conv::with_norm_in_conv(false, f)));
                assert!(!kernels.iter().any(|k| k.starts_with("groupnorm_affine") || k.contains("_gn_m")), "{what}: {kernels:?}");
                assert_eq!(apart, fused, "{what}: the norm written out");
                if wd[2] == 1 {
                    // the default for 1×1: the norm in the 1×1 forward
                    let (default, kernels) = profiled(&|f| cuda_conv::with_norm_in_conv(false, f));
                    assert!(kernels.iter().any(|k| k.starts_with("conv2d_1x1_") && k.contains("_gn_m")), "{what}, default: {kernels:?}");
                    assert_eq!(default, fused, "{what}: the norm in the 1×1 forward by default");
                    // and the same-conv kernel's NORM at 1×1 (MINIDIFFUSION_CONV_1X1=same, NORM_IN_CONV=on)
                    let (same, kernels) = profiled(&|f| cuda_conv::with_conv_1x1(false, || cuda_conv::with_norm_in_conv(true, f)));
                    assert!(kernels.iter().any(|k| k.starts_with("conv2d_same_") && k.contains("_gn_m")), "{what}, same conv: {kernels:?}");
                    assert_eq!(same, fused, "{what}: the same conv's norm at 1×1");
                }
                let tol = if precision == Precision::Bf16 { ParityTol::BF16_TENSOR_CORE } else { ParityTol::TENSOR_CORE };
                let normed = if silu { group_norm_silu } else { group_norm };
                let normed_here = normed(&t[0], groups, Some(&t[1]), Some(&t[2]), 1e-5).unwrap().to_device(Device::Cpu).unwrap();
                let cpu = on(Device::Cpu);
                let normed_cpu = normed(&cpu[0], groups, Some(&cpu[1]), Some(&cpu[2]), 1e-5).unwrap();
                let norm_tol = ParityTol::REDUCTION;
                assert_close(&format!("{what}: the norm"), &normed_here.to_vec(), &normed_cpu.to_vec(), norm_tol.atol, norm_tol.rtol);
                let add_cpu = ConvAdd { sample_bias: Some(&cpu[5]), residual: Some(&cpu[6]) };
                let conv_cpu = no_grad(|| conv2d_fused(&normed_here, &cpu[3], Some(&cpu[4]), add_cpu, p)).unwrap().to_vec();
                assert_close(&what, &fused, &conv_cpu, tol.atol, tol.rtol);
                // several convs of one normalised map (the attention block's q, k, v): the same per conv,
                // the norm in the convs and apart
                let plain = ConvAfter { weight: &t[3], bias: None, add: ConvAdd::default(), params: p, store_bf16: None };
                for in_conv in [true, false] {
                    cuda_conv::with_norm_in_conv(in_conv, || {
                        let both = no_grad(|| convs_after_norm(&t[0], norm, &[ConvAfter { weight: &t[3], bias: Some(&t[4]), add, params: p, store_bf16: None }, plain])).unwrap();
                        assert_eq!(both[0].to_vec(), fused, "{what}: first of two convs, in the conv {in_conv}");
                        let alone = no_grad(|| conv2d_after_norm(&t[0], norm, &t[3], None, ConvAdd::default(), p)).unwrap();
                        assert_eq!(both[1].to_vec(), alone.to_vec(), "{what}: second of two convs, in the conv {in_conv}");
                    });
                }
            }
        }
        // with a gradient wanted: the two ops, on the tape
        let t = on(device);
        let gamma = t[1].detach().requires_grad_();
        let norm = NormFirst { groups, weight: Some(&gamma), bias: Some(&t[2]), eps: 1e-5, silu: true };
        let y = conv2d_after_norm(&t[0], norm, &t[3], Some(&t[4]), ConvAdd::default(), p).unwrap();
        let grads = minidiffusion::backward(&minidiffusion::ops::sum_all(&y).unwrap()).unwrap();
        assert!(grads.get(&gamma).is_some_and(|g| g.to_vec().iter().any(|v| *v != 0.0)), "case {k}: dγ");
    }
}

/// 1×1 convs asked to store their output in bf16 (`ConvAfter::store_bf16`,
/// the attention block's q, k and v at inference): `conv2d_1x1_bf16_*ybf16_*`
/// stores the f32-output kernel's values scaled as asked (as they are; all
/// channels times the attention's query factor; the first 40 % of them,
/// as a packed q, k, v's q third) rounded to bf16, bit for bit (and the CPU
/// twin's within its tolerance and the rounding), every epilogue
/// term included, x as it is and group-normalised as staged; 32-
/// and 64-row blocks, 16×16 and 8×8 maps (tiles within an image and across
/// images), 48 channels (a partial block). Where it cannot — a 3×3 conv, f32
/// products, a gradient wanted — the output is f32 and the same as unasked.
#[test]
fn bf16_output_1x1_stores_the_rounded_bits() {
    use minidiffusion::ops::precision::round_bf16;
    use minidiffusion::ops::{Bf16Store, ConvAdd, ConvAfter, NormFirst, Precision, convs_after_norm, with_precision};
    use minidiffusion::tensor::DType;
    use minidiffusion::{no_grad, testing::kernel_calls};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    for (k, (xd, wd)) in [([2, 64, 16, 16], [64, 64, 1, 1]), ([3, 32, 8, 8], [32, 32, 1, 1]), ([2, 32, 8, 8], [48, 32, 1, 1]), ([2, 32, 8, 8], [32, 32, 3, 3])].iter().enumerate() {
        let t = switch_case(xd, wd, 900 + 10 * k as u64);
        let p = Conv2dParams { stride: 1, padding: wd[2] / 2 };
        let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
        let one_by_one = wd[2] == 1;
        for normed in [false, true] {
            let norm = NormFirst { groups: 8, weight: Some(&t[5]), bias: Some(&t[6]), eps: 1e-5, silu: false };
            let conv = |store_bf16: Option<Bf16Store>, precision: Precision, grad: bool| {
                let _p = with_precision(precision);
                let weight = if grad { t[1].detach().requires_grad_() } else { t[1].clone() };
                let c = ConvAfter { weight: &weight, bias: Some(&t[2]), add, params: p, store_bf16 };
                let run = || if normed { convs_after_norm(&t[0], norm, &[c]) } else { c.forward(&t[0]).map(|y| vec![y]) };
                let y = if grad { run() } else { no_grad(run) }.unwrap().remove(0);
                (y.dtype(), y.to_vec())
            };
            let what = format!("x {xd:?}, weight {wd:?}, normed {normed}");
            let (dtype, plain) = conv(None, Precision::Bf16, false);
            assert_eq!(dtype, DType::F32, "{what}");
            let c = minidiffusion::ops::attention::query_factor(1.0 / 8f32.sqrt());
            for store in [Bf16Store::AS_IS, Bf16Store::times(c), Bf16Store { times: c, scaled_channels: wd[0] * 2 / 5 }] {
                let what = format!("{what}, {store:?}");
                // output channel of each value ([N, OC, H, W]) and its factor
                let factor = |i: usize| if i / (xd[2] * xd[3]) % wd[0] < store.scaled_channels { store.times } else { 1.0 };
                let mut stored = (dtype, Vec::new());
                let rows = kernel_calls(|| stored = conv(Some(store), Precision::Bf16, false));
                let launched = rows.iter().filter(|r| r.0.starts_with("conv2d_1x1_bf16_") && r.0.contains("ybf16")).map(|r| r.1).sum::<usize>();
                assert_eq!(launched, usize::from(one_by_one), "{what}: {rows:?}");
                if one_by_one {
                    // against the CPU twin at bf16 (times its f32 output): its tolerance plus the rounding to bf16 (2⁻⁹ relative)
                    let cpu: Vec<minidiffusion::Tensor> = t.iter().map(|x| x.to_device(minidiffusion::Device::Cpu).unwrap()).collect();
                    let twin = {
                        let _p = with_precision(Precision::Bf16);
                        let cadd = ConvAdd { sample_bias: Some(&cpu[3]), residual: Some(&cpu[4]) };
                        let c = ConvAfter { weight: &cpu[1], bias: Some(&cpu[2]), add: cadd, params: p, store_bf16: Some(store) };
                        let cnorm = NormFirst { weight: Some(&cpu[5]), bias: Some(&cpu[6]), ..norm };
                        no_grad(|| if normed { convs_after_norm(&cpu[0], cnorm, &[c]) } else { c.forward(&cpu[0]).map(|y| vec![y]) }).unwrap().remove(0)
                    };
                    assert_eq!(twin.dtype(), DType::F32, "{what}: the CPU stores f32");
                    let twin: Vec<f32> = twin.to_vec().iter().enumerate().map(|(i, &x)| factor(i) * x).collect();
                    let tol = ParityTol::BF16_TENSOR_CORE;
                    minidiffusion::testing::assert_close(&format!("{what}: bf16 output against the CPU twin"), &stored.1, &twin, tol.atol, tol.rtol + 4e-3);
                    let rounded: Vec<u32> = plain.iter().enumerate().map(|(i, &x)| round_bf16(factor(i) * x).to_bits()).collect();
                    assert_eq!(stored.0, DType::BF16, "{what}");
                    let differ: Vec<usize> = (0..rounded.len()).filter(|&i| stored.1[i].to_bits() != rounded[i]).collect();
                    assert!(differ.is_empty(), "{what}: {} of {} bf16 outputs differ from the f32 output scaled and rounded (first at {:?})", differ.len(), rounded.len(), differ.first());
                } else {
                    assert_eq!(stored, (DType::F32, plain.clone()), "{what}: a 3×3 conv stores f32, not scaled");
                }
                assert_eq!(conv(Some(store), Precision::F32, false), conv(None, Precision::F32, false), "{what}: f32 products store f32, not scaled");
                assert_eq!(conv(Some(store), Precision::Bf16, true), (DType::F32, plain.clone()), "{what}: a gradient wanted stores f32, not scaled");
            }
        }
    }
}

/// A bf16 3×3 same conv of bf16 storage asked to store its output in bf16
/// (`ConvAfter::store_bf16`: the resnets' conv1 with bf16 activations) stores
/// the bits of its f32 output scaled and rounded, by
/// `conv2d_same_bf16_xbf16_ybf16_*`: at 32 output channels (the 3-blocks
/// kernel), 64, and 48 (a partial 64-row block); close to the CPU twin. With
/// the wgmma forward on (where the backend has it) by its `_wg_n*` twins.
/// Where neither takes x (W not a multiple of 4) the output is f32 and the
/// same as unasked.
#[test]
fn bf16_output_3x3_of_bf16_storage_stores_the_rounded_bits() {
    use minidiffusion::ops::conv2d::cuda::{wgmma_width, with_wgmma_forward};
    use minidiffusion::ops::precision::round_bf16;
    use minidiffusion::ops::{Bf16Store, ConvAdd, ConvAfter, Precision, cast, with_precision};
    use minidiffusion::tensor::DType;
    use minidiffusion::{no_grad, testing::kernel_calls};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    for (k, (xd, wd)) in [([2, 32, 16, 16], [32, 32, 3, 3]), ([2, 64, 8, 8], [64, 64, 3, 3]), ([3, 32, 8, 8], [48, 32, 3, 3]), ([2, 32, 6, 6], [32, 32, 3, 3])].iter().enumerate() {
        let t = switch_case(xd, wd, 960 + 10 * k as u64);
        let minidiffusion::Device::Cuda(d) = t[0].device() else { panic!("parity_device is CUDA") };
        let has_wgmma = minidiffusion::device::cuda::backend(d).unwrap().wgmma();
        let x = no_grad(|| cast(&t[0], DType::BF16)).unwrap();
        let p = Conv2dParams { stride: 1, padding: 1 };
        let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
        let geom = minidiffusion::ops::conv2d::cpu::ConvGeom { n: xd[0], c: xd[1], h: xd[2], w: xd[3], oc: wd[0], kh: 3, kw: 3, stride: 1, pad: 1, oh: xd[2], ow: xd[3] };
        for wgmma in [false, true] {
            let by_wgmma = wgmma && has_wgmma && wgmma_width(&geom).is_some();
            let takes = by_wgmma || xd[3] % 4 == 0;
            let conv = |store_bf16: Option<Bf16Store>| {
                let _p = with_precision(Precision::Bf16);
                let y = with_wgmma_forward(wgmma, || no_grad(|| ConvAfter { weight: &t[1], bias: Some(&t[2]), add, params: p, store_bf16 }.forward(&x))).unwrap();
                (y.dtype(), y.to_vec())
            };
            let what = format!("x {xd:?} in bf16, weight {wd:?}, wgmma {wgmma}");
            let plain = conv(None);
            assert_eq!(plain.0, DType::F32, "{what}");
            let c = minidiffusion::ops::attention::query_factor(1.0 / 8f32.sqrt());
            for store in [Bf16Store::AS_IS, Bf16Store { times: c, scaled_channels: wd[0] / 3 }] {
                let what = format!("{what}, {store:?}");
                let factor = |i: usize| if i / (xd[2] * xd[3]) % wd[0] < store.scaled_channels { store.times } else { 1.0 };
                let mut stored = plain.clone();
                let rows = kernel_calls(|| stored = conv(Some(store)));
                let launched = |wg: bool| rows.iter().filter(|r| r.0.starts_with("conv2d_same_bf16_xbf16_ybf16_") && r.0.contains("_wg_") == wg).map(|r| r.1).sum::<usize>();
                assert_eq!((launched(false), launched(true)), (usize::from(takes && !by_wgmma), usize::from(by_wgmma)), "{what}: {rows:?}");
                if !takes {
                    assert_eq!(stored, plain, "{what}: not taken, f32 and not scaled");
                    continue;
                }
                assert_eq!(stored.0, DType::BF16, "{what}");
                let rounded: Vec<u32> = plain.1.iter().enumerate().map(|(i, &v)| round_bf16(factor(i) * v).to_bits()).collect();
                let differ: Vec<usize> = (0..rounded.len()).filter(|&i| stored.1[i].to_bits() != rounded[i]).collect();
                assert!(differ.is_empty(), "{what}: {} of {} bf16 outputs differ from the f32 output scaled and rounded (first at {:?})", differ.len(), rounded.len(), differ.first());
                // against the CPU twin from the same bf16 values: its tolerance plus the rounding (2⁻⁹ relative)
                let cpu: Vec<minidiffusion::Tensor> = t.iter().map(|v| v.to_device(minidiffusion::Device::Cpu).unwrap()).collect();
                let twin = {
                    let _p = with_precision(Precision::Bf16);
                    let cadd = ConvAdd { sample_bias: Some(&cpu[3]), residual: Some(&cpu[4]) };
                    let cx = x.to_device(minidiffusion::Device::Cpu).unwrap();
                    no_grad(|| ConvAfter { weight: &cpu[1], bias: Some(&cpu[2]), add: cadd, params: p, store_bf16: Some(store) }.forward(&cx)).unwrap()
                };
                let twin: Vec<f32> = twin.to_vec().iter().enumerate().map(|(i, &v)| factor(i) * v).collect();
                let tol = ParityTol::BF16_TENSOR_CORE;
                minidiffusion::testing::assert_close(&format!("{what}: bf16 output against the CPU twin"), &stored.1, &twin, tol.atol, tol.rtol + 4e-3);
            }
        }
    }
}

/// The up resnets' skip with bf16 activations: the 1×1 shortcut over a
/// concatenation stores it in bf16 (`conv2d_1x1_bf16_cat_ybf16_*`: the f32
/// output's bits rounded; at f32 products f32, unchanged), and a bf16 3×3 of
/// bf16 storage reads a bf16 residual as it is (`*_xbf16_rbf16_*`, mma.sync
/// and wgmma): the bits of the conv with that residual widened, which is
/// what every other conv does with it (W not a multiple of 4 here); close
/// to the CPU twin, which widens it.
#[test]
fn bf16_skip_is_stored_and_read_as_bf16() {
    use minidiffusion::ops::conv2d::cuda::{wgmma_width, with_wgmma_forward};
    use minidiffusion::ops::precision::round_bf16;
    use minidiffusion::ops::{Bf16Store, ConvAdd, ConvAfter, Precision, cast, conv2d_concat_stored, with_precision};
    use minidiffusion::tensor::DType;
    use minidiffusion::{Device, Tensor, no_grad, testing::kernel_calls};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let dev = |d: &[usize], seed| Tensor::from_vec_on(minidiffusion::testing::randn(d, seed), d.to_vec(), minidiffusion::testing::parity_device()).unwrap();
    // the shortcut over x ⧺ skip
    for (k, (xd, c2, oc)) in [([2usize, 32, 8, 8], 32usize, 32usize), ([2, 64, 16, 16], 32, 64)].into_iter().enumerate() {
        let (x, x2) = (dev(&xd, 1500 + k as u64), dev(&[xd[0], c2, xd[2], xd[3]], 1510 + k as u64));
        let (w, b) = (dev(&[oc, xd[1] + c2, 1, 1], 1520 + k as u64), dev(&[oc], 1530 + k as u64));
        let p = Conv2dParams { stride: 1, padding: 0 };
        let run = |precision, store| {
            let _p = with_precision(precision);
            let mut y = None;
            let rows = kernel_calls(|| y = Some(no_grad(|| conv2d_concat_stored(&x, &x2, &w, Some(&b), ConvAdd::default(), p, store)).unwrap()));
            let y = y.unwrap();
            (y.dtype(), y.to_vec(), rows.iter().any(|r| r.0.starts_with("conv2d_1x1_bf16_cat_ybf16_")))
        };
        let what = format!("shortcut over {xd:?} and {c2} channels");
        let plain = run(Precision::Bf16, None);
        assert_eq!((plain.0, plain.2), (DType::F32, false), "{what}");
        let stored = run(Precision::Bf16, Some(Bf16Store::AS_IS));
        assert!(stored.2 && stored.0 == DType::BF16, "{what}: stored by the bf16-output concat kernel");
        let rounded: Vec<f32> = plain.1.iter().map(|&v| round_bf16(v)).collect();
        assert_eq!(bits(&stored.1), bits(&rounded), "{what}: the f32 output rounded");
        let f32_products = run(Precision::F32, Some(Bf16Store::AS_IS));
        assert_eq!((f32_products.0, f32_products.2), (DType::F32, false), "{what}: f32 products store f32");
        assert_eq!(bits(&f32_products.1), bits(&run(Precision::F32, None).1), "{what}: f32 products, unchanged");
    }
    // conv2 reading the skip in bf16
    for (k, (xd, wd)) in [([2usize, 32, 16, 16], [32usize, 32, 3, 3]), ([2, 64, 8, 8], [64, 64, 3, 3]), ([2, 32, 6, 6], [32, 32, 3, 3])].into_iter().enumerate() {
        let t = switch_case(&xd, &wd, 1540 + 10 * k as u64);
        let minidiffusion::Device::Cuda(d) = t[0].device() else { panic!("parity_device is CUDA") };
        let has_wgmma = minidiffusion::device::cuda::backend(d).unwrap().wgmma();
        let (x, r16) = no_grad(|| (cast(&t[0], DType::BF16).unwrap(), cast(&t[4], DType::BF16).unwrap()));
        let widened = cast(&r16, DType::F32).unwrap();
        let p = Conv2dParams { stride: 1, padding: 1 };
        let geom = minidiffusion::ops::conv2d::cpu::ConvGeom { n: xd[0], c: xd[1], h: xd[2], w: xd[3], oc: wd[0], kh: 3, kw: 3, stride: 1, pad: 1, oh: xd[2], ow: xd[3] };
        for wgmma in [false, true] {
            let by_wgmma = wgmma && has_wgmma && wgmma_width(&geom).is_some();
            let takes = by_wgmma || xd[3] % 4 == 0;
            let what = format!("x {xd:?} in bf16, weight {wd:?}, bf16 residual, wgmma {wgmma}");
            let run = |residual: &Tensor| {
                let _p = with_precision(Precision::Bf16);
                let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(residual) };
                let mut y = None;
                let rows = kernel_calls(|| y = Some(with_wgmma_forward(wgmma, || no_grad(|| ConvAfter { weight: &t[1], bias: Some(&t[2]), add, params: p, store_bf16: None }.forward(&x))).unwrap()));
                let y = y.unwrap();
                let launched = |wg: bool| rows.iter().filter(|r| r.0.contains("_xbf16_rbf16_") && r.0.contains("_wg_") == wg).map(|r| r.1).sum::<usize>();
                (y.dtype(), y.to_vec(), (launched(false), launched(true)))
            };
            let read = run(&r16);
            assert_eq!(read.2, (usize::from(takes && !by_wgmma), usize::from(by_wgmma)), "{what}");
            let want = run(&widened);
            assert_eq!(want.2, (0, 0), "{what}: an f32 residual");
            assert_eq!((read.0, bits(&read.1)), (DType::F32, bits(&want.1)), "{what}: not the conv with the residual widened");
            let cpu: Vec<Tensor> = t.iter().map(|v| v.to_device(Device::Cpu).unwrap()).collect();
            let twin = {
                let _p = with_precision(Precision::Bf16);
                let (cx, cr) = (x.to_device(Device::Cpu).unwrap(), r16.to_device(Device::Cpu).unwrap());
                let add = ConvAdd { sample_bias: Some(&cpu[3]), residual: Some(&cr) };
                no_grad(|| ConvAfter { weight: &cpu[1], bias: Some(&cpu[2]), add, params: p, store_bf16: None }.forward(&cx)).unwrap()
            };
            let tol = ParityTol::BF16_TENSOR_CORE;
            minidiffusion::testing::assert_close(&format!("{what}: against the CPU twin"), &read.1, &twin.to_vec(), tol.atol, tol.rtol);
        }
    }
}

/// A same conv's operands on the parity device, from input dims `xd` and
/// weight dims `wd`: [x, W, b, per-image bias, residual, γ, β].
fn switch_case(xd: &[usize], wd: &[usize], seed: u64) -> Vec<minidiffusion::Tensor> {
    let (n, c, oc) = (xd[0], xd[1], wd[0]);
    let dims = [xd.to_vec(), wd.to_vec(), vec![oc], vec![n, oc], vec![n, oc, xd[2], xd[3]], vec![c], vec![c]];
    let device = minidiffusion::testing::parity_device();
    dims.iter().enumerate().map(|(j, d)| minidiffusion::Tensor::from_vec_on(minidiffusion::testing::randn(d, seed + j as u64), d.clone(), device).unwrap()).collect()
}

/// The forward of `switch_case`'s operands t at `precision` with every
/// epilogue term — after the group norm (`groups`, SiLU) when given, applied
/// by the conv (the `_gn_` kernels; written out by default).
fn with_every_term(t: &[minidiffusion::Tensor], p: Conv2dParams, precision: minidiffusion::ops::Precision, norm_groups: Option<usize>) -> Vec<f32> {
    use minidiffusion::ops::{ConvAdd, NormFirst, conv2d_after_norm, conv2d_fused, with_precision};
    let _p = with_precision(precision);
    let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
    minidiffusion::no_grad(|| match norm_groups {
        None => conv2d_fused(&t[0], &t[1], Some(&t[2]), add, p),
        Some(groups) => {
            let norm = NormFirst { groups, weight: Some(&t[5]), bias: Some(&t[6]), eps: 1e-5, silu: true };
            minidiffusion::ops::conv2d::cuda::with_norm_in_conv(true, || conv2d_after_norm(&t[0], norm, &t[1], Some(&t[2]), add, p))
        }
    })
    .unwrap()
    .to_vec()
}

/// [`with_every_term`] and the names of the kernels it launched.
fn profiled_forward(t: &[minidiffusion::Tensor], p: Conv2dParams, precision: minidiffusion::ops::Precision, norm_groups: Option<usize>) -> (Vec<f32>, Vec<&'static str>) {
    let minidiffusion::Device::Cuda(d) = t[0].device() else { panic!("parity_device is CUDA") };
    let backend = minidiffusion::device::cuda::backend(d).unwrap();
    backend.start_profiling();
    let y = with_every_term(t, p, precision, norm_groups);
    (y, backend.stop_profiling().unwrap().into_iter().map(|r| r.kernel).collect())
}

/// The same-conv forward staging its f32 input with float4s
/// (`MINIDIFFUSION_CONV_STAGING=float4`, the `_v` kernels) gives the bits of
/// the element-by-element staging: both precisions, both kernel rows, 1×1
/// and 3×3, the group norm applied by the conv, partial channel chunks (5,
/// 17, 20), multi-image tiles (4×4, 8×8), a batch ending mid-tile, rows of
/// 32 (the seed UNet's), every epilogue term. A width that is not a multiple
/// of 4 keeps the element-by-element kernel.
#[test]
fn float4_staging_gives_the_same_bits() {
    use minidiffusion::ops::Precision;
    use minidiffusion::ops::conv2d::cuda::with_vec_staging;
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let cases: [(&[usize], &[usize], usize); 7] = [
        (&[2, 20, 16, 16], &[40, 20, 3, 3], 1),
        (&[1, 16, 32, 32], &[32, 16, 3, 3], 1),
        (&[3, 17, 4, 4], &[8, 17, 3, 3], 1),
        (&[3, 33, 8, 8], &[70, 33, 1, 1], 0),
        (&[2, 5, 8, 16], &[6, 5, 3, 3], 1),
        (&[9, 8, 4, 4], &[72, 8, 3, 3], 1),
        (&[2, 6, 6, 6], &[8, 6, 3, 3], 1),
    ];
    for (k, &(xd, wd, pad)) in cases.iter().enumerate() {
        let t = switch_case(xd, wd, 300 + 10 * k as u64);
        let p = Conv2dParams { stride: 1, padding: pad };
        let groups = if xd[1] % 4 == 0 { 4 } else { 1 };
        for precision in [Precision::F32, Precision::Bf16] {
            for normed in [false, true] {
                let run = |vec: bool| {
                    let (y, kernels) = with_vec_staging(vec, || profiled_forward(&t, p, precision, normed.then_some(groups)));
                    (y, kernels.iter().any(|k| k.starts_with("conv2d_same_") && (k.ends_with("_v") || k.ends_with("_v_b3"))))
                };
                let what = format!("case {k} {xd:?} * {wd:?}, {precision}, norm {normed}");
                let ((plain, plain_v), (vec, vec_v)) = (run(false), run(true));
                assert!(!plain_v, "{what}: element-by-element staging by default");
                assert_eq!(vec_v, xd[3] % 4 == 0, "{what}: float4 staging exactly where W is a multiple of 4");
                assert_eq!(vec, plain, "{what}: the same bits");
            }
        }
    }
}

/// The bf16 staging rounds every input to nearest, ties to even, as the CPU's
/// `round_bf16` (on a GPU one cvt.rn.bf16x2.f32 a word; the emulation does it
/// bit by bit): a 1×1 conv with the identity weight returns the staged values.
/// Ties both ways, one past and one short of a tie, subnormals, the largest
/// finite values, signs.
#[test]
fn bf16_staging_rounds_to_nearest_even() {
    use minidiffusion::ops::precision::round_bf16;
    use minidiffusion::ops::{Precision, with_precision};
    use minidiffusion::testing::parity_device;
    use minidiffusion::{Tensor, no_grad};
    let (c, hw) = (16, 64);
    let special: Vec<f32> = [0x3f80_8000u32, 0x3f81_8000, 0x3f80_8001, 0x3f80_7fff, 0x0000_8000, 0x0001_8000, 0x0000_0001, 0x7f7f_0000, 0x7f7e_8000]
        .into_iter()
        .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)])
        .collect();
    let mut x = randn(&[c * hw], 77);
    for (i, v) in special.iter().enumerate() {
        x[i * 37 % (c * hw)] = *v;
    }
    let weight: Vec<f32> = (0..c * c).map(|i| if i / c == i % c { 1.0 } else { 0.0 }).collect();
    let device = parity_device();
    let xt = Tensor::from_vec_on(x.clone(), vec![1, c, 8, 8], device).unwrap();
    let wt = Tensor::from_vec_on(weight, vec![c, c, 1, 1], device).unwrap();
    let _p = with_precision(Precision::Bf16);
    let y = no_grad(|| conv2d(&xt, &wt, None, Conv2dParams { stride: 1, padding: 0 })).unwrap().to_vec();
    for (i, (&got, &v)) in y.iter().zip(&x).enumerate() {
        assert_eq!(got, round_bf16(v), "element {i}: {v:e} ({:#010x}) staged as {got:e}", v.to_bits());
    }
}

/// The bf16 32-row forwards compiled for three blocks an SM (the default;
/// `MINIDIFFUSION_CONV_BLOCKS=2` switches them off) give the two-block kernels' bits, plain and
/// with the group norm applied, element by element and float4-staged; 64-row
/// and f32 forwards keep their kernels. (The 1×1 case runs the same-conv
/// kernels: plain 1×1 forwards take `conv2d_1x1_*` by default.)
#[test]
fn three_blocks_per_sm_kernels_give_the_same_bits() {
    use minidiffusion::ops::Precision;
    use minidiffusion::ops::conv2d::cuda::{with_conv_1x1, with_three_blocks_per_sm, with_vec_staging};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let cases: [(&[usize], &[usize], usize); 4] = [
        (&[2, 16, 16, 16], &[32, 16, 3, 3], 1),
        (&[3, 20, 8, 8], &[24, 20, 1, 1], 0),
        (&[2, 8, 32, 32], &[32, 8, 3, 3], 1),
        (&[2, 16, 8, 8], &[40, 16, 3, 3], 1),
    ];
    for (k, &(xd, wd, pad)) in cases.iter().enumerate() {
        let t = switch_case(xd, wd, 700 + 10 * k as u64);
        let p = Conv2dParams { stride: 1, padding: pad };
        let oc = wd[0];
        for precision in [Precision::F32, Precision::Bf16] {
            for (normed, vec) in [(false, false), (true, false), (false, true), (true, true)] {
                let run = |three: bool| {
                    let forward = || with_three_blocks_per_sm(three, || profiled_forward(&t, p, precision, normed.then_some(4)));
                    let (y, kernels) = with_conv_1x1(false, || with_vec_staging(vec, forward));
                    (y, kernels.iter().any(|k| k.starts_with("conv2d_same_") && k.ends_with("_b3")))
                };
                let what = format!("case {k} {xd:?} * {wd:?}, {precision}, norm {normed}, float4 {vec}");
                let ((two, two_b3), (three, three_b3)) = (run(false), run(true));
                assert!(!two_b3, "{what}: two blocks an SM when switched off");
                assert_eq!(three_b3, precision == Precision::Bf16 && oc <= 32, "{what}: the _b3 kernels exactly for bf16 with at most 32 rows");
                assert_eq!(three, two, "{what}: the same bits");
            }
        }
    }
}

/// The wide forward (`MINIDIFFUSION_CONV_WIDE=on`: 256-pixel tiles, 32 × 32
/// warp tiles) gives the bits of the 128-pixel kernels, both the three- and
/// the two-blocks-an-SM ones, with every epilogue term: the seed UNet's
/// 32×32 × 32 → 32 (four tiles an image), a 16×16 map (one image a tile)
/// with 24 output rows (a partial block), a 16×32 map with 20 input
/// channels (a partial chunk). It runs exactly for bf16 3×3 convs of at
/// most 32 rows whose 256-pixel patch fits: not at f32, not for 40 rows,
/// not for a 1×1, not where a tile would be 4 images of 8×8 (a 400-pixel
/// patch) — checked by kernel name. An input gradient at 32×32 (a 3×3 same
/// conv of dY) runs it too, with the same bits. And the seed UNet's 32×32
/// case, fused, against the CPU twin (forward and gradients, bf16
/// tensor-core tolerance).
#[test]
fn wide_forward_gives_the_same_bits() {
    use minidiffusion::ops::Precision;
    use minidiffusion::ops::conv2d::cuda::{with_conv_1x1, with_three_blocks_per_sm, with_wide_forward};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    // (x, weight, padding, whether the wide kernel takes it at bf16)
    let cases: [(&[usize], &[usize], usize, bool); 6] = [
        (&[2, 32, 32, 32], &[32, 32, 3, 3], 1, true),
        (&[3, 16, 16, 16], &[24, 16, 3, 3], 1, true),
        (&[2, 20, 16, 32], &[32, 20, 3, 3], 1, true),
        (&[2, 16, 16, 16], &[40, 16, 3, 3], 1, false),
        (&[2, 16, 16, 16], &[32, 16, 1, 1], 0, false),
        (&[5, 8, 8, 8], &[32, 8, 3, 3], 1, false),
    ];
    for (k, &(xd, wd, pad, takes)) in cases.iter().enumerate() {
        let t = switch_case(xd, wd, 900 + 10 * k as u64);
        let p = Conv2dParams { stride: 1, padding: pad };
        for precision in [Precision::F32, Precision::Bf16] {
            let what = format!("case {k} {xd:?} * {wd:?}, {precision}");
            let (wide, kernels) = with_conv_1x1(false, || with_wide_forward(true, || profiled_forward(&t, p, precision, None)));
            let ran = kernels.contains(&"conv2d_same_bf16_m32_k3_wide");
            assert_eq!(ran, takes && precision == Precision::Bf16, "{what}: the wide kernel ran ({kernels:?})");
            for three in [true, false] {
                let (narrow, kernels) = with_conv_1x1(false, || with_wide_forward(false, || with_three_blocks_per_sm(three, || profiled_forward(&t, p, precision, None))));
                assert!(!kernels.iter().any(|k| k.ends_with("_wide")), "{what}: no wide kernel when switched off");
                assert_eq!(wide, narrow, "{what}, three blocks an SM {three}: the same bits");
            }
        }
    }
    // the input gradient of a 3×3 same conv is such a conv of dY (32 → 32
    // channels at 32×32 here): the wide kernel takes it too, the same bits
    use minidiffusion::ops::{with_precision, ConvAdd, conv2d_fused};
    let t = switch_case(&[2, 32, 32, 32], &[32, 32, 3, 3], 990);
    let _p = with_precision(Precision::Bf16);
    let dx = |wide: bool| {
        let x = t[0].detach().requires_grad_();
        let y = conv2d_fused(&x, &t[1], Some(&t[2]), ConvAdd::default(), Conv2dParams { stride: 1, padding: 1 }).unwrap();
        let loss = minidiffusion::ops::sum_all(&minidiffusion::ops::mul(&y, &t[4]).unwrap()).unwrap();
        let mut grad = Vec::new();
        let kernels = minidiffusion::testing::kernels_launched(|| grad = with_wide_forward(wide, || minidiffusion::backward(&loss).unwrap()).get(&x).unwrap().to_vec());
        (grad, kernels.contains(&"conv2d_same_bf16_m32_k3_wide"))
    };
    let ((wide, ran), (narrow, _)) = (dx(true), dx(false));
    assert!(ran, "the input gradient ran the wide kernel");
    assert_eq!(wide, narrow, "dX with the wide kernel against the 128-pixel kernels");
    // and against the CPU twin, forward and gradients, at the bf16 tensor-core tolerance
    let fused = |t: &[minidiffusion::Tensor]| {
        let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
        with_wide_forward(true, || conv2d_fused(&t[0], &t[1], Some(&t[2]), add, Conv2dParams { stride: 1, padding: 1 }))
    };
    parity_check("bf16_wide_32x32_fused", &[&[2, 32, 32, 32], &[32, 32, 3, 3], &[32], &[2, 32], &[2, 32, 32, 32]], fused, ParityTol::BF16_TENSOR_CORE);
}

/// The forward of a 3×3, stride-2, pad-1 conv over an even map (the UNet's
/// downsamplers) runs the stride-2 same-conv kernel (`conv2d_same_*_down_m32_k3`)
/// within the conv's tolerance of the CPU twin, at f32 and bf16, with every
/// epilogue term: tiles of whole output rows (32×32 → 16×16), of two images
/// (16×16 → 8×8, a partial last tile), of eight (8×8 → 4×4, a partial
/// channel chunk, two 32-row blocks and a partial one), a 4×4 → 2×2 map at
/// one image a segment; where the patch would not fit (2×2 outputs, 32
/// images a tile), at odd sizes or pad 0, and with `MINIDIFFUSION_CONV_DOWN=generic`
/// (the A/B), the generic kernel — checked by kernel name.
#[test]
fn stride2_forward_runs_as_a_same_conv() {
    use minidiffusion::ops::{ConvAdd, Precision, conv2d_fused, with_precision};
    use minidiffusion::testing::{assert_close, kernels_launched};
    use minidiffusion::{Device, Tensor, no_grad};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    // (x, output channels, padding, whether the stride-2 kernel takes it)
    let cases: [([usize; 4], usize, usize, bool); 7] = [
        ([2, 32, 32, 32], 32, 1, true),
        ([3, 16, 16, 16], 24, 1, true),
        ([9, 20, 8, 8], 70, 1, true),
        ([33, 8, 4, 4], 8, 1, false),
        ([1, 8, 64, 64], 8, 1, true),
        ([2, 5, 9, 9], 6, 1, false),
        ([2, 8, 16, 16], 8, 0, false),
    ];
    for (k, &(xd, oc, pad, takes)) in cases.iter().enumerate() {
        let [n, c, h, w] = xd;
        let (oh, ow) = ((h + 2 * pad - 3) / 2 + 1, (w + 2 * pad - 3) / 2 + 1);
        let dims = [vec![n, c, h, w], vec![oc, c, 3, 3], vec![oc], vec![n, oc], vec![n, oc, oh, ow]];
        let t = on_device(&dims, 900 + 10 * k as u64);
        let host: Vec<Tensor> = t.iter().map(|v| v.to_device(Device::Cpu).unwrap()).collect();
        let p = Conv2dParams { stride: 2, padding: pad };
        for precision in [Precision::F32, Precision::Bf16] {
            let _p = with_precision(precision);
            let what = format!("case {k}: {xd:?} → {oc} stride 2 pad {pad}, {precision}");
            let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
            let mut y = Vec::new();
            let kernels = kernels_launched(|| y = no_grad(|| conv2d_fused(&t[0], &t[1], Some(&t[2]), add, p)).unwrap().to_vec());
            assert_eq!(kernels.iter().any(|k| k.contains("_down_m32_k3")), takes, "{what}: {kernels:?}");
            let hadd = ConvAdd { sample_bias: Some(&host[3]), residual: Some(&host[4]) };
            let want = no_grad(|| conv2d_fused(&host[0], &host[1], Some(&host[2]), hadd, p)).unwrap().to_vec();
            let tol = if precision == Precision::Bf16 { ParityTol::BF16_TENSOR_CORE } else { ParityTol::TENSOR_CORE };
            assert_close(&what, &y, &want, tol.atol, tol.rtol);
            // the A/B (MINIDIFFUSION_CONV_DOWN=generic): the generic kernel, within the same tolerance
            if takes {
                let mut y = Vec::new();
                let kernels = minidiffusion::ops::conv2d::cuda::with_strided_same_conv(false, || {
                    kernels_launched(|| y = no_grad(|| conv2d_fused(&t[0], &t[1], Some(&t[2]), add, p)).unwrap().to_vec())
                });
                assert!(!kernels.iter().any(|k| k.contains("_down_m32_k3")), "{what}, the A/B: {kernels:?}");
                assert_close(&format!("{what}, the A/B"), &y, &want, tol.atol, tol.rtol);
            }
        }
    }
}

/// The input gradient of a 3×3, stride-2, pad-1 conv over an even map (the
/// UNet's downsamplers) runs as the same conv's over dY with zeros between
/// its pixels (`conv2d_zero_upsample2x_f32`, then the same-conv kernels):
/// parity of every gradient at f32 and bf16 — tiles of whole rows (16×16 and
/// 32×32 maps), of several images (8×8), two 64-row blocks — and, by kernel
/// name, that the path runs exactly where it applies (not at odd sizes, pad
/// 0 or 1×1, which keep the generic gather).
#[test]
fn stride2_input_gradient_runs_as_a_same_conv() {
    use minidiffusion::Tensor;
    use minidiffusion::ops::{Precision, with_precision};
    use minidiffusion::testing::{kernels_launched, parity_device};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let s2 = Conv2dParams { stride: 2, padding: 1 };
    for precision in [Precision::F32, Precision::Bf16] {
        let tol = if precision == Precision::Bf16 { ParityTol::BF16_TENSOR_CORE } else { ParityTol::TENSOR_CORE };
        let at = |f: &dyn Fn() -> minidiffusion::Result<minidiffusion::Tensor>| {
            let _p = with_precision(precision);
            f()
        };
        for (k, (x, oc)) in [([2, 16, 16, 16], 16), ([1, 8, 32, 32], 12), ([3, 5, 8, 8], 70)].into_iter().enumerate() {
            let w = [oc, x[1], 3, 3];
            parity_check(&format!("{precision}_s2_same_dx_{k}"), &[&x, &w, &[oc]], |t| at(&|| conv2d(&t[0], &t[1], Some(&t[2]), s2)), tol);
        }
    }
    let device = parity_device();
    for (x, k, p, zeros) in [([2, 16, 16, 16], 3, 1, true), ([2, 16, 15, 16], 3, 1, false), ([2, 16, 16, 16], 3, 0, false), ([2, 16, 16, 16], 1, 0, false)] {
        let xt = Tensor::from_vec_on(randn(&x, 1), x.to_vec(), device).unwrap().requires_grad_();
        let w = Tensor::from_vec_on(randn(&[8, 16, k, k], 2), vec![8, 16, k, k], device).unwrap();
        let y = conv2d(&xt, &w, None, Conv2dParams { stride: 2, padding: p }).unwrap();
        let loss = minidiffusion::ops::sum_all(&y).unwrap();
        let kernels = kernels_launched(|| drop(minidiffusion::backward(&loss).unwrap()));
        assert_eq!(kernels.contains(&"conv2d_zero_upsample2x_f32"), zeros, "{x:?} k{k} p{p}: {kernels:?}");
        assert_eq!(kernels.iter().any(|k| k.starts_with("conv2d_backward_input")), !zeros, "{x:?} k{k} p{p}: {kernels:?}");
    }
}

/// x's gradient from its other uses summed by the input-gradient kernel as
/// it writes dX (y = conv(x) + x: the add's gradient reaches x first): the
/// CPU twin's values, and no separate add where a same conv takes dX
/// (3×3 and 1×1, and the stride-2 path as a same conv); the generic kernel
/// (5×5) still adds after.
#[test]
fn input_gradient_sums_the_other_uses_gradient() {
    use minidiffusion::Tensor;
    use minidiffusion::ops::{Precision, add, sum_all, with_precision};
    use minidiffusion::testing::{kernels_launched, parity_device};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let same = |k| Conv2dParams { stride: 1, padding: (k - 1) / 2 };
    for precision in [Precision::F32, Precision::Bf16] {
        let tol = if precision == Precision::Bf16 { ParityTol::BF16_TENSOR_CORE } else { ParityTol::TENSOR_CORE };
        for k in [3, 1, 5] {
            let (x, w) = ([2, 8, 16, 16], [8, 8, k, k]);
            parity_check(&format!("{precision}_k{k}_dx_plus_residual"), &[&x, &w], |t| {
                let _p = with_precision(precision);
                add(&conv2d(&t[0], &t[1], None, same(k))?, &t[0])
            }, tol);
            let device = parity_device();
            let xt = Tensor::from_vec_on(randn(&x, 1), x.to_vec(), device).unwrap().requires_grad_();
            let wt = Tensor::from_vec_on(randn(&w, 2), w.to_vec(), device).unwrap();
            let loss = {
                let _p = with_precision(precision);
                sum_all(&add(&conv2d(&xt, &wt, None, same(k)).unwrap(), &xt).unwrap()).unwrap()
            };
            let kernels = kernels_launched(|| drop(minidiffusion::backward(&loss).unwrap()));
            assert_eq!(kernels.contains(&"binary_same"), k == 5, "{precision} k{k}: {kernels:?}");
        }
    }
}

/// `conv2d_concat` at inference on CUDA, no concatenation written (no
/// `slab_copy`): a 1×1 whose first part has a multiple of 32 channels is one
/// launch (`conv2d_1x1_*_cat_*`), bit for bit the conv over the written
/// concatenation; other same convs two, one a part, the second adding the
/// first's output as it stores; both against the CPU's conv of the
/// concatenation within the conv's tolerance, both precisions, 1×1 and 3×3,
/// both kernel rows, parts that end mid-chunk (5 + 17 channels, 32 + 17),
/// multi-image tiles (4×4, 8×8), every epilogue term. Where the parts are not
/// same convs (stride 2), or a gradient is wanted, it is the concatenation
/// and the conv, gradients and all.
#[test]
fn conv2d_concat_convolves_the_parts_without_the_concatenation() {
    use minidiffusion::ops::{ConvAdd, Precision, concat, conv2d_concat, conv2d_fused, with_precision};
    use minidiffusion::testing::{assert_close, kernel_calls, kernels_launched, parity_device};
    use minidiffusion::{Device, Tensor, no_grad};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    // (x, x2's channels, output channels, K)
    let cases: [([usize; 4], usize, usize, usize); 7] = [
        ([2, 64, 16, 16], 32, 64, 1),
        ([2, 32, 32, 32], 32, 32, 1),
        ([3, 20, 4, 4], 12, 40, 3),
        ([9, 5, 8, 8], 17, 70, 1),
        ([2, 16, 8, 8], 16, 24, 3),
        ([3, 32, 8, 8], 17, 40, 1),
        ([2, 64, 4, 4], 64, 24, 1),
    ];
    for (k, &(xd, c2, oc, ks)) in cases.iter().enumerate() {
        let [n, c1, h, w] = xd;
        let dims = [vec![n, c1, h, w], vec![n, c2, h, w], vec![oc, c1 + c2, ks, ks], vec![oc], vec![n, oc], vec![n, oc, h, w]];
        let values: Vec<Vec<f32>> = dims.iter().enumerate().map(|(j, d)| randn(d, 700 + 10 * k as u64 + j as u64)).collect();
        let on = |device: Device| -> Vec<Tensor> { values.iter().zip(&dims).map(|(v, d)| Tensor::from_vec_on(v.clone(), d.clone(), device).unwrap()).collect() };
        let p = Conv2dParams { stride: 1, padding: ks / 2 };
        for precision in [Precision::F32, Precision::Bf16] {
            let _p = with_precision(precision);
            let what = format!("case {k}: {xd:?} ⧺ {c2} → {oc}, {ks}×{ks}, {precision}");
            let t = on(parity_device());
            let add = ConvAdd { sample_bias: Some(&t[4]), residual: Some(&t[5]) };
            let mut parts = Vec::new();
            let rows = kernel_calls(|| parts = no_grad(|| conv2d_concat(&t[0], &t[1], &t[2], Some(&t[3]), add, p)).unwrap().to_vec());
            let calls = |f: &dyn Fn(&str) -> bool| rows.iter().filter(|r| f(r.0)).map(|r| r.1).sum::<usize>();
            let forwards = calls(&|k| (k.starts_with("conv2d_same_") && !k.starts_with("conv2d_same_weight")) || k.starts_with("conv2d_1x1_"));
            let one_launch = ks == 1 && c1 % 32 == 0;
            assert!(calls(&|k| k == "slab_copy") == 0 && forwards == if one_launch { 1 } else { 2 }, "{what}: {rows:?}");
            assert_eq!(calls(&|k| k.contains("_cat_")), usize::from(one_launch), "{what}: {rows:?}");
            if one_launch {
                let written = no_grad(|| conv2d_fused(&concat(&[&t[0], &t[1]], 1)?, &t[2], Some(&t[3]), add, p)).unwrap().to_vec();
                let differ = parts.iter().zip(&written).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(differ, 0, "{what}: {differ} values differ from the conv over the written concatenation");
            }
            let c = on(Device::Cpu);
            let cadd = ConvAdd { sample_bias: Some(&c[4]), residual: Some(&c[5]) };
            let want = no_grad(|| conv2d_fused(&concat(&[&c[0], &c[1]], 1)?, &c[2], Some(&c[3]), cadd, p)).unwrap().to_vec();
            let tol = if precision == Precision::Bf16 { ParityTol::BF16_TENSOR_CORE } else { ParityTol::TENSOR_CORE };
            assert_close(&what, &parts, &want, tol.atol, tol.rtol);
        }
    }
    // stride 2: not a same conv, so the concatenation and the generic conv (the same bits as doing both by hand)
    let t = on_device(&[[2, 8, 8, 8].to_vec(), vec![2, 4, 8, 8], vec![6, 12, 3, 3]], 780);
    let p = Conv2dParams { stride: 2, padding: 1 };
    let mut y = Vec::new();
    let kernels = kernels_launched(|| y = no_grad(|| conv2d_concat(&t[0], &t[1], &t[2], None, ConvAdd::default(), p)).unwrap().to_vec());
    assert!(kernels.contains(&"slab_copy"), "{kernels:?}");
    let by_hand = no_grad(|| conv2d_fused(&concat(&[&t[0], &t[1]], 1)?, &t[2], None, ConvAdd::default(), p)).unwrap().to_vec();
    assert_eq!(y, by_hand, "stride 2");
    // a gradient wanted: the ops on the tape, against the CPU's
    let p = Conv2dParams { stride: 1, padding: 1 };
    parity_check("conv2d_concat with gradients", &[&[2, 8, 8, 8], &[2, 8, 8, 8], &[16, 16, 3, 3], &[16]], |t| {
        conv2d_concat(&t[0], &t[1], &t[2], Some(&t[3]), ConvAdd::default(), p)
    }, ParityTol::TENSOR_CORE);
}

/// Random normal tensors of `dims` on the parity device.
fn on_device(dims: &[Vec<usize>], seed: u64) -> Vec<minidiffusion::Tensor> {
    let device = minidiffusion::testing::parity_device();
    dims.iter().enumerate().map(|(j, d)| minidiffusion::Tensor::from_vec_on(randn(d, seed + j as u64), d.clone(), device).unwrap()).collect()
}

/// `conv2d_after_upsample` at inference on CUDA: one 3×3 same conv reading
/// x's nearest 2× upsampling in place (the `_up_` kernels, no upsampling
/// kernel), bit for bit the conv of the written upsampling on the device
/// and within the conv's tolerance of the CPU's: both precisions, both
/// kernel rows, a partial channel chunk (20), single- and multi-image tiles
/// (32×32 and 16×16 outputs; 8×8 and 4×4), every epilogue term. A 1×1 conv,
/// or a gradient wanted: the two ops, gradients and all.
#[test]
fn conv2d_after_upsample_reads_the_upsampling_in_place() {
    use minidiffusion::ops::resample::upsample_nearest2x;
    use minidiffusion::ops::{ConvAdd, Precision, conv2d_after_upsample, conv2d_fused, with_precision};
    use minidiffusion::testing::{assert_close, kernels_launched};
    use minidiffusion::{Device, Tensor, no_grad};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    // (x, output channels)
    let cases: [([usize; 4], usize); 5] = [([1, 20, 16, 16], 32), ([2, 64, 8, 8], 64), ([3, 32, 4, 4], 70), ([2, 128, 2, 2], 128), ([2, 16, 8, 8], 24)];
    let p = Conv2dParams { stride: 1, padding: 1 };
    for (k, &(xd, oc)) in cases.iter().enumerate() {
        let [n, c, h, w] = xd;
        let dims = [vec![n, c, h, w], vec![oc, c, 3, 3], vec![oc], vec![n, oc], vec![n, oc, 2 * h, 2 * w]];
        let t = on_device(&dims, 800 + 10 * k as u64);
        let host: Vec<Tensor> = t.iter().map(|v| v.to_device(Device::Cpu).unwrap()).collect();
        for precision in [Precision::F32, Precision::Bf16] {
            let _p = with_precision(precision);
            let what = format!("case {k}: up({xd:?}) → {oc}, {precision}");
            let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
            let mut y = Vec::new();
            let kernels = kernels_launched(|| y = no_grad(|| conv2d_after_upsample(&t[0], &t[1], Some(&t[2]), add, p)).unwrap().to_vec());
            assert!(kernels.iter().any(|k| k.contains("_up_m")) && !kernels.iter().any(|k| k.starts_with("upsample")), "{what}: {kernels:?}");
            let written = no_grad(|| conv2d_fused(&upsample_nearest2x(&t[0])?, &t[1], Some(&t[2]), add, p)).unwrap().to_vec();
            assert_eq!(y, written, "{what}: against the conv of the written upsampling");
            let hadd = ConvAdd { sample_bias: Some(&host[3]), residual: Some(&host[4]) };
            let want = no_grad(|| conv2d_fused(&upsample_nearest2x(&host[0])?, &host[1], Some(&host[2]), hadd, p)).unwrap().to_vec();
            let tol = if precision == Precision::Bf16 { ParityTol::BF16_TENSOR_CORE } else { ParityTol::TENSOR_CORE };
            assert_close(&what, &y, &want, tol.atol, tol.rtol);
        }
    }
    // a 1×1 conv: the two ops
    let t = on_device(&[vec![2, 8, 4, 4], vec![6, 8, 1, 1]], 880);
    let p1 = Conv2dParams { stride: 1, padding: 0 };
    let mut y = Vec::new();
    let kernels = kernels_launched(|| y = no_grad(|| conv2d_after_upsample(&t[0], &t[1], None, ConvAdd::default(), p1)).unwrap().to_vec());
    assert!(kernels.iter().any(|k| k.starts_with("upsample")), "{kernels:?}");
    assert_eq!(y, no_grad(|| conv2d_fused(&upsample_nearest2x(&t[0])?, &t[1], None, ConvAdd::default(), p1)).unwrap().to_vec());
    // a gradient wanted: the two ops on the tape, against the CPU's
    parity_check("conv2d_after_upsample with gradients", &[&[2, 8, 4, 4], &[12, 8, 3, 3], &[12]], |t| {
        conv2d_after_upsample(&t[0], &t[1], Some(&t[2]), ConvAdd::default(), p)
    }, ParityTol::TENSOR_CORE);
}

/// A training step of a same conv packs its weights once for the forward and
/// the input gradient (`conv2d_pack_same_pair_*`, both orientations in one
/// launch; the backward reads the flipped half), at both precisions, 1×1 and
/// 3×3, with the gradients the CPU twin gives (parity_check); without an
/// input gradient wanted, the forward's pack alone; a stride-2 conv packs
/// for its own input gradient as before.
#[test]
fn training_packs_both_orientations_in_one_launch() {
    use minidiffusion::ops::{Precision, with_precision};
    use minidiffusion::testing::kernel_calls;
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    for precision in [Precision::F32, Precision::Bf16] {
        let _p = with_precision(precision);
        for (k, pad, xd) in [(3usize, 1usize, [2usize, 20, 8, 8]), (1, 0, [2, 16, 16, 16])] {
            let p = Conv2dParams { stride: 1, padding: pad };
            let what = format!("{precision} {k}×{k} {xd:?}");
            let wd = [24, xd[1], k, k];
            let packs = |x_grad: bool| {
                let t = on_device(&[xd.to_vec(), wd.to_vec(), vec![24]], 900);
                let x = if x_grad { t[0].detach().requires_grad_() } else { t[0].clone() };
                let (w, b) = (t[1].detach().requires_grad_(), t[2].detach().requires_grad_());
                let rows = kernel_calls(|| {
                    let y = conv2d(&x, &w, Some(&b), p).unwrap();
                    drop(minidiffusion::backward(&minidiffusion::ops::sum_all(&y).unwrap()).unwrap());
                });
                rows.into_iter().filter(|r| r.0.starts_with("conv2d_pack_same")).collect::<Vec<_>>()
            };
            let pair = if precision == Precision::Bf16 { "conv2d_pack_same_pair_bf16" } else { "conv2d_pack_same_pair_f32" };
            let single = if precision == Precision::Bf16 { "conv2d_pack_same_bf16" } else { "conv2d_pack_same_f32" };
            assert_eq!(packs(true), [(pair, 1)], "{what}: x's gradient wanted");
            assert_eq!(packs(false), [(single, 1)], "{what}: no input gradient");
            let tol = if precision == Precision::Bf16 { ParityTol::BF16_TENSOR_CORE } else { ParityTol::TENSOR_CORE };
            parity_check(&format!("{what}: gradients"), &[&xd, &wd, &[24]], |t| conv2d(&t[0], &t[1], Some(&t[2]), p), tol);
        }
    }
}

/// A 1×1 conv's weight gradient is one GEMM over the pixels
/// (`conv2d_weight_grad_1x1_*`, kernels/conv2d_1x1.cu) that also sums the
/// bias gradient as it reads dY: no same-conv weight-gradient kernel and no
/// reduction launch, the split partials added by one
/// `conv2d_sum_splits_pair_f32` when there are several; gradients as the
/// CPU twin's, at both precisions, on shapes with output and input channels
/// past one 64-wide tile and partial (70, 33), 2×2 maps (16 images a bf16
/// slice, the batch ending inside one), K under one slice (48 pixels), and
/// K over several splits (2,048 pixels). `MINIDIFFUSION_WG_1X1=same` (the A/B)
/// keeps the same-conv kernel and the bias reduction, with the same gradients
/// to the tolerance.
#[test]
fn weight_gradient_1x1_is_a_gemm_over_pixels_with_the_bias() {
    use minidiffusion::ops::conv2d::cuda::with_wg_1x1;
    use minidiffusion::ops::{Precision, with_precision};
    use minidiffusion::testing::kernel_calls;
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let p = Conv2dParams { stride: 1, padding: 0 };
    for precision in [Precision::F32, Precision::Bf16] {
        let _p = with_precision(precision);
        let tol = if precision == Precision::Bf16 { ParityTol::BF16_TENSOR_CORE } else { ParityTol::TENSOR_CORE };
        let name = if precision == Precision::Bf16 { "conv2d_weight_grad_1x1_bf16" } else { "conv2d_weight_grad_1x1_f32" };
        for (xd, oc, several_splits) in [([2usize, 33, 8, 8], 70usize, false), ([37, 24, 2, 2], 72, false), ([3, 16, 4, 4], 8, false), ([8, 20, 16, 16], 40, true)] {
            let what = format!("{precision} {xd:?} → {oc}");
            let wd = [oc, xd[1], 1, 1];
            for fused in [true, false] {
                let launched = with_wg_1x1(fused, || {
                    let t = on_device(&[xd.to_vec(), wd.to_vec(), vec![oc]], 950);
                    let (x, w, b) = (t[0].detach().requires_grad_(), t[1].detach().requires_grad_(), t[2].detach().requires_grad_());
                    let y = conv2d(&x, &w, Some(&b), p).unwrap();
                    let dy = minidiffusion::Tensor::from_vec_on(randn(y.dims(), 951), y.shape().clone(), y.device()).unwrap();
                    let loss = minidiffusion::ops::sum_all(&minidiffusion::ops::mul(&y, &dy).unwrap()).unwrap();
                    kernel_calls(|| drop(minidiffusion::backward(&loss).unwrap()))
                });
                let count = |prefix: &str| launched.iter().filter(|r| r.0.starts_with(prefix)).map(|r| r.1).sum::<usize>();
                if fused {
                    assert_eq!(count(name), 1, "{what}: {launched:?}");
                    assert_eq!(count("conv2d_same_weight_grad") + count("reduce_sum"), 0, "{what}: {launched:?}");
                    let sums = count("conv2d_sum_splits_pair_f32");
                    assert!(sums <= 1 && (sums == 1 || !several_splits), "{what}: {launched:?}");
                } else {
                    assert_eq!(count("conv2d_weight_grad_1x1"), 0, "{what}: {launched:?}");
                    assert_eq!(count("conv2d_same_weight_grad"), 1, "{what}: {launched:?}");
                    assert!(count("reduce_sum") >= 1, "{what}: the bias by the reduction: {launched:?}");
                }
                with_wg_1x1(fused, || {
                    parity_check(&format!("{what} fused {fused}"), &[&xd, &wd, &[oc]], |t| conv2d(&t[0], &t[1], Some(&t[2]), p), tol)
                });
            }
        }
    }
}

/// Stride-1 1×1 convs run `forward_1x1` (`conv2d_1x1_*`: no patch, the
/// pixels loaded as float4s) — forwards and the input gradients that are
/// 1×1 convs — with the same bits as the same-conv kernel
/// (`MINIDIFFUSION_CONV_1X1=same`), which itself is parity-checked against
/// the CPU twin: f32, bf16 and bf16 storage; 32- and 64-row blocks; a
/// partial chunk and slice (33, 40 channels), output rows past one block
/// (70, 72); 2×2 maps (32 images a tile, the batch ending inside it), 8×8
/// and 32×32; every epilogue term. 1×1 maps (P = 1, odd) keep the same-conv kernel.
#[test]
fn one_by_one_forward_gives_the_same_bits() {
    use minidiffusion::ops::conv2d::cuda::with_conv_1x1;
    use minidiffusion::ops::{ConvAdd, Precision, cast, conv2d_fused, with_precision};
    use minidiffusion::tensor::DType;
    use minidiffusion::testing::kernel_calls;
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let p = Conv2dParams { stride: 1, padding: 0 };
    let cases: [([usize; 4], usize); 5] = [([2, 33, 8, 8], 70), ([37, 24, 2, 2], 72), ([1, 24, 32, 32], 32), ([3, 40, 4, 4], 8), ([5, 20, 1, 1], 40)];
    for (precision, storage) in [(Precision::F32, DType::F32), (Precision::Bf16, DType::F32), (Precision::Bf16, DType::BF16)] {
        let _p = with_precision(precision);
        for (xd, oc) in cases {
            let what = format!("{precision} x {storage:?} {xd:?} → {oc}");
            let t = on_device(&[xd.to_vec(), vec![oc, xd[1], 1, 1], vec![oc], vec![xd[0], oc], vec![xd[0], oc, xd[2], xd[3]]], 970);
            let x = if storage == DType::BF16 { cast(&t[0], DType::BF16).unwrap() } else { t[0].clone() };
            let x = x.detach().requires_grad_();
            let run = |on: bool| {
                with_conv_1x1(on, || {
                    let w = t[1].detach().requires_grad_();
                    let mut y = None;
                    let calls = kernel_calls(|| {
                        let out = conv2d_fused(&x, &w, Some(&t[2]), ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) }, p).unwrap();
                        let loss = minidiffusion::ops::sum_all(&minidiffusion::ops::mul(&out, &t[4]).unwrap()).unwrap();
                        let grads = minidiffusion::backward(&loss).unwrap();
                        y = Some((out.to_vec(), grads.get(&x).map(|g| g.to_vec())));
                    });
                    (y.unwrap(), calls)
                })
            };
            let ((y_new, dx_new), calls_new) = run(true);
            let ((y_old, dx_old), calls_old) = run(false);
            assert_eq!(y_new, y_old, "{what}: forward");
            let count = |calls: &[(&str, usize)], prefix: &str| calls.iter().filter(|r| r.0.starts_with(prefix)).map(|r| r.1).sum::<usize>();
            let ones = count(&calls_new, "conv2d_1x1_");
            let same_k1 = calls_old.iter().filter(|r| r.0.starts_with("conv2d_same_") && !r.0.contains("weight_grad") && r.0.contains("_k1")).map(|r| r.1).sum::<usize>();
            if xd[2] * xd[3] % 4 == 0 {
                // the forward, and the input gradient where x's is the same conv of dY (f32 dY)
                assert!(ones >= 1 && ones == same_k1, "{what}: {calls_new:?} / {calls_old:?}");
                assert_eq!(dx_new, dx_old, "{what}: input gradient");
            } else {
                assert_eq!(ones, 0, "{what}: {calls_new:?}");
            }
        }
    }
}

/// Stride-1 3×3 same convs with at most 4 output or 4 input channels (the
/// UNet's conv_out and conv_in) run the direct forward (`conv2d_direct_*`,
/// `MINIDIFFUSION_CONV_DIRECT=off` the A/B), against the CPU twin with every
/// epilogue term at both precisions (f32: f32 FMAs in another order; bf16:
/// the rounded operands' exact products in f32) and within the same
/// tolerance of the tensor-core same conv it replaces: 1 → 32 and 32 → 1 at
/// 32×32, 40 outputs (two blocks of 32), 3 outputs of 20 channels (a
/// partial chunk), maps that leave tiles partial (5×7, 40×20), a batch of
/// three. The group norm (+ SiLU) applied as it stages x gives the bits of
/// the norm written out and convolved (`conv2d_direct_*_gn_*`), and bf16
/// storage the bits of its f32 widening (`conv2d_direct_bf16_xbf16_*` on
/// the maps the same convs take, where bf16 storage is read as it is).
#[test]
fn direct_forward_takes_convs_with_few_channels() {
    use minidiffusion::ops::conv2d::cuda::with_direct_conv;
    use minidiffusion::ops::group_norm::group_norm_silu;
    use minidiffusion::ops::{ConvAdd, NormFirst, Precision, cast, conv2d_after_norm, conv2d_fused, with_precision};
    use minidiffusion::tensor::DType;
    use minidiffusion::testing::assert_close;
    use minidiffusion::{Device, Tensor, no_grad};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    // (x, weight, output channels a block, whether the map is one the same-conv kernels take:
    // bf16 storage is read as it is there, else widened)
    let cases: [(&[usize], &[usize], &str, bool); 6] = [
        (&[2, 1, 32, 32], &[32, 1, 3, 3], "o32", true),
        (&[2, 32, 32, 32], &[1, 32, 3, 3], "o4", true),
        (&[3, 3, 16, 16], &[40, 3, 3, 3], "o32", true),
        (&[2, 20, 8, 8], &[3, 20, 3, 3], "o4", true),
        (&[3, 2, 5, 7], &[4, 2, 3, 3], "o4", false),
        (&[1, 4, 40, 20], &[8, 4, 3, 3], "o32", false),
    ];
    let p = Conv2dParams { stride: 1, padding: 1 };
    for (k, &(xd, wd, block, same_map)) in cases.iter().enumerate() {
        let t = switch_case(xd, wd, 1100 + 10 * k as u64);
        let Device::Cuda(d) = t[0].device() else { panic!("parity_device is CUDA") };
        let backend = minidiffusion::device::cuda::backend(d).unwrap();
        let cpu: Vec<Tensor> = t.iter().map(|x| x.to_device(Device::Cpu).unwrap()).collect();
        let groups = if xd[1] % 2 == 0 { 2 } else { 1 };
        for precision in [Precision::F32, Precision::Bf16] {
            let _p = with_precision(precision);
            let what = format!("case {k} {xd:?} * {wd:?}, {precision}");
            let prec = if precision == Precision::F32 { "f32" } else { "bf16" };
            let run = |t: &[Tensor], x: &Tensor, direct: bool, norm: bool| {
                backend.start_profiling();
                let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
                let nf = NormFirst { groups, weight: Some(&t[5]), bias: Some(&t[6]), eps: 1e-5, silu: true };
                let y = with_direct_conv(direct, || {
                    no_grad(|| if norm { conv2d_after_norm(x, nf, &t[1], Some(&t[2]), add, p) } else { conv2d_fused(x, &t[1], Some(&t[2]), add, p) })
                })
                .unwrap()
                .to_vec();
                let kernels: Vec<&str> = backend.stop_profiling().unwrap().into_iter().map(|r| r.kernel).filter(|k| k.starts_with("conv2d_") && !k.starts_with("conv2d_pack")).collect();
                (y, kernels)
            };
            let (direct, kernels) = run(&t, &t[0], true, false);
            assert_eq!(kernels, [format!("conv2d_direct_{prec}_{block}").as_str()], "{what}");
            let twin = {
                let add = ConvAdd { sample_bias: Some(&cpu[3]), residual: Some(&cpu[4]) };
                no_grad(|| conv2d_fused(&cpu[0], &cpu[1], Some(&cpu[2]), add, p)).unwrap().to_vec()
            };
            let tol = if precision == Precision::F32 { ParityTol::REDUCTION } else { ParityTol::BF16_TENSOR_CORE };
            assert_close(&format!("{what}: direct against the CPU twin"), &direct, &twin, tol.atol, tol.rtol);
            let (same, kernels) = run(&t, &t[0], false, false);
            assert!(kernels.iter().all(|k| !k.starts_with("conv2d_direct")), "{what}: switched off: {kernels:?}");
            let tol = if precision == Precision::F32 { ParityTol::TENSOR_CORE } else { ParityTol::BF16_TENSOR_CORE };
            assert_close(&format!("{what}: direct against the same conv"), &direct, &same, tol.atol, tol.rtol);
            // the norm applied as x is staged: the bits of the norm written out, then convolved
            let (normed, kernels) = run(&t, &t[0], true, true);
            assert_eq!(kernels, [format!("conv2d_direct_{prec}_gn_{block}").as_str()], "{what}: norm");
            let written = no_grad(|| group_norm_silu(&t[0], groups, Some(&t[5]), Some(&t[6]), 1e-5)).unwrap();
            assert_eq!(normed, run(&t, &written, true, false).0, "{what}: the norm applied as staged");
            // bf16 storage: the bits of its f32 widening
            if precision == Precision::Bf16 {
                let stored = cast(&t[0], DType::BF16).unwrap();
                let (y16, kernels) = run(&t, &stored, true, false);
                let variant = if same_map { "bf16_xbf16" } else { "bf16" };
                assert_eq!(kernels, [format!("conv2d_direct_{variant}_{block}").as_str()], "{what}: bf16 storage");
                assert_eq!(y16, run(&t, &cast(&stored, DType::F32).unwrap(), true, false).0, "{what}: bf16 storage");
            }
        }
    }
}

/// The bf16 3×3 forward on Hopper's warpgroup MMA (kernels/conv2d_wgmma.cu,
/// `MINIDIFFUSION_CONV_WGMMA=on`): the maps of the seed UNet (32×32 and
/// 16×16 at 72 virtual pixels a warpgroup, 8×8 and 4×4 at 128), a 64×64 map
/// (two rows a tile), partial channel chunks (17, 40), output channels
/// short of or past a 64-row block (24, 72), batches ending mid-tile; each
/// against the CPU twin and against the mma.sync kernels at bf16's
/// tolerance, with the kernel's name. The norm applied as x is staged gives
/// the bits of the norm written out; bf16 storage the bits of its f32
/// widening; the upsampler's 2× upsampling read in place the bits of the
/// upsampling written out. A map it does not take (OW not a multiple of 4) goes to the
/// mma.sync kernels. The input gradient (a same conv of dY) runs it too:
/// against the mma.sync kernels, and forward and gradients against the twin.
#[test]
fn wgmma_forward_takes_the_3x3_convs() {
    use minidiffusion::ops::conv2d::cuda::{wgmma_width, with_vec_staging, with_wgmma_forward, with_wide_forward};
    use minidiffusion::ops::group_norm::group_norm_silu;
    use minidiffusion::ops::resample::upsample_nearest2x;
    use minidiffusion::ops::{ConvAdd, Precision, cast, conv2d_after_upsample, conv2d_fused, with_precision};
    use minidiffusion::tensor::DType;
    use minidiffusion::testing::assert_close;
    use minidiffusion::{Device, Tensor, no_grad};
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let differing = |a: &[f32], b: &[f32]| a.len().abs_diff(b.len()) + a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    let cases: [(&[usize], &[usize], Option<usize>); 7] = [
        (&[2, 32, 32, 32], &[32, 32, 3, 3], Some(72)),
        (&[2, 64, 16, 16], &[64, 64, 3, 3], Some(72)),
        (&[3, 48, 8, 8], &[72, 48, 3, 3], Some(128)),
        (&[9, 40, 4, 4], &[40, 40, 3, 3], Some(128)),
        (&[2, 17, 16, 16], &[24, 17, 3, 3], Some(72)),
        (&[1, 8, 64, 64], &[16, 8, 3, 3], Some(72)),
        (&[2, 8, 6, 6], &[8, 8, 3, 3], None),
    ];
    let p = Conv2dParams { stride: 1, padding: 1 };
    let _bf16 = with_precision(Precision::Bf16);
    for (k, &(xd, wd, width)) in cases.iter().enumerate() {
        let what = format!("case {k} {xd:?} * {wd:?}");
        let (n_, c, h, w, oc) = (xd[0], xd[1], xd[2], xd[3], wd[0]);
        let geom = minidiffusion::ops::conv2d::cpu::ConvGeom { n: n_, c, h, w, oc, kh: 3, kw: 3, stride: 1, pad: 1, oh: h, ow: w };
        assert_eq!(wgmma_width(&geom), width, "{what}: virtual pixels a warpgroup");
        let t = switch_case(xd, wd, 1300 + 10 * k as u64);
        let Device::Cuda(d) = t[0].device() else { panic!("parity_device is CUDA") };
        let backend = minidiffusion::device::cuda::backend(d).unwrap();
        let cpu: Vec<Tensor> = t.iter().map(|x| x.to_device(Device::Cpu).unwrap()).collect();
        let run = |x: &Tensor, wgmma: bool| {
            backend.start_profiling();
            let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
            let y = with_wgmma_forward(wgmma, || no_grad(|| conv2d_fused(x, &t[1], Some(&t[2]), add, p))).unwrap().to_vec();
            let kernels: Vec<&str> = backend.stop_profiling().unwrap().into_iter().map(|r| r.kernel).filter(|k| k.starts_with("conv2d_same")).collect();
            (y, kernels)
        };
        let (wg, kernels) = run(&t[0], true);
        if !backend.wgmma() {
            assert!(kernels.iter().all(|k| !k.contains("_wg_")), "{what}: taken on {} without wgmma: {kernels:?}", backend.name());
            println!("wgmma_forward_takes_the_3x3_convs: skipped on {} (no sm_90a wgmma there)", backend.name());
            return;
        }
        let Some(n) = width else {
            assert!(kernels.iter().all(|k| !k.contains("_wg_")), "{what}: not taken: {kernels:?}");
            continue;
        };
        assert_eq!(kernels, [format!("conv2d_same_bf16_wg_n{n}").as_str()], "{what}");
        if k == 0 {
            // with the wide A/B on as well (element staging, 32 channels): wgmma takes it, on its own
            // grid (the output's block is handed NaNs first: the allocator gives it back, and a tile
            // not computed shows)
            drop(Tensor::from_vec_on(vec![f32::NAN; wg.len()], vec![wg.len()], t[0].device()).unwrap());
            let (both, kernels) = with_vec_staging(false, || with_wide_forward(true, || run(&t[0], true)));
            assert_eq!(kernels, ["conv2d_same_bf16_wg_n72"], "{what}: with the wide A/B on");
            assert_eq!(differing(&both, &wg), 0, "{what}: with the wide A/B on");
        }
        let twin = {
            let add = ConvAdd { sample_bias: Some(&cpu[3]), residual: Some(&cpu[4]) };
            no_grad(|| conv2d_fused(&cpu[0], &cpu[1], Some(&cpu[2]), add, p)).unwrap().to_vec()
        };
        let tol = ParityTol::BF16_TENSOR_CORE;
        assert_close(&format!("{what}: wgmma against the CPU twin"), &wg, &twin, tol.atol, tol.rtol);
        let (mma, kernels) = run(&t[0], false);
        assert!(kernels.iter().all(|k| !k.contains("_wg_")), "{what}: switched off: {kernels:?}");
        assert_close(&format!("{what}: wgmma against the mma.sync kernels"), &wg, &mma, tol.atol, tol.rtol);
        // the norm applied as x is staged: the bits of the norm written out, then convolved
        let groups = if xd[1] % 2 == 0 { 2 } else { 1 };
        let (normed, kernels) = with_wgmma_forward(true, || profiled_forward(&t, p, Precision::Bf16, Some(groups)));
        let convs: Vec<&str> = kernels.into_iter().filter(|k| k.starts_with("conv2d_same")).collect();
        assert_eq!(convs, [format!("conv2d_same_bf16_gn_wg_n{n}").as_str()], "{what}: norm");
        let written = no_grad(|| group_norm_silu(&t[0], groups, Some(&t[5]), Some(&t[6]), 1e-5)).unwrap();
        assert_eq!(differing(&normed, &run(&written, true).0), 0, "{what}: the norm applied as staged");
        // bf16 storage: the bits of its f32 widening
        let stored = cast(&t[0], DType::BF16).unwrap();
        let (y16, kernels) = run(&stored, true);
        assert_eq!(kernels, [format!("conv2d_same_bf16_xbf16_wg_n{n}").as_str()], "{what}: bf16 storage");
        assert_eq!(differing(&y16, &run(&cast(&stored, DType::F32).unwrap(), true).0), 0, "{what}: bf16 storage");
        // the upsampler's form: x's 2× upsampling read in place, the bits of the upsampling written out
        if xd[2] % 2 == 0 && xd[3] % 4 == 0 {
            let half: Vec<usize> = vec![xd[0], xd[1], xd[2] / 2, xd[3] / 2];
            let small = Tensor::from_vec_on(minidiffusion::testing::randn(&half, 1380 + k as u64), half.clone(), t[0].device()).unwrap();
            backend.start_profiling();
            let add = ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
            let up = with_wgmma_forward(true, || no_grad(|| conv2d_after_upsample(&small, &t[1], Some(&t[2]), add, p))).unwrap().to_vec();
            let kernels: Vec<&str> = backend.stop_profiling().unwrap().into_iter().map(|r| r.kernel).filter(|k| k.starts_with("conv2d_same")).collect();
            assert_eq!(kernels, [format!("conv2d_same_bf16_up_wg_n{n}").as_str()], "{what}: upsampled");
            let written = no_grad(|| upsample_nearest2x(&small)).unwrap();
            assert_eq!(differing(&up, &run(&written, true).0), 0, "{what}: the upsampling read in place");
        }
    }
    // the input gradient of a 3×3 same conv is such a conv of dY (48 → 64
    // channels at 16×16 here): the wgmma kernel takes it too
    use minidiffusion::ops::{ConvAdd as Add, conv2d_fused as fused_conv};
    let t = switch_case(&[2, 64, 16, 16], &[48, 64, 3, 3], 1390);
    let dx = |wgmma: bool| {
        let x = t[0].detach().requires_grad_();
        let y = fused_conv(&x, &t[1], Some(&t[2]), Add::default(), p).unwrap();
        let loss = minidiffusion::ops::sum_all(&minidiffusion::ops::mul(&y, &t[4]).unwrap()).unwrap();
        let mut grad = Vec::new();
        let kernels = minidiffusion::testing::kernels_launched(|| grad = with_wgmma_forward(wgmma, || minidiffusion::backward(&loss).unwrap()).get(&x).unwrap().to_vec());
        (grad, kernels.contains(&"conv2d_same_bf16_wg_n72"))
    };
    let ((wg, ran), (mma, _)) = (dx(true), dx(false));
    assert!(ran, "the input gradient ran the wgmma kernel");
    let tol = ParityTol::BF16_TENSOR_CORE;
    assert_close("dX with the wgmma kernel against the mma.sync kernels", &wg, &mma, tol.atol, tol.rtol);
    // and against the CPU twin, forward and gradients
    let fused = |t: &[Tensor]| {
        let add = Add { sample_bias: Some(&t[3]), residual: Some(&t[4]) };
        with_wgmma_forward(true, || fused_conv(&t[0], &t[1], Some(&t[2]), add, p))
    };
    parity_check("bf16_wgmma_16x16_fused", &[&[2, 64, 16, 16], &[48, 64, 3, 3], &[48], &[2, 48], &[2, 48, 16, 16]], fused, tol);
}

/// The forwards' rows-first grid (the default: a pixel tile's row blocks as
/// consecutive blocks of a 1-D grid, kernels/conv2d.cuh's `block_tile`)
/// gives the bits of the 2-D grid (`MINIDIFFUSION_CONV_GRID=2d`), for convs
/// of several row blocks, partial last ones included: the 3×3 and 1×1
/// forwards at both precisions (every epilogue term, the norm applied as
/// staged), the upsampled and stride-2 reads, a 1×1 over a concatenation,
/// the wgmma forward, and an input gradient (a same conv of dY) — each
/// kernel family checked by name.
#[test]
fn rows_first_grid_gives_the_same_bits() {
    use minidiffusion::ops::conv2d::cuda::{with_rows_first_grid, with_wgmma_forward};
    use minidiffusion::ops::{ConvAdd, Precision, conv2d_after_upsample, conv2d_concat, conv2d_fused, with_precision};
    use minidiffusion::no_grad;
    use minidiffusion::testing::kernels_launched;
    let _one = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    // (what, the kernel family it must launch, the op's outputs)
    let ops: Vec<(&str, &str, Box<dyn Fn() -> Vec<Vec<f32>>>)> = vec![
        ("3×3, 3 row blocks", "conv2d_same_bf16_m64_k3", {
            let t = switch_case(&[2, 16, 8, 8], &[160, 16, 3, 3], 1300);
            Box::new(move || [Precision::Bf16, Precision::F32].map(|prec| with_every_term(&t, Conv2dParams { stride: 1, padding: 1 }, prec, None)).to_vec())
        }),
        ("3×3 with the norm, 2 row blocks", "conv2d_same_bf16_gn_m64_k3", {
            let t = switch_case(&[2, 16, 8, 8], &[96, 16, 3, 3], 1310);
            Box::new(move || vec![with_every_term(&t, Conv2dParams { stride: 1, padding: 1 }, Precision::Bf16, Some(4))])
        }),
        ("1×1, 2 row blocks", "conv2d_1x1_bf16_m64", {
            let t = switch_case(&[2, 32, 8, 8], &[96, 32, 1, 1], 1320);
            Box::new(move || vec![with_every_term(&t, Conv2dParams::default(), Precision::Bf16, None)])
        }),
        ("upsampled 3×3, 2 row blocks", "conv2d_same_bf16_up_m64_k3", {
            let t = on_device(&[vec![2, 16, 4, 4], vec![80, 16, 3, 3], vec![80]], 1330);
            Box::new(move || {
                let _p = with_precision(Precision::Bf16);
                vec![no_grad(|| conv2d_after_upsample(&t[0], &t[1], Some(&t[2]), ConvAdd::default(), Conv2dParams { stride: 1, padding: 1 })).unwrap().to_vec()]
            })
        }),
        ("stride-2 3×3, 3 row blocks", "conv2d_same_bf16_down_m32_k3", {
            let t = on_device(&[vec![2, 16, 16, 16], vec![80, 16, 3, 3], vec![80]], 1340);
            Box::new(move || {
                let _p = with_precision(Precision::Bf16);
                vec![no_grad(|| conv2d_fused(&t[0], &t[1], Some(&t[2]), ConvAdd::default(), Conv2dParams { stride: 2, padding: 1 })).unwrap().to_vec()]
            })
        }),
        ("1×1 over a concatenation, 2 row blocks", "conv2d_1x1_bf16_cat_m64", {
            let t = on_device(&[vec![2, 32, 8, 8], vec![2, 32, 8, 8], vec![96, 64, 1, 1], vec![96]], 1350);
            Box::new(move || {
                let _p = with_precision(Precision::Bf16);
                vec![no_grad(|| conv2d_concat(&t[0], &t[1], &t[2], Some(&t[3]), ConvAdd::default(), Conv2dParams::default())).unwrap().to_vec()]
            })
        }),
        ("wgmma 3×3, 2 row blocks", "conv2d_same_bf16_wg_n72", {
            let t = on_device(&[vec![2, 16, 16, 16], vec![128, 16, 3, 3], vec![128]], 1360);
            Box::new(move || {
                let _p = with_precision(Precision::Bf16);
                vec![with_wgmma_forward(true, || no_grad(|| conv2d_fused(&t[0], &t[1], Some(&t[2]), ConvAdd::default(), Conv2dParams { stride: 1, padding: 1 }))).unwrap().to_vec()]
            })
        }),
        ("input gradient, 2 row blocks", "conv2d_same_bf16_m64_k3", {
            let t = on_device(&[vec![2, 96, 8, 8], vec![16, 96, 3, 3]], 1370);
            Box::new(move || {
                let _p = with_precision(Precision::Bf16);
                let x = t[0].detach().requires_grad_();
                let y = conv2d_fused(&x, &t[1], None, ConvAdd::default(), Conv2dParams { stride: 1, padding: 1 }).unwrap();
                // dY = 2y, not a constant
                let grads = minidiffusion::backward(&minidiffusion::ops::sum_all(&minidiffusion::ops::mul(&y, &y).unwrap()).unwrap()).unwrap();
                vec![y.to_vec(), grads.get(&x).unwrap().to_vec()]
            })
        }),
    ];
    let bits = |v: &[Vec<f32>]| v.iter().map(|o| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
    for (what, family, op) in &ops {
        let mut on = Vec::new();
        let launched = kernels_launched(|| on = with_rows_first_grid(true, op));
        assert!(launched.contains(family), "{what}: {family} not launched: {launched:?}");
        let off = with_rows_first_grid(false, op);
        assert!(on.iter().all(|o| o.iter().any(|&x| x != 0.0)), "{what}: outputs computed");
        assert_eq!(bits(&on), bits(&off), "{what}: the rows-first grid against the 2-D grid");
    }
}
