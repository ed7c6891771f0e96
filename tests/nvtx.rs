//! NVTX ranges reach a profiler: tests/nvtx/injection.c, built here with the
//! system C compiler, is loaded through NVTX_INJECTION64_PATH exactly as
//! Nsight Systems' library is, and logs every range push and pop of a short
//! `bench sample` and `bench train` run.

use std::path::Path;
use std::process::Command;

fn build_tool(dir: &Path) -> std::path::PathBuf {
    let lib = dir.join("libnvtx_test_tool.so");
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nvtx/injection.c");
    let status = Command::new(&compiler).args(["-shared", "-fPIC", "-O1", "-o"]).arg(&lib).arg(&src).status();
    assert!(status.is_ok_and(|s| s.success()), "building the test NVTX tool with {compiler} failed");
    lib
}

/// The range names pushed by one CLI run under the test tool, checking that
/// every push is popped.
fn ranges(name: &str, args: &[&str]) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("minidiffusion-nvtx-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tool = build_tool(&dir);
    let log = dir.join("nvtx.log");
    let out = Command::new(env!("CARGO_BIN_EXE_minidiffusion"))
        .args(args)
        .env("NVTX_INJECTION64_PATH", &tool)
        .env("NVTX_TEST_LOG", &log)
        .env("RAYON_NUM_THREADS", "2")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).expect("the tool was loaded and wrote its log");
    let (mut depth, mut names) = (0i64, Vec::new());
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("push ") {
            depth += 1;
            names.push(name.to_string());
        } else {
            assert_eq!(line, "pop");
            depth -= 1;
            assert!(depth >= 0, "a pop without a push");
        }
    }
    assert_eq!(depth, 0, "every range is closed");
    std::fs::remove_dir_all(&dir).ok();
    names
}

#[test]
fn sampling_shows_steps_layers_and_ops() {
    let names = ranges("sample", &["bench", "sample", "--config", "tiny", "-n", "2", "--batch-size", "2", "--steps", "2", "--device", "cpu"]);
    for want in ["sampler step", "UNet2DModel", "down block", "up block", "ResnetBlock2D", "Attention", "conv2d_fused", "group_norm_silu", "attention_columns", "diffusion_step"] {
        assert!(names.iter().any(|n| n == want), "no '{want}' range among {} ranges", names.len());
    }
    // one warm-up step, then the two timed ones
    assert_eq!(names.iter().filter(|n| *n == "sampler step").count(), 3);
    assert_eq!(names.iter().filter(|n| *n == "UNet2DModel").count(), 3);
}

#[test]
fn training_shows_the_step_backward_ops_and_optimizer() {
    let names = ranges("train", &["bench", "train", "--config", "tiny", "--batch-size", "2", "--steps", "1", "--device", "cpu"]);
    for want in ["train step", "UNet2DModel", "mse_loss", "backward", "conv2d backward", "optimizer step"] {
        assert!(names.iter().any(|n| n == want), "no '{want}' range among {} ranges", names.len());
    }
}
