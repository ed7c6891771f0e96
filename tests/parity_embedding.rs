//! The sinusoidal timestep embedding on CUDA (kernels/embedding.cu) against the
//! CPU twin, t up to 999, even and odd dims, both orders, freq_shift 0 and 1.
//!
//! Tolerance: |cuda − cpu| ≤ 2e-4 (ParityTol { atol: 2e-4, rtol: 0 }). Both
//! compute f_i = expf(nlp·i / denom), t·f_i, sinf/cosf in the same f32 order,
//! but a GPU's expf may differ from the host libm by up to 2 ulp (≤ 1.2e-7
//! for f < 1), which t ≤ 999 multiplies into ≤ 1.2e-4 of argument, plus the
//! few-ulp sinf/cosf difference. On the CPU emulation of CUDA (host libm) the
//! result is exact, and that is asserted; the largest difference is printed.

use minidiffusion::testing::{ParityTol, assert_close, parity_device};
use minidiffusion::{Device, Tensor, ops};

const TOL: ParityTol = ParityTol { atol: 2e-4, rtol: 0.0 };

#[test]
fn embedding_cuda_equals_cpu() {
    let device = parity_device();
    let t: Vec<f32> = vec![0.0, 1.0, 2.5, 17.0, 100.0, 250.5, 500.0, 777.0, 998.0, 999.0];
    let mut max_diff = 0f32;
    for (dim, flip, shift) in [(32, true, 1.0), (33, false, 0.0), (64, false, 1.0), (7, true, 0.0), (320, true, 1.0)] {
        let cpu = ops::timestep_embedding(&Tensor::from_vec(t.clone(), [t.len()]).unwrap(), dim, flip, shift, 10000.0).unwrap();
        let dev_t = Tensor::from_vec_on(t.clone(), [t.len()], device).unwrap();
        let dev = ops::timestep_embedding(&dev_t, dim, flip, shift, 10000.0).unwrap();
        assert_eq!(dev.device(), device);
        assert_eq!(dev.dims(), cpu.dims());
        let (d, c) = (dev.to_vec(), cpu.to_vec());
        let name = format!("timestep_embedding dim {dim} flip {flip} shift {shift} ({device} vs cpu)");
        assert_close(&name, &d, &c, TOL.atol, TOL.rtol);
        if dim % 2 == 1 {
            assert!(d.chunks(dim).all(|row| row[dim - 1] == 0.0), "{name}: odd-dim padding");
        }
        max_diff = d.iter().zip(&c).map(|(a, b)| (a - b).abs()).fold(max_diff, f32::max);
        if matches!(device, Device::Cuda(cd) if cd.emulated) {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d), bits(&c), "{name}: the emulation uses the host libm and must be exact");
        }
    }
    eprintln!("parity_embedding: max |cuda − cpu| = {max_diff:e} on {device}");
}

#[test]
fn embedding_cuda_max_period_and_empty() {
    let device = parity_device();
    let t = vec![3.0, 640.0, 999.0];
    let cpu = ops::timestep_embedding(&Tensor::from_vec(t.clone(), [3]).unwrap(), 16, false, 1.0, 1000.0).unwrap();
    let dev = ops::timestep_embedding(&Tensor::from_vec_on(t, [3], device).unwrap(), 16, false, 1.0, 1000.0).unwrap();
    assert_close("timestep_embedding max_period 1000", &dev.to_vec(), &cpu.to_vec(), TOL.atol, TOL.rtol);
    let empty = ops::timestep_embedding(&Tensor::zeros_on([0], device).unwrap(), 8, true, 1.0, 10000.0).unwrap();
    assert_eq!(empty.dims(), &[0, 8]);
}

/// The embedding lookup (kernels/lookup.cu) and its table gradient against the
/// CPU twin: repeated and unused rows, exact (copies and short sums in order);
/// an index naming no row gives a NaN row on the device.
#[test]
fn lookup_cuda_equals_cpu() {
    use minidiffusion::Shape;
    use minidiffusion::testing::{parity_check_at, randn};
    let idx: Vec<f32> = (0..37).map(|i| ((i * 7) % 10) as f32).collect();
    parity_check_at(
        "embedding_lookup",
        vec![(randn(&[11, 33], 4), Shape::from([11, 33])), (idx, Shape::from([37]))],
        |x| ops::embedding_lookup(&x[0], &x[1].detach()),
        ParityTol { atol: 0.0, rtol: 0.0 },
    );
    let device = parity_device();
    let table = Tensor::from_vec_on(vec![1.0; 8], [4, 2], device).unwrap();
    let out = ops::embedding_lookup(&table, &Tensor::from_vec_on(vec![3.0, 4.0, 0.5, -1.0], [4], device).unwrap()).unwrap().to_vec();
    assert_eq!(&out[..2], &[1.0, 1.0]);
    assert!(out[2..].iter().all(|v| v.is_nan()), "{out:?}");
}

/// The Gaussian Fourier features (kernels/embedding.cu) against the CPU twin:
/// the same f32 order, so only logf/sinf/cosf ulps differ, which |p| ≤ ~300
/// multiplies (same 2e-4 bar as above); exact on the emulation.
#[test]
fn fourier_cuda_equals_cpu() {
    let device = parity_device();
    let sigma = vec![0.002, 0.01, 0.3, 1.0, 2.5, 50.0, 348.0];
    let w: Vec<f32> = minidiffusion::testing::randn(&[24], 9).iter().map(|v| 16.0 * v).collect();
    for flip in [false, true] {
        let cpu = ops::fourier_embedding(&Tensor::from_vec(sigma.clone(), [7]).unwrap(), &Tensor::from_vec(w.clone(), [24]).unwrap(), flip).unwrap();
        let dev = ops::fourier_embedding(&Tensor::from_vec_on(sigma.clone(), [7], device).unwrap(), &Tensor::from_vec_on(w.clone(), [24], device).unwrap(), flip).unwrap();
        assert_eq!(dev.device(), device);
        let (d, c) = (dev.to_vec(), cpu.to_vec());
        assert_close(&format!("fourier_embedding flip {flip} ({device} vs cpu)"), &d, &c, TOL.atol, TOL.rtol);
        if matches!(device, Device::Cuda(cd) if cd.emulated) {
            assert!(d.iter().zip(&c).all(|(a, b)| a.to_bits() == b.to_bits()), "fourier flip {flip}: the emulation must be exact");
        }
    }
}
