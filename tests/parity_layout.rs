//! CUDA against the CPU twin: sums over axes, broadcast_to, permute, concat,
//! narrow, reshape — forward and backward, on odd shapes.

use minidiffusion::testing::{ParityTol, parity_check};
use minidiffusion::{Shape, ops};

#[test]
fn reduce_parity() {
    parity_check("sum_axis1", &[&[3, 37, 5]], |x| ops::sum(&x[0], &[1], false), ParityTol::REDUCTION);
    parity_check("sum_axes02_keepdim", &[&[4, 3, 29]], |x| ops::sum(&x[0], &[0, 2], true), ParityTol::REDUCTION);
    parity_check("sum_all_large", &[&[3, 1111]], |x| ops::sum_all(&x[0]), ParityTol::REDUCTION);
    parity_check("mean", &[&[6, 7, 3]], |x| ops::mean(&x[0], &[0, 2], false), ParityTol::REDUCTION);
    parity_check("sum_to_bias", &[&[5, 3, 4, 4]], |x| ops::sum_to(&x[0], &Shape::from([3, 1, 1])), ParityTol::REDUCTION);
    // few sums of long trailing runs (> 4096 terms, < 256 rows): the generic
    // kernel, each sum split into chunks
    use minidiffusion::ops::reduce::cuda::sum_splits;
    assert_eq!(sum_splits(3, 9 * 4000), (8, 4500));
    assert_eq!(sum_splits(600, 1 << 20).0, 1);
    parity_check("sum_to_bias_split", &[&[9, 3, 50, 100]], |x| ops::sum_to(&x[0], &Shape::from([3, 1, 1])), ParityTol::REDUCTION);
    // trailing runs summed a warp per row (reduce_sum_rows), then what is left:
    // a conv bias gradient at 400 rows of 36 (float4 loads), the per-image
    // bias gradient (rows only, 5-term runs: scalar loads, a partial block of
    // 8 rows), and a whole-tensor sum of one 4,000-term run
    parity_check("sum_to_bias_rows", &[&[25, 16, 6, 6]], |x| ops::sum_to(&x[0], &Shape::from([16, 1, 1])), ParityTol::REDUCTION);
    parity_check("sum_rows_only", &[&[7, 43, 5]], |x| ops::sum(&x[0], &[2], false), ParityTol::REDUCTION);
    parity_check("sum_all_one_run", &[&[4000]], |x| ops::sum_all(&x[0]), ParityTol::REDUCTION);
}

#[test]
fn broadcast_parity() {
    parity_check("broadcast_to", &[&[3, 1]], |x| ops::broadcast_to(&x[0], &Shape::from([2, 3, 5])), ParityTol::REDUCTION);
    // one value (a sum's gradient): broadcast_value_f32, float4 stores and a tail of 3
    parity_check("broadcast_to one value", &[&[1]], |x| ops::broadcast_to(&x[0], &Shape::from([3, 5, 7])), ParityTol::REDUCTION);
    parity_check("sum_all's gradient", &[&[2, 3, 4, 5]], |x| ops::sum_all(&x[0]), ParityTol::REDUCTION);
    let t = minidiffusion::Tensor::from_vec_on(vec![2.5], [1], minidiffusion::testing::parity_device()).unwrap();
    let launched = minidiffusion::testing::kernels_launched(|| drop(ops::broadcast_to(&t, &Shape::from([4, 9, 11])).unwrap()));
    assert_eq!(launched, ["broadcast_value_f32"]);
}

#[test]
fn permute_parity() {
    parity_check("permute", &[&[2, 3, 5, 7]], |x| ops::permute(&x[0], &[0, 2, 3, 1]), ParityTol::EXACTISH);
    parity_check("transpose", &[&[13, 17]], |x| ops::transpose(&x[0], 0, 1), ParityTol::EXACTISH);
}

#[test]
fn concat_narrow_reshape_parity() {
    parity_check("concat_channels", &[&[2, 3, 5, 5], &[2, 7, 5, 5]], |x| ops::concat(&[&x[0], &x[1]], 1), ParityTol::EXACTISH);
    parity_check("concat_last", &[&[3, 2], &[3, 5], &[3, 1]], |x| ops::concat(&[&x[0], &x[1], &x[2]], 1), ParityTol::EXACTISH);
    parity_check("narrow", &[&[2, 9, 3]], |x| ops::narrow(&x[0], 1, 2, 5), ParityTol::EXACTISH);
    // runs of whole float4s (the vectorised copy), and more outer slabs than the grid has rows (1,024)
    parity_check("concat_float4", &[&[2, 4, 4, 4], &[2, 8, 4, 4]], |x| ops::concat(&[&x[0], &x[1]], 1), ParityTol::EXACTISH);
    parity_check("narrow_float4", &[&[2, 12, 2, 2]], |x| ops::narrow(&x[0], 1, 4, 4), ParityTol::EXACTISH);
    parity_check("concat_many_slabs", &[&[2_500, 1], &[2_500, 2]], |x| ops::concat(&[&x[0], &x[1]], 1), ParityTol::EXACTISH);
    parity_check("reshape", &[&[6, 10]], |x| ops::reshape(&x[0], [3, 20]), ParityTol::EXACTISH);
}

#[test]
fn index_select_parity() {
    let x = minidiffusion::Tensor::from_vec((0..5 * 7).map(|i| i as f32).collect(), [5, 7]).unwrap();
    let rows = [4, 0, 0, 2];
    let cpu = ops::index_select(&x, &rows).unwrap();
    assert_eq!(cpu.dims(), &[4, 7]);
    assert_eq!(&cpu.to_vec()[..7], &(28..35).map(|i| i as f32).collect::<Vec<_>>()[..]);
    let dev = ops::index_select(&x.to_device(minidiffusion::testing::parity_device()).unwrap(), &rows).unwrap();
    assert_eq!(dev.device(), minidiffusion::testing::parity_device());
    assert_eq!(dev.to_vec(), cpu.to_vec());
    assert!(ops::index_select(&x, &[5]).is_err());
}
