//! Tests for `ops::conv2d`: forward against a direct nested-loop reference,
//! hand-computed values, gradient checks of x, weight and bias, and bad shapes.
//!
//! Forward tolerance: atol 1e-4, rtol 1e-4 (f32 im2col+gemm vs f32 direct sums
//! of at most C·KH·KW = 200 terms of order 1; the orders of summation differ).

use minidiffusion::ops::{self, Conv2dParams, conv2d};
use minidiffusion::testing::{GradTol, assert_close, grad_check, randn};
use minidiffusion::{Error, Tensor, backward};

const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-4;

/// y[n, o, oy, ox] = b[o] + Σ_{c, ki, kj} w[o, c, ki, kj] · x[n, c, oy·s − p + ki, ox·s − p + kj], zero outside.
#[allow(clippy::too_many_arguments)]
fn conv_direct(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], b: Option<&[f32]>, stride: usize, pad: usize) -> Vec<f32> {
    let [n, c, h, wd] = xs;
    let [oc, _, kh, kw] = ws;
    let oh = (h + 2 * pad - kh) / stride + 1;
    let ow = (wd + 2 * pad - kw) / stride + 1;
    let mut y = vec![0.0f32; n * oc * oh * ow];
    for ni in 0..n {
        for o in 0..oc {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[o]) as f64;
                    for ci in 0..c {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let iy = (oy * stride + ki) as isize - pad as isize;
                                let ix = (ox * stride + kj) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((ni * c + ci) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((o * c + ci) * kh + ki) * kw + kj];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((ni * oc + o) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    y
}

fn params(stride: usize, padding: usize) -> Conv2dParams {
    Conv2dParams { stride, padding }
}

#[test]
fn conv2d_params_default_is_stride1_pad0() {
    assert_eq!(Conv2dParams::default(), Conv2dParams { stride: 1, padding: 0 });
}

#[test]
fn conv2d_forward_matches_direct_reference() {
    // (x shape, weight shape, stride, padding, bias)
    type Case = ([usize; 4], [usize; 4], usize, usize, bool);
    let cases: &[Case] = &[
        ([1, 1, 5, 5], [1, 1, 3, 3], 1, 0, false),
        ([2, 3, 7, 6], [4, 3, 3, 3], 1, 1, true),
        ([3, 2, 9, 7], [5, 2, 5, 5], 2, 2, true),
        ([1, 2, 6, 5], [3, 2, 5, 5], 1, 2, false),
        ([1, 4, 8, 8], [6, 4, 1, 1], 1, 0, true),  // pointwise: no im2col
        ([2, 4, 7, 9], [3, 4, 1, 1], 2, 0, false), // 1×1, stride 2
        ([1, 2, 3, 3], [2, 2, 1, 1], 1, 1, true),  // 1×1 with padding
        ([2, 3, 11, 10], [2, 3, 3, 3], 2, 1, true),
        ([4, 3, 5, 5], [2, 3, 3, 3], 2, 0, true),
        ([2, 1, 4, 7], [2, 1, 2, 3], 1, 1, true), // rectangular kernel
        ([1, 1, 2, 2], [1, 1, 5, 5], 1, 2, true), // kernel = padded input
        ([1, 8, 16, 16], [8, 8, 3, 3], 1, 1, true), // N = 1, gemm may use threads
        ([6, 8, 13, 13], [8, 8, 3, 3], 2, 1, true), // batch split across threads
    ];
    for (i, &(xs, ws, stride, pad, with_bias)) in cases.iter().enumerate() {
        let xv = randn(&xs, 10 + i as u64);
        let wv = randn(&ws, 100 + i as u64);
        let bv = randn(&[ws[0]], 200 + i as u64);
        let x = Tensor::from_vec(xv.clone(), xs).unwrap();
        let w = Tensor::from_vec(wv.clone(), ws).unwrap();
        let b = Tensor::from_vec(bv.clone(), [ws[0]]).unwrap();
        let y = conv2d(&x, &w, with_bias.then_some(&b), params(stride, pad)).unwrap();
        let want = conv_direct(&xv, xs, &wv, ws, with_bias.then_some(&bv[..]), stride, pad);
        let oh = (xs[2] + 2 * pad - ws[2]) / stride + 1;
        let ow = (xs[3] + 2 * pad - ws[3]) / stride + 1;
        assert_eq!(y.dims(), [xs[0], ws[0], oh, ow], "case {i}");
        assert_close(&format!("conv2d case {i} {xs:?} {ws:?} s{stride} p{pad}"), &y.to_vec(), &want, ATOL, RTOL);
    }
}

#[test]
fn conv2d_hand_computed_3x3_input_2x2_kernel() {
    // x = [[1,2,3],[4,5,6],[7,8,9]], k = [[1,2],[3,4]], bias 0.5
    let x = Tensor::from_vec((1..=9).map(|v| v as f32).collect(), [1, 1, 3, 3]).unwrap();
    let w = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2]).unwrap();
    let b = Tensor::from_vec(vec![0.5], [1]).unwrap();
    // y[0,0] = 1·1 + 2·2 + 4·3 + 5·4 = 37, y[0,1] = 47, y[1,0] = 67, y[1,1] = 77
    let y = conv2d(&x, &w, Some(&b), Conv2dParams::default()).unwrap();
    assert_eq!(y.dims(), [1, 1, 2, 2]);
    assert_eq!(y.to_vec(), vec![37.5, 47.5, 67.5, 77.5]);
    // stride 2, padding 1: OH = (3 + 2 − 2)/2 + 1 = 2; windows start at −1 and 1
    // y[0,0] = 1·4 = 4, y[0,1] = 2·3 + 3·4 = 18, y[1,0] = 4·2 + 7·4 = 36, y[1,1] = 5 + 12 + 24 + 36 = 77
    let y = conv2d(&x, &w, None, params(2, 1)).unwrap();
    assert_eq!(y.dims(), [1, 1, 2, 2]);
    assert_eq!(y.to_vec(), vec![4.0, 18.0, 36.0, 77.0]);
}

#[test]
fn conv2d_hand_computed_gradients_of_sum() {
    // L = Σ y for the 3×3 ⊛ 2×2 case above:
    //   dW[ki,kj] = Σ of x over the 2×2 block at (ki,kj); dB = 4 (output pixels);
    //   dX[i,j] = Σ of the kernel taps that touch (i,j).
    let x = Tensor::from_vec((1..=9).map(|v| v as f32).collect(), [1, 1, 3, 3]).unwrap().requires_grad_();
    let w = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2]).unwrap().requires_grad_();
    let b = Tensor::from_vec(vec![0.5], [1]).unwrap().requires_grad_();
    let y = conv2d(&x, &w, Some(&b), Conv2dParams::default()).unwrap();
    let grads = backward(&ops::sum_all(&y).unwrap()).unwrap();
    assert_eq!(grads.get(&w).unwrap().to_vec(), vec![12.0, 16.0, 24.0, 28.0]);
    assert_eq!(grads.get(&b).unwrap().to_vec(), vec![4.0]);
    assert_eq!(grads.get(&x).unwrap().to_vec(), vec![1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);
}

#[test]
fn conv2d_grad_only_for_inputs_that_require_it() {
    let x = Tensor::from_vec(randn(&[2, 2, 4, 4], 1), [2, 2, 4, 4]).unwrap().requires_grad_();
    let w = Tensor::from_vec(randn(&[3, 2, 3, 3], 2), [3, 2, 3, 3]).unwrap();
    let b = Tensor::from_vec(randn(&[3], 3), [3]).unwrap();
    let y = conv2d(&x, &w, Some(&b), params(1, 1)).unwrap();
    let grads = backward(&ops::sum_all(&y).unwrap()).unwrap();
    assert_eq!(grads.len(), 1);
    assert_eq!(grads.get(&x).unwrap().dims(), [2, 2, 4, 4]);
    assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
}

// Gradient checks use the default GradTol (h 1e-3, atol 2e-3, rtol 1e-2).

#[test]
fn conv2d_grad_check_stride2_pad1() {
    grad_check(
        "conv2d s2 p1",
        &[&[2, 3, 6, 5], &[4, 3, 3, 3], &[4]],
        |t| conv2d(&t[0], &t[1], Some(&t[2]), params(2, 1)),
        GradTol::default(),
    );
}

#[test]
fn conv2d_grad_check_kernel5_pad2() {
    grad_check(
        "conv2d k5 p2",
        &[&[1, 2, 7, 6], &[3, 2, 5, 5], &[3]],
        |t| conv2d(&t[0], &t[1], Some(&t[2]), params(1, 2)),
        GradTol::default(),
    );
}

#[test]
fn conv2d_grad_check_kernel1() {
    // pointwise path (no im2col) with bias, and 1×1 stride 2 without bias
    grad_check(
        "conv2d k1",
        &[&[2, 4, 3, 5], &[3, 4, 1, 1], &[3]],
        |t| conv2d(&t[0], &t[1], Some(&t[2]), Conv2dParams::default()),
        GradTol::default(),
    );
    grad_check("conv2d k1 s2", &[&[3, 2, 5, 4], &[3, 2, 1, 1]], |t| conv2d(&t[0], &t[1], None, params(2, 0)), GradTol::default());
}

#[test]
fn conv2d_grad_check_stride2_no_pad_odd() {
    grad_check("conv2d k3 s2 p0", &[&[3, 2, 7, 8], &[2, 2, 3, 3]], |t| conv2d(&t[0], &t[1], None, params(2, 0)), GradTol::default());
}

#[test]
fn conv2d_shape_errors_return_err() {
    let x = Tensor::zeros([1, 3, 5, 5]);
    let shape = |r: minidiffusion::Result<Tensor>| matches!(r, Err(Error::Shape { op: "conv2d", .. }));
    // channel mismatch
    assert!(shape(conv2d(&x, &Tensor::zeros([2, 4, 3, 3]), None, Conv2dParams::default())));
    // kernel larger than the padded input (5 + 2·1 = 7 < 9), per dim
    assert!(shape(conv2d(&x, &Tensor::zeros([2, 3, 9, 9]), None, params(1, 1))));
    assert!(shape(conv2d(&x, &Tensor::zeros([2, 3, 1, 6]), None, Conv2dParams::default())));
    // ... but equal is fine
    assert!(conv2d(&x, &Tensor::zeros([2, 3, 7, 7]), None, params(1, 1)).is_ok());
    // bias of the wrong length
    assert!(shape(conv2d(&x, &Tensor::zeros([2, 3, 3, 3]), Some(&Tensor::zeros([3])), Conv2dParams::default())));
    // wrong ranks
    assert!(shape(conv2d(&Tensor::zeros([3, 5, 5]), &Tensor::zeros([2, 3, 3, 3]), None, Conv2dParams::default())));
    assert!(shape(conv2d(&x, &Tensor::zeros([2, 3, 3]), None, Conv2dParams::default())));
    // empty kernel
    assert!(shape(conv2d(&x, &Tensor::zeros([2, 3, 0, 3]), None, Conv2dParams::default())));
    // stride 0 is an argument error
    let r = conv2d(&x, &Tensor::zeros([2, 3, 3, 3]), None, params(0, 0));
    assert!(matches!(r, Err(Error::Argument { op: "conv2d", .. })), "{r:?}");
}

#[test]
fn conv2d_grad_check_stride1_input_gradient_as_a_convolution() {
    // stride 1, square kernels: dx is computed as a forward convolution with the
    // flipped, transposed weight (padding KH − 1 − p); every padding it allows
    // (small shapes: the f32 forward's rounding, summed over many outputs, is
    // the finite differences' noise floor)
    grad_check("conv2d k3 s1 p1", &[&[2, 2, 5, 4], &[3, 2, 3, 3]], |t| conv2d(&t[0], &t[1], None, params(1, 1)), GradTol::default());
    grad_check("conv2d k3 s1 p0", &[&[1, 2, 5, 6], &[2, 2, 3, 3]], |t| conv2d(&t[0], &t[1], None, params(1, 0)), GradTol::default());
    grad_check("conv2d k3 s1 p2", &[&[1, 2, 4, 3], &[2, 2, 3, 3]], |t| conv2d(&t[0], &t[1], None, params(1, 2)), GradTol::default());
    grad_check("conv2d k2 s1 p1", &[&[2, 2, 4, 5], &[2, 2, 2, 2]], |t| conv2d(&t[0], &t[1], None, params(1, 1)), GradTol::default());
    // maps the channel-lane kernel takes (rows of 4 and of 8), forward and input gradient
    grad_check("conv2d k3 s1 p1 rows of 4", &[&[2, 3, 4, 4], &[5, 3, 3, 3]], |t| conv2d(&t[0], &t[1], None, params(1, 1)), GradTol::default());
    grad_check("conv2d k3 s1 p1 rows of 8", &[&[1, 2, 2, 8], &[3, 2, 3, 3]], |t| conv2d(&t[0], &t[1], None, params(1, 1)), GradTol::default());
}

/// Whether this CPU runs a direct kernel (`available`: its check, `needs`:
/// what it needs); prints that `test` skipped if not.
fn runs_or_skipped(available: fn() -> bool, needs: &str, test: &str) -> bool {
    let runs = available();
    if !runs {
        println!("SKIPPED {test}: this CPU has no {needs}");
    }
    runs
}

#[test]
fn direct_kernel_matches_the_gemm_path_with_every_epilogue() {
    use minidiffusion::ops::conv2d::cpu::{ConvGeom, Epilogue, conv2d_forward_gemm};
    use minidiffusion::ops::conv2d::direct;
    if !runs_or_skipped(direct::available, "AVX-512 or AVX2", "direct_kernel_matches_the_gemm_path_with_every_epilogue") {
        return;
    }
    // (n, c, h, w, oc, k, stride, pad): every tile shape (AVX-512: 24×16,
    // 12×32, 8×32, 1×128; AVX2: 6×16, 4×16, 1×64) with partial channel
    // tiles, pixel counts off the panel width, several K blocks (K = 297,
    // 360, 576, 2304), one image (channel tiles split across threads) and
    // image groups, strided and 1×1 kernels; on AVX-512 the 4×4 and 8×8 3×3
    // maps go to the channel-lane kernel (`direct::forward` dispatches), and
    // each case runs the pixel-lane kernel as well
    let cases = [
        (9, 40, 4, 4, 50, 3, 1, 1),
        (3, 64, 8, 8, 40, 3, 1, 1),
        (2, 8, 32, 32, 13, 3, 1, 1),
        (5, 16, 7, 9, 1, 3, 1, 1),
        (1, 256, 4, 4, 256, 3, 1, 1),
        (1, 24, 11, 5, 7, 5, 1, 2),
        (4, 6, 13, 13, 25, 3, 2, 1),
        (1, 6, 9, 9, 13, 3, 2, 1),
        (6, 33, 4, 4, 30, 1, 1, 0),
        (2, 3, 5, 6, 3, 3, 2, 0),
        (3, 5, 1, 1, 9, 3, 1, 1),
        // whole rows of 16-pixel vectors: read from a zero-padded copy, no panels
        (1, 5, 16, 16, 9, 5, 1, 2),
        (3, 7, 18, 18, 30, 3, 1, 0),
        (2, 20, 16, 16, 24, 1, 1, 0),
        (2, 33, 16, 32, 40, 3, 1, 1),
    ];
    for (i, &(n, c, h, w, oc, k, stride, pad)) in cases.iter().enumerate() {
        let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        let g = ConvGeom { n, c, h, w, oc, kh: k, kw: k, stride, pad, oh, ow };
        let x = randn(&[n, c, h, w], 300 + i as u64);
        let wt = randn(&[oc, c, k, k], 400 + i as u64);
        let bias = randn(&[oc], 500 + i as u64);
        let sample_bias = randn(&[n, oc], 600 + i as u64);
        let residual = randn(&[n, oc, oh, ow], 700 + i as u64);
        let epilogues = [
            Epilogue::default(),
            Epilogue { bias: Some(&bias), ..Epilogue::default() },
            Epilogue { bias: Some(&bias), sample_bias: Some(&sample_bias), residual: Some(&residual) },
            Epilogue { sample_bias: Some(&sample_bias), ..Epilogue::default() },
            Epilogue { residual: Some(&residual), ..Epilogue::default() },
        ];
        for (j, epi) in epilogues.iter().enumerate() {
            let want = conv2d_forward_gemm(&x, &wt, epi, &g);
            let got = direct::forward(&x, &wt, epi, &g);
            // two f32 summation orders over K ≤ 2304 terms of unit size
            assert_close(&format!("direct conv case {i} epilogue {j} {g:?}"), &got, &want, ATOL, RTOL);
            // the pixel-lane kernel too where the channel-lane one takes the map
            let pixel_lanes = direct::forward_packed(&x, &direct::Panels::pixel_lanes(&wt, &g), epi, &g);
            assert_close(&format!("pixel-lane conv case {i} epilogue {j} {g:?}"), &pixel_lanes, &want, ATOL, RTOL);
            if j == 1 {
                // and no less accurate than the gemm path against an f64 sum
                let exact = conv_direct(&x, [n, c, h, w], &wt, [oc, c, k, k], Some(&bias), stride, pad);
                let worst = |y: &[f32]| y.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let (direct_err, gemm_err) = (worst(&got), worst(&want));
                assert!(direct_err <= 2.0 * gemm_err + 1e-6, "case {i}: direct error {direct_err:e}, gemm {gemm_err:e}");
            }
        }
    }
}

#[test]
fn conv2d_fused_equals_conv_then_adds_and_its_gradients_check() {
    use minidiffusion::ops::{ConvAdd, conv2d_fused};
    let p = params(1, 1);
    let t = |dims: &[usize], seed| Tensor::from_vec(randn(dims, seed), dims).unwrap();
    let (x, w, b, sb, r) = (t(&[3, 4, 6, 5], 1), t(&[7, 4, 3, 3], 2), t(&[7], 3), t(&[3, 7], 4), t(&[3, 7, 6, 5], 5));
    let fused = conv2d_fused(&x, &w, Some(&b), ConvAdd { sample_bias: Some(&sb), residual: Some(&r) }, p).unwrap();
    let chained = ops::add(&ops::add(&conv2d(&x, &w, Some(&b), p).unwrap(), &ops::reshape(&sb, [3, 7, 1, 1]).unwrap()).unwrap(), &r).unwrap();
    assert_close("fused vs chained", &fused.to_vec(), &chained.to_vec(), 1e-5, 1e-5);
    grad_check(
        "conv2d_fused",
        &[&[3, 4, 6, 5], &[7, 4, 3, 3], &[7], &[3, 7], &[3, 7, 6, 5]],
        |t| conv2d_fused(&t[0], &t[1], Some(&t[2]), ConvAdd { sample_bias: Some(&t[3]), residual: Some(&t[4]) }, p),
        GradTol::default(),
    );
    // shapes of the extra operands are checked
    let bad = conv2d_fused(&x, &w, None, ConvAdd { sample_bias: Some(&b), residual: None }, p).unwrap_err();
    assert!(bad.to_string().contains("per-image bias must be [3, 7]"), "{bad}");
    let bad = conv2d_fused(&x, &w, None, ConvAdd { sample_bias: None, residual: Some(&x) }, p).unwrap_err();
    assert!(bad.to_string().contains("residual must be [3, 7, 6, 5]"), "{bad}");
}

#[test]
fn direct_kernel_matches_the_gemm_path_on_random_geometries() {
    use minidiffusion::ops::conv2d::cpu::{ConvGeom, Epilogue, conv2d_forward_gemm};
    use minidiffusion::ops::conv2d::direct;
    if !runs_or_skipped(direct::available, "AVX-512 or AVX2", "direct_kernel_matches_the_gemm_path_on_random_geometries") {
        return;
    }
    // 200 geometries from a fixed LCG: kernels 1–5 (non-square too), strides
    // 1–3, paddings 0–2, maps 1–34 wide, 1–70 channels, 1–5 images
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: usize| -> usize {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % n
    };
    let mut checked = 0;
    while checked < 200 {
        let (n, c, oc) = (1 + next(5), 1 + next(70), 1 + next(70));
        let (kh, kw, stride, pad) = (1 + next(5), 1 + next(5), 1 + next(3), next(3));
        let (h, w) = (1 + next(34), 1 + next(34));
        if kh > h + 2 * pad || kw > w + 2 * pad {
            continue;
        }
        let (oh, ow) = ((h + 2 * pad - kh) / stride + 1, (w + 2 * pad - kw) / stride + 1);
        let g = ConvGeom { n, c, h, w, oc, kh, kw, stride, pad, oh, ow };
        let seed = 1000 + checked as u64;
        let (x, wt, bias, residual) = (randn(&[n, c, h, w], seed), randn(&[oc, c, kh, kw], seed + 1), randn(&[oc], seed + 2), randn(&[n, oc, oh, ow], seed + 3));
        let epi = Epilogue { bias: Some(&bias), sample_bias: None, residual: Some(&residual) };
        let want = conv2d_forward_gemm(&x, &wt, &epi, &g);
        let got = direct::forward(&x, &wt, &epi, &g);
        assert_close(&format!("direct conv {g:?}"), &got, &want, ATOL, RTOL);
        checked += 1;
    }
}

#[test]
fn avx512_channel_lane_kernel_matches_the_gemm_path_with_every_epilogue() {
    use minidiffusion::ops::conv2d::channel_lanes;
    use minidiffusion::ops::conv2d::cpu::{ConvGeom, Epilogue, conv2d_forward_gemm};
    if !runs_or_skipped(channel_lanes::available, "AVX-512", "avx512_channel_lane_kernel_matches_the_gemm_path_with_every_epilogue") {
        return;
    }
    // (n, c, h, w, oc): rows of 8 and pairs of rows of 4 (a last segment
    // without a pair at 3×8 and 6×4), channel counts off the vector width
    // and the tile split (1, 17, 40, 100, 256 = 3 3 3 3 2 2 vectors), maps
    // not square, one image (tiles split across threads), batches in groups
    // with a short last one
    let cases = [
        (32, 256, 4, 4, 256),
        (9, 128, 8, 8, 128),
        (1, 256, 4, 4, 256),
        (3, 5, 3, 8, 17),
        (5, 40, 6, 4, 100),
        (2, 1, 2, 4, 1),
        (17, 33, 8, 8, 40),
        (1, 64, 12, 8, 96),
    ];
    for (i, &(n, c, h, w, oc)) in cases.iter().enumerate() {
        let g = ConvGeom { n, c, h, w, oc, kh: 3, kw: 3, stride: 1, pad: 1, oh: h, ow: w };
        assert!(channel_lanes::takes(&g), "case {i}: {g:?}");
        let x = randn(&[n, c, h, w], 800 + i as u64);
        let wt = randn(&[oc, c, 3, 3], 900 + i as u64);
        let bias = randn(&[oc], 1000 + i as u64);
        let sample_bias = randn(&[n, oc], 1100 + i as u64);
        let residual = randn(&[n, oc, h, w], 1200 + i as u64);
        let epilogues = [
            Epilogue::default(),
            Epilogue { bias: Some(&bias), ..Epilogue::default() },
            Epilogue { bias: Some(&bias), sample_bias: Some(&sample_bias), residual: Some(&residual) },
            Epilogue { residual: Some(&residual), ..Epilogue::default() },
        ];
        for (j, epi) in epilogues.iter().enumerate() {
            let want = conv2d_forward_gemm(&x, &wt, epi, &g);
            let got = channel_lanes::forward(&x, &wt, epi, &g);
            assert_close(&format!("channel-lane conv case {i} epilogue {j} {g:?}"), &got, &want, ATOL, RTOL);
            if j == 1 {
                // no less accurate than the gemm path against an f64 sum
                let exact = conv_direct(&x, [n, c, h, w], &wt, [oc, c, 3, 3], Some(&bias), 1, 1);
                let worst = |y: &[f32]| y.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let (lanes_err, gemm_err) = (worst(&got), worst(&want));
                assert!(lanes_err <= 2.0 * gemm_err + 1e-6, "case {i}: channel-lane error {lanes_err:e}, gemm {gemm_err:e}");
            }
        }
    }
    // the input gradient: W' = W flipped, packed straight from W
    for (i, &(n, c, h, w, oc)) in cases.iter().enumerate() {
        use minidiffusion::ops::conv2d::cpu::conv2d_backward_input;
        let g = ConvGeom { n, c, h, w, oc, kh: 3, kw: 3, stride: 1, pad: 1, oh: h, ow: w };
        let (dy, wt) = (randn(&[n, oc, h, w], 1300 + i as u64), randn(&[oc, c, 3, 3], 1400 + i as u64));
        let mut flipped = vec![0.0; wt.len()];
        for o in 0..oc {
            for ci in 0..c {
                for t in 0..9 {
                    flipped[(ci * oc + o) * 9 + 8 - t] = wt[(o * c + ci) * 9 + t];
                }
            }
        }
        let want = conv2d_forward_gemm(&dy, &flipped, &Epilogue::default(), &channel_lanes::input_grad_geom(&g));
        assert_close(&format!("channel-lane input gradient case {i} {g:?}"), &conv2d_backward_input(&dy, &wt, &g), &want, ATOL, RTOL);
    }
    // what it does not take
    let g = |h: usize, w: usize, k: usize, stride: usize, pad: usize| {
        let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        ConvGeom { n: 2, c: 8, h, w, oc: 8, kh: k, kw: k, stride, pad, oh, ow }
    };
    for geom in [g(8, 16, 3, 1, 1), g(8, 5, 3, 1, 1), g(8, 8, 1, 1, 0), g(8, 8, 3, 2, 1), g(8, 8, 3, 1, 0), g(4, 4, 5, 1, 2)] {
        assert!(!channel_lanes::takes(&geom), "{geom:?}");
    }
}

/// dW [OC, C, KH, KW] = Σ_{n, oy, ox} dY[n, o, oy, ox] · x[n, c, oy − p + ki, ox − p + kj] in f64 (stride 1).
fn weight_grad_f64(dy: &[f32], x: &[f32], [n, c, h, w]: [usize; 4], oc: usize, k: usize, pad: usize) -> Vec<f64> {
    let (oh, ow) = (h + 2 * pad - k + 1, w + 2 * pad - k + 1);
    let mut dw = vec![0.0f64; oc * c * k * k];
    for ni in 0..n {
        for o in 0..oc {
            for ci in 0..c {
                for ki in 0..k {
                    for kj in 0..k {
                        let mut acc = 0.0f64;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let (iy, ix) = ((oy + ki) as isize - pad as isize, (ox + kj) as isize - pad as isize);
                                if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                    let xv = x[((ni * c + ci) * h + iy as usize) * w + ix as usize];
                                    acc += dy[((ni * oc + o) * oh + oy) * ow + ox] as f64 * xv as f64;
                                }
                            }
                        }
                        dw[((o * c + ci) * k + ki) * k + kj] += acc;
                    }
                }
            }
        }
    }
    dw
}

/// The direct weight gradient of the 3×3 same convs against im2col + gemm
/// and an f64 sum: every microkernel width (AVX-512: 16, 32, 48 output
/// channels a call, 64 as 32 + 32, 128 and 256 as threes and a rest; AVX2:
/// 8), output channels off 16 (lanes past OC), maps 1 wide or 1 high, one
/// image, one channel;
/// and the same bits whatever the thread count (each dW entry summed in one
/// order: images, then pixels).
#[test]
fn direct_weight_gradient_matches_the_gemm_path() {
    use minidiffusion::ops::conv2d::cpu::{ConvGeom, conv2d_backward_weight, conv2d_backward_weight_gemm};
    use minidiffusion::ops::conv2d::direct_weight_grad;
    if !runs_or_skipped(direct_weight_grad::available, "AVX-512 or AVX2", "direct_weight_gradient_matches_the_gemm_path") {
        return;
    }
    // (n, c, h, w, oc)
    let cases = [
        (2, 5, 32, 32, 32),
        (3, 7, 16, 16, 64),
        (2, 3, 8, 8, 128),
        (4, 2, 4, 4, 256),
        (2, 3, 5, 7, 17),
        (1, 1, 1, 1, 9),
        (3, 4, 3, 9, 40),
        (5, 6, 2, 1, 48),
        // small maps run images in groups (≥ 128 pixels): a short last group
        (11, 3, 4, 4, 24),
        (5, 2, 8, 8, 16),
        (1, 9, 1, 6, 8),
        (2, 4, 6, 1, 80),
    ];
    for (i, &(n, c, h, w, oc)) in cases.iter().enumerate() {
        let g = ConvGeom { n, c, h, w, oc, kh: 3, kw: 3, stride: 1, pad: 1, oh: h, ow: w };
        assert!(direct_weight_grad::takes(&g), "case {i}: {g:?}");
        let (x, dy) = (randn(&[n, c, h, w], 800 + i as u64), randn(&[n, oc, h, w], 900 + i as u64));
        let got = conv2d_backward_weight(&dy, &x, &g);
        let gemm = conv2d_backward_weight_gemm(&dy, &x, &g);
        let exact = weight_grad_f64(&dy, &x, [n, c, h, w], oc, 3, 1);
        let worst = |v: &[f32]| v.iter().zip(&exact).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
        let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let (direct_err, gemm_err) = (worst(&got), worst(&gemm));
        // sums of up to N·H·W = 2048 products in f32: within a few ulps of their scale, as the gemm path
        assert!(direct_err <= (2.0 * gemm_err).max(1e-6 * scale), "case {i} {g:?}: direct error {direct_err:e}, gemm {gemm_err:e}, scale {scale:e}");
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let again = pool.install(|| conv2d_backward_weight(&dy, &x, &g));
            assert!(again.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "case {i}: {threads} threads changed the bits");
        }
    }
    // what it does not take stays with im2col + gemm: stride 2, padding 0, a 5×5 kernel, fewer than 8 output channels
    for g in [
        ConvGeom { n: 1, c: 2, h: 8, w: 8, oc: 16, kh: 3, kw: 3, stride: 2, pad: 1, oh: 4, ow: 4 },
        ConvGeom { n: 1, c: 2, h: 8, w: 8, oc: 16, kh: 3, kw: 3, stride: 1, pad: 0, oh: 6, ow: 6 },
        ConvGeom { n: 1, c: 2, h: 8, w: 8, oc: 16, kh: 5, kw: 5, stride: 1, pad: 2, oh: 8, ow: 8 },
        ConvGeom { n: 1, c: 2, h: 8, w: 8, oc: 7, kh: 3, kw: 3, stride: 1, pad: 1, oh: 8, ow: 8 },
    ] {
        assert!(!direct_weight_grad::takes(&g), "{g:?}");
    }
    // and through the op, by finite differences (x, weight and bias; 9 output channels)
    grad_check("conv2d k3 s1 p1 oc 9", &[&[2, 3, 5, 4], &[9, 3, 3, 3], &[9]], |t| conv2d(&t[0], &t[1], Some(&t[2]), params(1, 1)), GradTol::default());
}

/// x used twice (conv(x) + x, a shortcut's sum): the input gradient plus
/// the other use's, by finite differences.
#[test]
fn conv2d_grad_check_x_with_another_use() {
    grad_check(
        "conv2d(x) + x",
        &[&[2, 3, 5, 4], &[3, 3, 3, 3], &[3]],
        |t| ops::add(&conv2d(&t[0], &t[1], Some(&t[2]), params(1, 1))?, &t[0]),
        GradTol::default(),
    );
}
