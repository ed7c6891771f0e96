//! CUDA against the CPU twin: group norm, the fused group norm + SiLU and
//! batch norm (train and eval, and the running statistics a train step
//! leaves), forward and every input's gradient, on odd shapes. On a machine
//! without a GPU these run on the CPU emulation of CUDA (kernels/emu).
//!
//! Tolerance: ParityTol::REDUCTION (|cuda − cpu| ≤ 1e-5 + 1e-4·|cpu|) for
//! every comparison: both sides accumulate the statistics and the gradient
//! sums in f64, only in another order, and then apply the same f32 formulas.
//! Running statistics: 1e-6 + 1e-5·|cpu|.

use minidiffusion::ops::batch_norm::{BatchNormMode, batch_norm};
use minidiffusion::ops::group_norm::{group_norm, group_norm_silu};
use minidiffusion::testing::{ParityTol, assert_close, kernels_launched, parity_check, parity_check_at, parity_device, randn};
use minidiffusion::{Device, Shape, Tensor, backward, ops};

const TOL: ParityTol = ParityTol::REDUCTION;

/// (x shape, group counts) covering groups 1, 2 and C, odd spatial sizes
/// (5×7), rank 2 and rank 5, groups larger than the 256-thread block
/// (1×4×9×11 with one group: 396 values) and more channels per group than
/// warps per block (20 channels in one group: three rounds of 8 warps), and
/// more samples than a warp's lanes for the parameter gradients (33 samples,
/// 9 channels: a warp per channel, two blocks of 8), and channels of more
/// pixels than a block has threads (17×19 = 323: the threads' channel steps
/// carry at uneven strides). The eight before the last three are the resident kernels' (S a
/// multiple of 4, at most 12,288 values a group): one float4 a channel
/// (S = 4), a partial first float4 round (m = 256) and a partial second
/// (1,280), the forward's two, three and four rounds (2,048; 3,072: a
/// four-round kernel with its last round empty; the seed UNet's 32×32 groups,
/// 4,096, and eight rounds at 4 groups), the largest group (the seed UNet's
/// up block, 96 channels / 8 of 32×32), and one float4 more than that
/// (12,292: the loop kernels). The three at the top are the resident
/// backward's (also S a multiple of 128): half a float4 round (m = 512, four
/// warps idle), 128 pixels (a warp a channel), and eight rounds (8,192); the
/// seed UNet's largest group takes its twelve-round kernel. After those, the
/// resident backward with a channel in a segment of a warp: 4×8 maps (8
/// lanes a channel) and 4×4 (4 lanes: one warp a group, and the seed UNet's
/// 4×4 groups of 32 channels); `[2, 32, 8, 8]` above has 16.
const GN_CASES: &[(&[usize], &[usize])] = &[
    (&[2, 8, 16, 16], &[4]),
    (&[2, 6, 8, 16], &[3]),
    (&[1, 64, 16, 16], &[2]),
    (&[2, 6, 5, 7], &[1, 2, 6]),
    (&[33, 9, 1], &[1]),
    (&[3, 4, 5], &[1, 2, 4]),
    (&[3, 6], &[1, 3]),
    (&[2, 3, 2, 3, 2], &[3]),
    (&[1, 4, 9, 11], &[1]),
    (&[2, 20, 3], &[1, 20]),
    (&[2, 4, 17, 19], &[2]),
    (&[3, 6, 2, 2], &[3, 1]),
    (&[2, 32, 8, 8], &[8]),
    (&[2, 40, 8, 8], &[2]),
    (&[2, 8, 32, 32], &[4]),
    (&[1, 12, 16, 16], &[1]),
    (&[2, 32, 32, 32], &[8, 4]),
    (&[1, 96, 32, 32], &[8]),
    (&[1, 3073, 2, 2], &[1]),
    (&[2, 16, 4, 8], &[2]),
    (&[2, 32, 4, 4], &[4]),
    (&[1, 256, 4, 4], &[8]),
];

/// The group norm forwards that keep a group in registers run exactly where
/// it fits, with f32 storage the fewest float4s a thread that hold the group
/// (checked by kernel name: a wrong predicate would leave the cases above on
/// the loop kernels and test nothing new), plain and with SiLU, f32 and
/// bf16 storage (the same rounds): groups of at most 1,024 values by a warp
/// (rounds of 32 lanes), larger ones by the block (rounds of 256 threads),
/// and every resident group by the block with the warps off (the A/B).
#[test]
fn resident_group_norm_runs_where_the_group_fits() {
    use minidiffusion::ops::group_norm::{cuda::with_warp_groups, group_norm_silu_stored};
    use minidiffusion::tensor::DType;
    // (dims, groups, kernel with warps, kernel without: "warp_r1" / "resident_r1" …, or the loop kernel)
    let cases: [(&[usize], usize, Option<(&str, &str)>); 13] = [
        (&[3, 6, 2, 2], 3, Some(("warp_r1", "resident_r1"))),
        (&[2, 32, 8, 8], 8, Some(("warp_r2", "resident_r1"))),
        (&[2, 64, 8, 8], 8, Some(("warp_r4", "resident_r1"))),
        (&[1, 256, 4, 4], 8, Some(("warp_r4", "resident_r1"))),
        (&[2, 128, 8, 8], 8, Some(("warp_r8", "resident_r1"))),
        (&[2, 8, 32, 32], 4, Some(("resident_r2", "resident_r2"))),
        (&[1, 12, 16, 16], 1, Some(("resident_r4", "resident_r4"))),
        (&[2, 32, 32, 32], 8, Some(("resident_r4", "resident_r4"))),
        (&[2, 32, 32, 32], 4, Some(("resident_r8", "resident_r8"))),
        (&[1, 96, 32, 32], 8, Some(("resident_r12", "resident_r12"))),
        (&[1, 3073, 2, 2], 1, None),
        (&[2, 6, 5, 7], 2, None),
        (&[2, 3, 2, 3, 2], 3, Some(("warp_r1", "resident_r1"))),
    ];
    for (dims, groups, rounds) in cases {
        let x = Tensor::from_vec_on(randn(dims, 9), dims.to_vec(), parity_device()).unwrap();
        for warps in [true, false] {
            for store in [DType::F32, DType::BF16] {
                let kernels = with_warp_groups(warps, || kernels_launched(|| drop(group_norm_silu_stored(&x, groups, None, None, 1e-5, store).unwrap())));
                let kernel = rounds.map(|(with, without)| if warps { with } else { without });
                let want = match (kernel, store) {
                    (None, DType::F32) => "groupnorm_forward".to_string(),
                    (None, _) => "groupnorm_forward_bf16".to_string(),
                    (Some(k), DType::F32) => format!("groupnorm_forward_{k}"),
                    (Some(k), _) => format!("groupnorm_forward_{}", k.replacen('_', "_bf16_", 1)),
                };
                assert_eq!(kernels, [want.as_str()], "{dims:?} g{groups} {store:?} warps {warps}");
            }
        }
    }
}

/// A group held by a warp gives the bits of the same group held by the
/// block (the statistics are f64 sums of the same float4 partials), for
/// each of the warp's rounds, plain and SiLU, f32 and bf16 storage. (The
/// warp's affine, which a convolution applies, gives the warp forward's bits:
/// parity_conv2d's conv2d_after_norm_applies_the_norm_in_the_conv.)
#[test]
fn warp_group_norm_gives_the_block_bits() {
    use minidiffusion::ops::group_norm::{cuda::with_warp_groups, group_norm_silu_stored, group_norm_stored};
    use minidiffusion::tensor::DType;
    for (k, (dims, groups)) in [(&[3usize, 6, 2, 2][..], 3), (&[2, 32, 8, 8], 8), (&[3, 256, 4, 4], 8), (&[2, 128, 8, 8], 8), (&[2, 40, 4, 4], 4)].into_iter().enumerate() {
        let c = dims[1];
        let dev = |d: &[usize], seed| Tensor::from_vec_on(randn(d, seed), d.to_vec(), parity_device()).unwrap();
        // a mean far from 0 too (image 0 shifted): the f32 partials then carry the rounding
        let x = ops::add_scalar(&dev(dims, 60 + k as u64), 3.0).unwrap();
        let (w, b) = (dev(&[c], 2), dev(&[c], 3));
        for silu in [false, true] {
            for store in [DType::F32, DType::BF16] {
                let norm = if silu { group_norm_silu_stored } else { group_norm_stored };
                let run = |warps| with_warp_groups(warps, || norm(&x, groups, Some(&w), Some(&b), 1e-5, store).unwrap().to_vec());
                assert_eq!(run(true).iter().map(|v| v.to_bits()).collect::<Vec<_>>(), run(false).iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{dims:?} g{groups} silu {silu} {store:?}");
            }
        }
    }
}

/// The group norm backwards that keep x and dy in registers run exactly
/// where they fit, with the register rounds their group needs (by kernel
/// name, as above).
#[test]
fn resident_group_norm_backward_runs_where_the_group_fits() {
    let cases: [(&[usize], usize, Option<&str>); 10] = [
        (&[2, 8, 16, 16], 4, Some("groupnorm_backward_resident_r4")),
        (&[2, 6, 8, 16], 3, Some("groupnorm_backward_resident_r4")),
        (&[1, 64, 16, 16], 2, Some("groupnorm_backward_resident_r8")),
        (&[1, 96, 32, 32], 8, Some("groupnorm_backward_resident_r12")),
        (&[1, 104, 32, 32], 8, None),
        // channels in segments of a warp: 8×8, 4×4; a group of half a warp's float4s, a 6×6 map
        (&[2, 32, 8, 8], 8, Some("groupnorm_backward_resident_r4")),
        (&[1, 256, 4, 4], 8, Some("groupnorm_backward_resident_r4")),
        (&[2, 3, 8, 8], 3, None),
        (&[2, 12, 4, 4], 3, None),
        (&[2, 32, 6, 6], 8, None),
    ];
    for (dims, groups, kernel) in cases {
        let x = Tensor::from_vec_on(randn(dims, 9), dims.to_vec(), parity_device()).unwrap().requires_grad_();
        let y = group_norm_silu(&x, groups, None, None, 1e-5).unwrap();
        let loss = ops::sum_all(&y).unwrap();
        let kernels = kernels_launched(|| drop(backward(&loss).unwrap()));
        let want = kernel.unwrap_or("groupnorm_backward");
        assert!(kernels.contains(&want), "{dims:?} g{groups}: {want} not in {kernels:?}");
    }
}

/// The signature shared by group_norm and group_norm_silu.
type GroupNormFn = fn(&Tensor, usize, Option<&Tensor>, Option<&Tensor>, f32) -> minidiffusion::Result<Tensor>;

/// Group norm or the fused group norm + SiLU, with and without the affine
/// parameters, forward and gradients.
fn group_norm_cases(name: &str, op: GroupNormFn) {
    for &(dims, groups_list) in GN_CASES {
        let c = dims[1];
        for &groups in groups_list {
            parity_check(&format!("{name} {dims:?} g{groups}"), &[dims], |t| op(&t[0], groups, None, None, 1e-5), TOL);
            parity_check(
                &format!("{name} {dims:?} g{groups} affine"),
                &[dims, &[c], &[c]],
                |t| op(&t[0], groups, Some(&t[1]), Some(&t[2]), 1e-5),
                TOL,
            );
        }
    }
    // Weight only and bias only (the kernels read null γ / β as 1 / 0).
    let dims: &[usize] = &[2, 4, 5, 7];
    parity_check(&format!("{name} weight only"), &[dims, &[4]], |t| op(&t[0], 2, Some(&t[1]), None, 1e-5), TOL);
    parity_check(&format!("{name} bias only"), &[dims, &[4]], |t| op(&t[0], 2, None, Some(&t[1]), 1e-5), TOL);
    // Mean far from 0 and variance far from 1: the two-pass statistics (loop and resident kernels).
    for dims in [dims, &[2, 4, 4, 8]] {
        let x: Vec<f32> = randn(dims, 3).iter().map(|v| 40.0 + 0.05 * v).collect();
        parity_check_at(
            &format!("{name} offset input {dims:?}"),
            vec![(x, Shape::from(dims)), (randn(&[4], 4), Shape::from([4])), (randn(&[4], 5), Shape::from([4]))],
            |t| op(&t[0], 2, Some(&t[1]), Some(&t[2]), 1e-5),
            TOL,
        );
    }
}

#[test]
fn group_norm_parity() {
    group_norm_cases("group_norm", group_norm);
}

#[test]
fn group_norm_silu_parity() {
    group_norm_cases("group_norm_silu", group_norm_silu);
}

/// Only the parameters require grad: the backward kernels skip dx (null
/// pointer) and still produce dγ, dβ.
#[test]
fn parameter_gradients_without_dx_parity() {
    // the loop kernels (5×3 maps) and the resident backward (16×8)
    for dims in [[2, 6, 5, 3], [2, 6, 16, 8]] {
        parameter_gradients_without_dx_case(dims);
    }
}

fn parameter_gradients_without_dx_case(dims: [usize; 4]) {
    let run = |device: Device| -> Vec<Vec<f32>> {
        let x = Tensor::from_vec_on(randn(&dims, 1), dims.to_vec(), device).unwrap();
        let w = Tensor::from_vec_on(randn(&[6], 2), vec![6], device).unwrap().detach().requires_grad_();
        let b = Tensor::from_vec_on(randn(&[6], 3), vec![6], device).unwrap().detach().requires_grad_();
        let r = Tensor::from_vec_on(randn(&dims, 4), dims.to_vec(), device).unwrap();
        let (rm, rv) = (Tensor::zeros_on([6], device).unwrap(), Tensor::full_on(1.0, [6], device).unwrap());
        let mut out = vec![];
        for k in 0..3 {
            let y = match k {
                0 => group_norm(&x, 3, Some(&w), Some(&b), 1e-5),
                1 => group_norm_silu(&x, 3, Some(&w), Some(&b), 1e-5),
                _ => batch_norm(&x, &rm, &rv, Some(&w), Some(&b), BatchNormMode::Train { momentum: 0.1 }, 1e-5),
            }
            .unwrap();
            let grads = backward(&ops::sum_all(&ops::mul(&y, &r).unwrap()).unwrap()).unwrap();
            assert!(grads.get(&x).is_none());
            out.push(grads.get(&w).unwrap().to_vec());
            out.push(grads.get(&b).unwrap().to_vec());
        }
        out
    };
    let (cpu, dev) = (run(Device::Cpu), run(parity_device()));
    for (i, (d, c)) in dev.iter().zip(&cpu).enumerate() {
        assert_close(&format!("{dims:?}: parameter gradient {i}"), d, c, TOL.atol, TOL.rtol);
    }
}

/// x shapes for batch norm: [N, C], odd spatial sizes, rank 5, and channels
/// with more values than the 256-thread block (8×9×5 = 360).
const BN_SHAPES: &[&[usize]] = &[&[6, 5], &[4, 3, 5, 7], &[3, 2, 7], &[2, 3, 2, 1, 3], &[8, 2, 9, 5]];

#[test]
fn batch_norm_train_parity() {
    for &dims in BN_SHAPES {
        let c = dims[1];
        let train = BatchNormMode::Train { momentum: 0.1 };
        let stats = |t: &Tensor| (Tensor::zeros_on([c], t.device()).unwrap(), Tensor::full_on(1.0, [c], t.device()).unwrap());
        parity_check(
            &format!("batch_norm train {dims:?}"),
            &[dims],
            |t| {
                let (rm, rv) = stats(&t[0]);
                batch_norm(&t[0], &rm, &rv, None, None, train, 1e-5)
            },
            TOL,
        );
        parity_check(
            &format!("batch_norm train {dims:?} affine"),
            &[dims, &[c], &[c]],
            |t| {
                let (rm, rv) = stats(&t[0]);
                batch_norm(&t[0], &rm, &rv, Some(&t[1]), Some(&t[2]), train, 1e-5)
            },
            TOL,
        );
    }
}

#[test]
fn batch_norm_eval_parity() {
    for &dims in BN_SHAPES {
        let c = dims[1];
        let rm = randn(&[c], 8);
        let rv: Vec<f32> = randn(&[c], 9).iter().map(|v| 0.5 + v.abs()).collect();
        let stats = |t: &Tensor| {
            let d = t.device();
            (Tensor::from_vec_on(rm.clone(), vec![c], d).unwrap(), Tensor::from_vec_on(rv.clone(), vec![c], d).unwrap())
        };
        parity_check(
            &format!("batch_norm eval {dims:?}"),
            &[dims],
            |t| {
                let (rm, rv) = stats(&t[0]);
                batch_norm(&t[0], &rm, &rv, None, None, BatchNormMode::Eval, 1e-5)
            },
            TOL,
        );
        parity_check(
            &format!("batch_norm eval {dims:?} affine"),
            &[dims, &[c], &[c]],
            |t| {
                let (rm, rv) = stats(&t[0]);
                batch_norm(&t[0], &rm, &rv, Some(&t[1]), Some(&t[2]), BatchNormMode::Eval, 1e-5)
            },
            TOL,
        );
    }
}

/// Two train steps then an eval step on each device, from the same starting
/// running statistics: the running statistics after each step, and the eval
/// output, match the CPU twin; eval leaves the statistics alone.
#[test]
fn batch_norm_running_stats_parity() {
    let dims = [5, 3, 4, 7];
    let run = |device: Device| -> Vec<Vec<f32>> {
        let rm = Tensor::from_vec_on(vec![0.3, -1.0, 2.0], vec![3], device).unwrap();
        let rv = Tensor::from_vec_on(vec![0.5, 2.0, 1.5], vec![3], device).unwrap();
        let mut seen = vec![];
        for (step, momentum) in [(0u64, 0.1f32), (1, 0.3)] {
            let xv: Vec<f32> = randn(&dims, 70 + step).iter().map(|v| 1.0 + 3.0 * v).collect();
            let x = Tensor::from_vec_on(xv, dims.to_vec(), device).unwrap();
            batch_norm(&x, &rm, &rv, None, None, BatchNormMode::Train { momentum }, 1e-5).unwrap();
            seen.push(rm.to_vec());
            seen.push(rv.to_vec());
        }
        let x = Tensor::from_vec_on(randn(&dims, 80), dims.to_vec(), device).unwrap();
        seen.push(batch_norm(&x, &rm, &rv, None, None, BatchNormMode::Eval, 1e-5).unwrap().to_vec());
        assert_eq!(rm.to_vec(), seen[2], "eval leaves running_mean alone on {device}");
        assert_eq!(rv.to_vec(), seen[3], "eval leaves running_var alone on {device}");
        seen
    };
    let (cpu, dev) = (run(Device::Cpu), run(parity_device()));
    let what = ["running_mean step 0", "running_var step 0", "running_mean step 1", "running_var step 1"];
    for (i, name) in what.iter().enumerate() {
        assert_close(name, &dev[i], &cpu[i], 1e-6, 1e-5);
    }
    assert_close("eval after train", &dev[4], &cpu[4], TOL.atol, TOL.rtol);
}

/// Empty batches go through the CUDA path without launching on nothing.
#[test]
fn empty_inputs_parity() {
    let device = parity_device();
    let x = Tensor::zeros_on([0, 4, 3], device).unwrap();
    assert_eq!(group_norm(&x, 2, None, None, 1e-5).unwrap().dims(), &[0, 4, 3]);
    assert_eq!(group_norm_silu(&x, 2, None, None, 1e-5).unwrap().dims(), &[0, 4, 3]);
    let (rm, rv) = (Tensor::zeros_on([4], device).unwrap(), Tensor::full_on(1.0, [4], device).unwrap());
    assert_eq!(batch_norm(&x, &rm, &rv, None, None, BatchNormMode::Eval, 1e-5).unwrap().dims(), &[0, 4, 3]);
}

/// GroupNorm + SiLU stored as bf16 (the bf16 inference path) on the device:
/// exactly the device's f32 output rounded to bf16, and the CPU twin's
/// stored values to one bf16 step (an f32 ulp between the two can move a
/// value across a rounding boundary).
#[test]
fn group_norm_silu_bf16_storage_parity() {
    use minidiffusion::ops::group_norm::{group_norm_silu_stored, group_norm_stored};
    use minidiffusion::tensor::DType;
    for &(dims, groups_list) in GN_CASES {
        let c = dims[1];
        for &groups in groups_list {
            let host = |d: &[usize], seed| Tensor::from_vec(randn(d, seed), d.to_vec()).unwrap();
            let (x, w, b) = (host(dims, 1), host(&[c], 2), host(&[c], 3));
            let dev = |t: &Tensor| t.to_device(parity_device()).unwrap();
            let (xd, wd, bd) = (dev(&x), dev(&w), dev(&b));
            let stored = group_norm_silu_stored(&xd, groups, Some(&wd), Some(&bd), 1e-5, DType::BF16).unwrap();
            // the plain group norm stores the same way (the attention block's input to its projections)
            let plain = group_norm_stored(&xd, groups, Some(&wd), Some(&bd), 1e-5, DType::BF16).unwrap();
            let plain_f32 = group_norm(&xd, groups, Some(&wd), Some(&bd), 1e-5).unwrap().to_vec();
            let plain_rounded: Vec<f32> = plain_f32.iter().map(|&v| minidiffusion::ops::precision::round_bf16(v)).collect();
            assert_eq!((plain.dtype(), plain.to_vec()), (DType::BF16, plain_rounded), "{dims:?} g{groups}: plain group norm");
            assert_eq!((stored.dtype(), stored.device()), (DType::BF16, parity_device()));
            let f32_out = group_norm_silu(&xd, groups, Some(&wd), Some(&bd), 1e-5).unwrap().to_vec();
            let rounded: Vec<f32> = f32_out.iter().map(|&v| minidiffusion::ops::precision::round_bf16(v)).collect();
            assert_eq!(stored.to_vec(), rounded, "{dims:?} g{groups}: not the f32 output rounded");
            let twin = group_norm_silu_stored(&x, groups, Some(&w), Some(&b), 1e-5, DType::BF16).unwrap().to_vec();
            assert_close(&format!("bf16 storage {dims:?} g{groups}"), &stored.to_vec(), &twin, 1e-6, 1.0 / 128.0);
            // on the tape: the same gradients as with f32 storage (backward recomputes from x)
            let (xg, wg, bg) = (xd.detach().requires_grad_(), wd.detach().requires_grad_(), bd.detach().requires_grad_());
            let r = dev(&host(dims, 4));
            let grads = |store| {
                let y = group_norm_silu_stored(&xg, groups, Some(&wg), Some(&bg), 1e-5, store).unwrap();
                let y = ops::cast(&y, DType::F32).unwrap();
                let g = backward(&ops::sum_all(&ops::mul(&y, &r).unwrap()).unwrap()).unwrap();
                [&xg, &wg, &bg].map(|t| g.get(t).unwrap().to_vec())
            };
            let (g16, g32) = (grads(DType::BF16), grads(DType::F32));
            assert_eq!(g16, g32, "{dims:?} g{groups}: gradients through bf16 storage");
        }
    }
}

/// Group norm (+ SiLU) of bf16 storage (the resnets' conv1 output with bf16
/// activations): into bf16 at inference, read as it is by the resident
/// kernels (`groupnorm_forward_{warp,resident}_xbf16_bf16_r*`) exactly where
/// a group fits them, with the bits of the norm of the widened map; otherwise
/// (the loop kernel's groups, f32 output, a gradient wanted) widened first,
/// with the same values; near the CPU twin's, which widens too.
#[test]
fn group_norm_of_bf16_storage_reads_it_as_it_is() {
    use minidiffusion::ops::group_norm::{group_norm_silu_stored, group_norm_stored};
    use minidiffusion::tensor::DType;
    use minidiffusion::no_grad;
    let bits = |t: &Tensor| t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for &(dims, groups_list) in GN_CASES {
        let c = dims[1];
        for &groups in groups_list {
            let host = |d: &[usize], seed| Tensor::from_vec(randn(d, seed), d.to_vec()).unwrap();
            let (x, w, b) = (host(dims, 11), host(&[c], 12), host(&[c], 13));
            let dev = |t: &Tensor| t.to_device(parity_device()).unwrap();
            let (wd, bd) = (dev(&w), dev(&b));
            let x16 = no_grad(|| ops::cast(&dev(&x), DType::BF16)).unwrap();
            let widened = ops::cast(&x16, DType::F32).unwrap();
            let m: usize = dims[1..].iter().product::<usize>() / groups;
            let s: usize = dims[2..].iter().product();
            let fits = m <= 12 * 4 * 256 && s.is_multiple_of(4);
            for silu in [false, true] {
                let norm = if silu { group_norm_silu_stored } else { group_norm_stored };
                let what = format!("{dims:?} g{groups} silu {silu}");
                for store in [DType::BF16, DType::F32] {
                    let mut y = None;
                    let kernels = kernels_launched(|| y = Some(no_grad(|| norm(&x16, groups, Some(&wd), Some(&bd), 1e-5, store)).unwrap()));
                    let y = y.unwrap();
                    let as_is = kernels.iter().any(|k| k.contains("_xbf16_bf16_r"));
                    assert_eq!(as_is, fits && store == DType::BF16, "{what} {store:?}: {kernels:?}");
                    let want = no_grad(|| norm(&widened, groups, Some(&wd), Some(&bd), 1e-5, store)).unwrap();
                    assert_eq!((y.dtype(), bits(&y)), (store, bits(&want)), "{what} {store:?}: not the norm of the widened map");
                }
                // the CPU twin, from the same bf16 values
                let twin = norm(&x16.to_device(Device::Cpu).unwrap(), groups, Some(&w), Some(&b), 1e-5, DType::BF16).unwrap();
                let y = no_grad(|| norm(&x16, groups, Some(&wd), Some(&bd), 1e-5, DType::BF16)).unwrap();
                assert_close(&format!("{what}: bf16 storage in and out"), &y.to_vec(), &twin.to_vec(), 1e-6, 1.0 / 128.0);
            }
        }
    }
    // a gradient wanted: widened, and the gradient reaches x through the cast
    let x = Tensor::from_vec_on(randn(&[2, 32, 8, 8], 14), vec![2, 32, 8, 8], parity_device()).unwrap().requires_grad_();
    let x16 = ops::cast(&x, DType::BF16).unwrap();
    let mut y = None;
    let kernels = kernels_launched(|| y = Some(group_norm_silu_stored(&x16, 8, None, None, 1e-5, DType::BF16).unwrap()));
    assert!(!kernels.iter().any(|k| k.contains("xbf16")), "a gradient wanted reads widened x: {kernels:?}");
    let g = backward(&ops::sum_all(&ops::cast(&y.unwrap(), DType::F32).unwrap()).unwrap()).unwrap();
    assert_eq!(g.get(&x).unwrap().dims(), x.dims());
}

/// x's gradient from its other use (the residual beside a block's first
/// norm: y = norm(x) + x, whose add reaches x first) summed by the backward
/// kernels as they write dx: the CPU twin's values and no separate add, in
/// the resident kernels and the loop one.
#[test]
fn group_norm_backward_sums_the_residual_gradient() {
    let cases: [(&[usize], usize, &str); 3] = [
        (&[2, 8, 16, 16], 4, "groupnorm_backward_resident_r4"),
        (&[1, 256, 4, 4], 8, "groupnorm_backward_resident_r4"),
        (&[2, 6, 5, 7], 2, "groupnorm_backward"),
    ];
    for (dims, groups, kernel) in cases {
        let c = dims[1];
        parity_check(&format!("norm + x {dims:?}"), &[dims, &[c], &[c]], |t| {
            ops::add(&group_norm_silu(&t[0], groups, Some(&t[1]), Some(&t[2]), 1e-5)?, &t[0])
        }, TOL);
        let x = Tensor::from_vec_on(randn(dims, 9), dims.to_vec(), parity_device()).unwrap().requires_grad_();
        let loss = ops::sum_all(&ops::add(&group_norm_silu(&x, groups, None, None, 1e-5).unwrap(), &x).unwrap()).unwrap();
        let kernels = kernels_launched(|| drop(backward(&loss).unwrap()));
        assert!(kernels.contains(&kernel) && !kernels.contains(&"binary_same"), "{dims:?}: {kernels:?}");
    }
}

/// `group_norm_concat_stored` at inference on CUDA: the resident kernel reads
/// x and x2 where they lie — no concatenation written — and gives the bits
/// of the norm of the written concatenation on the device, and the CPU
/// twin's values within TOL. Groups inside one part and groups straddling
/// the split (64 + 32 channels in groups of 12: group 5 takes 4 channels of
/// x and 8 of x2; 256 + 128 in groups of 48 at 4×4), groups held by a warp
/// (1 and 8 float4s a lane) and by the block (2, 4, 8, 12 float4s a thread),
/// plain and SiLU, f32 and bf16 storage.
/// S not a multiple of 4 (5×5), or a gradient wanted: the concatenation,
/// then the norm (gradients to both parts).
#[test]
fn group_norm_concat_reads_the_parts() {
    use minidiffusion::ops::group_norm::{group_norm_concat_stored, group_norm_silu_stored, group_norm_stored};
    use minidiffusion::tensor::DType;
    use minidiffusion::no_grad;
    // (x, x2's channels, groups, rounds)
    let cases: [(&[usize], usize, usize, &str); 8] = [
        (&[2, 64, 32, 32], 32, 8, "resident_concat_r12"),
        (&[2, 32, 32, 32], 32, 8, "resident_concat_r8"),
        (&[3, 256, 4, 4], 128, 8, "warp_concat_r8"),
        (&[2, 10, 16, 16], 6, 4, "warp_concat_r8"),
        (&[2, 6, 8, 8], 2, 4, "warp_concat_r1"),
        (&[1, 36, 16, 16], 28, 8, "resident_concat_r2"),
        (&[2, 20, 16, 16], 12, 2, "resident_concat_r4"),
        (&[2, 3, 5, 5], 3, 3, ""),
    ];
    for (k, &(xd, c2, groups, rounds)) in cases.iter().enumerate() {
        let mut x2d = xd.to_vec();
        x2d[1] = c2;
        let c = xd[1] + c2;
        let host = |d: &[usize], seed| Tensor::from_vec(randn(d, seed), d.to_vec()).unwrap();
        let (x, x2, w, b) = (host(xd, 40 + k as u64), host(&x2d, 50 + k as u64), host(&[c], 2), host(&[c], 3));
        let dev = |t: &Tensor| t.to_device(parity_device()).unwrap();
        let (xg, x2g, wg, bg) = (dev(&x), dev(&x2), dev(&w), dev(&b));
        for silu in [false, true] {
            for store in [DType::F32, DType::BF16] {
                let what = format!("{xd:?} ⧺ {c2} g{groups}, silu {silu}, {store:?}");
                let mut y = None;
                let kernels = kernels_launched(|| {
                    y = Some(no_grad(|| group_norm_concat_stored(&xg, &x2g, groups, Some(&wg), Some(&bg), 1e-5, silu, store)).unwrap())
                });
                let y = y.unwrap();
                let resident = if store == DType::F32 { format!("groupnorm_forward_{rounds}") } else { format!("groupnorm_forward_{}", rounds.replacen("concat_", "concat_bf16_", 1)) };
                if rounds.is_empty() {
                    assert!(kernels.contains(&"slab_copy"), "{what}: {kernels:?}");
                } else {
                    assert_eq!(kernels, [resident.as_str()], "{what}");
                }
                assert_eq!((y.dims(), y.dtype()), (&[xd[0], c, xd[2], xd[3]][..], store), "{what}");
                let joined = ops::concat(&[&xg, &x2g], 1).unwrap();
                let norm = if silu { group_norm_silu_stored } else { group_norm_stored };
                let written = norm(&joined, groups, Some(&wg), Some(&bg), 1e-5, store).unwrap();
                assert_eq!(y.to_vec(), written.to_vec(), "{what}: against the norm of the written concatenation");
                let twin = norm(&ops::concat(&[&x, &x2], 1).unwrap(), groups, Some(&w), Some(&b), 1e-5, store).unwrap().to_vec();
                let (atol, rtol) = if store == DType::F32 { (TOL.atol, TOL.rtol) } else { (1e-6, 1.0 / 128.0) };
                assert_close(&what, &y.to_vec(), &twin, atol, rtol);
            }
        }
    }
    // a gradient wanted: the concatenation and the norm on the tape
    parity_check("group_norm_concat with gradients", &[&[2, 8, 8, 8], &[2, 4, 8, 8], &[12], &[12]], |t| {
        group_norm_concat_stored(&t[0], &t[1], 3, Some(&t[2]), Some(&t[3]), 1e-5, true, DType::F32)
    }, TOL);
}
