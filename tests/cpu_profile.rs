//! `--profile` on the CPU: ranges' self times by name, on the profiling
//! thread only, and the table `bench train|sample --profile` prints.

use minidiffusion::device::{cpu_profile, nvtx};
use minidiffusion::{Tensor, ops};
use std::time::{Duration, Instant};

fn row<'a>(rows: &'a [cpu_profile::RangeTime], name: &str) -> Option<&'a cpu_profile::RangeTime> {
    rows.iter().find(|r| r.name == name)
}

/// A range's self time leaves out the ranges inside it: the outer range,
/// which only sleeps 5 ms itself, around an inner one sleeping 60 ms.
#[test]
fn self_time_leaves_out_inner_ranges() {
    cpu_profile::start();
    let wall = Instant::now();
    {
        let _outer = nvtx::range("outer");
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..2 {
            let _inner = nvtx::range("inner");
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    let rows = cpu_profile::stop();
    let (outer, inner) = (row(&rows, "outer").unwrap(), row(&rows, "inner").unwrap());
    assert_eq!((outer.calls, inner.calls), (1, 2), "{rows:?}");
    assert!(inner.self_ms >= 60.0 && outer.self_ms >= 5.0, "{rows:?}");
    assert!(outer.self_ms < inner.self_ms, "the outer range's self time holds the inner one's: {rows:?}");
    let sum: f64 = rows.iter().map(|r| r.self_ms).sum();
    assert!(sum <= wall_ms + 1e-6, "self times {sum} ms sum past the wall time {wall_ms} ms");
    assert_eq!(rows[0].name, "inner", "largest first: {rows:?}");
}

/// Ops and their backward each get a row; ranges of another thread (a
/// parallel test's) and ranges after stop are not timed.
#[test]
fn ops_and_backward_have_rows_on_the_profiling_thread_only() {
    let x = Tensor::from_vec(vec![0.5; 4096], [4, 1024]).unwrap().requires_grad_();
    cpu_profile::start();
    assert!(cpu_profile::is_on() && nvtx::active());
    let y = ops::silu(&ops::add(&x, &x).unwrap()).unwrap();
    minidiffusion::backward(&ops::sum_all(&y).unwrap()).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(!cpu_profile::is_on());
            ops::mul_scalar(&x, 2.0).unwrap()
        });
    });
    let rows = cpu_profile::stop();
    let calls = |name: &str| row(&rows, name).map_or(0, |r| r.calls);
    // binary twice: x + x, and in the backward x's two gradients summed
    assert_eq!((calls("binary"), calls("activation"), calls("activation backward"), calls("backward")), (2, 1, 1, 1), "{rows:?}");
    assert_eq!(calls("mul_scalar"), 0, "another thread's op was timed: {rows:?}");
    assert!(rows.iter().all(|r| r.self_ms >= 0.0));
    let table = cpu_profile::table(&rows);
    assert!(table.starts_with("range (self time)") && table.contains("activation backward") && table.contains('%'), "{table}");
    // stopped: nothing more is recorded, and a new profile starts empty
    assert!(!cpu_profile::is_on());
    let _ = ops::silu(&x).unwrap();
    cpu_profile::start();
    assert!(cpu_profile::stop().is_empty());
}

/// `bench train --profile` on the CPU prints the table of its steps (it
/// was refused there before), the convolutions and their backward in it.
#[test]
fn bench_train_profile_prints_the_table_on_cpu() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_minidiffusion"))
        .args(["bench", "train", "--config", "tiny", "--batch-size", "2", "--steps", "1", "--device", "cpu", "--profile", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("range (self time)") && stderr.contains("conv2d_fused") && stderr.contains("conv2d backward"), "{stderr}");
    assert!(stderr.contains("train step") && stderr.contains("optimizer step"), "{stderr}");
}
