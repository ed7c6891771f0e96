//! CUDA against the CPU twin: row softmax (forward and backward), scaled
//! dot-product attention (GEMM + softmax + GEMM, and the five-product
//! backward) and cross-entropy. On a machine without a GPU these run on the
//! CPU emulation of CUDA (kernels/emu).
//!
//! Tolerance: ParityTol::REDUCTION (atol 1e-5, rtol 1e-4) — row sums and dot
//! products in another order than the CPU's, and expf/logf on the device
//! against libm.

use minidiffusion::testing::{ParityTol, parity_check, parity_check_at, randn};
use minidiffusion::{Shape, ops};

#[test]
fn softmax_rows_of_odd_length() {
    // 1 (y = 1, dx = 0), 7 (a partial warp), 100, 513 (lanes loop past 512)
    parity_check("softmax_1", &[&[3, 1]], |x| ops::softmax(&x[0]), ParityTol::REDUCTION);
    parity_check("softmax_7", &[&[19, 7]], |x| ops::softmax(&x[0]), ParityTol::REDUCTION); // 19 rows: 3 blocks of 8 warps
    parity_check("softmax_100", &[&[2, 2, 100]], |x| ops::softmax(&x[0]), ParityTol::REDUCTION);
    parity_check("softmax_513", &[&[3, 513]], |x| ops::softmax(&x[0]), ParityTol::REDUCTION);
    // large logits: the max subtraction keeps exp finite
    let big: Vec<f32> = randn(&[4, 9], 5).iter().map(|v| 80.0 * v).collect();
    parity_check_at("softmax_large", vec![(big, Shape::from([4, 9]))], |x| ops::softmax(&x[0]), ParityTol::REDUCTION);
}

#[test]
fn attention_parity() {
    // B=2, heads=3, Lq=7 ≠ Lk=5, D=4, Dv=6
    parity_check(
        "attention",
        &[&[2, 3, 7, 4], &[2, 3, 5, 4], &[2, 3, 5, 6]],
        |x| ops::attention(&x[0], &x[1], &x[2], 0.5),
        ParityTol::REDUCTION,
    );
    // odd sizes, Lk = 70 > one 64-wide tile, scale 1/√D
    let scale = 1.0 / 5f32.sqrt();
    parity_check(
        "attention_odd",
        &[&[1, 2, 13, 5], &[1, 2, 70, 5], &[1, 2, 70, 3]],
        |x| ops::attention(&x[0], &x[1], &x[2], scale),
        ParityTol::REDUCTION,
    );
    // rank 2 (a single head, batch 1)
    parity_check("attention_2d", &[&[9, 3], &[11, 3], &[11, 2]], |x| ops::attention(&x[0], &x[1], &x[2], 0.7), ParityTol::REDUCTION);
    // channels-first sequences (the UNet's layout): q [B, H, D, Lq], k [B, H, D, Lk], v [B, H, Dv, Lk]
    parity_check(
        "attention_columns",
        &[&[2, 3, 4, 7], &[2, 3, 4, 70], &[2, 3, 6, 70]],
        |x| ops::attention_columns(&x[0], &x[1], &x[2], 0.5),
        ParityTol::REDUCTION,
    );
}

#[test]
fn cross_entropy_parity() {
    let labels = [3, 0, 12, 7, 7, 1, 5, 11, 2];
    parity_check("cross_entropy", &[&[9, 13]], |x| ops::cross_entropy(&x[0], &labels), ParityTol::REDUCTION);
    let labels: Vec<usize> = (0..20).map(|i| (i * 37) % 100).collect();
    parity_check("cross_entropy_100", &[&[20, 100]], |x| ops::cross_entropy(&x[0], &labels), ParityTol::REDUCTION);
    // composed with other ops so the incoming gradient is not 1
    parity_check(
        "cross_entropy_scaled",
        &[&[4, 3]],
        |x| ops::mul_scalar(&ops::cross_entropy(&x[0], &[2, 0, 1, 1])?, 2.5),
        ParityTol::REDUCTION,
    );
}

#[test]
fn mse_loss_parity() {
    parity_check("mse_loss", &[&[3, 17], &[3, 17]], |x| ops::mse_loss(&x[0], &x[1]), ParityTol::REDUCTION);
}

#[test]
fn fused_inference_attention_parity() {
    // no_grad in the Columns layout runs attention_columns_infer_h* (no P):
    // Lq = 130 spans two 128-query blocks, Lk = 150 three 64-key chunks (the
    // last partial), D = 8 / Dv = 5 like the UNet's heads, then D = 20 and
    // Dv = 32 (the kernel's limit), then D = 40 > 32 (the GEMM path)
    use minidiffusion::{Tensor, no_grad, testing::assert_close, testing::parity_device};
    // (the h8, h32 and GEMM paths); D = 12 / Dv = 16 (h16) with Lq = 64 (one
    // block of 64 threads) and Lq = 20 (one of 32); and 70,000 batch entries
    // (more blocks than a grid's y or z can hold: at 2,048 images the seed
    // UNet has 65,536)
    // The last case is the first with sharp scores (scale 12: std ≈ 34, spans
    // past 126·ln 2 between keys, so many weights are 2^x below 2^-126 or 0).
    // (At scale 40 both this kernel and its expf predecessor leave REDUCTION's
    // bar: f32 scores of ±300 hold ~2e-5 of rounding each.)
    let cases = [(2, 3, 8, 130, 150, 5), (1, 2, 20, 17, 64, 32), (1, 1, 40, 9, 11, 3), (2, 2, 12, 64, 33, 16), (1, 3, 16, 20, 7, 9), (1, 70_000, 1, 1, 2, 1), (2, 3, 8, 130, 150, 5)];
    for (i, &(b, h, d, lq, lk, dv)) in cases.iter().enumerate() {
        let scale = if i == cases.len() - 1 { 12.0 } else { 1.0 / (d as f32).sqrt() };
        let shapes = [[b, h, d, lq], [b, h, d, lk], [b, h, dv, lk]];
        let values: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(j, s)| randn(s, 90 + 3 * i as u64 + j as u64)).collect();
        let run = |device| {
            let t: Vec<Tensor> = values.iter().zip(&shapes).map(|(v, s)| Tensor::from_vec_on(v.clone(), *s, device).unwrap()).collect();
            no_grad(|| ops::attention_columns(&t[0], &t[1], &t[2], scale)).unwrap().to_vec()
        };
        let (cpu, dev) = (run(minidiffusion::Device::Cpu), run(parity_device()));
        assert_close(&format!("fused inference attention case {i}"), &dev, &cpu, ParityTol::REDUCTION.atol, ParityTol::REDUCTION.rtol);
    }
}

/// Attention over one packed [B, 3·heads·D, L] projection (the q, k, v convs
/// as one): the fused kernel reads q, k and v where they lie. On the device
/// it equals, bit for bit, the same kernel on the three parts copied out, and
/// the CPU twin within the reduction tolerance; heads of 8 (h8), 12 (h16),
/// 32 (h32), and 40 (past the fused kernel: the copy path).
#[test]
fn packed_inference_attention_parity() {
    use minidiffusion::{Tensor, no_grad, testing::assert_close, testing::parity_device};
    for (i, &(b, heads, d, len)) in [(2, 4, 8, 70), (3, 2, 12, 33), (1, 1, 32, 16), (2, 2, 40, 9)].iter().enumerate() {
        let scale = 1.0 / (d as f32).sqrt();
        let dims = [b, 3 * heads * d, len];
        let values = randn(&dims, 300 + i as u64);
        let run = |device, packed: bool| {
            let qkv = Tensor::from_vec_on(values.clone(), dims, device).unwrap();
            no_grad(|| {
                if packed {
                    ops::attention_columns_packed(&qkv, heads, scale)
                } else {
                    let part = |j: usize| ops::reshape(&ops::narrow(&qkv, 1, j * heads * d, heads * d)?, [b, heads, d, len]);
                    ops::attention_columns(&part(0)?, &part(1)?, &part(2)?, scale)
                }
            })
            .unwrap()
        };
        let device = parity_device();
        let (packed, parts) = (run(device, true), run(device, false));
        assert_eq!(packed.dims(), &[b, heads, d, len]);
        let bits = |t: &Tensor| t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&packed), bits(&parts), "packed attention case {i}: the same kernel on the same values");
        let cpu = run(minidiffusion::Device::Cpu, true).to_vec();
        assert_close(&format!("packed attention case {i} ({device} vs cpu)"), &packed.to_vec(), &cpu, ParityTol::REDUCTION.atol, ParityTol::REDUCTION.rtol);
    }
}

/// The packed projection stored in bf16 (`MINIDIFFUSION_QKV=packed` at
/// inference on CUDA): its q third bf16(c·q), k and v as they are, read
/// where they lie by `attention_columns_infer_bf16_io_h*`: O is the f32
/// packed attention's O rounded to bf16, bit for bit; heads of 8, 12 and 32.
/// On the CPU the scaled query is refused.
#[test]
fn packed_bf16_attention_gives_the_rounded_bits() {
    use minidiffusion::ops::attention::query_factor;
    use minidiffusion::ops::precision::{Precision, round_bf16, with_precision};
    use minidiffusion::tensor::DType;
    use minidiffusion::{Tensor, no_grad, testing::kernel_calls, testing::parity_device};
    let device = parity_device();
    for (i, &(b, heads, d, len)) in [(2, 4, 8, 70), (3, 2, 12, 33), (1, 1, 32, 16)].iter().enumerate() {
        let scale = 1.0 / (d as f32).sqrt();
        let dims = [b, 3 * heads * d, len];
        let inner = heads * d * len;
        // k and v bf16 values; q's third as its projection stores it, c·q rounded
        let values: Vec<f32> = randn(&dims, 330 + i as u64).into_iter().map(round_bf16).collect();
        let scaled: Vec<f32> = values.iter().enumerate().map(|(j, &x)| if j % (3 * inner) < inner { round_bf16(query_factor(scale) * x) } else { x }).collect();
        let _p = with_precision(Precision::Bf16);
        let plain = no_grad(|| ops::attention_columns_packed(&Tensor::from_vec_on(values.clone(), dims, device)?, heads, scale)).unwrap();
        let stored = |device| ops::cast(&Tensor::from_vec_on(scaled.clone(), dims, device).unwrap(), DType::BF16).unwrap();
        let mut o = None;
        let rows = kernel_calls(|| o = Some(no_grad(|| ops::attention_columns_packed_scaled_query(&stored(device), heads)).unwrap()));
        let o = o.unwrap();
        let launched = rows.iter().filter(|r| r.0.starts_with("attention_columns_infer_bf16_io_h")).map(|r| r.1).sum::<usize>();
        assert_eq!((o.dtype(), launched), (DType::BF16, 1), "case {i}: {rows:?}");
        let want: Vec<u32> = plain.to_vec().iter().map(|&x| round_bf16(x).to_bits()).collect();
        let got: Vec<u32> = o.to_vec().iter().map(|x| x.to_bits()).collect();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "case {i}: {differ} of {} values differ from the f32 packed attention's O rounded", want.len());
        assert!(no_grad(|| ops::attention_columns_packed_scaled_query(&stored(minidiffusion::Device::Cpu), heads)).is_err(), "case {i}: CPU");
    }
}

#[test]
fn fused_training_attention_parity() {
    // with grad, the Columns layout at D, Dv ≤ 32 keeps only the rows'
    // log-sum-exp (attention_columns_infer_h* writes it) and backward
    // recomputes P on the fly (attention_columns_backward_query_h* for δ and
    // dQ, attention_columns_backward_key_h* for dK and dV; the blocks are
    // placed as the inference test's 70,000 entries check): forward and all
    // three gradients against the CPU twin. Lq = 130: two query blocks, three
    // staged query chunks; Lk = 70: two staged key chunks
    let scale = 1.0 / 8f32.sqrt();
    parity_check(
        "attention_columns_fused_training",
        &[&[2, 2, 8, 130], &[2, 2, 8, 70], &[2, 2, 5, 70]],
        |x| ops::attention_columns(&x[0], &x[1], &x[2], scale),
        ParityTol::REDUCTION,
    );
    // Lk = 150: two key blocks; D = 20, Dv = 32 (the register limit)
    parity_check(
        "attention_columns_fused_training_wide",
        &[&[1, 2, 20, 70], &[1, 2, 20, 150], &[1, 2, 32, 150]],
        |x| ops::attention_columns(&x[0], &x[1], &x[2], 0.3),
        ParityTol::REDUCTION,
    );
    // D = 12, Dv = 16 (h16), Lq = 64 and Lk = 20: blocks of 64 and 32 threads
    parity_check(
        "attention_columns_fused_training_h16",
        &[&[2, 2, 12, 64], &[2, 2, 12, 20], &[2, 2, 16, 20]],
        |x| ops::attention_columns(&x[0], &x[1], &x[2], 0.4),
        ParityTol::REDUCTION,
    );
    // D = 40 > 32: the GEMM path keeps P
    parity_check(
        "attention_columns_gemm_training",
        &[&[1, 2, 40, 9], &[1, 2, 40, 11], &[1, 2, 3, 11]],
        |x| ops::attention_columns(&x[0], &x[1], &x[2], 0.2),
        ParityTol::REDUCTION,
    );
}

/// Inference attention at the bf16 precision: `attention_columns_infer_bf16_h*`
/// (Q·Kᵀ and P·V as bf16 mma on the tensor cores, one pass over the keys
/// with a running whole maximum) against its CPU twin `forward_output_bf16`
/// (the same rounded operands and the same bf16 P). On the emulation the two
/// differ only in the order of the f32 sums and in the rounding of s − m
/// (BF16_TENSOR_CORE). On a GPU exp2f is ex2.approx (≤ 2 ulp), so a
/// weight within 2 ulp of a bf16 tie may round the other way: one bf16 ulp
/// (2^-8 relative) of that weight's term, at most 2^-8·Σ_j p_ij·|V[c, j]| / l_i
/// for output (c, i) — the allowance added there.
/// Cases: h8 with 130 queries (a 128-query block of 8 warps and a partial
/// tile), 150 keys (a partial 16-key block), Dv 5; h32 (D 20: a second k-step
/// half empty, Dv 32); h16; 300 keys (past one 256-key stage); 16 queries
/// (one warp a block); 7 keys (the first tile partial); the first case again
/// with sharp scores (scale 12).
#[test]
fn bf16_inference_attention_parity() {
    use minidiffusion::ops::precision::{Precision, round_bf16, with_precision};
    use minidiffusion::{Device, Tensor, no_grad, testing::parity_device};
    let cases = [(2, 3, 8, 130, 150, 5), (1, 2, 20, 17, 64, 32), (2, 2, 12, 64, 33, 16), (1, 2, 8, 40, 300, 8), (3, 1, 8, 16, 16, 8), (2, 2, 8, 20, 7, 8), (2, 3, 8, 130, 150, 5)];
    let device = parity_device();
    let on_gpu = matches!(device, Device::Cuda(c) if !c.emulated);
    for (i, &(b, h, d, lq, lk, dv)) in cases.iter().enumerate() {
        let scale = if i == cases.len() - 1 { 12.0 } else { 1.0 / (d as f32).sqrt() };
        let shapes = [[b, h, d, lq], [b, h, d, lk], [b, h, dv, lk]];
        let values: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(j, s)| randn(s, 500 + 3 * i as u64 + j as u64)).collect();
        let run = |device| {
            let t: Vec<Tensor> = values.iter().zip(&shapes).map(|(v, s)| Tensor::from_vec_on(v.clone(), *s, device).unwrap()).collect();
            let _bf16 = with_precision(Precision::Bf16);
            no_grad(|| ops::attention_columns(&t[0], &t[1], &t[2], scale)).unwrap().to_vec()
        };
        let (cpu, dev) = (run(Device::Cpu), run(device));
        // the twin's weights again (f64 is plenty for a bound): Σ_j p_ij |V[c, j]| / l_i
        let (qv, kv, vv) = (&values[0], &values[1], &values[2]);
        let c = scale * std::f32::consts::LOG2_E;
        for e in 0..b * h {
            for qi in 0..lq {
                let s: Vec<f64> = (0..lk)
                    .map(|j| (0..d).map(|f| round_bf16(c * qv[(e * d + f) * lq + qi]) as f64 * round_bf16(kv[(e * d + f) * lk + j]) as f64).sum())
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp2()).collect();
                let l: f64 = p.iter().sum();
                for ch in 0..dv {
                    let at = (e * dv + ch) * lq + qi;
                    let flips = if on_gpu { (0..lk).map(|j| p[j] * vv[(e * dv + ch) * lk + j].abs() as f64).sum::<f64>() / l / 256.0 } else { 0.0 };
                    let tol = ParityTol::BF16_TENSOR_CORE.atol as f64 + ParityTol::BF16_TENSOR_CORE.rtol as f64 * (cpu[at] as f64).abs() + flips;
                    assert!(
                        ((dev[at] - cpu[at]) as f64).abs() <= tol,
                        "bf16 attention case {i} ({device}): entry {at} (value {ch}, query {qi}): got {}, twin {} (tolerance {tol:e})",
                        dev[at],
                        cpu[at]
                    );
                }
            }
        }
    }
}

/// The bf16 inference kernel's running maximum where scores keep rising:
/// s_j = c·Σ_f Q[f]·K[f, j] grows with the key j (K[f, j] = j·step), so every
/// 16-key tile raises each row's maximum, by ~d = 16·8·step·c a tile. With
/// step 1/64 the sums are rescaled by 2^−d every tile; with step 1 d passes
/// 126 and the earlier sums scale to 0 (they are below 2^−126 of the rest);
/// a kernel that kept the first tile's maximum would overflow 2^x to ∞. The
/// device against the twin, and both against the exact softmax in f64 (the
/// operands are exact in bf16: Q = 1, K a multiple of the step).
#[test]
fn bf16_inference_attention_follows_rising_maxima() {
    use minidiffusion::ops::precision::{Precision, with_precision};
    use minidiffusion::{Device, Tensor, no_grad, testing::assert_close, testing::parity_device};
    let (heads, d, lq, lk, dv) = (2, 8, 20, 200, 8);
    let scale = 1.0 / (d as f32).sqrt();
    let c = scale as f64 * std::f64::consts::LOG2_E;
    for step in [1.0f32 / 64.0, 1.0] {
        let q = vec![1.0f32; heads * d * lq];
        let k: Vec<f32> = (0..heads * d * lk).map(|e| (e % lk) as f32 * step).collect();
        let v = randn(&[heads * dv * lk], 91);
        let run = |device| {
            let t = |x: &Vec<f32>, rows, len| Tensor::from_vec_on(x.clone(), [1, heads, rows, len], device).unwrap();
            let _bf16 = with_precision(Precision::Bf16);
            no_grad(|| ops::attention_columns(&t(&q, d, lq), &t(&k, d, lk), &t(&v, dv, lk), scale)).unwrap().to_vec()
        };
        let (cpu, dev) = (run(Device::Cpu), run(parity_device()));
        assert!(dev.iter().all(|x| x.is_finite()), "step {step}: the device's output is not finite");
        assert_close(&format!("rising scores, step {step} (device vs twin)"), &dev, &cpu, 2e-3, 2e-3);
        // the exact softmax: the scores, with Q·K rounded to bf16 (c·1 rounds, K is exact)
        let cq = minidiffusion::ops::precision::round_bf16(c as f32) as f64;
        for h in 0..heads {
            let s: Vec<f64> = (0..lk).map(|j| cq * d as f64 * (j as f32 * step) as f64).collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp2()).collect();
            let l: f64 = p.iter().sum();
            for ch in 0..dv {
                let want: f64 = (0..lk).map(|j| p[j] * minidiffusion::ops::precision::round_bf16(v[(h * dv + ch) * lk + j]) as f64).sum::<f64>() / l;
                for i in 0..lq {
                    let at = (h * dv + ch) * lq + i;
                    assert!((cpu[at] as f64 - want).abs() <= 1e-2 * (1.0 + want.abs()), "step {step}: twin {} against the exact {want}", cpu[at]);
                }
            }
        }
    }
}

/// Q stored as bf16(c·Q) (c = `query_factor`), K and V in bf16 — the
/// UNet's q, k and v projections at inference on CUDA — are read as they
/// are by `attention_columns_infer_bf16_io_h*` (`attention_columns_scaled_query`),
/// which stores O in bf16: O's bits are those of the f32-storage kernel's
/// output rounded to bf16 (the staged words are the same, so the sums are),
/// and O is the CPU twin's within its bar and the rounding.
/// Cases: h8 over two key stages (300 keys) with odd D, Dv and partial
/// tiles; h16 with 7 keys; h32 (D 20, Dv 32). Elsewhere — the CPU, a
/// gradient wanted, f32 products, an f32 operand — the scaled query is
/// refused with an error; `attention_columns` of bf16 operands widens them
/// (exactly) and gives f32 O, the f32 storage's result for those values.
#[test]
fn bf16_qkv_storage_gives_the_rounded_bits() {
    use minidiffusion::ops::attention::query_factor;
    use minidiffusion::ops::precision::{Precision, round_bf16, with_precision};
    use minidiffusion::tensor::DType;
    use minidiffusion::{Device, Tensor, no_grad, testing::kernel_calls, testing::parity_device};
    let device = parity_device();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (i, &(b, h, d, lq, lk, dv)) in [(2, 2, 7, 40, 300, 5), (1, 3, 16, 20, 7, 12), (2, 1, 20, 64, 64, 32)].iter().enumerate() {
        let shapes = [[b, h, d, lq], [b, h, d, lk], [b, h, dv, lk]];
        // k and v as bf16 values (what the projections round to), so both storages hold the same numbers
        let values: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(j, s)| randn(s, 700 + 3 * i as u64 + j as u64)).collect();
        let values: Vec<Vec<f32>> = values.into_iter().enumerate().map(|(j, v)| if j == 0 { v } else { v.into_iter().map(round_bf16).collect() }).collect();
        let scale = 1.0 / (d as f32).sqrt();
        // q as its projection stores it: c·q rounded
        let scaled_q: Vec<f32> = values[0].iter().map(|&x| round_bf16(query_factor(scale) * x)).collect();
        let tensors = |device, stored: [DType; 3], q: &[f32]| -> Vec<Tensor> {
            [q, &values[1], &values[2]]
                .iter()
                .zip(&shapes)
                .zip(stored)
                .map(|((v, s), dtype)| ops::cast(&Tensor::from_vec_on(v.to_vec(), *s, device).unwrap(), dtype).unwrap())
                .collect()
        };
        let run = |device, stored: [DType; 3], products: Precision| {
            let t = tensors(device, stored, &values[0]);
            let _p = with_precision(products);
            let o = no_grad(|| ops::attention_columns(&t[0], &t[1], &t[2], scale)).unwrap();
            (o.dtype(), o.to_vec())
        };
        let scaled = |device, stored: [DType; 3], products: Precision, grad: bool| {
            let t: Vec<Tensor> = tensors(device, stored, &scaled_q).into_iter().map(|t| if grad { t.requires_grad_() } else { t }).collect();
            let _p = with_precision(products);
            let run = || ops::attention_columns_scaled_query(&t[0], &t[1], &t[2]);
            if grad { run() } else { no_grad(run) }.map(|o| (o.dtype(), o.to_vec()))
        };
        const F: DType = DType::F32;
        const B: DType = DType::BF16;
        let (plain_dtype, plain) = run(device, [F, F, F], Precision::Bf16);
        assert_eq!(plain_dtype, F);
        let mut stored = Err(minidiffusion::Error::Cuda(String::new()));
        let rows = kernel_calls(|| stored = scaled(device, [B, B, B], Precision::Bf16, false));
        let stored = stored.unwrap();
        let launched = rows.iter().filter(|r| r.0.starts_with("attention_columns_infer_bf16_io_h")).map(|r| r.1).sum::<usize>();
        assert_eq!((stored.0, launched), (B, 1), "case {i}: O's dtype and the bf16-storage kernel's launches: {rows:?}");
        let rounded: Vec<f32> = plain.iter().map(|&x| round_bf16(x)).collect();
        let (got, want) = (bits(&stored.1), bits(&rounded));
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "case {i}: O from bf16 c·q, k, v against the f32 kernel's O rounded: {differ} of {} differ", want.len());
        // and against the CPU twin (bf16 products, f32 O): its loose bar plus O's rounding to bf16 (2⁻⁹ relative)
        let twin = run(Device::Cpu, [F, F, F], Precision::Bf16).1;
        minidiffusion::testing::assert_close(&format!("case {i}: bf16 O against the CPU twin"), &stored.1, &twin, 2e-3, 2e-3 + 4e-3);
        // the scaled query where the kernel does not run: an error, not numbers
        assert!(scaled(Device::Cpu, [B, B, B], Precision::Bf16, false).is_err(), "case {i}: CPU");
        assert!(scaled(device, [B, B, B], Precision::F32, false).is_err(), "case {i}: f32 products");
        assert!(scaled(device, [B, B, F], Precision::Bf16, false).is_err(), "case {i}: v f32");
        assert!(scaled(device, [B, B, B], Precision::Bf16, true).is_err(), "case {i}: a gradient wanted");
        // bf16 operands of attention_columns are widened: the f32 storage's numbers, in f32
        assert_eq!(run(device, [F, B, B], Precision::Bf16), (F, plain.clone()), "case {i}: k, v bf16");
        assert_eq!(run(Device::Cpu, [F, B, B], Precision::Bf16), (F, twin.clone()), "case {i}: CPU");
        assert_eq!(run(device, [F, B, B], Precision::F32), run(device, [F, F, F], Precision::F32), "case {i}: f32 products");
    }
}

/// The packed q, k, v at bf16 run the same kernel on the same values as the
/// three parts (bit for bit) and stay within the twin's tolerance.
#[test]
fn bf16_packed_inference_attention_matches_the_parts() {
    use minidiffusion::ops::precision::{Precision, with_precision};
    use minidiffusion::{Tensor, no_grad, testing::assert_close, testing::parity_device};
    let (b, heads, d, len) = (2, 4, 8, 70);
    let dims = [b, 3 * heads * d, len];
    let values = randn(&dims, 640);
    let run = |device, packed: bool| {
        let qkv = Tensor::from_vec_on(values.clone(), dims, device).unwrap();
        let _bf16 = with_precision(Precision::Bf16);
        no_grad(|| {
            if packed {
                ops::attention_columns_packed(&qkv, heads, 1.0 / (d as f32).sqrt())
            } else {
                let part = |j: usize| ops::reshape(&ops::narrow(&qkv, 1, j * heads * d, heads * d)?, [b, heads, d, len]);
                ops::attention_columns(&part(0)?, &part(1)?, &part(2)?, 1.0 / (d as f32).sqrt())
            }
        })
        .unwrap()
        .to_vec()
    };
    let device = parity_device();
    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(run(device, true)), bits(run(device, false)), "packed bf16 attention: the same kernel on the same values");
    // a loose bar here (bf16_inference_attention_parity holds the tight one)
    assert_close("packed bf16 attention vs the CPU twin", &run(device, true), &run(minidiffusion::Device::Cpu, true), 2e-3, 2e-3);
}

/// Training attention at the bf16 precision: forward with its base-2
/// log-sum-exp (`attention_columns_infer_bf16_h*`) and the two backward
/// kernels (`attention_columns_backward_{query,key}_bf16_h*`: S, dP, dQ, dK,
/// dV as bf16 mma) against the CPU twins `forward_bf16` / `backward_bf16`:
/// O and the gradients of Σ O·R. The device and the twin multiply the same
/// rounded operands; P and dS are rounded to bf16 from f32 values that differ
/// in the last bits (the log-sum-exp's sum order on the emulation, ex2.approx
/// on a GPU), so a term may take the other bf16 neighbour: the allowance is
/// one bf16 ulp (2^-8 relative) of every term of the entry's sum, plus, for
/// dQ and dK, δ's share of O's tolerance. A wrong index or a missing factor
/// moves an entry by O(its terms).
/// Cases: h8 with 130 queries and 150 keys (two query blocks and two staged
/// chunks of 128 each way, partial tiles), Dv 5; h32 (D 20, Dv 32); h16; 300
/// keys (three key stages); one warp a block (16 and 16).
#[test]
fn bf16_training_attention_parity() {
    use minidiffusion::ops::precision::{Precision, round_bf16, with_precision};
    use minidiffusion::{Device, Tensor, autograd::backward, testing::parity_device};
    let cases = [(2, 3, 8, 130, 150, 5), (1, 2, 20, 17, 64, 32), (2, 2, 12, 64, 33, 16), (1, 2, 8, 40, 300, 8), (3, 1, 8, 16, 16, 8)];
    let device = parity_device();
    let tol = ParityTol::BF16_TENSOR_CORE;
    for (i, &(b, h, d, lq, lk, dv)) in cases.iter().enumerate() {
        let scale = 1.0 / (d as f32).sqrt();
        let shapes = [[b, h, d, lq], [b, h, d, lk], [b, h, dv, lk]];
        let values: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(j, s)| randn(s, 900 + 3 * i as u64 + j as u64)).collect();
        let r = randn(&[b, h, dv, lq], 950 + i as u64);
        // (O, dQ, dK, dV)
        let run = |device| -> [Vec<f32>; 4] {
            let t: Vec<Tensor> = values.iter().zip(&shapes).map(|(v, s)| Tensor::from_vec_on(v.clone(), *s, device).unwrap().requires_grad_()).collect();
            let _bf16 = with_precision(Precision::Bf16);
            let o = ops::attention_columns(&t[0], &t[1], &t[2], scale).unwrap();
            let loss = ops::sum_all(&ops::mul(&o, &Tensor::from_vec_on(r.clone(), o.shape().clone(), device).unwrap()).unwrap()).unwrap();
            let grads = backward(&loss).unwrap();
            [o.to_vec(), grads.get(&t[0]).unwrap().to_vec(), grads.get(&t[1]).unwrap().to_vec(), grads.get(&t[2]).unwrap().to_vec()]
        };
        let (cpu, dev) = (run(Device::Cpu), run(device));
        // the formula in f64 on the rounded operands, for the allowances
        let (qv, kv, vv) = (&values[0], &values[1], &values[2]);
        let c = scale * std::f32::consts::LOG2_E;
        let mut allow: [Vec<f64>; 4] = [vec![0.0; b * h * dv * lq], vec![0.0; b * h * d * lq], vec![0.0; b * h * d * lk], vec![0.0; b * h * dv * lk]];
        for e in 0..b * h {
            let rb = |x: f32| round_bf16(x) as f64;
            let s = |qi: usize, j: usize| (0..d).map(|f| rb(c * qv[(e * d + f) * lq + qi]) * rb(kv[(e * d + f) * lk + j])).sum::<f64>();
            for qi in 0..lq {
                let sc: Vec<f64> = (0..lk).map(|j| s(qi, j)).collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let l: f64 = sc.iter().map(|x| (x - m).exp2()).sum();
                let p: Vec<f64> = sc.iter().map(|x| (x - m).exp2() / l).collect();
                // O and its allowance; dO = R here (the loss is Σ O·R)
                let d_o = |ch: usize| r[(e * dv + ch) * lq + qi] as f64;
                let mut o_allow = vec![0.0; dv];
                for (ch, oa) in o_allow.iter_mut().enumerate() {
                    let at = (e * dv + ch) * lq + qi;
                    *oa = (0..lk).map(|j| p[j] * (vv[(e * dv + ch) * lk + j] as f64).abs()).sum::<f64>() / 256.0;
                    allow[0][at] = *oa;
                }
                let o: Vec<f64> = (0..dv).map(|ch| (0..lk).map(|j| p[j] * vv[(e * dv + ch) * lk + j] as f64).sum()).collect();
                let delta: f64 = (0..dv).map(|ch| d_o(ch) * o[ch]).sum();
                // δ's error from O's: Σ_c |dO|·(O's tolerance)
                let delta_err: f64 = (0..dv).map(|ch| d_o(ch).abs() * (tol.atol as f64 + tol.rtol as f64 * o[ch].abs() + o_allow[ch])).sum();
                for j in 0..lk {
                    let dp: f64 = (0..dv).map(|ch| rb(r[(e * dv + ch) * lq + qi]) * rb(vv[(e * dv + ch) * lk + j])).sum();
                    let ds = (p[j] * (dp - delta)).abs() / 256.0 + p[j] * delta_err;
                    let sc = scale as f64;
                    for f in 0..d {
                        allow[1][(e * d + f) * lq + qi] += sc * ds * (kv[(e * d + f) * lk + j] as f64).abs();
                        allow[2][(e * d + f) * lk + j] += sc * ds * (qv[(e * d + f) * lq + qi] as f64).abs();
                    }
                    for ch in 0..dv {
                        allow[3][(e * dv + ch) * lk + j] += p[j] * d_o(ch).abs() / 256.0;
                    }
                }
            }
        }
        for (n, name) in ["O", "dQ", "dK", "dV"].iter().enumerate() {
            let mut worst = 0.0f64;
            for (at, (&got, &want)) in dev[n].iter().zip(&cpu[n]).enumerate() {
                let bar = tol.atol as f64 + tol.rtol as f64 * (want as f64).abs() + allow[n][at];
                worst = worst.max(((got - want) as f64).abs() / bar);
                assert!(((got - want) as f64).abs() <= bar, "bf16 training attention case {i} ({device}): {name} entry {at}: got {got}, twin {want} (tolerance {bar:e})");
            }
            eprintln!("case {i} {name}: worst error / tolerance {worst:.3}");
        }
    }
}
