//! State dicts in the safetensors format (what diffusers and PyTorch write):
//! read f32/f16/bf16 as f32, write f32.

use crate::error::{Error, Result};
use crate::nn::{Module, named_params};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// name → (shape, values).
pub type StateDict = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a safetensors file, as f32.
pub fn read(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::Data { path: path.display().to_string(), msg: format!("cannot read: {e}") })?;
    parse(path, &bytes)
}

/// Parse safetensors bytes; `path` names them in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    let err = |msg: String| Error::Data { path: path.display().to_string(), msg };
    let st = SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            other => return Err(err(format!("tensor {name} has dtype {other:?}; only floating-point tensors are supported"))),
        };
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

/// The safetensors bytes of named f32 tensors (metadata {"format": "pt"}, as PyTorch writes).
pub fn serialize(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Vec<u8>> {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, s, v)| (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views = raw
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Argument { op: "safetensors", msg: e.to_string() })?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Argument { op: "safetensors", msg: e.to_string() })
}

/// A module's parameters as (name, shape, values).
pub fn module_tensors(m: &dyn Module) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
    named_params(m).into_iter().map(|(n, t)| Ok((n, t.dims().to_vec(), t.try_to_vec()?))).collect()
}
