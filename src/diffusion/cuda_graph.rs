//! The sampler's loop on CUDA with CUDA graphs: one step — the model call and
//! the update — is captured once and replayed for every later step.
//!
//! Steps differ only in the timestep and the update's values, so those live
//! on the device (`ops::diffusion::DeviceStep`): one small launch writes
//! them, then one graph launch replays the step's few hundred kernels, with
//! no per-kernel launch cost on the host. x is updated in place, so the
//! graph's input and output are one buffer. The first model step runs
//! eagerly in the graph's private memory pool (kernels load; the pool grows
//! to what a step allocates), the second is captured (nothing runs, nothing
//! is allocated), then it and every later one is a replay. Steps without a
//! model call (skip-DDPM) reuse the last ε̂, which the graph copies aside.
//!
//! The results equal the eager loop's bit for bit: the same kernels with the
//! same arguments in the same order. Not used while profiling (a graph's
//! kernels cannot be timed one by one) nor below 3 model calls.

use super::sampler::{Samples, SamplerOptions, calls_model};
use crate::device::Device;
use crate::device::cuda::{CudaBackend, Graph};
use crate::error::Result;
use crate::ops::diffusion::{DeviceStep, StepCoefs};
use crate::tensor::Tensor;
use std::sync::Arc;

/// The device's backend when this run should use a graph.
pub(super) fn worth_it(device: Device, opts: &SamplerOptions, plan: &[(usize, StepCoefs)]) -> Result<Option<Arc<CudaBackend>>> {
    let Device::Cuda(d) = device else { return Ok(None) };
    // the ε̂ of v- or x̂0-predicting models is formed with ᾱ_t as a launch
    // argument, which a replayed graph would freeze: those sample eagerly
    // (thresholding forms x̂0 with the step's coefficients as launch
    // arguments too, then thresholds it on the device)
    // (a learned DDPM variance reads the model's second output half per step)
    if !opts.cuda_graph || opts.prediction != super::sampler::Prediction::Epsilon || opts.threshold.is_some() || opts.learns_variance() {
        return Ok(None);
    }
    let backend = crate::device::cuda::backend(d)?;
    let model_calls = (0..plan.len()).filter(|&k| calls_model(opts.kind, plan, k)).count();
    Ok((model_calls >= 3 && !backend.is_profiling()).then_some(backend))
}

/// `sampler::sample` with the model steps replayed from a graph.
pub(super) fn sample<M>(
    backend: &Arc<CudaBackend>,
    mut model: M,
    x_t: Tensor,
    start: u64,
    plan: &[(usize, StepCoefs)],
    opts: &SamplerOptions,
) -> Result<Samples>
where
    M: FnMut(&Tensor, &Tensor) -> Result<Tensor>,
{
    // updated in place: a private copy, whoever else holds x_T
    let x = x_t.deep_clone()?;
    drop(x_t);
    let step = DeviceStep::new(x.device(), x.dims()[0])?;
    let skips = (0..plan.len()).any(|k| !calls_model(opts.kind, plan, k));
    let kept_eps = if skips { Some(Tensor::zeros_on(x.dims(), x.device())?) } else { None };
    let model_step = |model: &mut M| -> Result<()> {
        // (a model with a variance half: DDIM takes its ε̂ half)
        let (eps, _) = super::sampler::split_output(model(&x, step.timesteps())?, &x)?;
        step.apply(&x, &eps)?;
        if let Some(kept) = &kept_eps {
            kept.written_in_place();
            kept.storage().cuda("sampler ε̂")?.copy_from(eps.storage().cuda("sampler ε̂")?)?;
        }
        Ok(())
    };
    let pool = backend.new_graph_pool();
    let mut graph: Option<Graph> = None;
    let mut eager = false; // a capture failed: the remaining steps run eagerly
    let mut evals = 0;
    let mut history = Vec::new();
    for (k, &(t, coefs)) in plan.iter().enumerate() {
        let _nvtx = crate::device::nvtx::range("sampler step");
        let x0 = if opts.keep_x0_at.contains(&k) { Some(Tensor::zeros_on(x.dims(), x.device())?) } else { None };
        step.set(t, coefs, opts.seed, 1 + k as u64, start, x0.as_ref())?;
        if calls_model(opts.kind, plan, k) {
            match &graph {
                Some(g) => g.launch()?,
                None if evals == 0 || eager => backend.with_pool(&pool, || model_step(&mut model))?,
                None => match backend.capture(&pool, || model_step(&mut model)) {
                    Ok((g, ())) => {
                        g.launch()?;
                        graph = Some(g);
                    }
                    Err(e) => {
                        // the capture ran nothing: this step runs now, and the rest, eagerly
                        eprintln!("warning: CUDA graph capture failed ({e}); sampling on without graphs");
                        eager = true;
                        backend.with_pool(&pool, || model_step(&mut model))?;
                    }
                },
            }
            evals += 1;
        } else {
            step.apply(&x, kept_eps.as_ref().expect("a sampler that skips the model keeps ε̂"))?;
        }
        if let Some(x0) = x0 {
            history.push((k, t, x0));
        }
    }
    // the last replay finishes before its graph is destroyed (the caller
    // reads x next anyway)
    backend.synchronize()?;
    Ok(Samples { x0: x, model_evals: evals, x0_history: history })
}
