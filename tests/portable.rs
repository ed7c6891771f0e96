//! The paths a CPU without AVX-512 runs (im2col + gemm convolutions,
//! attention's portable lanes, 8- and 1-lane elementwise loops): the golden
//! tests against diffusers and PyTorch, and the attention and group-norm
//! tests, run again in child processes of this binary with
//! `MINIDIFFUSION_SIMD` capping the kernels at AVX2 and at plain Rust.
//! (Here they also run as they are, on what this CPU has.)

#[path = "attention.rs"]
mod attention;
#[path = "golden_diffusers.rs"]
mod golden;
#[path = "group_norm.rs"]
mod group_norm;

use std::process::Command;

#[test]
fn golden_attention_and_norm_tests_pass_capped_at_avx2_and_plain() {
    let exe = std::env::current_exe().expect("the test binary");
    for level in ["avx2", "plain"] {
        let out = Command::new(&exe)
            .env("MINIDIFFUSION_SIMD", level)
            .args(["golden::", "attention::", "group_norm::", "--test-threads", "2"])
            .output()
            .expect("the test binary runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "MINIDIFFUSION_SIMD={level}:\n{text}");
        // the filters matched the included tests (not none of them)
        let passed: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("test result: ok. ")?.split(' ').next()?.parse().ok())
            .unwrap_or(0);
        assert!(passed >= 40, "MINIDIFFUSION_SIMD={level}: {passed} tests passed:\n{text}");
    }
}
