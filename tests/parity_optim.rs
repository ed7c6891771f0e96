//! AdamW on CUDA parameters (kernels/optim.cu, all of a step in one launch)
//! against the CPU AdamW (adamw_math.rs) over 3 steps, both lerp branches,
//! with a parameter that gets no gradient, one of several 2,048-element
//! blocks, and one that joins at step 2 (its own step count in the launch). The kernel uses explicitly rounded f32 operations in the CPU
//! order, so the results are the same bit for bit — exact on the CPU emulation
//! of CUDA (asserted); on a GPU the assertion allows 1 ulp per value (parameters
//! and both moments) and the largest distance seen is printed.

use minidiffusion::optim::{AdamW, AdamWHyper};
use minidiffusion::testing::{parity_device, randn};
use minidiffusion::{Device, Tensor, backward, ops};

fn ulp_distance(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let bits = x.to_bits() as i64;
        if bits & 0x8000_0000 != 0 { -(bits & 0x7fff_ffff) } else { bits }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Parameters [3, 37], [300] (past one 256-thread block), [5] (never used:
/// no gradient), [5000] (three blocks of the multi-tensor kernel, the last
/// partial) and [7] (a gradient from step 2 on), their AdamW.
struct Run {
    params: Vec<Tensor>,
    opt: AdamW,
}

fn init(device: Device, hyper: AdamWHyper) -> Run {
    let shapes: [&[usize]; 5] = [&[3, 37], &[300], &[5], &[5000], &[7]];
    let params: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| Tensor::from_vec_on(randn(s, 100 + i as u64), *s, device).unwrap().requires_grad_())
        .collect();
    let opt = AdamW::new(params.clone(), hyper).unwrap();
    Run { params, opt }
}

/// The parameters with a gradient at step `t`: p4 joins at step 2.
fn used(t: u64) -> Vec<usize> {
    if t >= 2 { vec![0, 1, 3, 4] } else { vec![0, 1, 3] }
}

/// L = Σ_i Σ p_i·c_i over the used parameters with fresh constants each step:
/// the gradients are the constants exactly, on every device. Larger values
/// at step 2 exercise v.
fn step(run: &mut Run, t: u64, device: Device, beta1: f32) -> (f32, f32) {
    let scale = if t == 2 { 50.0 } else { 1.0 };
    let used = used(t);
    let consts: Vec<Tensor> = used
        .iter()
        .map(|&i| {
            let v: Vec<f32> = randn(run.params[i].dims(), 500 + 10 * t + i as u64).iter().map(|x| x * scale).collect();
            Tensor::from_vec_on(v, run.params[i].shape().clone(), device).unwrap()
        })
        .collect();
    let terms: Vec<Tensor> = used.iter().zip(&consts).map(|(&i, c)| ops::sum_all(&ops::mul(&run.params[i], c).unwrap()).unwrap()).collect();
    let loss = terms[1..].iter().fold(terms[0].clone(), |acc, t| ops::add(&acc, t).unwrap());
    let grads = backward(&loss).unwrap();
    assert!(grads.get(&run.params[2]).is_none());
    for (&i, c) in used.iter().zip(&consts) {
        assert_eq!(grads.get(&run.params[i]).unwrap().to_vec(), c.to_vec(), "gradient {i} at step {t}");
    }
    run.opt.hyper.beta1 = beta1;
    run.opt.step(&grads).unwrap().wait().unwrap()
}

/// The largest ulp distance between the two runs' parameters and moments
/// after step `t`, each asserted within `bar`.
fn furthest(cpu: &Run, dev: &Run, t: u64, bar: u64) -> u64 {
    let ((cm, cv, _), (dm, dv, _)) = (cpu.opt.state(), dev.opt.state());
    let mut max_ulp = 0;
    for i in 0..5 {
        let device = dev.params[i].device();
        assert_ne!(device, Device::Cpu);
        for (what, d, c) in [("param", &dev.params[i], &cpu.params[i]), ("exp_avg", &dm[i], &cm[i]), ("exp_avg_sq", &dv[i], &cv[i])] {
            for (k, (&x, &y)) in d.to_vec().iter().zip(&c.to_vec()).enumerate() {
                let u = ulp_distance(x, y);
                assert!(u <= bar, "step {t} {what} {i} entry {k}: {device} {x} vs cpu {y} ({u} ulp)");
                max_ulp = max_ulp.max(u);
            }
        }
    }
    max_ulp
}

#[test]
fn adamw_three_steps_cuda_equals_cpu() {
    let device = parity_device();
    let hyper = AdamWHyper { lr: 3e-2, beta1: 0.9, beta2: 0.999, eps: 1e-5, weight_decay: 0.01 };
    let mut cpu = init(Device::Cpu, hyper);
    let mut dev = init(device, hyper);
    let mut max_ulp = 0u64;
    // step 2 uses β1 = 0.4: lerp weight 0.6 ≥ 0.5, ATen's other lerp formula
    for (t, beta1) in [(1u64, 0.9f32), (2, 0.4), (3, 0.85)] {
        step(&mut cpu, t, Device::Cpu, beta1);
        step(&mut dev, t, device, beta1);
        assert_eq!(cpu.opt.state().2, dev.opt.state().2);
        assert_eq!(dev.opt.state().2, &[t, t, 0, t, t - 1]);
        max_ulp = max_ulp.max(furthest(&cpu, &dev, t, 1));
    }
    // the parameter without a gradient is untouched (no decay) on both devices
    assert_eq!(dev.params[2].to_vec(), randn(&[5], 102));
    assert_eq!(cpu.params[2].to_vec(), randn(&[5], 102));
    eprintln!("parity_optim: AdamW 3 steps on {device} vs cpu, max distance {max_ulp} ulp");
    if matches!(device, Device::Cuda(d) if d.emulated) {
        assert_eq!(max_ulp, 0, "the emulation must be bit exact");
    }
}

#[test]
fn adamw_one_optimizer_over_cuda_and_cpu_parameters() {
    let device = parity_device();
    let p = Tensor::from_vec_on(vec![1.0, 2.0], [2], device).unwrap().requires_grad_();
    let q = Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap().requires_grad_();
    // each parameter is stepped on its own device; the same values give the same update
    let mut opt = AdamW::new(vec![p.clone(), q.clone()], AdamW::lesson_defaults(0.1)).unwrap();
    let loss = ops::add(&ops::sum_all(&p).unwrap().to_device(Device::Cpu).unwrap(), &ops::sum_all(&q).unwrap()).unwrap();
    let grads = backward(&loss).unwrap();
    assert_eq!(grads.get(&p).unwrap().device(), device);
    opt.step(&grads).unwrap();
    assert!(p.to_vec().iter().zip([1.0, 2.0]).all(|(a, b)| *a < b));
    assert_eq!(p.to_vec(), q.to_vec());
}

/// Clipping to a global norm (PyTorch's clip_grad_norm_, kernels/optim.cu's
/// grad_sumsq_multi_f32 and grad_clip_factor) on the device against the CPU:
/// the same norm and factor (f64 sums in another order, so to 1 ulp of the
/// f32 norm), and the clipped steps to 2 ulp. The bar, 100, clips step 2
/// (its gradients ×50: ‖g‖ ≈ 3,700) and not steps 1 and 3 (≈ 74).
#[test]
fn adamw_clipped_steps_cuda_equal_cpu() {
    let device = parity_device();
    let hyper = AdamWHyper { lr: 3e-2, beta1: 0.9, beta2: 0.999, eps: 1e-5, weight_decay: 0.01 };
    let mut cpu = init(Device::Cpu, hyper);
    let mut dev = init(device, hyper);
    cpu.opt.max_grad_norm = Some(100.0);
    dev.opt.max_grad_norm = Some(100.0);
    let mut max_ulp = 0u64;
    for t in 1..=3u64 {
        let (cn, cf) = step(&mut cpu, t, Device::Cpu, 0.9);
        let (dn, df) = step(&mut dev, t, device, 0.9);
        eprintln!("step {t}: norm cpu {cn} {device} {dn}, factor cpu {cf} {device} {df}");
        assert!(ulp_distance(cn, dn) <= 1 && ulp_distance(cf, df) <= 1, "step {t}: norm {dn} / factor {df} on {device}, cpu {cn} / {cf}");
        assert_eq!(cf < 1.0, t == 2, "step {t}: factor {cf} at norm {cn}");
        max_ulp = max_ulp.max(furthest(&cpu, &dev, t, 2));
    }
    eprintln!("parity_optim: clipped AdamW 3 steps on {device} vs cpu, max distance {max_ulp} ulp");
}
