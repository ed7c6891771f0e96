//! Embedding lookup (nn.Embedding): rows picked, the table's gradient summed
//! over repeated indices (finite differences), bad indices refused.

use minidiffusion::testing::{GradTol, grad_check_at, randn};
use minidiffusion::{Shape, Tensor, ops};

#[test]
fn picks_rows_in_index_order() {
    let table = Tensor::from_vec((0..12).map(|v| v as f32).collect(), [4, 3]).unwrap();
    let idx = Tensor::from_vec(vec![2.0, 0.0, 2.0, 3.0], [4]).unwrap();
    let out = ops::embedding_lookup(&table, &idx).unwrap();
    assert_eq!(out.dims(), &[4, 3]);
    assert_eq!(out.to_vec(), vec![6.0, 7.0, 8.0, 0.0, 1.0, 2.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
    let empty = ops::embedding_lookup(&table, &Tensor::zeros_on([0], minidiffusion::Device::Cpu).unwrap()).unwrap();
    assert_eq!(empty.dims(), &[0, 3]);
}

#[test]
fn table_gradient_sums_repeated_rows() {
    // index 1 three times, 4 never: its gradient row must be 0
    let idx = Tensor::from_vec(vec![1.0, 3.0, 1.0, 0.0, 1.0, 2.0], [6]).unwrap();
    grad_check_at("embedding_lookup", vec![(randn(&[5, 7], 3), Shape::from([5, 7]))], |x| ops::embedding_lookup(&x[0], &idx), GradTol::default());
    let table = Tensor::from_vec(randn(&[5, 2], 1), [5, 2]).unwrap().requires_grad_();
    let out = ops::embedding_lookup(&table, &Tensor::from_vec(vec![1.0, 1.0, 0.0], [3]).unwrap()).unwrap();
    let grads = minidiffusion::backward(&ops::sum_all(&out).unwrap()).unwrap();
    assert_eq!(grads.get(&table).unwrap().to_vec(), vec![1.0, 1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn indices_that_name_no_row_are_refused() {
    let table = Tensor::zeros_on([4, 3], minidiffusion::Device::Cpu).unwrap();
    for bad in [4.0, -1.0, 1.5, f32::NAN] {
        let err = ops::embedding_lookup(&table, &Tensor::from_vec(vec![0.0, bad], [2]).unwrap()).unwrap_err().to_string();
        assert!(err.contains("is not a row of a 4-row table"), "{bad}: {err}");
    }
    assert!(ops::embedding_lookup(&Tensor::zeros_on([4], minidiffusion::Device::Cpu).unwrap(), &Tensor::zeros_on([1], minidiffusion::Device::Cpu).unwrap()).is_err());
}
