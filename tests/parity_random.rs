//! CUDA Philox fills (kernels/random.cu, kernels/philox.cuh) against the CPU
//! stream of src/rng.rs. u32 and uniform values: bit for bit. Normals: within
//! 2 ulp (a GPU's double log/sin/cos may differ from the host libm in the last
//! bit of the double); on the CPU emulation of CUDA they are exact, and the
//! largest ulp distance seen is printed. Without a GPU these run on the emulation.

use minidiffusion::Device;
use minidiffusion::ops::random;
use minidiffusion::rng::PhiloxStream;
use minidiffusion::testing::parity_device;

/// (seed, offset, start, len): several keys and sub-streams, odd starts and
/// lengths, a start past 2^32 (high counter word), lengths past one 256-thread block.
const CASES: &[(u64, u64, u64, usize)] = &[
    (0, 0, 0, 1),
    (0, 0, 0, 4),
    (42, 0, 1, 7),
    (42, 1, 2, 5),
    (42, 7, 3, 2),
    (7, 3, 5, 1031),
    (0xDEAD_BEEF_CAFE_F00D, 0, 0, 1000),
    (0xDEAD_BEEF_CAFE_F00D, (1 << 33) + 7, 13, 333),
    (u64::MAX, u64::MAX, 6, 9),
    (123, 5, (1 << 32) + 3, 258),
    (1, 2, (1 << 34) - 2, 11),
];

/// Distance in representable f32 values (0 when equal; ±0 are equal).
fn ulp_distance(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let bits = x.to_bits() as i64;
        if bits & 0x8000_0000 != 0 { -(bits & 0x7fff_ffff) } else { bits }
    };
    (key(a) - key(b)).unsigned_abs()
}

#[test]
fn u32_stream_is_bit_exact() {
    let device = parity_device();
    for &(seed, offset, start, n) in CASES {
        let got = random::random_u32_at(n, seed, offset, start, device).unwrap();
        let mut want = vec![0u32; n];
        PhiloxStream::new(seed, offset).fill_u32(start, &mut want);
        assert_eq!(got, want, "u32 stream seed {seed:#x} offset {offset:#x} start {start} len {n}");
    }
    // the start-0 entry point
    let mut want = vec![0u32; 37];
    PhiloxStream::new(9, 4).fill_u32(0, &mut want);
    assert_eq!(random::random_u32(37, 9, 4, device).unwrap(), want);
    assert_eq!(random::random_u32(0, 9, 4, device).unwrap(), Vec::<u32>::new());
}

#[test]
fn uniform_is_bit_exact() {
    let device = parity_device();
    for &(seed, offset, start, n) in CASES {
        let got = random::rand_uniform_at([n], 0.0, 1.0, seed, offset, start, device).unwrap().to_vec();
        let mut want = vec![0f32; n];
        PhiloxStream::new(seed, offset).fill_uniform(start, &mut want);
        let (got_bits, want_bits): (Vec<u32>, Vec<u32>) =
            (got.iter().map(|x| x.to_bits()).collect(), want.iter().map(|x| x.to_bits()).collect());
        assert_eq!(got_bits, want_bits, "uniform seed {seed:#x} offset {offset:#x} start {start} len {n}");
        assert!(got.iter().all(|&u| (0.0..1.0).contains(&u)));
    }
    // an affine range: lo + (hi − lo)·u, same rounding on both devices, and as Tensor::rand_uniform
    let cuda = random::rand_uniform([3, 67], -2.0, 3.5, 11, 2, device).unwrap();
    assert_eq!(cuda.device(), device);
    assert_eq!(cuda.dims(), &[3, 67]);
    let cpu = random::rand_uniform([3, 67], -2.0, 3.5, 11, 2, Device::Cpu).unwrap();
    let reference = minidiffusion::Tensor::rand_uniform([3, 67], -2.0, 3.5, 11, 2);
    let bits = |t: &minidiffusion::Tensor| t.to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&cuda), bits(&cpu));
    assert_eq!(bits(&cpu), bits(&reference));
}

#[test]
fn normals_within_2_ulp() {
    let device = parity_device();
    let mut max_ulp = 0u64;
    let mut count = 0usize;
    for &(seed, offset, start, n) in CASES {
        let got = random::randn_at([n], seed, offset, start, device).unwrap().to_vec();
        let mut want = vec![0f32; n];
        PhiloxStream::new(seed, offset).fill_normal(start, &mut want);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let d = ulp_distance(g, w);
            assert!(d <= 2, "normal seed {seed:#x} offset {offset:#x} element {}: {g} vs {w} ({d} ulp)", start + i as u64);
            max_ulp = max_ulp.max(d);
        }
        count += n;
    }
    eprintln!("parity_random: {count} normals on {device}, max distance {max_ulp} ulp");
    if matches!(device, Device::Cuda(d) if d.emulated) {
        // host libm on both sides: exact
        assert_eq!(max_ulp, 0, "the emulation uses the host libm: normals must be exact");
    }
}

#[test]
fn split_fills_equal_one_fill_on_device() {
    let device = parity_device();
    let whole = random::randn_at([50], 5, 1, 3, device).unwrap().to_vec();
    let a = random::randn_at([6], 5, 1, 3, device).unwrap().to_vec();
    let b = random::randn_at([44], 5, 1, 9, device).unwrap().to_vec();
    assert_eq!([a, b].concat(), whole);
}

#[test]
fn cpu_randn_equals_philox_fill_normal() {
    for &(seed, offset, start, n) in &CASES[..8] {
        let got = random::randn_at([n], seed, offset, start, Device::Cpu).unwrap().to_vec();
        let mut want = vec![0f32; n];
        PhiloxStream::new(seed, offset).fill_normal(start, &mut want);
        assert_eq!(got, want);
    }
    let t = random::randn([4, 9], 3, 8, Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[4, 9]);
    assert_eq!(t.to_vec(), minidiffusion::Tensor::randn([4, 9], 3, 8).to_vec());
    assert!(!t.requires_grad());
}

#[test]
fn randn_on_device_has_shape_and_device() {
    let device = parity_device();
    let t = random::randn([2, 3, 5, 5], 77, 0, device).unwrap();
    assert_eq!(t.device(), device);
    assert_eq!(t.dims(), &[2, 3, 5, 5]);
    let empty = random::randn([0, 3], 77, 0, device).unwrap();
    assert_eq!(empty.numel(), 0);
}
