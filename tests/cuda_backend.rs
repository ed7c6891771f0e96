//! The CUDA backend's own behaviour: device selection and its errors, the
//! caching allocator's steady state, launch argument checks. Runs on the CPU
//! emulation of CUDA when there is no GPU.

use minidiffusion::device::cuda::{self, Arg, LaunchConfig};
use minidiffusion::device::{CudaDevice, DeviceRequest};
use minidiffusion::testing::parity_device;
use minidiffusion::{Device, Tensor, backward, ops};

fn emulated() -> CudaDevice {
    CudaDevice { ordinal: 0, emulated: true }
}

#[test]
fn device_flag_parsing() {
    assert_eq!(DeviceRequest::parse("auto").unwrap(), DeviceRequest::Auto);
    assert_eq!(DeviceRequest::parse("cpu").unwrap(), DeviceRequest::Exact(Device::Cpu));
    assert_eq!(
        DeviceRequest::parse("cuda:1").unwrap(),
        DeviceRequest::Exact(Device::Cuda(CudaDevice { ordinal: 1, emulated: false }))
    );
    for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
        let err = DeviceRequest::parse(bad).unwrap_err().to_string();
        assert!(err.contains("--device") && err.contains(bad), "{err}");
    }
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error_and_auto_falls_back() {
    if cuda::gpu_count() > 0 {
        eprintln!("SKIPPED (a GPU is present: the no-GPU errors cannot be shown)");
        return;
    }
    let err = DeviceRequest::parse("cuda").unwrap().resolve().unwrap_err().to_string();
    assert!(err.starts_with("--device cuda:") && !err.contains('\n'), "{err}");
    assert_eq!(DeviceRequest::Auto.resolve().unwrap(), Device::Cpu);
}

/// Launches check the kernel's name, its arguments' count and sizes, and
/// (in the emulation, as on a GPU) the block against its `__launch_bounds__`.
#[test]
fn launches_check_arguments_and_names() {
    let backend = cuda::backend(emulated()).unwrap();
    let out = backend.alloc(10).unwrap();
    let cfg = LaunchConfig::for_elems(10, 256);
    let err = backend.launch("fill_f32", cfg, &[out.arg(), Arg::F32(1.0)]).unwrap_err().to_string();
    assert!(err.contains("fill_f32") && err.contains("2 arguments"), "{err}");
    let err = backend.launch("fill_f32", cfg, &[out.arg(), Arg::U64(1), Arg::I32(10)]).unwrap_err().to_string();
    assert!(err.contains("argument 1 has 8 bytes"), "{err}");
    let err = backend.launch("no_such_kernel", cfg, &[]).unwrap_err().to_string();
    assert!(err.contains("no kernel named no_such_kernel"), "{err}");
    // a block larger than the kernel's __launch_bounds__ (256 here), refused as a GPU refuses it
    let mut gn_args = vec![Arg::Ptr(0); 6];
    gn_args.extend([Arg::I32(1), Arg::I32(1), Arg::I32(1), Arg::I32(4), Arg::F32(1e-5), Arg::I32(0)]);
    let err = backend.launch("groupnorm_forward", LaunchConfig::blocks(1, 512), &gn_args).unwrap_err().to_string();
    assert!(err.contains("groupnorm_forward") && err.contains("512 threads") && err.contains("__launch_bounds__ allow 256"), "{err}");
    backend.launch("fill_f32", cfg, &[out.arg(), Arg::F32(1.5), Arg::I32(10)]).unwrap();
    assert_eq!(out.download().unwrap(), vec![1.5; 10]);
}

#[test]
fn every_kernel_build_rs_found_is_launchable_by_name() {
    // a wrong argument count proves the emulator knows the kernel by name
    let backend = cuda::backend(emulated()).unwrap();
    let names = cuda::kernels::names();
    assert!(names.contains(&"fill_f32") && names.contains(&"reduce_sum"), "{names:?}");
    for name in names {
        let err = backend.launch(name, LaunchConfig::for_elems(1, 32), &[]).unwrap_err().to_string();
        assert!(err.contains("arguments given"), "{name}: {err}");
    }
}

#[test]
fn steady_state_training_steps_allocate_nothing_new() {
    // its own emulated ordinal, so other tests' allocations do not interfere
    let device = Device::Cuda(CudaDevice { ordinal: 7, emulated: true });
    let backend = cuda::backend(CudaDevice { ordinal: 7, emulated: true }).unwrap();
    let w = Tensor::from_vec_on(vec![0.5; 64], [8, 8], device).unwrap().detach().requires_grad_();
    let x = Tensor::from_vec_on((0..128).map(|i| i as f32 / 128.0).collect(), [16, 8], device).unwrap();
    let step = || {
        let h = ops::silu(&ops::mul(&x, &ops::sum(&w, &[0], true).unwrap()).unwrap()).unwrap();
        let loss = ops::mean_all(&ops::mul(&h, &h).unwrap()).unwrap();
        let grads = backward(&loss).unwrap();
        grads.get(&w).unwrap().to_vec()
    };
    step();
    step();
    let after_warmup = backend.alloc_stats();
    for _ in 0..5 {
        step();
    }
    let after = backend.alloc_stats();
    assert_eq!(after.device_mallocs, after_warmup.device_mallocs, "{after:?}");
    assert!(after.reuses > after_warmup.reuses);
    assert_eq!(after.device_frees, 0);
    backend.empty_cache();
    let emptied = backend.alloc_stats();
    assert!(emptied.device_frees > 0 && emptied.bytes_reserved == emptied.bytes_in_use, "{emptied:?}");
}

#[test]
fn parity_device_is_cuda() {
    assert!(parity_device().is_cuda());
}

#[test]
fn profiling_counts_every_launch_by_kernel() {
    let backend = cuda::backend(CudaDevice { ordinal: 9, emulated: true }).unwrap();
    let device = backend.device();
    let x = Tensor::from_vec_on(vec![1.0; 300], [3, 100], device).unwrap();
    backend.start_profiling();
    let y = ops::silu(&ops::add(&x, &x).unwrap()).unwrap();
    let _ = ops::sum_all(&y).unwrap();
    let rows = backend.stop_profiling().unwrap();
    let calls = |k: &str| calls_in(&rows, k);
    assert_eq!((calls("binary_same"), calls("activation_forward"), calls("reduce_sum_rows")), (1, 1, 1), "{rows:?}");
    assert!(rows.iter().all(|r| r.total_ms >= 0.0));
    let table = cuda::profile_table(&rows);
    assert!(table.contains("activation_forward") && table.contains('%'), "{table}");
    // off again: nothing more is recorded
    let _ = ops::silu(&x).unwrap();
    assert!(backend.stop_profiling().unwrap().is_empty());
    // only the profiling thread's launches: another thread's (a parallel test's) are not timed
    backend.start_profiling();
    std::thread::scope(|s| {
        s.spawn(|| ops::silu(&x).unwrap());
    });
    let _ = ops::add(&x, &x).unwrap();
    let rows = backend.stop_profiling().unwrap();
    assert_eq!((calls_in(&rows, "activation_forward"), calls_in(&rows, "binary_same")), (0, 1), "{rows:?}");
}

fn calls_in(rows: &[cuda::KernelTime], kernel: &str) -> usize {
    rows.iter().find(|r| r.kernel == kernel).map_or(0, |r| r.calls)
}

/// Small uploads are staged in pinned blocks and queued without waiting for
/// the stream: each must carry the values its source held at the call, even
/// when the source is overwritten right after and the stream is busy, and
/// no staging block may be reused while a copy from it is queued.
#[test]
fn uploads_carry_the_values_at_the_call_while_the_stream_is_busy() {
    let Device::Cuda(device) = parity_device() else { unreachable!("parity_device is CUDA") };
    let backend = cuda::backend(device).unwrap();
    // a fill that keeps a GPU busy for a while (small on the emulation, which runs it at once)
    let n = if device.emulated { 1 << 10 } else { 1 << 24 };
    let busy = backend.alloc(n).unwrap();
    let keep_busy = || backend.launch("fill_f32", LaunchConfig::for_elems(n, 256), &[busy.arg(), Arg::F32(2.0), Arg::I32(n as i32)]).unwrap();
    // sizes: one value, a batch's worth, just under and just over the
    // pinned limit (the larger copy is staged by the driver)
    let limit = cuda::pinned::PINNED_MAX_BYTES / 4;
    let lens = [1usize, 512, 3000, limit - 1, limit + 5];
    let mut host = Vec::new();
    let mut uploaded = Vec::new();
    for k in 0..60 {
        let len = lens[k % lens.len()];
        host.clear();
        host.extend((0..len).map(|i| (k * 7 + i % 13) as f32));
        keep_busy();
        uploaded.push((k, len, backend.upload(&host).unwrap()));
        host.fill(f32::NAN); // what a reused host buffer would do
    }
    for (k, len, buf) in uploaded {
        let got = buf.download().unwrap();
        let want: Vec<f32> = (0..len).map(|i| (k * 7 + i % 13) as f32).collect();
        assert!(got == want, "upload {k} ({len} values) changed after the call");
    }
}

/// A queued read returns the values at its place in the stream, not the
/// values later work writes; many may be outstanding at once, and bf16
/// storage is widened.
#[test]
fn queued_reads_see_the_stream_at_their_place() {
    let device = parity_device();
    let values = |k: usize| -> Vec<f32> { (0..1000).map(|i| (k * 1000 + i) as f32 * 0.25).collect() };
    let tensors: Vec<Tensor> = (0..80).map(|k| Tensor::from_vec_on(values(k), [1000], device).unwrap()).collect();
    let pending: Vec<_> = tensors.iter().map(|t| t.to_host_async().unwrap()).collect();
    for t in &tensors {
        t.copy_from_slice(&[-1.0; 1000]).unwrap(); // queued after the reads
    }
    for (k, p) in pending.into_iter().enumerate().rev() {
        assert!(p.wait().unwrap() == values(k), "read {k}");
    }
    assert_eq!(tensors[3].to_vec(), vec![-1.0; 1000]);
    let x = Tensor::from_vec_on(vec![1.0, 1.0 + 1.0 / 128.0, -3.5, 1e-3], [4], device).unwrap();
    let stored = ops::cast(&x, minidiffusion::DType::BF16).unwrap();
    assert_eq!(stored.to_host_async().unwrap().wait().unwrap(), stored.to_vec());
    // a CPU tensor's values are ready at once
    assert_eq!(Tensor::from_vec(vec![2.0], [1]).unwrap().to_host_async().unwrap().wait().unwrap(), vec![2.0]);
}
