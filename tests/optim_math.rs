//! Checks for `optim::one_cycle` and `optim::adamw_math` against literal values
//! printed by `scripts/optim_reference.py` (a pure-Python mirror of PyTorch's
//! `OneCycleLR.get_lr` / `_annealing_cos` and `_single_tensor_adamw` with its
//! f32 CPU kernels).

use minidiffusion::optim::adamw_math::{AdamWHyper, adamw_step};
use minidiffusion::optim::one_cycle::OneCycle;

fn assert_rel(actual: f64, expected: f64, rel: f64, what: &str) {
    let err = (actual - expected).abs();
    let tol = rel * expected.abs().max(f64::MIN_POSITIVE);
    assert!(
        err <= tol,
        "{what}: got {actual:e}, expected {expected:e} (rel err {:e} > {rel:e})",
        err / expected.abs()
    );
}

// ---------------------------------------------------------------- OneCycle

/// (step, lr, beta1) for OneCycle(max_lr=1e-2, total_steps=100), from scripts/optim_reference.py.
const REF_100: [(usize, f64, f64); 7] = [
    (0, 0.0003999999999999993, 0.95),
    (1, 0.00042813780565907275, 0.9497068978577179),
    (15, 0.005459866761210004, 0.897293054570729),
    (29, 0.01, 0.85),
    (30, 0.009994965352845242, 0.8500503466729342),
    (50, 0.00793893450575732, 0.8706107373853763),
    (99, 4e-08, 0.95),
];

/// OneCycle(max_lr=3e-4, total_steps=7): phase 1 ends at 0.3*7-1 = 1.1, so only
/// step 0 is warm-up and step 1 is already annealing (pct measured from 1.1).
const REF_7: [(usize, f64, f64); 7] = [
    (0, 1.200000000000002e-05, 0.95),
    (1, 0.0002941669882004876, 0.8520253513192751),
    (2, 0.00027571331288091315, 0.858095594755408),
    (3, 0.00020180515094416352, 0.8827317472789346),
    (4, 0.00010732163272189712, 0.9142263793315516),
    (5, 2.9789037567979678e-05, 0.9400706810933978),
    (6, 1.1999999999999998e-09, 0.95),
];

/// OneCycle(max_lr=1e-3, total_steps=3): phase 1 ends at 0.9-1 < 0, so even
/// step 0 is in phase 2 (it never reaches max_lr), as in PyTorch.
const REF_3: [(usize, f64, f64); 3] = [
    (0, 0.0009944154354509117, 0.8505584586887436),
    (1, 0.00046263710266697503, 0.9037365046793212),
    (2, 4e-09, 0.95),
];

#[test]
fn one_cycle_defaults_match_pytorch() {
    let s = OneCycle::new(1e-2, 100);
    assert_eq!(
        s,
        OneCycle {
            max_lr: 1e-2,
            total_steps: 100,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            base_momentum: 0.85,
            max_momentum: 0.95,
        }
    );
}

#[test]
fn one_cycle_reference_values_100_steps() {
    let s = OneCycle::new(1e-2, 100);
    for &(step, lr, b1) in &REF_100 {
        assert_rel(s.lr(step), lr, 1e-12, &format!("lr({step})"));
        assert_rel(s.beta1(step), b1, 1e-12, &format!("beta1({step})"));
    }
}

#[test]
fn one_cycle_reference_values_odd_split() {
    let s = OneCycle::new(3e-4, 7);
    for &(step, lr, b1) in &REF_7 {
        assert_rel(s.lr(step), lr, 1e-12, &format!("T=7 lr({step})"));
        assert_rel(s.beta1(step), b1, 1e-12, &format!("T=7 beta1({step})"));
    }
    let s = OneCycle::new(1e-3, 3);
    for &(step, lr, b1) in &REF_3 {
        assert_rel(s.lr(step), lr, 1e-12, &format!("T=3 lr({step})"));
        assert_rel(s.beta1(step), b1, 1e-12, &format!("T=3 beta1({step})"));
    }
}

#[test]
fn one_cycle_endpoints() {
    let max = 1e-2;
    let s = OneCycle::new(max, 100);
    assert_rel(s.lr(0), max / 25.0, 1e-12, "lr(0) = max/25");
    assert_rel(s.lr(29), max, 1e-12, "lr(end of warm-up) = max");
    assert_rel(s.lr(99), max / 25e4, 1e-12, "lr(99) = max/25e4");
    assert_rel(s.beta1(0), 0.95, 1e-12, "beta1(0)");
    assert_rel(s.beta1(29), 0.85, 1e-12, "beta1(29)");
    assert_rel(s.beta1(99), 0.95, 1e-12, "beta1(99)");
    assert_rel(s.initial_lr(), max / 25.0, 1e-15, "initial_lr");
    assert_rel(s.min_lr(), max / 25e4, 1e-15, "min_lr");
}

#[test]
fn one_cycle_monotone_in_each_phase() {
    for &(max, total) in &[(1e-2, 100usize), (3e-4, 7), (1e-3, 1000), (5e-4, 11)] {
        let s = OneCycle::new(max, total);
        let end1 = s.pct_start * total as f64 - 1.0;
        for step in 1..total {
            let (lr0, lr1) = (s.lr(step - 1), s.lr(step));
            let (b0, b1) = (s.beta1(step - 1), s.beta1(step));
            if (step as f64) <= end1 {
                assert!(lr1 > lr0, "T={total}: lr not increasing at {step}");
                assert!(b1 < b0, "T={total}: beta1 not decreasing at {step}");
            } else if ((step - 1) as f64) > end1 {
                assert!(lr1 < lr0, "T={total}: lr not decreasing at {step}");
                assert!(b1 > b0, "T={total}: beta1 not increasing at {step}");
            }
            assert!(lr1 > 0.0 && lr1 <= max * (1.0 + 1e-12));
            assert!((0.85 - 1e-12..=0.95 + 1e-12).contains(&b1));
        }
    }
}

#[test]
fn one_cycle_clamps_past_end() {
    let s = OneCycle::new(1e-2, 100);
    for step in [99usize, 100, 101, 10_000, usize::MAX] {
        assert_eq!(s.lr(step), s.lr(99), "lr({step})");
        assert_eq!(s.beta1(step), s.beta1(99), "beta1({step})");
    }
    // Degenerate schedules never panic or produce NaN.
    for total in [0usize, 1, 2] {
        let s = OneCycle::new(1e-2, total);
        for step in 0..4 {
            assert!(
                s.lr(step).is_finite() && s.beta1(step).is_finite(),
                "T={total} step={step}"
            );
        }
    }
    // Zero-length phase 1 (0.25*4 - 1 == 0): step 0 takes the phase's end value.
    let s = OneCycle {
        pct_start: 0.25,
        ..OneCycle::new(1e-2, 4)
    };
    assert_eq!(s.lr(0), 1e-2);
    assert_eq!(s.beta1(0), 0.85);
}

// ------------------------------------------------------------------- AdamW

const HYPER: AdamWHyper = AdamWHyper {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-5,
    weight_decay: 0.01,
};
const P0: [f32; 6] = [0.5, -1.25, 2.0, 0.0, -0.75, 3.5];
const GRADS: [[f32; 6]; 3] = [
    [0.1, -0.2, 0.3, 1e-3, -4.0, 0.0],
    [-0.05, 0.4, 0.25, -2e-3, 3.0, 0.5],
    [0.2, 0.1, -0.6, 1e-4, -1.0, -0.5],
];
/// (params, m, v) after steps 1, 2, 3, from scripts/optim_reference.py.
const EXPECTED: [[[f64; 6]; 3]; 3] = [
    [
        [
            0.4899509847164154,
            -1.2398754358291626,
            1.9898003339767456,
            -0.009900989942252636,
            -0.7399250268936157,
            3.499650001525879,
        ],
        [
            0.010000002570450306,
            -0.020000005140900612,
            0.030000008642673492,
            0.00010000002657761797,
            -0.40000009536743164,
            0.0,
        ],
        [
            9.999871508625802e-06,
            3.9999486034503207e-05,
            8.999884448712692e-05,
            9.999872041532853e-10,
            0.015999794006347656,
            0.0,
        ],
    ],
    [
        [
            0.48723894357681274,
            -1.2434123754501343,
            1.9796899557113647,
            -0.006261969450861216,
            -0.7389577627182007,
            3.491858959197998,
        ],
        [
            0.00400000112131238,
            0.022000005468726158,
            0.0520000159740448,
            -0.00011000004451489076,
            -0.06000000238418579,
            0.050000011920928955,
        ],
        [
            1.2489839718909934e-05,
            0.00019995743059553206,
            0.00015240804350469261,
            4.998935931865844e-09,
            0.02498367801308632,
            0.00024999678134918213,
        ],
    ],
    [
        [
            0.48060959577560425,
            -1.2474443912506104,
            1.9806700944900513,
            -0.003739271080121398,
            -0.7369530200958252,
            3.4919614791870117,
        ],
        [
            0.023600004613399506,
            0.02980000711977482,
            -0.013200007379055023,
            -8.900003740563989e-05,
            -0.15400001406669617,
            -0.005000002682209015,
        ],
        [
            5.2476836572168395e-05,
            0.00020975734514649957,
            0.000512251048348844,
            5.003937264547176e-09,
            0.025958681479096413,
            0.0004997435607947409,
        ],
    ],
];

fn assert_slice_rel(actual: &[f32], expected: &[f64], rel: f64, what: &str) {
    assert_eq!(actual.len(), expected.len());
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if e == 0.0 {
            assert_eq!(a, 0.0, "{what}[{i}]");
        } else {
            assert_rel(a as f64, e, rel, &format!("{what}[{i}]"));
        }
    }
}

#[test]
fn adamw_three_steps_match_reference() {
    let mut p = P0;
    let (mut m, mut v) = ([0f32; 6], [0f32; 6]);
    for (k, g) in GRADS.iter().enumerate() {
        adamw_step(&mut p, g, &mut m, &mut v, k as u64 + 1, HYPER);
        let [ep, em, ev] = &EXPECTED[k];
        assert_slice_rel(&p, ep, 1e-6, &format!("params after step {}", k + 1));
        assert_slice_rel(&m, em, 1e-6, &format!("m after step {}", k + 1));
        assert_slice_rel(&v, ev, 1e-6, &format!("v after step {}", k + 1));
    }
}

#[test]
fn adamw_three_steps_bit_exact_with_reference() {
    // The reference emulates each f32 operation exactly, in PyTorch's order, and
    // Rust does not fuse multiply-adds, so the results agree bit for bit.
    let mut p = P0;
    let (mut m, mut v) = ([0f32; 6], [0f32; 6]);
    for (k, g) in GRADS.iter().enumerate() {
        adamw_step(&mut p, g, &mut m, &mut v, k as u64 + 1, HYPER);
        for i in 0..6 {
            assert_eq!(p[i], EXPECTED[k][0][i] as f32, "p[{i}] step {}", k + 1);
            assert_eq!(m[i], EXPECTED[k][1][i] as f32, "m[{i}] step {}", k + 1);
            assert_eq!(v[i], EXPECTED[k][2][i] as f32, "v[{i}] step {}", k + 1);
        }
    }
}

#[test]
fn adamw_first_step_is_sign_times_lr_plus_decay() {
    // With m = v = 0 at t = 1: m/bc1 = g and sqrt(v)/sqrt(bc2) = |g|, so
    // p1 = p0*(1 - lr*wd) - lr*g/(|g| + eps) = p0*(1 - lr*wd) - lr*sign(g)*|g|/(|g|+eps).
    let h = HYPER;
    let (lr, wd, eps) = (h.lr as f64, h.weight_decay as f64, h.eps as f64);
    let g: [f32; 8] = [0.3, -0.7, 1e-5, -1e-3, 42.0, 2.5e-6, -1e-8, 0.0];
    let step = |gi: f64| {
        if gi == 0.0 {
            0.0
        } else {
            lr * gi.signum() * gi.abs() / (gi.abs() + eps)
        }
    };

    // (a) p0 = 0: no decay, so p1 is exactly minus the update (checked to 1e-6).
    let mut p = [0f32; 8];
    let (mut m, mut v) = ([0f32; 8], [0f32; 8]);
    adamw_step(&mut p, &g, &mut m, &mut v, 1, h);
    for i in 0..8 {
        let want = -step(g[i] as f64);
        if want == 0.0 {
            assert_eq!(p[i], 0.0, "update[{i}]");
        } else {
            assert_rel(p[i] as f64, want, 1e-6, &format!("update[{i}]"));
        }
    }
    // |g| >> eps: the step is ~lr against the gradient's sign; |g| == eps: lr/2.
    assert_rel(p[4] as f64, -lr, 1e-6, "step for g=42");
    assert_rel(p[2] as f64, -lr / 2.0, 1e-6, "step for g=eps");

    // (b) with non-zero params: decay plus the same update, p to 1e-6.
    let p0: [f32; 8] = [1.0, -2.0, 0.25, 3.0, -0.5, 0.0, 10.0, -7.5];
    let mut p = p0;
    let (mut m, mut v) = ([0f32; 8], [0f32; 8]);
    adamw_step(&mut p, &g, &mut m, &mut v, 1, h);
    for i in 0..8 {
        let expected = p0[i] as f64 * (1.0 - lr * wd) - step(g[i] as f64);
        assert_rel(p[i] as f64, expected, 1e-6, &format!("p[{i}]"));
    }
}

#[test]
fn adamw_zero_grad_only_decays() {
    let mut p = [1.5f32, -3.0, 0.0];
    let (mut m, mut v) = ([0f32; 3], [0f32; 3]);
    adamw_step(&mut p, &[0.0; 3], &mut m, &mut v, 1, HYPER);
    let decay = (1.0 - 1e-2f32 as f64 * 0.01f32 as f64) as f32;
    assert_eq!(p, [1.5 * decay, -3.0 * decay, 0.0]);
    assert_eq!((m, v), ([0.0; 3], [0.0; 3]));
}

/// Textbook AdamW in f64 (no PyTorch rounding details).
fn adamw_f64(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], t: u64, h: AdamWHyper) {
    let (lr, b1, b2, eps, wd) = (
        h.lr as f64,
        h.beta1 as f64,
        h.beta2 as f64,
        h.eps as f64,
        h.weight_decay as f64,
    );
    let bc1 = 1.0 - b1.powi(t as i32);
    let bc2 = 1.0 - b2.powi(t as i32);
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        p[i] -= (lr / bc1) * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
    }
}

#[test]
fn adamw_matches_textbook_formula_over_many_steps_both_lerp_branches() {
    for &beta1 in &[0.9f32, 0.3, 0.5] {
        let h = AdamWHyper {
            lr: 3e-3,
            beta1,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let n = 37;
        let mut p32: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 2.0).collect();
        let mut p64: Vec<f64> = p32.iter().map(|&x| x as f64).collect();
        let (mut m32, mut v32) = (vec![0f32; n], vec![0f32; n]);
        let (mut m64, mut v64) = (vec![0f64; n], vec![0f64; n]);
        for t in 1..=50u64 {
            let g32: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 1.3 + t as f32 * 0.7).cos() * 0.5 + 0.1 * p32[i])
                .collect();
            let g64: Vec<f64> = g32.iter().map(|&x| x as f64).collect();
            adamw_step(&mut p32, &g32, &mut m32, &mut v32, t, h);
            adamw_f64(&mut p64, &g64, &mut m64, &mut v64, t, h);
            // Re-sync so the comparison measures one step's rounding, not drift.
            for i in 0..n {
                assert!(
                    (p32[i] as f64 - p64[i]).abs() <= 2e-6 * p64[i].abs().max(1e-3),
                    "beta1={beta1} t={t} i={i}: {} vs {}",
                    p32[i],
                    p64[i]
                );
                p64[i] = p32[i] as f64;
                m64[i] = m32[i] as f64;
                v64[i] = v32[i] as f64;
            }
        }
    }
}

#[test]
fn adamw_long_slice_equals_elementwise() {
    // The vectorised loop (with a scalar tail) must equal one-element calls.
    let n = 1037;
    let h = AdamWHyper {
        lr: 1e-3,
        beta1: 0.95,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let mut p: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).sin()).collect();
    let mut p1 = p.clone();
    let (mut m, mut v) = (vec![0.01f32; n], vec![1e-4f32; n]);
    let (mut m1, mut v1) = (m.clone(), v.clone());
    let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.73).cos() * 1e-2).collect();
    adamw_step(&mut p, &g, &mut m, &mut v, 7, h);
    for i in 0..n {
        adamw_step(
            &mut p1[i..i + 1],
            &g[i..i + 1],
            &mut m1[i..i + 1],
            &mut v1[i..i + 1],
            7,
            h,
        );
    }
    assert_eq!(p, p1);
    assert_eq!(m, m1);
    assert_eq!(v, v1);
}

#[test]
fn adamw_empty_slices_are_fine() {
    adamw_step(&mut [], &[], &mut [], &mut [], 1, HYPER);
}

#[test]
#[should_panic(expected = "length mismatch")]
fn adamw_length_mismatch_panics() {
    let mut p = [0f32; 3];
    let (mut m, mut v) = ([0f32; 3], [0f32; 3]);
    adamw_step(&mut p, &[0.0; 2], &mut m, &mut v, 1, HYPER);
}

#[test]
fn large_parameters_update_with_the_bits_of_one_value_at_a_time() {
    // past 32,768 values the update runs in runs on the rayon threads, and
    // always at the CPU's widest vectors: every value must come out as
    // updating it alone does (the plain single-value path); both lerp
    // branches (beta1 0.9: weight 0.1; beta1 0.3: weight 0.7), three steps
    let n = 100_003;
    let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 20_011) as f32 / 10_005.5) - 1.0;
    for beta1 in [0.9, 0.3] {
        let h = AdamWHyper { lr: 3e-3, beta1, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let (mut p, mut m, mut v) = ((0..n).map(|i| val(i, 1)).collect::<Vec<f32>>(), vec![0.0f32; n], vec![0.0f32; n]);
        let (mut p1, mut m1, mut v1) = (p.clone(), m.clone(), v.clone());
        for t in 1..=3u64 {
            let g: Vec<f32> = (0..n).map(|i| val(i, 2 + t as usize)).collect();
            adamw_step(&mut p, &g, &mut m, &mut v, t, h);
            for i in 0..n {
                adamw_step(&mut p1[i..i + 1], &g[i..i + 1], &mut m1[i..i + 1], &mut v1[i..i + 1], t, h);
            }
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert!(bits(&p) == bits(&p1) && bits(&m) == bits(&m1) && bits(&v) == bits(&v1), "beta1 {beta1}: bits differ");
    }
}
