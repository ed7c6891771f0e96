//! The lesson's Fashion-MNIST classifier, whose 512-d penultimate features
//! score samples (FID/KID): ResBlock(1→16, 5×5) then ResBlocks 16→32→64→128
//! →256→512 with stride 2, each conv followed by BatchNorm2d and GeneralRelu
//! (leak 0.1, minus 0.4); Flatten (1×1×512); Linear(512→10, no bias);
//! BatchNorm1d(10). Inputs in [−1, 1], 28×28 (or 32×32 padded).

use super::init::Initializer;
use super::layers::{BatchNorm, Conv2d, Linear};
use super::{Module, join};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

const LEAK: f32 = 0.1;
const SUB: f32 = 0.4;

/// The classifier's shape (saved next to its weights).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassifierConfig {
    /// Output channels of the ResBlocks; the last is the feature size.
    pub channels: Vec<usize>,
    pub in_channels: usize,
    pub classes: usize,
    pub first_kernel: usize,
}

impl Default for ClassifierConfig {
    /// The lesson's data_aug2 model (4,907,588 parameters).
    fn default() -> Self {
        ClassifierConfig { channels: vec![16, 32, 64, 128, 256, 512], in_channels: 1, classes: 10, first_kernel: 5 }
    }
}

/// conv (with bias, as miniai's `conv` keeps it before BatchNorm) → BatchNorm2d.
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl ConvBn {
    fn new(init: &mut Initializer, cin: usize, cout: usize, k: usize, stride: usize, device: Device) -> Result<Self> {
        let conv = Conv2d::new(init, cin, cout, k, stride, k / 2, device)?;
        // kaiming_normal_(a = 0.1): std = √(2/(1+a²)) / √fan_in
        let fan_in = cin * k * k;
        let std = (2.0 / (1.0 + LEAK * LEAK)).sqrt() / (fan_in as f32).sqrt();
        let w: Vec<f32> = init.normal(cout * fan_in).into_iter().map(|v| v * std).collect();
        conv.weight.copy_from_slice(&w)?;
        Ok(ConvBn { conv, bn: BatchNorm::new(cout, device)? })
    }

    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x)?, training)
    }
}

/// act(convs(x) + idconv(pool(x))).
pub struct ResBlock {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub idconv: Option<Conv2d>,
    pub pool: bool,
}

impl ResBlock {
    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let h = ops::general_relu(&self.conv1.forward(x, training)?, LEAK, SUB)?;
        let h = self.conv2.forward(&h, training)?;
        let mut skip = if self.pool { ops::avg_pool2x2(x)? } else { x.clone() };
        if let Some(c) = &self.idconv {
            skip = c.forward(&skip)?;
        }
        ops::general_relu(&ops::add(&h, &skip)?, LEAK, SUB)
    }
}

pub struct Classifier {
    pub config: ClassifierConfig,
    pub blocks: Vec<ResBlock>,
    pub head: Linear,
    pub head_bn: BatchNorm,
    pub device: Device,
}

impl Classifier {
    pub fn new(config: ClassifierConfig, seed: u64, device: Device) -> Result<Classifier> {
        if config.channels.is_empty() || config.classes == 0 {
            return Err(Error::Argument { op: "classifier", msg: "needs at least one block and one class".into() });
        }
        let mut init = Initializer::new(seed);
        let mut blocks = Vec::new();
        let mut cin = config.in_channels;
        for (i, &cout) in config.channels.iter().enumerate() {
            let (k, stride) = if i == 0 { (config.first_kernel, 1) } else { (3, 2) };
            blocks.push(ResBlock {
                conv1: ConvBn::new(&mut init, cin, cout, k, 1, device)?,
                conv2: ConvBn::new(&mut init, cout, cout, k, stride, device)?,
                idconv: if cin != cout { Some(Conv2d::new(&mut init, cin, cout, 1, 1, 0, device)?) } else { None },
                pool: stride == 2,
            });
            cin = cout;
        }
        let head = Linear::new(&mut init, cin, config.classes, false, device)?;
        let head_bn = BatchNorm::new(config.classes, device)?;
        Ok(Classifier { config, blocks, head, head_bn, device })
    }

    /// The penultimate features: the flattened output of the last ResBlock
    /// ([N, 512] for 28×28 or 32×32 inputs, which the strides bring to 1×1).
    pub fn features(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward(&h, training)?;
        }
        let n = h.dims()[0];
        let per = h.numel() / n.max(1);
        ops::reshape(&h, [n, per])
    }

    /// Class logits.
    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let f = self.features(x, training)?;
        self.head_bn.forward(&self.head.forward(&f)?, training)
    }

    /// Trainable parameters and the BatchNorm running statistics, by name.
    pub fn visit_all(&self, f: &mut dyn FnMut(String, &Tensor)) {
        self.visit("", f);
        for (i, b) in self.blocks.iter().enumerate() {
            b.conv1.bn.visit_buffers(&format!("blocks.{i}.conv1.bn"), f);
            b.conv2.bn.visit_buffers(&format!("blocks.{i}.conv2.bn"), f);
        }
        self.head_bn.visit_buffers("head_bn", f);
    }
}

impl Module for Classifier {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        for (i, b) in self.blocks.iter().enumerate() {
            let p = join(prefix, &format!("blocks.{i}"));
            b.conv1.conv.visit(&join(&p, "conv1.conv"), f);
            b.conv1.bn.visit(&join(&p, "conv1.bn"), f);
            b.conv2.conv.visit(&join(&p, "conv2.conv"), f);
            b.conv2.bn.visit(&join(&p, "conv2.bn"), f);
            if let Some(c) = &b.idconv {
                c.visit(&join(&p, "idconv"), f);
            }
        }
        self.head.visit(&join(prefix, "head"), f);
        self.head_bn.visit(&join(prefix, "head_bn"), f);
    }
}

/// What is saved next to the weights: the shape and how it was made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClassifierInfo {
    pub config: ClassifierConfig,
    pub test_accuracy: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    pub device: String,
    pub seconds: f64,
    pub command: String,
}

pub const WEIGHTS: &str = "classifier.safetensors";
pub const INFO: &str = "classifier.json";

impl Classifier {
    /// Write `dir/classifier.safetensors` (parameters and running statistics) and `dir/classifier.json`.
    pub fn save(&self, dir: &std::path::Path, info: &ClassifierInfo) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
        let mut tensors = Vec::new();
        let mut failure = None;
        self.visit_all(&mut |name, t| match t.try_to_vec() {
            Ok(v) => tensors.push((name, t.dims().to_vec(), v)),
            Err(e) => failure = Some(e),
        });
        if let Some(e) = failure {
            return Err(e);
        }
        crate::io::write_atomic(&dir.join(WEIGHTS), &crate::io::safetensors::serialize(&tensors)?)?;
        let text = serde_json::to_string_pretty(info).expect("serialisable") + "\n";
        crate::io::write_atomic(&dir.join(INFO), text.as_bytes())
    }

    /// Load a classifier saved by [`Classifier::save`].
    pub fn load(dir: &std::path::Path, device: Device) -> Result<(Classifier, ClassifierInfo)> {
        let info_path = dir.join(INFO);
        let text = std::fs::read_to_string(&info_path)
            .map_err(|e| Error::Data { path: info_path.display().to_string(), msg: format!("cannot read ({e}); train one with train-classifier") })?;
        let info: ClassifierInfo =
            serde_json::from_str(&text).map_err(|e| Error::Data { path: info_path.display().to_string(), msg: format!("invalid: {e}") })?;
        let model = Classifier::new(info.config.clone(), 0, device)?;
        let weights_path = dir.join(WEIGHTS);
        let state = crate::io::safetensors::read(&weights_path)?;
        let mut all = Vec::new();
        model.visit_all(&mut |name, t| all.push((name, t.clone())));
        for (name, t) in &all {
            let (dims, values) = state
                .get(name)
                .ok_or_else(|| Error::Data { path: weights_path.display().to_string(), msg: format!("tensor {name} is missing") })?;
            if dims.as_slice() != t.dims() {
                return Err(Error::Data { path: weights_path.display().to_string(), msg: format!("tensor {name} has shape {dims:?}, expected {:?}", t.dims()) });
            }
            t.copy_from_slice(values)?;
        }
        Ok((model, info))
    }
}

impl Classifier {
    /// Features of many images (values in [−1, 1], N×C×H×W on the host), in
    /// batches on the classifier's device: an [N, D] tensor on that device.
    pub fn features_batched(&self, images: &[f32], dims: [usize; 4], batch: usize) -> Result<Tensor> {
        let [n, c, h, w] = dims;
        if c != self.config.in_channels {
            return Err(Error::Shape { op: "features", msg: format!("images have {c} channels, the classifier takes {}", self.config.in_channels) });
        }
        let per = c * h * w;
        let _guard = crate::autograd::NoGradGuard::new();
        let mut parts = Vec::new();
        for start in (0..n).step_by(batch.max(1)) {
            let count = batch.min(n - start);
            let x = Tensor::from_vec(images[start * per..(start + count) * per].to_vec(), [count, c, h, w])?.to_device(self.device)?;
            parts.push(self.features(&x, false)?);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        if refs.is_empty() {
            return Err(Error::Shape { op: "features", msg: "no images".into() });
        }
        ops::concat(&refs, 0)
    }
}
