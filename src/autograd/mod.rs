//! The tape. Define-by-run: each op that sees an input requiring grad stores a
//! [`Node`] in its output: the inputs and a closure that maps the output's
//! gradient to the inputs' gradients. [`backward`] walks these nodes from the
//! loss in reverse topological order, summing gradients of tensors used more
//! than once. In no-grad mode nothing is recorded and no activation is kept.

use crate::device::nvtx;
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

/// Maps the gradient of an op's output to the gradients of its inputs
/// (`None` for an input that needs none).
pub(crate) type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// The same, also given each input's gradient summed so far from its other
/// uses (`None` where there is none yet), and returning the totals: an op
/// whose kernel can add them as it writes saves the separate add (a read of
/// both and a write of the sum).
pub(crate) type AccumulatingFn = Box<dyn Fn(&Tensor, Vec<Option<Tensor>>) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

pub(crate) enum Backward {
    Plain(BackwardFn),
    Accumulating(AccumulatingFn),
}

/// One recorded op.
pub(crate) struct Node {
    pub op: &'static str,
    pub inputs: Vec<Tensor>,
    pub backward: Backward,
}

impl Node {
    pub(crate) fn new(
        op: &'static str,
        inputs: Vec<Tensor>,
        backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Node {
        Node { op, inputs, backward: Backward::Plain(Box::new(backward)) }
    }

    /// A node whose backward sums its inputs' gradients from other uses
    /// itself ([`AccumulatingFn`]).
    pub(crate) fn accumulating(
        op: &'static str,
        inputs: Vec<Tensor>,
        backward: impl Fn(&Tensor, Vec<Option<Tensor>>) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Node {
        Node { op, inputs, backward: Backward::Accumulating(Box::new(backward)) }
    }
}

/// `own + earlier`: for an accumulating backward's gradients it did not sum
/// in its kernel.
pub(crate) fn plus(own: Option<Tensor>, earlier: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (own, earlier) {
        (Some(a), Some(b)) => Some(crate::ops::add(&b, &a)?),
        (a, b) => a.or(b),
    })
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record themselves.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// While alive, ops on this thread record nothing (inference, optimiser steps).
pub struct NoGradGuard {
    previous: bool,
}

impl NoGradGuard {
    pub fn new() -> Self {
        let previous = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { previous }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Run `f` without recording.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// Gradients of the leaves that require grad, by tensor identity.
#[derive(Default, Debug)]
pub struct Gradients {
    map: HashMap<TensorId, Tensor>,
}

impl Gradients {
    /// The gradient of `t`, if the loss depends on it.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Gradients of the scalar `loss` with respect to every leaf it depends on.
pub fn backward(loss: &Tensor) -> Result<Gradients> {
    if loss.numel() != 1 {
        return Err(Error::Autograd(format!("loss must be a scalar, got shape {}", loss.shape())));
    }
    if !loss.requires_grad() {
        return Err(Error::Autograd("the loss does not depend on any tensor that requires grad".into()));
    }
    let _nvtx = nvtx::range("backward");
    let order = topological_order(loss);
    let _guard = NoGradGuard::new();
    let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
    pending.insert(loss.id(), Tensor::full_on(1.0, loss.shape().clone(), loss.device())?);
    let mut leaves = Gradients::default();
    for t in order.iter().rev() {
        let Some(grad) = pending.remove(&t.id()) else { continue };
        let Some(node) = t.node() else {
            leaves.map.insert(t.id(), grad);
            continue;
        };
        let op_range = nvtx::active().then(|| nvtx::range(&format!("{} backward", node.op)));
        let input_grads = match &node.backward {
            Backward::Plain(backward) => backward(&grad)?,
            Backward::Accumulating(backward) => {
                // the gradients so far go to the op (an input listed twice gets its own once)
                let earlier = node.inputs.iter().map(|i| i.requires_grad().then(|| pending.remove(&i.id())).flatten()).collect();
                backward(&grad, earlier)?
            }
        };
        drop(op_range);
        debug_assert_eq!(input_grads.len(), node.inputs.len(), "{}: one gradient per input", node.op);
        for (input, g) in node.inputs.iter().zip(input_grads) {
            let Some(g) = g else { continue };
            if !input.requires_grad() {
                continue;
            }
            if g.shape() != input.shape() {
                return Err(Error::Autograd(format!(
                    "{}: gradient of shape {} for an input of shape {}",
                    node.op,
                    g.shape(),
                    input.shape()
                )));
            }
            let summed = match pending.remove(&input.id()) {
                Some(previous) => crate::ops::add(&previous, &g)?,
                None => g,
            };
            pending.insert(input.id(), summed);
        }
    }
    Ok(leaves)
}

/// Tensors reachable from `root` through requires-grad edges, each after all of its inputs.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut visited: HashSet<TensorId> = HashSet::new();
    // iterative DFS: (tensor, children already pushed)
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !visited.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(node) = t.node() {
            for input in &node.inputs {
                if input.requires_grad() && !visited.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}
