//! The paths a CPU without AVX-512 runs (at AVX2 the direct convolutions
//! and attention's block on 8 lanes; in plain Rust im2col + gemm and
//! attention's portable lanes; 8- and 1-lane elementwise loops): the golden
//! tests against diffusers and PyTorch, and the convolution, attention and
//! group-norm tests, run again in child processes of this binary with
//! `MINIDIFFUSION_SIMD` capping the kernels at AVX2 and at plain Rust.
//! (Here they also run as they are, on what this CPU has.)

#[path = "attention.rs"]
mod attention;
#[path = "conv2d.rs"]
mod conv2d;
#[path = "golden_diffusers.rs"]
mod golden;
#[path = "group_norm.rs"]
mod group_norm;

use std::process::Command;

#[test]
fn golden_attention_conv_and_norm_tests_pass_capped_at_avx2_and_plain() {
    let exe = std::env::current_exe().expect("the test binary");
    for level in ["avx2", "plain"] {
        let out = Command::new(&exe)
            .env("MINIDIFFUSION_SIMD", level)
            .args(["golden::", "attention::", "conv2d::", "group_norm::", "--test-threads", "2"])
            .output()
            .expect("the test binary runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "MINIDIFFUSION_SIMD={level}:\n{text}");
        // the filters matched the included tests (not none of them)
        let passed: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("test result: ok. ")?.split(' ').next()?.parse().ok())
            .unwrap_or(0);
        assert!(passed >= 60, "MINIDIFFUSION_SIMD={level}: {passed} tests passed:\n{text}");
    }
}

/// Outputs of the pixel-lane convolution over geometries that reach every
/// source of its panels (a padded copy, masked gathers, packed strided
/// panels, 1×1 in place), several K blocks and every epilogue term, and of
/// the direct weight gradient of the 3×3 ones, hashed bit for bit (FNV-1a
/// over the f32 bits).
fn pixel_lane_digest() -> String {
    use minidiffusion::ops::conv2d::cpu::{ConvGeom, Epilogue};
    use minidiffusion::ops::conv2d::direct::{Panels, forward_packed};
    use minidiffusion::ops::conv2d::direct_weight_grad;
    use minidiffusion::testing::randn;
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut add = |values: Vec<f32>| {
        for y in values {
            for byte in y.to_bits().to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    };
    // (n, c, h, w, oc, k, stride, pad)
    let cases = [(2, 40, 16, 16, 50, 3, 1, 1), (3, 33, 8, 8, 13, 3, 1, 1), (2, 8, 9, 7, 1, 3, 1, 1), (2, 6, 13, 13, 25, 3, 2, 1), (1, 20, 16, 16, 7, 1, 1, 0), (1, 256, 4, 4, 30, 3, 1, 1)];
    for (i, &(n, c, h, w, oc, k, stride, pad)) in cases.iter().enumerate() {
        let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        let g = ConvGeom { n, c, h, w, oc, kh: k, kw: k, stride, pad, oh, ow };
        let seed = 50 + 10 * i as u64;
        let (x, wt) = (randn(&[n, c, h, w], seed), randn(&[oc, c, k, k], seed + 1));
        let (bias, sample_bias, residual) = (randn(&[oc], seed + 2), randn(&[n, oc], seed + 3), randn(&[n, oc, oh, ow], seed + 4));
        let epi = Epilogue { bias: Some(&bias), sample_bias: Some(&sample_bias), residual: Some(&residual) };
        add(forward_packed(&x, &Panels::pixel_lanes(&wt, &g), &epi, &g));
        if direct_weight_grad::takes(&g) {
            add(direct_weight_grad::backward_weight(&residual, &x, &g));
        }
    }
    format!("{hash:016x}")
}

/// The AVX2 pixel-lane convolution sums each output in the AVX-512 kernel's
/// order (its 16-pixel vectors as two halves), and the weight gradient each
/// lane's, so the two give the same bits.
#[test]
fn pixel_lane_convolution_has_the_same_bits_at_avx2_and_avx512() {
    use minidiffusion::ops::conv2d::channel_lanes;
    if !channel_lanes::available() {
        println!("SKIPPED pixel_lane_convolution_has_the_same_bits_at_avx2_and_avx512: this CPU has no AVX-512");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(&exe)
        .env("MINIDIFFUSION_SIMD", "avx2")
        .env("PIXEL_LANE_DIGEST", pixel_lane_digest())
        .args(["pixel_lane_digest_is_the_parents", "--exact", "--ignored"])
        .output()
        .expect("the test binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("test result: ok. 1 passed"), "{text}");
}

/// Run by the test above in a child process capped at AVX2.
#[test]
#[ignore = "run at AVX2 by pixel_lane_convolution_has_the_same_bits_at_avx2_and_avx512"]
fn pixel_lane_digest_is_the_parents() {
    use minidiffusion::ops::conv2d::channel_lanes;
    assert!(!channel_lanes::available(), "not capped below AVX-512");
    let want = std::env::var("PIXEL_LANE_DIGEST").expect("PIXEL_LANE_DIGEST: the parent's digest");
    assert_eq!(pixel_lane_digest(), want);
}
