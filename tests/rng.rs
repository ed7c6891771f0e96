//! Tests for the Philox4x32-10 stream in `minidiffusion::rng`.

use minidiffusion::rng::{PhiloxStream, philox4x32_10};

// ---------- 1. Known-answer vectors (Random123 kat_vectors, philox4x32 10 rounds) ----------

#[test]
fn philox_kat_zero() {
    assert_eq!(
        philox4x32_10([0, 0, 0, 0], [0, 0]),
        [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    );
}

#[test]
fn philox_kat_all_ones() {
    assert_eq!(
        philox4x32_10([0xffffffff; 4], [0xffffffff; 2]),
        [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
    );
}

#[test]
fn philox_kat_pi_digits() {
    assert_eq!(
        philox4x32_10(
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0]
        ),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

// ---------- 2. Stream mapping ----------

#[test]
fn stream_block_uses_documented_counter_and_key() {
    let seed = 0x0123_4567_89ab_cdefu64;
    let offset = 0xfedc_ba98_7654_3210u64;
    let stream = PhiloxStream::new(seed, offset);
    assert_eq!(stream, PhiloxStream { seed, offset });
    let b = 0x1_0000_0005u64; // exercises the high counter word
    let expected = philox4x32_10(
        [
            b as u32,
            (b >> 32) as u32,
            offset as u32,
            (offset >> 32) as u32,
        ],
        [seed as u32, (seed >> 32) as u32],
    );
    assert_eq!(stream.block(b), expected);
}

#[test]
fn u32_at_is_lane_of_block() {
    let stream = PhiloxStream::new(42, 7);
    for j in (0..64u64).chain([1 << 33, (1 << 33) + 3, u64::MAX - 2]) {
        assert_eq!(
            stream.u32_at(j),
            stream.block(j / 4)[(j % 4) as usize],
            "j = {j}"
        );
    }
}

#[test]
fn fill_u32_from_odd_start_matches_fill_from_zero() {
    let stream = PhiloxStream::new(1234, 5);
    let mut full = vec![0u32; 103];
    stream.fill_u32(0, &mut full);
    for (j, &x) in full.iter().enumerate() {
        assert_eq!(x, stream.u32_at(j as u64));
    }
    for start in [1usize, 2, 3, 5, 7, 13] {
        for len in [0usize, 1, 2, 3, 4, 5, 9, 50] {
            let mut part = vec![0u32; len];
            stream.fill_u32(start as u64, &mut part);
            assert_eq!(
                part[..],
                full[start..start + len],
                "start {start} len {len}"
            );
        }
    }
}

#[test]
fn different_seeds_or_offsets_give_different_streams() {
    let fill = |seed, offset| {
        let mut v = vec![0u32; 64];
        PhiloxStream::new(seed, offset).fill_u32(0, &mut v);
        v
    };
    let base = fill(1, 0);
    assert_ne!(base, fill(2, 0));
    assert_ne!(base, fill(1, 1));
    assert_ne!(base, fill(1 << 32, 0)); // high seed word matters
    assert_ne!(base, fill(1, 1 << 32)); // high offset word matters
    assert_ne!(fill(2, 0), fill(1, 1));
    // Not merely shifted: almost no element of one stream equals the same index of another.
    let other = fill(2, 0);
    let same = base.iter().zip(&other).filter(|(a, b)| a == b).count();
    assert!(same <= 1, "{same} equal elements");
}

// ---------- 3. Normals ----------

#[test]
fn fill_normal_from_odd_start_matches_fill_from_zero() {
    let stream = PhiloxStream::new(99, 3);
    let mut full = vec![0f32; 70];
    stream.fill_normal(0, &mut full);
    for start in [1usize, 2, 3, 6, 11] {
        for len in [1usize, 2, 3, 4, 7, 40] {
            let mut part = vec![0f32; len];
            stream.fill_normal(start as u64, &mut part);
            let got: Vec<u32> = part.iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = full[start..start + len]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(got, want, "start {start} len {len}");
        }
    }
}

#[test]
fn normal_statistics_over_one_million() {
    const COUNT: usize = 1_000_000;
    let mut z = vec![0f32; COUNT];
    PhiloxStream::new(2024, 0).fill_normal(0, &mut z);
    assert!(z.iter().all(|v| v.is_finite()), "non-finite normal");
    // Box–Muller with u1 >= 2^-24 bounds |z| by sqrt(48 ln 2) ≈ 5.77.
    assert!(z.iter().all(|v| v.abs() <= 5.8));
    let n = COUNT as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
    let variance = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let within_one_sigma = z.iter().filter(|v| v.abs() < 1.0).count() as f64 / n;
    assert!(mean.abs() < 0.005, "mean {mean}");
    assert!((variance - 1.0).abs() < 0.01, "variance {variance}");
    assert!(
        (within_one_sigma - 0.682_689).abs() < 0.005,
        "P(|z|<1) = {within_one_sigma}"
    );
    // Each lane position should also be unbiased (catches a lane-mapping slip).
    for lane in 0..4 {
        let lane_mean = z
            .iter()
            .skip(lane)
            .step_by(4)
            .map(|&v| v as f64)
            .sum::<f64>()
            / (n / 4.0);
        assert!(lane_mean.abs() < 0.01, "lane {lane} mean {lane_mean}");
    }
}

// ---------- 4. Uniforms and bounded integers ----------

#[test]
fn uniform_in_unit_interval_and_exact() {
    let stream = PhiloxStream::new(7, 11);
    const COUNT: usize = 200_000;
    let mut u = vec![0f32; COUNT];
    stream.fill_uniform(0, &mut u);
    let mut raw = vec![0u32; COUNT];
    stream.fill_u32(0, &mut raw);
    for (&v, &x) in u.iter().zip(&raw) {
        assert!((0.0..1.0).contains(&v), "{v}");
        assert_eq!(v, (x >> 8) as f32 / 16_777_216.0);
        assert_eq!((v * 16_777_216.0) as u32, x >> 8, "not exact");
    }
    let mean = u.iter().map(|&v| v as f64).sum::<f64>() / COUNT as f64;
    // sd of the mean = sqrt(1/12 / N) ≈ 0.00065; allow ~6 sd.
    assert!((mean - 0.5).abs() < 0.004, "mean {mean}");
    // Odd start matches.
    let mut part = vec![0f32; 9];
    stream.fill_uniform(5, &mut part);
    assert_eq!(part[..], u[5..14]);
}

#[test]
fn fill_below_in_range_and_roughly_uniform() {
    let stream = PhiloxStream::new(31337, 2);
    for n in [1u32, 2, 3, 10, 1000, u32::MAX] {
        let mut v = vec![0u32; 10_000];
        stream.fill_below(0, n, &mut v);
        assert!(v.iter().all(|&x| x < n), "value out of 0..{n}");
        let mut raw = vec![0u32; 10_000];
        stream.fill_u32(0, &mut raw);
        for (&x, &r) in v.iter().zip(&raw) {
            assert_eq!(x, ((r as u64 * n as u64) >> 32) as u32);
        }
    }

    // Chi-square over n = 100 bins, 1,000,000 draws: 99 degrees of freedom, mean 99,
    // sd sqrt(198) ≈ 14.1. Tolerance: chi2 < 99 + 6 sd ≈ 184 (p < 1e-7 for a fair RNG),
    // and chi2 > 40 to reject suspiciously perfect (non-random) output.
    const BINS: u32 = 100;
    const DRAWS: usize = 1_000_000;
    let mut v = vec![0u32; DRAWS];
    stream.fill_below(3, BINS, &mut v);
    let mut counts = vec![0u64; BINS as usize];
    for &x in &v {
        counts[x as usize] += 1;
    }
    let expected = DRAWS as f64 / BINS as f64;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    assert!(chi2 < 184.0 && chi2 > 40.0, "chi2 {chi2}");
}

// ---------- 5. Box–Muller by hand on one block ----------

#[test]
fn box_muller_matches_hand_computation_bit_exactly() {
    let stream = PhiloxStream::new(0xdead_beef, 17);
    let b = 12_345u64;
    let x = stream.block(b);
    let two_pow_minus_24 = 1.0f64 / 16_777_216.0;
    let pair = |x_a: u32, x_b: u32| -> [f32; 2] {
        let u1 = ((x_a >> 8) as f64 + 1.0) * two_pow_minus_24;
        let u2 = (x_b >> 8) as f64 * two_pow_minus_24;
        assert!(u1 > 0.0 && u1 <= 1.0 && (0.0..1.0).contains(&u2));
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        [(r * theta.cos()) as f32, (r * theta.sin()) as f32]
    };
    let [z0, z1] = pair(x[0], x[1]);
    let [z2, z3] = pair(x[2], x[3]);
    let expected = [z0, z1, z2, z3];

    let mut got = [0f32; 4];
    stream.fill_normal(4 * b, &mut got);
    assert_eq!(got.map(f32::to_bits), expected.map(f32::to_bits));

    // Same values when reached from an unaligned start spanning the block.
    let mut wider = [0f32; 6];
    stream.fill_normal(4 * b - 1, &mut wider);
    assert_eq!(
        wider[1..5].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        expected.map(f32::to_bits)
    );

    // Extreme inputs: x_a = 0 gives u1 = 2^-24 (largest radius), x_a = max gives u1 = 1 (r = 0).
    let [big, zero_angle_sin] = pair(0, 0);
    assert!((big as f64 - (48.0f64 * std::f64::consts::LN_2).sqrt()).abs() < 1e-6);
    assert_eq!(zero_angle_sin, 0.0);
    assert_eq!(pair(u32::MAX, 12345), [0.0, 0.0]);
}
