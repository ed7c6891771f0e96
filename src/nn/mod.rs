//! Layers and models built from the ops: each layer owns its parameters
//! (trainable leaf tensors) and names them as PyTorch/diffusers do, so a
//! model's state maps one to one onto a safetensors file.

pub mod classifier;
pub mod init;
pub mod layers;
pub mod unet;

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// Something with named parameters.
pub trait Module {
    /// Call `f(name, param)` for every parameter, names prefixed by `prefix`.
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor));
}

/// `prefix.name`, or `name` at the top.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// Every parameter with its name, in the model's order.
pub fn named_params(m: &dyn Module) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    m.visit("", &mut |name, t| out.push((name, t.clone())));
    out
}

/// The parameters alone (for the optimiser).
pub fn params(m: &dyn Module) -> Vec<Tensor> {
    named_params(m).into_iter().map(|(_, t)| t).collect()
}

/// Number of scalar parameters.
pub fn param_count(m: &dyn Module) -> usize {
    named_params(m).iter().map(|(_, t)| t.numel()).sum()
}

/// Overwrite every parameter with the tensor of the same name in `state`
/// (host values). Missing names, extra names and shape differences are errors
/// naming the parameter; `source` names the file.
pub fn load_state(m: &dyn Module, state: &HashMap<String, (Vec<usize>, Vec<f32>)>, source: &str) -> Result<()> {
    let params = named_params(m);
    let data_err = |msg: String| Error::Data { path: source.to_string(), msg };
    for (name, p) in &params {
        let (dims, values) = state.get(name).ok_or_else(|| data_err(format!("parameter {name} is missing")))?;
        if dims.as_slice() != p.dims() {
            return Err(data_err(format!("parameter {name} has shape {dims:?}, the model expects {:?}", p.dims())));
        }
        p.copy_from_slice(values)?;
    }
    if state.len() > params.len() {
        let known: std::collections::HashSet<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&String> = state.keys().filter(|k| !known.contains(k.as_str())).collect();
        extra.sort();
        return Err(data_err(format!("unexpected parameter {} (the config does not describe it)", extra[0])));
    }
    Ok(())
}
