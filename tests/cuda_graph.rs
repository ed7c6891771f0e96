//! CUDA graphs (on a GPU when there is one, else the CPU emulation of CUDA,
//! which records a capture and replays it, and fails host copies and
//! synchronisation inside a capture as a GPU does): sampling with a graph
//! equals the eager loop bit for bit for every sampler kind; the graph's
//! private pool keeps its memory from the rest of the program; an illegal
//! call fails the capture and leaves the device usable.
//!
//! The tests share the device's counters (graph launches, mallocs), so they
//! run one at a time.

use minidiffusion::device::cuda::{self, CudaBackend};
use minidiffusion::diffusion::sampler::{self, SamplerKind, SamplerOptions, Spacing};
use minidiffusion::diffusion::{Schedule, ScheduleKind};
use minidiffusion::io::model_dir;
use minidiffusion::ops::{self, Conv2dParams};
use minidiffusion::testing::{parity_device, randn};
use minidiffusion::{Device, Tensor, no_grad};
use std::path::Path;
use std::sync::{Arc, Mutex};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn backend(device: Device) -> Arc<CudaBackend> {
    let Device::Cuda(d) = device else { panic!("parity_device is CUDA") };
    cuda::backend(d).unwrap()
}

fn device_tensor(dims: &[usize], seed: u64, device: Device) -> Tensor {
    Tensor::from_vec_on(randn(dims, seed), dims.to_vec(), device).unwrap()
}

/// A cheap stand-in for a UNet that uses x and t: ε̂ = silu(conv3x3(x)) · t/T + 0.1·x.
fn toy_model(weight: &Tensor) -> impl Fn(&Tensor, &Tensor) -> minidiffusion::Result<Tensor> + '_ {
    move |x: &Tensor, t: &Tensor| {
        let h = ops::silu(&ops::conv2d(x, weight, None, Conv2dParams { stride: 1, padding: 1 })?)?;
        let scale = ops::reshape(&ops::mul_scalar(t, 1.0 / 60.0)?, [x.dims()[0], 1, 1, 1])?;
        ops::add(&ops::mul(&h, &scale)?, &ops::mul_scalar(x, 0.1)?)
    }
}

/// Runs `opts` with and without the graph; asserts equal samples, x̂0
/// history and model calls, and `launches` graph launches from one capture.
fn assert_graph_equals_eager(
    model: impl Fn(&Tensor, &Tensor) -> minidiffusion::Result<Tensor>,
    x_t: &Tensor,
    first: usize,
    schedule: &Schedule,
    opts: &SamplerOptions,
    launches: u64,
) {
    let b = backend(x_t.device());
    let eager_opts = SamplerOptions { cuda_graph: false, ..opts.clone() };
    let before = b.graph_stats();
    let eager = no_grad(|| sampler::sample(&model, x_t.clone(), first, schedule, &eager_opts)).unwrap();
    assert_eq!(b.graph_stats(), before, "cuda_graph: false uses no graph");
    let x_t_values = x_t.to_vec();
    let graphed = no_grad(|| sampler::sample(&model, x_t.clone(), first, schedule, opts)).unwrap();
    let after = b.graph_stats();
    assert_eq!((after.captures - before.captures, after.launches - before.launches), (1, launches), "{:?}", opts.kind);
    assert_eq!(x_t.to_vec(), x_t_values, "the caller's x_T is left as it was");
    assert_eq!(graphed.model_evals, eager.model_evals);
    assert_eq!(graphed.x0.to_vec(), eager.x0.to_vec(), "{:?}: samples differ", opts.kind);
    assert_eq!(graphed.x0_history.len(), eager.x0_history.len());
    for ((k, t, a), (k2, t2, b)) in graphed.x0_history.iter().zip(&eager.x0_history) {
        assert_eq!((k, t), (k2, t2));
        assert_eq!(a.to_vec(), b.to_vec(), "x̂0 after update {k} differs");
    }
    // the update really moved x
    assert_ne!(graphed.x0.to_vec(), x_t_values);
}

#[test]
fn graphed_sampling_equals_eager_for_every_sampler() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let weight = device_tensor(&[2, 2, 3, 3], 1, device);
    let model = toy_model(&weight);
    let x_t = device_tensor(&[3, 2, 5, 4], 2, device);
    let short = Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.02 }, 60).unwrap();
    let ddim = |steps, eta| SamplerKind::Ddim { steps, eta, spacing: Spacing::Leading };
    let cases = [
        // deterministic DDIM: 6 model calls, the first eager, then 5 launches
        (SamplerOptions { kind: ddim(6, 0.0), ..Default::default() }, 5),
        // noise at every update, clipping, x̂0 kept at three updates, samples from 7 on
        (SamplerOptions { kind: ddim(5, 1.0), clip_x0: Some(1.0), keep_x0_at: vec![0, 2, 4], seed: 9, ..Default::default() }, 4),
        // DDPM over all 60 steps
        (SamplerOptions { kind: SamplerKind::Ddpm, seed: 3, ..Default::default() }, 59),
        // skip-DDPM: the model at 59, 57, 54, 51 and below 50 (54 calls); ε̂ reused between
        (SamplerOptions { kind: SamplerKind::DdpmSkip, seed: 4, keep_x0_at: vec![1, 58], ..Default::default() }, 53),
    ];
    for (opts, launches) in cases {
        let first = if opts.seed == 9 { 7 } else { 0 };
        assert_graph_equals_eager(&model, &x_t, first, &short, &opts, launches);
    }
}

/// The golden diffusers UNet (attention, group norms, up/down sampling):
/// nothing in its forward pass copies to the host or synchronises, so it
/// captures, and its replays equal the eager passes. (Slow on the emulation:
/// ~9 s a forward pass, so 3 DDIM steps.)
#[test]
fn graphed_unet_sampling_equals_eager() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/unet_a");
    let (model, _) = model_dir::load(&dir, device).unwrap();
    let x_t = sampler::initial_noise([2, 1, 16, 16], 0, 5, device).unwrap();
    let opts = SamplerOptions { kind: SamplerKind::Ddim { steps: 3, eta: 0.0, spacing: Spacing::Leading }, ..Default::default() };
    assert_graph_equals_eager(|x, t| model.forward(x, t), &x_t, 0, &Schedule::lesson_default(), &opts, 2);
}

#[test]
fn graphed_runs_at_bf16_and_in_a_warm_cache_allocate_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let weight = device_tensor(&[8, 8, 3, 3], 6, device);
    let model = toy_model(&weight);
    let x_t = device_tensor(&[2, 8, 6, 6], 7, device);
    let s = Schedule::lesson_default();
    // the products' precision is part of what is captured
    let opts = SamplerOptions {
        kind: SamplerKind::Ddim { steps: 8, eta: 0.0, spacing: Spacing::Leading },
        precision: ops::Precision::Bf16,
        ..Default::default()
    };
    assert_graph_equals_eager(&model, &x_t, 0, &s, &opts, 7);
    // a second run finds every block it needs in the cache: its warm-up,
    // capture and replays call cudaMalloc not once
    let b = backend(device);
    let warm = b.alloc_stats().device_mallocs;
    no_grad(|| sampler::sample(&model, x_t.clone(), 0, &s, &opts)).unwrap();
    assert_eq!(b.alloc_stats().device_mallocs, warm, "a graphed run in a warm cache calls cudaMalloc");
}

#[test]
fn a_graph_keeps_its_memory_until_it_is_dropped() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let b = backend(device);
    let ptr = |t: &Tensor| t.storage().cuda("test").unwrap().ptr();
    let x = device_tensor(&[1000], 3, device);
    let outside = device_tensor(&[777], 4, device);
    let outside_ptr = ptr(&outside);
    let pool = b.new_graph_pool();
    let mut outside = Some(outside);
    // the captured work: a temporary (freed inside), an output, and a block of
    // the general cache dropped inside the capture
    let (graph, (y, temp_ptr)) = b
        .capture(&pool, || {
            let temp = ops::mul_scalar(&x, 2.0)?;
            let y = ops::add_scalar(&temp, 1.0)?;
            drop(outside.take());
            Ok((y, ptr(&temp)))
        })
        .unwrap();
    // nothing ran yet; launching runs it, as often as wanted
    graph.launch().unwrap();
    let want: Vec<f32> = x.to_vec().iter().map(|v| v * 2.0 + 1.0).collect();
    assert_eq!(y.to_vec(), want);
    x.copy_from_slice(&vec![1.0; 1000]).unwrap();
    graph.launch().unwrap();
    assert_eq!(y.to_vec(), vec![3.0; 1000], "a replay reads x again");
    // while the graph lives, no allocation outside its pool gets its blocks
    let others: Vec<Tensor> = (0..4).map(|_| Tensor::zeros_on([1000], device).unwrap()).chain([Tensor::zeros_on([777], device).unwrap()]).collect();
    for o in &others {
        assert!(ptr(o) != temp_ptr && ptr(o) != ptr(&y) && ptr(o) != outside_ptr, "a graph's block was handed out");
    }
    drop(others);
    drop((graph, y, pool));
    // the graph gone, the blocks it held serve everyone again
    let reused: Vec<Tensor> = (0..8).map(|_| Tensor::zeros_on([777], device).unwrap()).collect();
    assert!(reused.iter().any(|t| ptr(t) == outside_ptr), "the held block went back to the cache");
}

#[test]
fn host_copies_fail_a_capture_and_the_device_stays_usable() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let b = backend(device);
    let x = device_tensor(&[64], 5, device);
    let pool = b.new_graph_pool();
    // reading the device, queueing a read, uploading: none may be recorded
    // (an upload staged in a pinned block would replay whatever the block
    // holds by then)
    type HostCopy<'a> = &'a dyn Fn(&Tensor) -> minidiffusion::Result<()>;
    let host_copies: [(&str, HostCopy); 3] = [
        ("read", &|y| y.try_to_vec().map(drop)),
        ("queued read", &|y| y.to_host_async().map(drop)),
        ("upload", &|y| y.copy_from_slice(&[1.0; 64])),
    ];
    for (what, copy) in host_copies {
        let err = b
            .capture(&pool, || {
                let y = ops::mul_scalar(&x, 3.0)?;
                copy(&y)
            })
            .err()
            .unwrap_or_else(|| panic!("a {what} inside a capture fails it"));
        let msg = err.to_string();
        assert!(msg.contains("capturing") || msg.contains("capture"), "{what}: {msg}");
    }
    // the stream works eagerly, and a clean capture after it works
    let y = ops::mul_scalar(&x, 3.0).unwrap();
    assert_eq!(y.to_vec(), x.to_vec().iter().map(|v| v * 3.0).collect::<Vec<_>>());
    let (graph, z) = b.capture(&pool, || ops::add_scalar(&x, 1.0)).unwrap();
    graph.launch().unwrap();
    assert_eq!(z.to_vec(), x.to_vec().iter().map(|v| v + 1.0).collect::<Vec<_>>());
}

/// A v- or x̂0-predicting model's ε̂ takes ᾱ_t as a launch argument, which a
/// replayed graph would freeze at the captured step: those sample eagerly
/// (no capture), with the same samples as on the CPU.
#[test]
fn v_and_sample_predictions_sample_eagerly() {
    use minidiffusion::diffusion::sampler::Prediction;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let b = backend(device);
    let short = Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.02 }, 60).unwrap();
    let weight = randn(&[2, 2, 3, 3], 1);
    let x_t = randn(&[3, 2, 5, 4], 2);
    for prediction in [Prediction::V, Prediction::Sample] {
        let opts = SamplerOptions { kind: SamplerKind::Ddim { steps: 6, eta: 0.0, spacing: Spacing::Leading }, prediction, ..Default::default() };
        assert!(!sampler::uses_cuda_graph(device, &short, &opts).unwrap());
        let run = |device: Device| {
            let w = Tensor::from_vec_on(weight.clone(), [2, 2, 3, 3], device).unwrap();
            let x = Tensor::from_vec_on(x_t.clone(), [3, 2, 5, 4], device).unwrap();
            no_grad(|| sampler::sample(toy_model(&w), x, 0, &short, &opts)).unwrap().x0.to_vec()
        };
        let before = b.graph_stats();
        let (on_device, on_cpu) = (run(device), run(Device::Cpu));
        assert_eq!(b.graph_stats().captures, before.captures, "{prediction:?}: no capture");
        minidiffusion::testing::assert_close(&format!("{prediction:?} samples"), &on_device, &on_cpu, 1e-5, 1e-4);
        let eps_opts = SamplerOptions { prediction: Prediction::Epsilon, ..opts.clone() };
        let w = Tensor::from_vec(weight.clone(), [2, 2, 3, 3]).unwrap();
        let eps_run = no_grad(|| sampler::sample(toy_model(&w), Tensor::from_vec(x_t.clone(), [3, 2, 5, 4]).unwrap(), 0, &short, &eps_opts)).unwrap();
        assert_ne!(eps_run.x0.to_vec(), on_cpu, "{prediction:?} reads the output differently from ε");
    }
}

/// A model with a variance half (diffusers' learned variance): DDIM takes
/// its ε̂ half in the graph too (the ε̂-only model's samples, bit for bit);
/// DDPM with the learned variance reads the variance half each step, so it
/// samples eagerly, and agrees with the CPU.
#[test]
fn a_variance_half_is_graphed_for_ddim_and_eager_for_a_learned_ddpm() {
    use minidiffusion::diffusion::sampler::DdpmVariance;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let weight = device_tensor(&[2, 2, 3, 3], 1, device);
    let eps_model = toy_model(&weight);
    // the variance half: tanh-like v in (−1, 1) from x
    let with_half = |x: &Tensor, t: &Tensor| {
        let v = ops::mul_scalar(&ops::silu(&ops::mul_scalar(x, 0.5)?)?, 0.4)?;
        ops::concat(&[&eps_model(x, t)?, &v], 1)
    };
    let x_t = device_tensor(&[3, 2, 5, 4], 2, device);
    let short = Schedule::new(ScheduleKind::Linear { beta_min: 1e-4, beta_max: 0.02 }, 60).unwrap();
    let ddim = SamplerOptions { kind: SamplerKind::Ddim { steps: 6, eta: 1.0, spacing: Spacing::Leading }, seed: 2, ..Default::default() };
    assert_graph_equals_eager(with_half, &x_t, 0, &short, &ddim, 5);
    let plain = no_grad(|| sampler::sample(&eps_model, x_t.clone(), 0, &short, &ddim)).unwrap();
    let halved = no_grad(|| sampler::sample(&with_half, x_t.clone(), 0, &short, &ddim)).unwrap();
    assert_eq!(plain.x0.to_vec(), halved.x0.to_vec());

    let b = backend(device);
    let learned = SamplerOptions { kind: SamplerKind::Ddpm, ddpm_variance: DdpmVariance::LearnedRange, seed: 3, ..Default::default() };
    assert!(!sampler::uses_cuda_graph(device, &short, &learned).unwrap());
    let before = b.graph_stats();
    let on_device = no_grad(|| sampler::sample(&with_half, x_t.clone(), 0, &short, &learned)).unwrap().x0.to_vec();
    assert_eq!(b.graph_stats().captures, before.captures, "no capture");
    let w = weight.to_device(Device::Cpu).unwrap();
    let cpu_model = toy_model(&w);
    let cpu_half = |x: &Tensor, t: &Tensor| {
        let v = ops::mul_scalar(&ops::silu(&ops::mul_scalar(x, 0.5)?)?, 0.4)?;
        ops::concat(&[&cpu_model(x, t)?, &v], 1)
    };
    let on_cpu = no_grad(|| sampler::sample(cpu_half, x_t.to_device(Device::Cpu).unwrap(), 0, &short, &learned)).unwrap().x0.to_vec();
    minidiffusion::testing::assert_close("learned-variance DDPM samples", &on_device, &on_cpu, 1e-5, 1e-4);
}

/// Launches of the same-conv weight packs in `f` (profiled; no graph runs
/// while profiling).
fn packs_in(b: &CudaBackend, f: impl FnOnce()) -> usize {
    b.start_profiling();
    f();
    let rows = b.stop_profiling().unwrap();
    rows.iter().filter(|r| r.kernel.starts_with("conv2d_pack_same")).map(|r| r.calls).sum()
}

/// conv3x3(x, weight) on the device without a gradient.
fn conv3(x: &Tensor, weight: &Tensor) -> Tensor {
    no_grad(|| ops::conv2d(x, weight, None, Conv2dParams { stride: 1, padding: 1 })).unwrap()
}

/// A same conv's weights are packed once and kept with the weight: later
/// forwards launch no pack and give the same bits; a write to the weight
/// (a load, an optimiser step) or another precision packs again, and the
/// result is that of a fresh tensor holding the new values.
#[test]
fn packed_conv_weights_are_kept_until_the_weight_is_written() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let b = backend(device);
    let weight = device_tensor(&[8, 8, 3, 3], 11, device);
    let x = device_tensor(&[2, 8, 8, 8], 12, device); // a same conv: 8×8 maps tile 128 pixels
    let mut first = None;
    assert_eq!(packs_in(&b, || first = Some(conv3(&x, &weight))), 1);
    let mut again = None;
    assert_eq!(packs_in(&b, || again = Some(conv3(&x, &weight))), 0, "the packed weights are reused");
    assert_eq!(again.unwrap().to_vec(), first.as_ref().unwrap().to_vec());
    // a view of the weight shares its storage and its packed values
    let view = ops::reshape(&weight, [8, 8, 3, 3]).unwrap();
    assert_eq!(packs_in(&b, || drop(conv3(&x, &view))), 0);
    // bf16 products: their own packing, kept too
    let bf16 = |w: &Tensor| {
        let _p = ops::with_precision(ops::Precision::Bf16);
        conv3(&x, w)
    };
    assert_eq!(packs_in(&b, || drop(bf16(&weight))), 1);
    assert_eq!(packs_in(&b, || drop(bf16(&weight))), 0);
    // written in place: packed again, from the new values
    let new_values = randn(&[8, 8, 3, 3], 13);
    weight.copy_from_slice(&new_values).unwrap();
    let mut after = None;
    assert_eq!(packs_in(&b, || after = Some(conv3(&x, &weight))), 1);
    let fresh = Tensor::from_vec_on(new_values, vec![8, 8, 3, 3], device).unwrap();
    assert_eq!(after.unwrap().to_vec(), conv3(&x, &fresh).to_vec());
    assert_ne!(conv3(&x, &fresh).to_vec(), first.unwrap().to_vec());
    // an optimiser step writes the weight: the next forward sees the step
    let w = device_tensor(&[8, 8, 3, 3], 14, device).requires_grad_();
    drop(conv3(&x, &w));
    let loss = ops::sum_all(&ops::conv2d(&x, &w, None, Conv2dParams { stride: 1, padding: 1 }).unwrap()).unwrap();
    let grads = minidiffusion::backward(&loss).unwrap();
    let mut opt = minidiffusion::optim::AdamW::new(vec![w.clone()], minidiffusion::optim::AdamW::lesson_defaults(0.1)).unwrap();
    opt.step(&grads).unwrap();
    let stepped = Tensor::from_vec_on(w.to_vec(), vec![8, 8, 3, 3], device).unwrap();
    assert_eq!(conv3(&x, &w).to_vec(), conv3(&x, &stepped).to_vec());
}

/// A graph that reads a weight's packed values keeps them: written weights
/// are packed anew into other blocks, and replays still compute with the
/// values the graph was captured with. A capture that finds nothing packed
/// packs into its own pool and caches nothing (eager work after it must
/// not read a pack that only a replay would write).
#[test]
fn a_graph_keeps_the_packed_weights_it_reads() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let device = parity_device();
    let b = backend(device);
    let values = randn(&[8, 8, 3, 3], 21);
    let weight = Tensor::from_vec_on(values.clone(), vec![8, 8, 3, 3], device).unwrap();
    let x = device_tensor(&[2, 8, 8, 8], 22, device);
    let want = conv3(&x, &weight).to_vec(); // packs and keeps
    let pool = b.new_graph_pool();
    let (graph, y) = b.capture(&pool, || Ok(conv3(&x, &weight))).unwrap();
    // new values, twice: each packs into a block of the size of the first
    // pack, which the graph must still hold
    for seed in [23, 24] {
        weight.copy_from_slice(&randn(&[8, 8, 3, 3], seed)).unwrap();
        drop(conv3(&x, &weight));
    }
    graph.launch().unwrap();
    assert_eq!(y.to_vec(), want, "the replay computes with the captured weights");
    drop((graph, y, pool));

    // nothing packed before the capture (new values: the blocks freed above
    // hold packs of other values, which a wrongly cached pack would read)
    let values = randn(&[8, 8, 3, 3], 25);
    let twin = Tensor::from_vec_on(values.clone(), vec![8, 8, 3, 3], device).unwrap();
    let want = conv3(&x, &twin).to_vec();
    let fresh = Tensor::from_vec_on(values, vec![8, 8, 3, 3], device).unwrap();
    let pool = b.new_graph_pool();
    let (graph, y) = b.capture(&pool, || Ok(conv3(&x, &fresh))).unwrap();
    assert_eq!(conv3(&x, &fresh).to_vec(), want, "eager work after the capture packs for itself");
    graph.launch().unwrap();
    assert_eq!(y.to_vec(), want);
}
