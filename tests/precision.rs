//! The bf16 compute precision (ops::precision) on the CPU twin, which the
//! CUDA `*_bf16` kernels are compared against:
//! - a conv / matmul at bf16 is exactly the f32 op on bf16-rounded operands,
//!   forward and both gradients (dY rounded too), bit for bit;
//! - its distance from f32 is what bf16 operands give (relative error of
//!   order 2⁻⁸), far above the parity tolerances, so a CUDA kernel that
//!   skipped the rounding would fail its parity test;
//! - backward uses the forward's precision whatever the setting is then.

use minidiffusion::autograd::backward;
use minidiffusion::ops::precision::round_bf16;
use minidiffusion::ops::{self, Conv2dParams, ConvAdd, Precision, with_precision};
use minidiffusion::testing::randn;
use minidiffusion::{Result, Tensor};

/// Output and input gradients of L = Σ f(inputs)·r.
fn run(inputs: &[(Vec<f32>, Vec<usize>)], r_values: &[f32], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> (Vec<f32>, Vec<Vec<f32>>) {
    let leaves: Vec<Tensor> = inputs.iter().map(|(v, s)| Tensor::from_vec(v.clone(), s.clone()).unwrap().requires_grad_()).collect();
    let out = f(&leaves).unwrap();
    let r = Tensor::from_vec(r_values.to_vec(), out.shape().clone()).unwrap();
    let loss = ops::sum_all(&ops::mul(&out, &r).unwrap()).unwrap();
    let grads = backward(&loss).unwrap();
    (out.to_vec(), leaves.iter().map(|l| grads.get(l).unwrap().to_vec()).collect())
}

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| round_bf16(x)).collect()
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// bf16(f)(inputs) == f32(f)(rounded inputs) bit for bit, with a rounded
/// upstream gradient r, for the listed `product_inputs` (the operands of the
/// products; others, like a bias, are not rounded); and bf16 differs from
/// f32 on the raw inputs by a bf16-sized relative error.
fn check(name: &str, shapes: &[&[usize]], product_inputs: &[usize], out_len: usize, f: &dyn Fn(&[Tensor]) -> Result<Tensor>) {
    let raw: Vec<(Vec<f32>, Vec<usize>)> = shapes.iter().enumerate().map(|(i, s)| (randn(s, 40 + i as u64), s.to_vec())).collect();
    let r = rounded(&randn(&[out_len], 99));
    let pre_rounded: Vec<(Vec<f32>, Vec<usize>)> = raw
        .iter()
        .enumerate()
        .map(|(i, (v, s))| (if product_inputs.contains(&i) { rounded(v) } else { v.clone() }, s.clone()))
        .collect();

    let (bf16_out, bf16_grads) = run(&raw, &r, &|t| {
        let _bf16 = with_precision(Precision::Bf16);
        f(t)
    });
    let (want_out, want_grads) = run(&pre_rounded, &r, f);
    assert_eq!(bf16_out, want_out, "{name}: bf16 forward is not f32 on rounded operands");
    for i in 0..shapes.len() {
        // the gradient of a product input is a product of the other operand and dY (rounded either way)
        assert_eq!(bf16_grads[i], want_grads[i], "{name}: gradient of input {i} at bf16 is not f32 on rounded operands");
    }

    let (f32_out, f32_grads) = run(&raw, &r, f);
    let err = max_rel(&bf16_out, &f32_out);
    assert!(err > 1e-3 && err < 2e-2, "{name}: bf16 vs f32 forward differ by {err:e} of the output's scale");
    for &i in product_inputs {
        let err = max_rel(&bf16_grads[i], &f32_grads[i]);
        assert!(err > 1e-3 && err < 2e-2, "{name}: bf16 vs f32 gradient of input {i} differ by {err:e}");
    }
}

#[test]
fn conv2d_at_bf16_is_f32_on_rounded_operands() {
    let p = Conv2dParams { stride: 1, padding: 1 };
    check("conv3x3", &[&[2, 8, 6, 7], &[5, 8, 3, 3], &[5]], &[0, 1], 2 * 5 * 6 * 7, &|t| ops::conv2d(&t[0], &t[1], Some(&t[2]), p));
    // the fused epilogue's per-image bias and residual stay f32
    let p = Conv2dParams { stride: 2, padding: 1 };
    check("conv_fused_s2", &[&[2, 6, 7, 9], &[4, 6, 3, 3], &[2, 4], &[2, 4, 4, 5]], &[0, 1], 2 * 4 * 4 * 5, &|t| {
        ops::conv2d_fused(&t[0], &t[1], None, ConvAdd { sample_bias: Some(&t[2]), residual: Some(&t[3]) }, p)
    });
}

#[test]
fn matmul_at_bf16_is_f32_on_rounded_operands() {
    check("matmul", &[&[3, 9, 40], &[40, 7]], &[0, 1], 3 * 9 * 7, &|t| ops::matmul(&t[0], &t[1]));
    check("matmul_t", &[&[40, 9], &[7, 40]], &[0, 1], 9 * 7, &|t| ops::matmul_t(&t[0], true, &t[1], true));
    check("linear", &[&[6, 33], &[10, 33], &[10]], &[0, 1], 6 * 10, &|t| ops::linear(&t[0], &t[1], Some(&t[2])));
}

#[test]
fn backward_keeps_the_forward_precision() {
    let a = Tensor::from_vec(randn(&[8, 50], 1), [8, 50]).unwrap().requires_grad_();
    let b = Tensor::from_vec(randn(&[50, 6], 2), [50, 6]).unwrap().requires_grad_();
    let grads_of = |forward: Precision, backward_at: Precision| {
        let y = {
            let _p = with_precision(forward);
            ops::matmul(&a, &b).unwrap()
        };
        let r = Tensor::from_vec(randn(&[8, 6], 3), [8, 6]).unwrap();
        let loss = ops::sum_all(&ops::mul(&y, &r).unwrap()).unwrap();
        let _p = with_precision(backward_at);
        backward(&loss).unwrap().get(&a).unwrap().to_vec()
    };
    assert_eq!(grads_of(Precision::Bf16, Precision::F32), grads_of(Precision::Bf16, Precision::Bf16));
    assert_eq!(grads_of(Precision::F32, Precision::Bf16), grads_of(Precision::F32, Precision::F32));
    assert_ne!(grads_of(Precision::Bf16, Precision::F32), grads_of(Precision::F32, Precision::F32));
}

/// Mixed-precision training (bf16 products, f32 master weights, no loss
/// scaling) follows the f32 loss curve: the tiny UNet, 40 AdamW steps on the
/// same data, noise and timesteps, from three initial weights each. After 40
/// steps the curve is still falling and runs from different initial weights
/// spread by ±7 % (measured: last-10-step means 0.096–0.110 at f32), so the
/// two precisions are compared by their means over the three starts, and each
/// first step (same weights, only the products' rounding differs) closely.
#[test]
fn bf16_training_follows_the_f32_loss_curve() {
    use minidiffusion::data::{Split, embedded_fashion_mnist};
    use minidiffusion::nn::unet::{UNet2DConfig, UNet2DModel};
    use minidiffusion::train::{Learner, TrainConfig};
    let (steps, batch, inits) = (40, 16, 3);
    // (losses, eval loss) of one run
    let run = |precision: Precision, init: u64| -> (Vec<f32>, f32) {
        let unet = UNet2DConfig::tiny_preset();
        let config = TrainConfig {
            max_steps: Some(steps),
            eval_images: Some(64),
            precision,
            ..TrainConfig::lesson("tiny", unet.clone(), batch, 3e-3)
        };
        let model = UNet2DModel::new(unet, init, minidiffusion::Device::Cpu).unwrap();
        let train = embedded_fashion_mnist(Split::Train).unwrap().take(steps * batch);
        let test = embedded_fashion_mnist(Split::Test).unwrap().take(64);
        let mut l = Learner::new(config, model, train, test, minidiffusion::Device::Cpu).unwrap();
        let losses = (0..steps).map(|s| l.train_step(&(s * batch..(s + 1) * batch).collect::<Vec<_>>()).unwrap()).collect();
        (losses, l.eval_loss().unwrap())
    };
    let last10 = |v: &[f32]| v[steps - 10..].iter().sum::<f32>() / 10.0;
    // (mean last-10 loss, mean eval loss) over the starts
    let mut means = Vec::new();
    let mut f32_first = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        let (mut tail, mut eval) = (0.0, 0.0);
        for init in 0..inits {
            let (losses, e) = run(precision, init);
            if precision == Precision::F32 {
                f32_first.push(losses[0]);
            }
            let want = f32_first[init as usize];
            assert!((losses[0] - want).abs() < 1e-2 * want, "init {init} step 1: {precision} {} vs f32 {want}", losses[0]);
            assert!(last10(&losses) < 0.2 * losses[0], "init {init} at {precision} did not learn: {} → {}", losses[0], last10(&losses));
            eprintln!("init {init} {precision}: first {:.4}, last-10 mean {:.4}, eval {e:.4}", losses[0], last10(&losses));
            tail += last10(&losses) / inits as f32;
            eval += e / inits as f32;
        }
        means.push((tail, eval));
    }
    let ((f32_tail, f32_eval), (bf16_tail, bf16_eval)) = (means[0], means[1]);
    assert!((bf16_tail - f32_tail).abs() < 0.05 * f32_tail, "last-10 mean: bf16 {bf16_tail} vs f32 {f32_tail}");
    assert!((bf16_eval - f32_eval).abs() < 0.05 * f32_eval, "eval loss: bf16 {bf16_eval} vs f32 {f32_eval}");
}

/// bf16 storage of the conv inputs (the GroupNorm + SiLU outputs at bf16):
/// the stored values are the f32 outputs rounded to bf16; a convolution
/// reading them equals one reading their f32 widening; and a whole UNet at
/// bf16 — forward and every parameter's gradient — is the same bit for bit
/// with the storage as without it.
#[test]
fn bf16_storage_of_conv_inputs_changes_no_value() {
    use minidiffusion::nn::unet::{UNet2DConfig, UNet2DModel};
    use minidiffusion::ops::group_norm::{group_norm_silu, group_norm_silu_stored};
    use minidiffusion::ops::precision::{conv_input_storage, with_conv_input_storage};
    use minidiffusion::tensor::DType;
    use minidiffusion::{Device, no_grad};
    let x = Tensor::from_vec(randn(&[2, 8, 5, 6], 31), vec![2, 8, 5, 6]).unwrap();
    let (w, b) = (Tensor::from_vec(randn(&[8], 32), vec![8]).unwrap(), Tensor::from_vec(randn(&[8], 33), vec![8]).unwrap());
    let f32_out = group_norm_silu(&x, 4, Some(&w), Some(&b), 1e-5).unwrap();
    let stored = group_norm_silu_stored(&x, 4, Some(&w), Some(&b), 1e-5, DType::BF16).unwrap();
    assert_eq!(stored.dtype(), DType::BF16);
    assert_eq!(stored.to_vec(), rounded(&f32_out.to_vec()));
    // the conv after it, at both precisions, with the fused epilogue
    let cw = Tensor::from_vec(randn(&[6, 8, 3, 3], 34), vec![6, 8, 3, 3]).unwrap();
    let sb = Tensor::from_vec(randn(&[2, 6], 35), vec![2, 6]).unwrap();
    let widened = ops::cast(&stored, DType::F32).unwrap();
    assert_eq!(widened.dtype(), DType::F32);
    for prec in [Precision::F32, Precision::Bf16] {
        let conv = |x: &Tensor| {
            let add = ConvAdd { sample_bias: Some(&sb), residual: None };
            let _p = with_precision(prec);
            ops::conv2d_fused(x, &cw, None, add, Conv2dParams { stride: 1, padding: 1 }).unwrap().to_vec()
        };
        assert_eq!(conv(&stored), conv(&widened), "{prec}");
    }
    // the policy: f32 (faster on an H100), unless MINIDIFFUSION_BF16_STORAGE=1
    // (not set in tests) or a scope says otherwise
    let _bf16 = with_precision(Precision::Bf16);
    assert_eq!(conv_input_storage(), DType::F32);
    assert_eq!(no_grad(conv_input_storage), DType::F32);
    assert_eq!({
        let _stored = with_conv_input_storage(DType::BF16);
        conv_input_storage()
    }, DType::BF16);
    // the UNet: output and every parameter gradient, with and without the storage
    let model = UNet2DModel::new(UNet2DConfig::tiny_preset(), 7, Device::Cpu).unwrap();
    let xs = Tensor::from_vec(randn(&[2, 1, 32, 32], 36), vec![2, 1, 32, 32]).unwrap();
    let t = Tensor::from_vec(vec![10.0, 900.0], vec![2]).unwrap();
    let r = Tensor::from_vec(randn(&[2, 1, 32, 32], 37), vec![2, 1, 32, 32]).unwrap();
    let params = minidiffusion::nn::params(&model);
    let run = |store: DType| -> (Vec<f32>, Vec<Option<Vec<f32>>>) {
        let _s = with_conv_input_storage(store);
        let y = model.forward(&xs, &t).unwrap();
        let loss = ops::sum_all(&ops::mul(&y, &r).unwrap()).unwrap();
        let grads = backward(&loss).unwrap();
        (y.to_vec(), params.iter().map(|p| grads.get(p).map(|g| g.to_vec())).collect())
    };
    let (y16, g16) = run(DType::BF16);
    let (y32, g32) = run(DType::F32);
    assert_eq!(y16, y32, "bf16 storage changed the UNet's output");
    assert!(g32.iter().filter(|g| g.is_some()).count() > params.len() / 2, "the parameters have gradients");
    for (i, (a, b)) in g16.iter().zip(&g32).enumerate() {
        assert_eq!(a, b, "bf16 storage changed parameter {i}'s gradient");
    }
    let inferred = no_grad(|| model.forward(&xs, &t)).unwrap();
    assert_eq!(inferred.to_vec(), y32);
}

/// A storage cast is on the tape like PyTorch's `.to(dtype)`: the gradient
/// passes through unchanged, in f32.
#[test]
fn cast_passes_the_gradient_through() {
    use minidiffusion::tensor::DType;
    let x = Tensor::from_vec(randn(&[3, 4], 41), vec![3, 4]).unwrap().requires_grad_();
    let r = Tensor::from_vec(randn(&[3, 4], 42), vec![3, 4]).unwrap();
    let y = ops::cast(&ops::cast(&x, DType::BF16).unwrap(), DType::F32).unwrap();
    assert_eq!(y.to_vec(), rounded(&x.to_vec()));
    let grads = backward(&ops::sum_all(&ops::mul(&y, &r).unwrap()).unwrap()).unwrap();
    let g = grads.get(&x).expect("x has a gradient");
    assert_eq!((g.dtype(), g.to_vec()), (DType::F32, r.to_vec()));
}

/// Inference attention at bf16 (channels-first, heads ≤ 32 features: the
/// UNet's) is the twin `forward_output_bf16`: its distance from f32 is
/// bf16-sized (so a kernel that skipped the rounding fails its parity test),
/// it equals the twin written out here in f64 from the rounded operands to
/// within the f32 sums and one bf16 ulp of each weight; with a gradient the
/// forward is the same twin, bit for bit; with `with_attention_bf16(false)`
/// attention stays f32 bit for bit.
#[test]
fn inference_attention_at_bf16_rounds_its_products() {
    use minidiffusion::no_grad;
    use minidiffusion::ops::precision::with_attention_bf16;
    let (b, h, d, lq, lk, dv) = (2, 2, 8, 20, 37, 8);
    let shapes = [vec![b, h, d, lq], vec![b, h, d, lk], vec![b, h, dv, lk]];
    let values: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(i, s)| randn(s, 70 + i as u64)).collect();
    let scale = 1.0 / (d as f32).sqrt();
    let attend = |p: Precision, grad: bool, bf16_attention: bool| -> Vec<f32> {
        let t: Vec<Tensor> = values.iter().zip(&shapes).map(|(v, s)| Tensor::from_vec(v.clone(), s.clone()).unwrap()).collect();
        let t: Vec<Tensor> = if grad { t.into_iter().map(|x| x.requires_grad_()).collect() } else { t };
        let _p = with_precision(p);
        with_attention_bf16(bf16_attention, || {
            let f = || ops::attention_columns(&t[0], &t[1], &t[2], scale);
            if grad { f() } else { no_grad(f) }.unwrap().to_vec()
        })
    };
    let f32_out = attend(Precision::F32, false, true);
    let bf16_out = attend(Precision::Bf16, false, true);
    let rel = max_rel(&bf16_out, &f32_out);
    assert!(rel > 1e-4 && rel < 3e-2, "bf16 attention vs f32: max relative error {rel}");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&attend(Precision::Bf16, false, false)), bits(&f32_out), "bf16 attention off: f32");
    assert_eq!(bits(&attend(Precision::Bf16, true, true)), bits(&bf16_out), "with a gradient: the same bf16 forward");
    assert_eq!(bits(&attend(Precision::Bf16, true, false)), bits(&attend(Precision::F32, true, true)), "with a gradient, bf16 attention off: f32");
    // the formula in f64 on the rounded operands (c = scale·log2 e folded into Q)
    let c = scale * std::f32::consts::LOG2_E;
    let (q, k, v) = (&values[0], &values[1], &values[2]);
    for e in 0..b * h {
        for i in 0..lq {
            let s: Vec<f64> = (0..lk).map(|j| (0..d).map(|f| round_bf16(c * q[(e * d + f) * lq + i]) as f64 * round_bf16(k[(e * d + f) * lk + j]) as f64).sum()).collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp2()).collect();
            let l: f64 = p.iter().sum();
            for ch in 0..dv {
                let terms = (0..lk).map(|j| (round_bf16(p[j] as f32) as f64, round_bf16(v[(e * dv + ch) * lk + j]) as f64));
                let want: f64 = terms.clone().map(|(pj, vj)| pj * vj).sum::<f64>() / l;
                let ulp: f64 = terms.map(|(pj, vj)| (pj * vj).abs()).sum::<f64>() / l / 256.0;
                let got = bf16_out[(e * dv + ch) * lq + i] as f64;
                assert!((got - want).abs() <= 1e-5 + ulp, "entry ({e}, {ch}, {i}): twin {got}, formula {want}");
            }
        }
    }
}

/// Training attention at bf16 (`backward_bf16`, the twin of the tensor-core
/// backward): every gradient equals the formula written out here in f64 —
/// s = bf16(c·Q)·bf16(K), p = 2^(s − L), dP = bf16(dO)·bf16(V),
/// dS = p·(dP − δ), dQ = scale·bf16(dS)·bf16(K), dK = scale·bf16(dS)ᵀ·bf16(Q),
/// dV = bf16(p)ᵀ·bf16(dO) — to within the f32 sums and one bf16 ulp of each
/// term; its distance from the f32 gradients is bf16-sized (the rounding is
/// there, and nothing else moved); `with_attention_bf16(false)` gives the f32
/// gradients bit for bit.
#[test]
fn training_attention_at_bf16_rounds_its_products() {
    use minidiffusion::ops::precision::with_attention_bf16;
    let (b, h, d, lq, lk, dv) = (2, 2, 8, 20, 37, 6);
    let inputs: Vec<(Vec<f32>, Vec<usize>)> =
        [vec![b, h, d, lq], vec![b, h, d, lk], vec![b, h, dv, lk]].into_iter().enumerate().map(|(i, s)| (randn(&s, 80 + i as u64), s)).collect();
    let r = randn(&[b, h, dv, lq], 85);
    let scale = 1.0 / (d as f32).sqrt();
    let attend = |p: Precision, bf16_attention: bool| {
        let _p = with_precision(p);
        with_attention_bf16(bf16_attention, || run(&inputs, &r, &|t| ops::attention_columns(&t[0], &t[1], &t[2], scale)))
    };
    let (_, f32_grads) = attend(Precision::F32, true);
    let (out, grads) = attend(Precision::Bf16, true);
    for (name, (g, want)) in ["dQ", "dK", "dV"].iter().zip(grads.iter().zip(&f32_grads)) {
        let rel = max_rel(g, want);
        assert!(rel > 1e-4 && rel < 3e-2, "bf16 attention {name} vs f32: max relative error {rel}");
    }
    let bits = |v: &[Vec<f32>]| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&attend(Precision::Bf16, false).1), bits(&f32_grads), "bf16 attention off: f32 gradients");
    // the formula in f64 on the rounded operands
    let (q, k, v) = (&inputs[0].0, &inputs[1].0, &inputs[2].0);
    let c = scale * std::f32::consts::LOG2_E;
    let rb = |x: f32| round_bf16(x) as f64;
    let (sc, mut want, mut ulp) = (scale as f64, [vec![0.0f64; b * h * d * lq], vec![0.0; b * h * d * lk], vec![0.0; b * h * dv * lk]], [vec![0.0f64; b * h * d * lq], vec![0.0; b * h * d * lk], vec![0.0; b * h * dv * lk]]);
    for e in 0..b * h {
        for i in 0..lq {
            let s: Vec<f64> = (0..lk).map(|j| (0..d).map(|f| rb(c * q[(e * d + f) * lq + i]) * rb(k[(e * d + f) * lk + j])).sum()).collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l: f64 = s.iter().map(|x| (x - m).exp2()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp2() / l).collect();
            let d_o = |ch: usize| r[(e * dv + ch) * lq + i];
            let delta: f64 = (0..dv).map(|ch| d_o(ch) as f64 * out[(e * dv + ch) * lq + i] as f64).sum();
            for j in 0..lk {
                let dp: f64 = (0..dv).map(|ch| rb(d_o(ch)) * rb(v[(e * dv + ch) * lk + j])).sum();
                let ds = p[j] * (dp - delta);
                let (ds_r, p_r) = (rb(ds as f32), rb(p[j] as f32));
                for f in 0..d {
                    let (at_q, at_k) = ((e * d + f) * lq + i, (e * d + f) * lk + j);
                    want[0][at_q] += sc * ds_r * rb(k[at_k]);
                    ulp[0][at_q] += sc * (ds * rb(k[at_k])).abs() / 256.0;
                    want[1][at_k] += sc * ds_r * rb(q[at_q]);
                    ulp[1][at_k] += sc * (ds * rb(q[at_q])).abs() / 256.0;
                }
                for ch in 0..dv {
                    let at = (e * dv + ch) * lk + j;
                    want[2][at] += p_r * rb(d_o(ch));
                    ulp[2][at] += (p[j] * d_o(ch) as f64).abs() / 256.0;
                }
            }
        }
    }
    for (n, name) in ["dQ", "dK", "dV"].iter().enumerate() {
        for (at, &got) in grads[n].iter().enumerate() {
            assert!((got as f64 - want[n][at]).abs() <= 1e-5 + ulp[n][at], "{name} entry {at}: twin {got}, formula {}", want[n][at]);
        }
    }
}
