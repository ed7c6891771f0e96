//! CUDA against the CPU twin: the tiled GEMM through matmul / matmul_t /
//! linear (square, odd, batched, broadcast, mixed broadcast, every transpose
//! combination), and the `gemm` launch wrapper itself (alpha, accumulate,
//! broadcast operand). On a machine without a GPU these run on the CPU
//! emulation of CUDA (kernels/emu).
//!
//! Tolerance: ParityTol::REDUCTION (atol 1e-5, rtol 1e-4) unless a test says
//! otherwise — f32 dot products of length K ≤ 70 summed in another order (and
//! with other FMA contractions) than the CPU's `gemm` crate.

use minidiffusion::ops::matmul::cuda::{MatView, gemm};
use minidiffusion::testing::{ParityTol, assert_close, parity_check, parity_device, randn};
use minidiffusion::{Tensor, ops};

#[test]
fn matmul_square_and_odd() {
    // one 64×64 tile, K in 4 slices of 16
    parity_check("matmul_square", &[&[64, 64], &[64, 64]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
    // M, K, N not multiples of the 64×64×16 tiling: tails in every dim
    parity_check("matmul_odd", &[&[65, 33], &[33, 17]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
    // N across three column tiles, M across two
    parity_check("matmul_wide", &[&[70, 20], &[20, 130]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
    // degenerate sizes: a single row / column / inner dim of 1
    parity_check("matmul_vec", &[&[1, 7], &[7, 1]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
    parity_check("matmul_outer", &[&[5, 1], &[1, 9]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
}

#[test]
fn matmul_batched_and_broadcast() {
    // one launch over the batch (grid z)
    parity_check("matmul_batched", &[&[3, 20, 30], &[3, 30, 10]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
    // 2-D b under 3-D a: b's batch stride is 0; its gradient sums over the batch
    parity_check("matmul_broadcast_b", &[&[4, 9, 5], &[5, 7]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
    // b with a batch dim of 1 under a 4-D a
    parity_check("matmul_broadcast_b1", &[&[2, 3, 6, 5], &[1, 5, 2]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
    // mixed broadcast: no single batch stride, the host loops over the leading
    // dim (small matrices: the gradients' sum_to runs a block per output on the emulator)
    parity_check("matmul_mixed_broadcast", &[&[2, 1, 3, 5], &[1, 3, 5, 2]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
    // batch dims of different ranks: a [3] under b [2, 3]
    parity_check("matmul_rank_broadcast", &[&[3, 2, 5], &[2, 3, 5, 3]], |x| ops::matmul(&x[0], &x[1]), ParityTol::REDUCTION);
}

#[test]
fn matmul_transposes() {
    // op(a) [2, 13, 19], op(b) [2, 19, 11] in all four storage layouts
    let (m, k, n) = (13, 19, 11);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let a: &[usize] = if ta { &[2, k, m] } else { &[2, m, k] };
        let b: &[usize] = if tb { &[2, n, k] } else { &[2, k, n] };
        parity_check(&format!("matmul_t({ta}, {tb})"), &[a, b], |x| ops::matmul_t(&x[0], ta, &x[1], tb), ParityTol::REDUCTION);
    }
}

#[test]
fn linear_with_bias() {
    parity_check("linear", &[&[3, 5, 10], &[7, 10], &[7]], |x| ops::linear(&x[0], &x[1], Some(&x[2])), ParityTol::REDUCTION);
    parity_check("linear_no_bias", &[&[6, 33], &[65, 33]], |x| ops::linear(&x[0], &x[1], None), ParityTol::REDUCTION);
}

#[test]
fn gemm_alpha_accumulate_broadcast() {
    // C[z] = 0.5·A·B[z]ᵀ + C[z] with one A for the whole batch (batch stride 0)
    let (batch, m, k, n) = (3, 9, 21, 70);
    let device = parity_device();
    let (a, b, c0) = (randn(&[m, k], 1), randn(&[batch, n, k], 2), randn(&[batch, m, n], 3));
    let ta = Tensor::from_vec_on(a.clone(), [m, k], device).unwrap();
    let tb = Tensor::from_vec_on(b.clone(), [batch, n, k], device).unwrap();
    let tc = Tensor::from_vec_on(c0.clone(), [batch, m, n], device).unwrap();
    {
        let (sa, sb, sc) = (ta.storage(), tb.storage(), tc.storage());
        let (ba, bb, bc) = (sa.cuda("test").unwrap(), sb.cuda("test").unwrap(), sc.cuda("test").unwrap());
        let va = MatView::rows(ba, m, k).batch_stride(0);
        let vb = MatView::rows(bb, n, k).t();
        gemm(va, vb, MatView::rows(bc, m, n), batch, 0.5, true).unwrap();
    }
    let mut want = c0;
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[(z * n + j) * k + p] as f64).sum();
                want[(z * m + i) * n + j] += (0.5 * dot) as f32;
            }
        }
    }
    assert_close("gemm_alpha_accumulate", &tc.to_vec(), &want, 1e-5, 1e-4);
}

#[test]
fn gemm_rejects_out_of_bounds_views() {
    let device = parity_device();
    let t = Tensor::zeros_on([4, 4], device).unwrap();
    let s = t.storage();
    let buf = s.cuda("test").unwrap();
    // 2 batch entries of 4×4 do not fit in 16 elements
    assert!(gemm(MatView::rows(buf, 4, 4), MatView::rows(buf, 4, 4), MatView::rows(buf, 4, 4), 2, 1.0, false).is_err());
    // inner dims differ
    assert!(gemm(MatView::rows(buf, 4, 4), MatView::rows(buf, 2, 8), MatView::rows(buf, 4, 8), 1, 1.0, false).is_err());
}

#[test]
fn gemm_split_k_long_products() {
    // few output tiles, long K: the launch splits K into partial slabs and sums
    // them (kernels/gemm.cu "Split K"); C = 0.5·Aᵀ·B + C, A given transposed
    use minidiffusion::ops::matmul::cuda::k_splits;
    let (m, k, n) = (24, 5000, 70);
    let (splits, chunk) = k_splits(m, n, k, 1);
    assert!(splits > 1 && chunk % 16 == 0 && (splits - 1) * chunk < k, "{splits} × {chunk}");
    assert_eq!(k_splits(m, n, k, 2).0, 1, "batched products are not split");
    assert_eq!(k_splits(m, n, 1000, 1).0, 1, "short K is not split");
    let device = parity_device();
    let (a, b, c0) = (randn(&[k, m], 4), randn(&[k, n], 5), randn(&[m, n], 6));
    let ta = Tensor::from_vec_on(a.clone(), [k, m], device).unwrap();
    let tb = Tensor::from_vec_on(b.clone(), [k, n], device).unwrap();
    let tc = Tensor::from_vec_on(c0.clone(), [m, n], device).unwrap();
    {
        let (sa, sb, sc) = (ta.storage(), tb.storage(), tc.storage());
        let (ba, bb, bc) = (sa.cuda("test").unwrap(), sb.cuda("test").unwrap(), sc.cuda("test").unwrap());
        gemm(MatView::rows(ba, k, m).t(), MatView::rows(bb, k, n), MatView::rows(bc, m, n), 1, 0.5, true).unwrap();
    }
    let mut want = c0;
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| a[p * m + i] as f64 * b[p * n + j] as f64).sum();
            want[i * n + j] += (0.5 * dot) as f32;
        }
    }
    // K = 5000, results of scale ~35 summed on the tensor cores (3xTF32, whose
    // mma sums truncate): 3e-4 absolute (1e-5 of the scale) + 1e-4 relative;
    // an H100 was off by 1.3e-4 with one shared accumulator
    assert_close("gemm_split_k", &tc.to_vec(), &want, 3e-4, 1e-4);
    // and through the tape: a linear layer's weight gradient sums over every row
    parity_check("linear_long_batch", &[&[4100, 12], &[20, 12]], |x| ops::linear(&x[0], &x[1], None), ParityTol { atol: 1e-4, rtol: 1e-4 });
}

/// `gemm_tiled_bf16` (the bf16 compute precision) against the CPU twin at
/// bf16: the same bf16 operands multiplied exactly, f32 sums in another order.
/// Odd sizes, all transposes, a broadcast batch, and the split-K path (one
/// output tile, K = 4100: 8 splits, the last one partial, an odd K).
#[test]
fn matmul_bf16_parity() {
    use minidiffusion::ops::{Precision, with_precision};
    let bf16 = |f: &dyn Fn() -> minidiffusion::Result<Tensor>| {
        let _p = with_precision(Precision::Bf16);
        f()
    };
    parity_check("bf16_matmul_odd", &[&[65, 33], &[33, 17]], |x| bf16(&|| ops::matmul(&x[0], &x[1])), ParityTol::BF16_TENSOR_CORE);
    parity_check("bf16_broadcast_b", &[&[4, 9, 35], &[35, 7]], |x| bf16(&|| ops::matmul(&x[0], &x[1])), ParityTol::BF16_TENSOR_CORE);
    for (ta, tb) in [(true, false), (false, true), (true, true)] {
        let a: &[usize] = if ta { &[2, 19, 13] } else { &[2, 13, 19] };
        let b: &[usize] = if tb { &[2, 11, 19] } else { &[2, 19, 11] };
        parity_check(&format!("bf16_matmul_t({ta}, {tb})"), &[a, b], |x| bf16(&|| ops::matmul_t(&x[0], ta, &x[1], tb)), ParityTol::BF16_TENSOR_CORE);
    }
    parity_check("bf16_linear", &[&[6, 33], &[65, 33], &[65]], |x| bf16(&|| ops::linear(&x[0], &x[1], Some(&x[2]))), ParityTol::BF16_TENSOR_CORE);
    // K long enough to split (sums of 4101 O(1) products: scale ~64; 8 splits
    // of 33 truncating mma sums each: up to ~4e-4)
    parity_check("bf16_split_k", &[&[3, 4101], &[4101, 5]], |x| bf16(&|| ops::matmul(&x[0], &x[1])), ParityTol { atol: 1e-3, rtol: 2e-4 });
}
