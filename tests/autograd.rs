//! The tape: accumulation over reuse, leaves only, no-grad mode, misuse errors.

use minidiffusion::autograd::{backward, is_grad_enabled, no_grad};
use minidiffusion::{Tensor, ops};

fn leaf(values: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), dims).unwrap().requires_grad_()
}

#[test]
fn gradient_accumulates_when_a_tensor_is_used_twice() {
    // L = Σ (x·x + 3x) → dL/dx = 2x + 3
    let x = leaf(&[1.0, -2.0, 0.5], &[3]);
    let y = ops::add(&ops::mul(&x, &x).unwrap(), &ops::mul_scalar(&x, 3.0).unwrap()).unwrap();
    let grads = backward(&ops::sum_all(&y).unwrap()).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec(), vec![5.0, -1.0, 4.0]);
}

#[test]
fn diamond_graph_sums_both_paths() {
    // a = 2x, b = x², L = Σ a·b = Σ 2x³ → 6x²
    let x = leaf(&[1.0, 2.0], &[2]);
    let a = ops::mul_scalar(&x, 2.0).unwrap();
    let b = ops::mul(&x, &x).unwrap();
    let grads = backward(&ops::sum_all(&ops::mul(&a, &b).unwrap()).unwrap()).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec(), vec![6.0, 24.0]);
}

#[test]
fn only_leaves_that_require_grad_get_gradients() {
    let w = leaf(&[2.0], &[1]);
    let c = Tensor::from_vec(vec![5.0], [1]).unwrap();
    let loss = ops::sum_all(&ops::mul(&w, &c).unwrap()).unwrap();
    let grads = backward(&loss).unwrap();
    assert_eq!(grads.get(&w).unwrap().to_vec(), vec![5.0]);
    assert!(grads.get(&c).is_none());
    assert_eq!(grads.len(), 1);
}

#[test]
fn no_grad_records_nothing_and_keeps_no_inputs() {
    let x = leaf(&[1.0, 2.0], &[2]);
    let y = no_grad(|| {
        assert!(!is_grad_enabled());
        ops::silu(&x).unwrap()
    });
    assert!(is_grad_enabled());
    assert!(!y.requires_grad() && y.is_leaf());
    // the result holds no reference to x's graph: backward through it is refused
    assert!(backward(&ops::sum_all(&y).unwrap()).is_err());
    // and with grad on, the same op records
    assert!(ops::silu(&x).unwrap().requires_grad());
}

#[test]
fn backward_refuses_non_scalar_loss() {
    let x = leaf(&[1.0, 2.0], &[2]);
    let y = ops::mul_scalar(&x, 2.0).unwrap();
    let err = backward(&y).unwrap_err().to_string();
    assert!(err.contains("scalar"), "{err}");
}

#[test]
fn detach_cuts_the_tape() {
    let x = leaf(&[3.0], &[1]);
    let y = ops::mul(&x, &x).unwrap().detach();
    let z = ops::mul(&y, &x).unwrap(); // only the direct path counts: dz/dx = y = 9
    let grads = backward(&ops::sum_all(&z).unwrap()).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec(), vec![9.0]);
}

#[test]
fn deep_chain_does_not_overflow_the_stack() {
    let x = leaf(&[1.0], &[1]);
    let mut y = x.clone();
    for _ in 0..20_000 {
        y = ops::add_scalar(&y, 0.0).unwrap();
    }
    let grads = backward(&ops::sum_all(&y).unwrap()).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec(), vec![1.0]);
}
