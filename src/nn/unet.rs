//! diffusers' `UNet2DModel`, layer for layer and name for name, so its
//! `config.json` + `diffusion_pytorch_model.safetensors` load here and ours
//! load there. Blocks: DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D,
//! UNetMidBlock2D, UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D;
//! ResnetBlock2D with the time embedding added after conv1 (or as scale and
//! shift after norm2), optionally resampling (the "resnet" down/upsamplers);
//! attention over the pixels of a feature map; positional, Fourier or learned
//! time embeddings; optional class conditioning.

use super::init::Initializer;
use super::layers::{Conv2d, GroupNorm, Linear, param};
use super::{Module, join};
use crate::device::{Device, nvtx};
use crate::error::{Error, Result};
use crate::ops::{self, Activation, Conv2dParams, ConvAdd};
use crate::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn d_in() -> usize {
    3
}
fn d_positional() -> String {
    "positional".into()
}
fn d_true() -> bool {
    true
}
fn d_down() -> Vec<String> {
    ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"].map(String::from).to_vec()
}
fn d_up() -> Vec<String> {
    ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"].map(String::from).to_vec()
}
fn d_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}
fn d_two() -> usize {
    2
}
fn d_one_f() -> f64 {
    1.0
}
fn d_one() -> usize {
    1
}
fn d_conv() -> String {
    "conv".into()
}
fn d_silu() -> String {
    "silu".into()
}
fn d_head() -> Option<usize> {
    Some(8)
}
fn d_groups() -> Option<usize> {
    Some(32)
}
fn d_eps() -> f64 {
    1e-5
}
fn d_default() -> String {
    "default".into()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2D".into())
}

/// `UNet2DModel`'s config.json, with diffusers' keys and defaults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UNet2DConfig {
    #[serde(default)]
    pub sample_size: Value,
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_in")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    /// The time embedding's width (default 4 × block_out_channels[0]).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_two")]
    pub layers_per_block: usize,
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_conv")]
    pub downsample_type: String,
    #[serde(default = "d_conv")]
    pub upsample_type: String,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_head")]
    pub attention_head_dim: Option<usize>,
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_true")]
    pub add_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
}

impl UNet2DConfig {
    /// The lesson's model (SPEC): 1→1 channels, (32, 64, 128, 256), 8 groups,
    /// attention at 16×16, 8×8, 4×4 and in the middle, 8 channels per head.
    pub fn seed_preset() -> UNet2DConfig {
        UNet2DConfig {
            sample_size: Value::from(32),
            in_channels: 1,
            out_channels: 1,
            block_out_channels: vec![32, 64, 128, 256],
            norm_num_groups: Some(8),
            ..UNet2DConfig::diffusers_defaults()
        }
    }

    /// A small UNet that learns visibly within a few hundred CPU steps.
    pub fn tiny_preset() -> UNet2DConfig {
        UNet2DConfig {
            sample_size: Value::from(32),
            in_channels: 1,
            out_channels: 1,
            down_block_types: ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"].map(String::from).to_vec(),
            up_block_types: ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"].map(String::from).to_vec(),
            block_out_channels: vec![16, 32, 64],
            layers_per_block: 1,
            norm_num_groups: Some(8),
            ..UNet2DConfig::diffusers_defaults()
        }
    }

    /// All of diffusers' defaults.
    pub fn diffusers_defaults() -> UNet2DConfig {
        serde_json::from_str("{}").expect("defaults")
    }

    fn refuse(key: &str, value: impl std::fmt::Display, why: &str) -> Error {
        Error::Data { path: "config.json".into(), msg: format!("{key} {value} is not supported ({why})") }
    }

    /// Refuse, by name, what this implementation does not do.
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        match self.time_embedding_type.as_str() {
            "positional" | "fourier" => {}
            "learned" => {
                if !matches!(self.num_train_timesteps, Some(t) if t > 0) {
                    return Err(Self::refuse("time_embedding_type", "learned", "it needs num_train_timesteps, the embedding's row count"));
                }
            }
            other => return Err(Self::refuse("time_embedding_type", other, "\"positional\", \"fourier\" or \"learned\"")),
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Self::refuse("dropout", self.dropout, "a probability in [0, 1)"));
        }
        if self.time_embedding_dim == Some(0) {
            return Err(Self::refuse("time_embedding_dim", 0, "at least 1"));
        }
        self.activation()?;
        if !matches!(self.downsample_type.as_str(), "conv" | "resnet") {
            return Err(Self::refuse("downsample_type", &self.downsample_type, "\"conv\" or \"resnet\""));
        }
        if !matches!(self.upsample_type.as_str(), "conv" | "resnet") {
            return Err(Self::refuse("upsample_type", &self.upsample_type, "\"conv\" or \"resnet\""));
        }
        if !matches!(self.resnet_time_scale_shift.as_str(), "default" | "scale_shift") {
            return Err(Self::refuse("resnet_time_scale_shift", &self.resnet_time_scale_shift, "only \"default\" or \"scale_shift\""));
        }
        if self.num_class_embeds == Some(0) && self.class_embed_type.is_none() {
            return Err(Self::refuse("num_class_embeds", 0, "at least 1"));
        }
        if let Some(m) = &self.mid_block_type {
            if m != "UNetMidBlock2D" {
                return Err(Self::refuse("mid_block_type", m, "only \"UNetMidBlock2D\""));
            }
        }
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::Data {
                path: "config.json".into(),
                msg: format!(
                    "{} down blocks, {} up blocks and {n} block_out_channels must all be equal and non-zero",
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
            });
        }
        for t in &self.down_block_types {
            if !matches!(t.as_str(), "DownBlock2D" | "AttnDownBlock2D" | "ResnetDownsampleBlock2D" | "SkipDownBlock2D" | "AttnSkipDownBlock2D") {
                return Err(Self::refuse(
                    "down_block_types entry",
                    t,
                    "DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D, SkipDownBlock2D or AttnSkipDownBlock2D",
                ));
            }
        }
        for t in &self.up_block_types {
            if !matches!(t.as_str(), "UpBlock2D" | "AttnUpBlock2D" | "ResnetUpsampleBlock2D" | "SkipUpBlock2D" | "AttnSkipUpBlock2D") {
                return Err(Self::refuse("up_block_types entry", t, "UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D, SkipUpBlock2D or AttnSkipUpBlock2D"));
            }
        }
        // the Skip blocks' image pyramid: skip_conv reads and writes 3 channels
        let resampling_skip = |types: &[String]| types[..n - 1].iter().any(|t| is_skip_block(t));
        if resampling_skip(&self.down_block_types) && self.in_channels != 3 {
            return Err(Self::refuse("in_channels", self.in_channels, "a SkipDownBlock2D's skip_conv reads the 3-channel input"));
        }
        if resampling_skip(&self.up_block_types) && self.out_channels != 3 {
            return Err(Self::refuse("out_channels", self.out_channels, "a SkipUpBlock2D's skip_conv adds a 3-channel image to the output"));
        }
        for (i, t) in self.down_block_types.iter().chain(&self.up_block_types).enumerate() {
            let c = self.block_out_channels[if i < n { i } else { 2 * n - 1 - i }];
            if t.starts_with("AttnSkip") && !c.is_multiple_of(32) {
                return Err(Self::refuse(t, c, "its attention normalises 32 groups: block_out_channels must be multiples of 32"));
            }
        }
        // (None: the Skip blocks take min(C/4, 32) groups; the others need a count)
        let plain = self.down_block_types.iter().chain(&self.up_block_types).any(|t| !is_skip_block(t));
        let groups = if plain { Some(self.groups()?) } else { self.norm_num_groups };
        for &c in &self.block_out_channels {
            let g = groups.unwrap_or_else(|| skip_groups(c));
            if c == 0 || g == 0 || c % g != 0 {
                return Err(Self::refuse("norm_num_groups", g, &format!("must divide every block_out_channels entry, {c} is not a multiple")));
            }
        }
        // diffusers' Attention takes ⌊C/h⌋ heads of h features (fewer than C in
        // all when h does not divide C): at least one head wherever there is attention
        if let Some(h) = self.attention_head_dim {
            let levels = self.down_block_types.iter().chain(&self.up_block_types).enumerate();
            let attending = levels.filter(|(_, t)| t.starts_with("Attn")).map(|(i, _)| self.block_out_channels[if i < n { i } else { 2 * n - 1 - i }]);
            let mid = (self.mid_block_type.is_some() && self.add_attention).then(|| self.block_out_channels[n - 1]);
            if let Some(c) = attending.chain(mid).find(|&c| h == 0 || h > c) {
                return Err(Self::refuse("attention_head_dim", h, &format!("gives no attention head over {c} channels")));
            }
        }
        if self.layers_per_block == 0 {
            return Err(Self::refuse("layers_per_block", 0, "at least 1"));
        }
        Ok(())
    }

    /// The resnets' nonlinearity (`act_fn`).
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_diffusers(&self.act_fn).ok_or_else(|| Self::refuse("act_fn", &self.act_fn, "silu, swish, mish, gelu or relu"))
    }

    /// The time embedding's width.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(4 * self.block_out_channels[0])
    }

    /// What the class labels are, as diffusers builds `class_embedding`:
    /// a table when only num_class_embeds is set, the time embedding's MLP
    /// with "timestep", the labels themselves with "identity"; any other
    /// class_embed_type gives none (diffusers ignores it too).
    pub fn class_conditioning(&self) -> Option<ClassConditioning> {
        match (self.class_embed_type.as_deref(), self.num_class_embeds) {
            (None, Some(n)) => Some(ClassConditioning::Table(n)),
            (Some("timestep"), _) => Some(ClassConditioning::Timestep),
            (Some("identity"), _) => Some(ClassConditioning::Identity),
            _ => None,
        }
    }

    /// Whether timesteps are noise levels σ (the "fourier" embedding of
    /// score-SDE models, whose output diffusers divides by σ).
    pub fn timesteps_are_noise_levels(&self) -> bool {
        self.time_embedding_type == "fourier"
    }

    fn groups(&self) -> Result<usize> {
        self.norm_num_groups.ok_or_else(|| Self::refuse("norm_num_groups", "null", "a group count is required"))
    }

    /// The groups of the norms outside the down and up blocks (mid block,
    /// conv_norm_out) over `c` channels: norm_num_groups, or as diffusers
    /// without one, min(C/4, 32).
    fn groups_or_default(&self, c: usize) -> usize {
        self.norm_num_groups.unwrap_or_else(|| skip_groups(c))
    }

    /// The sample's height and width when the config says.
    pub fn sample_hw(&self) -> Option<(usize, usize)> {
        match &self.sample_size {
            Value::Number(n) => n.as_u64().map(|s| (s as usize, s as usize)),
            Value::Array(a) if a.len() == 2 => Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)),
            _ => None,
        }
    }
}

/// Dropout in training (diffusers' ResnetBlock2D drops after norm2's
/// activation, before conv2): probability `p`, each resnet's mask from its own
/// Philox stream (seed, offset + k) for the k-th resnet of the forward pass.
pub struct DropoutStreams {
    pub p: f32,
    pub seed: u64,
    pub offset: u64,
    next: std::cell::Cell<u64>,
}

impl DropoutStreams {
    pub fn new(p: f32, seed: u64, offset: u64) -> DropoutStreams {
        DropoutStreams { p, seed, offset, next: std::cell::Cell::new(0) }
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.next.get();
        self.next.set(k + 1);
        ops::dropout(x, self.p, self.seed, self.offset + k)
    }
}

/// How a config's class labels reach the time embedding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClassConditioning {
    /// nn.Embedding(n, time_embed_dim): labels are class indices 0…n−1.
    Table(usize),
    /// TimestepEmbedding(time_proj(labels)): labels go through the time projection.
    Timestep,
    /// The labels are [B, time_embed_dim] vectors, added as they are.
    Identity,
}

/// The 2× resampling a ResnetBlock2D may do between its norm1 and conv1
/// (diffusers' `up=True` / `down=True`): nearest-neighbour up, 2×2 average
/// down, or (kernel="fir", the Skip blocks') the FIR kernel (1, 3, 3, 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resample {
    Up,
    Down,
    FirUp,
    FirDown,
}

impl Resample {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Resample::Up => ops::upsample_nearest2x(x),
            Resample::Down => ops::avg_pool2x2(x),
            Resample::FirUp => ops::fir_upsample2x(x),
            Resample::FirDown => ops::fir_downsample2x(x),
        }
    }
}

/// Whether diffusers builds this block type with the score-SDE image pyramid.
fn is_skip_block(block_type: &str) -> bool {
    block_type.contains("Skip")
}

/// The Skip blocks' group count over `c` channels: min(C/4, 32).
fn skip_groups(c: usize) -> usize {
    (c / 4).min(32)
}

/// ResnetBlock2D: norm1 → act → conv1 → + time_emb_proj(act(temb)) → norm2 →
/// act → conv2, plus the input (through a 1×1 conv_shortcut when channels change).
/// With `scale_shift` (diffusers' resnet_time_scale_shift "scale_shift")
/// time_emb_proj gives 2·C values (scale, shift) and the middle is
/// conv1 → norm2 → ·(1 + scale) + shift → act → conv2. With `resample`, both
/// the input and act(norm1(x)) are resampled before conv1.
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
    pub output_scale: f32,
    pub scale_shift: bool,
    pub act: Activation,
    pub resample: Option<Resample>,
}

/// What every resnet of a model shares.
#[derive(Clone, Copy)]
struct ResnetKind {
    temb: usize,
    groups: usize,
    eps: f32,
    scale_shift: bool,
    act: Activation,
}

impl ResnetBlock {
    fn new(init: &mut Initializer, cin: usize, cout: usize, kind: ResnetKind, output_scale: f32, resample: Option<Resample>, device: Device) -> Result<Self> {
        Self::with_groups(init, cin, cout, kind, (kind.groups, kind.groups), output_scale, resample, cin != cout, device)
    }

    /// A Skip block's resnet: norm1 and norm2 groups as given, output ÷ √2,
    /// a 1×1 conv_shortcut when `shortcut` (diffusers' use_in_shortcut) or the channels change.
    #[allow(clippy::too_many_arguments)]
    fn skip(init: &mut Initializer, cin: usize, cout: usize, kind: ResnetKind, groups: (usize, usize), resample: Option<Resample>, shortcut: bool, device: Device) -> Result<Self> {
        Self::with_groups(init, cin, cout, kind, groups, std::f32::consts::SQRT_2, resample, shortcut || cin != cout, device)
    }

    #[allow(clippy::too_many_arguments)]
    fn with_groups(
        init: &mut Initializer,
        cin: usize,
        cout: usize,
        kind: ResnetKind,
        (groups_in, groups_out): (usize, usize),
        output_scale: f32,
        resample: Option<Resample>,
        shortcut: bool,
        device: Device,
    ) -> Result<Self> {
        let ResnetKind { temb, eps, scale_shift, act, .. } = kind;
        Ok(ResnetBlock {
            norm1: GroupNorm::new(groups_in, cin, eps, device)?,
            conv1: Conv2d::new(init, cin, cout, 3, 1, 1, device)?,
            time_emb_proj: Linear::new(init, temb, if scale_shift { 2 * cout } else { cout }, true, device)?,
            norm2: GroupNorm::new(groups_out, cout, eps, device)?,
            conv2: Conv2d::new(init, cout, cout, 3, 1, 1, device)?,
            conv_shortcut: if shortcut { Some(Conv2d::new(init, cin, cout, 1, 1, 0, device)?) } else { None },
            output_scale,
            scale_shift,
            act,
            resample,
        })
    }

    /// conv(act(norm(x))) + add, stored in bf16 when `bf16` (conv1's h with
    /// `ops::precision::bf16_activations`: inference only, where norm2 is its
    /// one reader; the conv stores it so where its kernel can, else it is
    /// cast — the same bits either way). With SiLU the norm and conv are
    /// `ops::convs_after_norm`, which at inference on CUDA may apply the norm
    /// and SiLU as the conv reads its input.
    fn norm_act_conv(&self, conv: &Conv2d, x: &Tensor, norm: &GroupNorm, add: ConvAdd, bf16: bool) -> Result<Tensor> {
        let after = conv.after(add, bf16.then_some(ops::Bf16Store::AS_IS));
        let y = if self.act == Activation::Silu {
            let first = ops::NormFirst { groups: norm.groups, weight: Some(&norm.weight), bias: Some(&norm.bias), eps: norm.eps, silu: true };
            ops::convs_after_norm(x, first, std::slice::from_ref(&after))?.remove(0)
        } else {
            after.forward(&ops::activation(&norm.forward(x)?, self.act)?)?
        };
        stored_bf16(y, bf16)
    }

    /// forward(concat([x, x2], 1)): the up path's map and skip. At inference
    /// on CUDA the block's group norm and 1×1 shortcut — all that read the
    /// concatenation — read the two parts where they lie, and it is never
    /// written (`ops::group_norm::group_norm_concat_stored`,
    /// `ops::conv2d_concat`); otherwise the concatenation, then [`Self::forward`].
    fn forward_concat(&self, x: &Tensor, x2: &Tensor, temb_act: &Tensor, dropout: Option<&DropoutStreams>) -> Result<Tensor> {
        let training = crate::autograd::is_grad_enabled() && [x, x2, &self.conv1.weight].iter().any(|t| t.requires_grad());
        let Some(shortcut) = &self.conv_shortcut else {
            return self.forward(&ops::concat(&[x, x2], 1)?, temb_act, dropout);
        };
        let in_place = matches!(x.device(), Device::Cuda(_)) && ops::conv2d::cuda::up_path_in_place();
        if training || dropout.is_some() || !in_place || self.resample.is_some() || self.act != Activation::Silu || self.scale_shift {
            return self.forward(&ops::concat(&[x, x2], 1)?, temb_act, dropout);
        }
        let _nvtx = nvtx::range("ResnetBlock2D");
        let t = self.time_emb_proj.forward(temb_act)?;
        let n1 = &self.norm1;
        let store = ops::precision::conv_input_storage();
        let a = ops::group_norm::group_norm_concat_stored(x, x2, n1.groups, Some(&n1.weight), Some(&n1.bias), n1.eps, true, store)?;
        let bf16_h = ops::precision::bf16_activations();
        let h = conv_stored(&self.conv1, &a, ConvAdd { sample_bias: Some(&t), residual: None }, bf16_h)?;
        drop(a);
        // (the shortcut's output, read only by conv2's epilogue: stored in bf16 with h)
        let skip = ops::conv2d_concat_stored(x, x2, &shortcut.weight, shortcut.bias.as_ref(), ConvAdd::default(), shortcut.params, bf16_h.then_some(ops::Bf16Store::AS_IS))?;
        let skip = stored_bf16(skip, bf16_h)?;
        let out = self.norm_act_conv(&self.conv2, &h, &self.norm2, ConvAdd { sample_bias: None, residual: Some(&skip) }, false)?;
        if self.output_scale == 1.0 { Ok(out) } else { ops::mul_scalar(&out, 1.0 / self.output_scale) }
    }

    /// `temb_act` is act(temb), shared by all blocks; `dropout` (training
    /// only) drops before conv2.
    /// The time embedding is added by conv1 and the skip by conv2 as they
    /// store their outputs (`ops::conv2d_fused`), not as separate passes.
    fn forward(&self, x: &Tensor, temb_act: &Tensor, dropout: Option<&DropoutStreams>) -> Result<Tensor> {
        let _nvtx = nvtx::range("ResnetBlock2D");
        let t = self.time_emb_proj.forward(temb_act)?;
        let add_t = if self.scale_shift { ConvAdd::default() } else { ConvAdd { sample_bias: Some(&t), residual: None } };
        let bf16_h = ops::precision::bf16_activations() && dropout.is_none();
        let (x, h) = match self.resample {
            None => (x.clone(), self.norm_act_conv(&self.conv1, x, &self.norm1, add_t, bf16_h)?),
            Some(r) => {
                let a = r.apply(&ops::activation(&self.norm1.forward(x)?, self.act)?)?;
                (r.apply(x)?, conv_stored(&self.conv1, &a, add_t, bf16_h)?)
            }
        };
        // a shortcut's output is read only by conv2's epilogue: stored in bf16 with h
        let skip = match &self.conv_shortcut {
            Some(c) => conv_stored(c, &x, ConvAdd::default(), bf16_h)?,
            None => x,
        };
        let to_skip = ConvAdd { sample_bias: None, residual: Some(&skip) };
        let out = if self.scale_shift {
            let (n, c) = (t.dims()[0], t.dims()[1] / 2);
            let scale = ops::reshape(&ops::add_scalar(&ops::narrow(&t, 1, 0, c)?, 1.0)?, [n, c, 1, 1])?;
            let shift = ops::reshape(&ops::narrow(&t, 1, c, c)?, [n, c, 1, 1])?;
            let u = ops::add(&ops::mul(&self.norm2.forward(&h)?, &scale)?, &shift)?;
            let a = ops::activation(&u, self.act)?;
            self.conv2.forward_add(&match dropout { Some(d) => d.apply(&a)?, None => a }, to_skip)?
        } else if let Some(d) = dropout {
            self.conv2.forward_add(&d.apply(&ops::activation(&self.norm2.forward(&h)?, self.act)?)?, to_skip)?
        } else {
            self.norm_act_conv(&self.conv2, &h, &self.norm2, to_skip, false)?
        };
        if self.output_scale == 1.0 { Ok(out) } else { ops::mul_scalar(&out, 1.0 / self.output_scale) }
    }
}

/// conv(x) + add, in bf16 when `bf16` (see [`stored_bf16`]).
fn conv_stored(conv: &Conv2d, x: &Tensor, add: ConvAdd, bf16: bool) -> Result<Tensor> {
    stored_bf16(conv.after(add, bf16.then_some(ops::Bf16Store::AS_IS)).forward(x)?, bf16)
}

/// `y` in bf16 when `bf16` (cast where its conv stored f32: the same bits
/// as a conv that rounds as it stores), else as it is.
fn stored_bf16(y: Tensor, bf16: bool) -> Result<Tensor> {
    if bf16 && y.dtype() != DType::BF16 { ops::cast(&y, DType::BF16) } else { Ok(y) }
}

impl Module for ResnetBlock {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.norm1.visit(&join(prefix, "norm1"), f);
        self.conv1.visit(&join(prefix, "conv1"), f);
        self.time_emb_proj.visit(&join(prefix, "time_emb_proj"), f);
        self.norm2.visit(&join(prefix, "norm2"), f);
        self.conv2.visit(&join(prefix, "conv2"), f);
        if let Some(c) = &self.conv_shortcut {
            c.visit(&join(prefix, "conv_shortcut"), f);
        }
    }
}

/// diffusers' `Attention` as the UNet's blocks build it: group norm, q/k/v
/// projections, multi-head attention over the H·W pixels, to_out, residual.
pub struct AttentionBlock {
    /// None in a mid block with resnet_time_scale_shift "scale_shift" and no
    /// attn_norm_num_groups (diffusers builds that Attention without one).
    pub group_norm: Option<GroupNorm>,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
    pub rescale: f32,
}

impl AttentionBlock {
    fn new(init: &mut Initializer, channels: usize, head_dim: Option<usize>, groups: Option<usize>, eps: f32, rescale: f32, device: Device) -> Result<Self> {
        let head_dim = head_dim.unwrap_or(channels);
        let heads = channels / head_dim;
        let inner = heads * head_dim;
        Ok(AttentionBlock {
            group_norm: groups.map(|g| GroupNorm::new(g, channels, eps, device)).transpose()?,
            to_q: Linear::new(init, channels, inner, true, device)?,
            to_k: Linear::new(init, channels, inner, true, device)?,
            to_v: Linear::new(init, channels, inner, true, device)?,
            to_out: Linear::new(init, inner, channels, true, device)?,
            heads,
            rescale,
        })
    }

    /// diffusers' Attention on a feature map, computed channels-first: with
    /// X = groupnorm(x) as [B, C, HW], Qᵀ = W_q·X + b_q is [B, inner, HW] =
    /// [B, heads, D, HW] as it lies, so the heads need no permute; attention on
    /// transposed sequences gives Oᵀ [B, heads, D, HW] = [B, inner, HW], and
    /// W_out·Oᵀ + b_out is already [B, C, H, W]. The same products as
    /// diffusers' token-major layout, none of its transposes.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _nvtx = nvtx::range("Attention");
        let (b, h, w) = (x.dims()[0], x.dims()[2], x.dims()[3]);
        let pixels = h * w;
        let inner = self.to_q.weight.dims()[0];
        let head_dim = inner / self.heads;
        // each linear layer as a 1×1 convolution, its [out, in] weight viewed as [out, in, 1, 1]
        let as_conv = |layer: &Linear| ops::reshape(&layer.weight, [layer.weight.dims()[0], layer.weight.dims()[1], 1, 1]);
        let (wq, wk, wv, wo) = (as_conv(&self.to_q)?, as_conv(&self.to_k)?, as_conv(&self.to_v)?, as_conv(&self.to_out)?);
        fn projection<'a>(weight: &'a Tensor, layer: &'a Linear, store_bf16: Option<ops::Bf16Store>) -> ops::ConvAfter<'a> {
            ops::ConvAfter { weight, bias: layer.bias.as_ref(), add: ConvAdd::default(), params: Conv2dParams::default(), store_bf16 }
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let grad_wanted = crate::autograd::is_grad_enabled() && [x, &wq, &wk, &wv].iter().any(|t| t.requires_grad());
        // q, k and v stored in bf16 where the attention multiplies bf16
        // operands (see attention_io_bf16), q times the factor the attention
        // multiplies it by; the attention then stores o in bf16 too
        let io_bf16 = attention_io_bf16() && !grad_wanted && x.device().is_cuda() && ops::attention::columns_multiply_bf16(head_dim, pixels);
        let q_factor = ops::attention::query_factor(scale);
        if packed_qkv() && !grad_wanted && x.device().is_cuda() {
            let store = io_bf16.then_some(ops::Bf16Store { times: q_factor, scaled_channels: inner });
            return self.forward_packed(x, [&wq, &wk, &wv], &wo, scale, store);
        }
        let (q_store, kv_store) = if io_bf16 { (Some(ops::Bf16Store::times(q_factor)), Some(ops::Bf16Store::AS_IS)) } else { (None, None) };
        let qkv = [projection(&wq, &self.to_q, q_store), projection(&wk, &self.to_k, kv_store), projection(&wv, &self.to_v, kv_store)];
        // the group norm is read only by the three projections (at inference on
        // CUDA they apply it as they read x: `ops::convs_after_norm`)
        let projected = match &self.group_norm {
            Some(norm) => {
                let first = ops::NormFirst { groups: norm.groups, weight: Some(&norm.weight), bias: Some(&norm.bias), eps: norm.eps, silu: false };
                ops::convs_after_norm(x, first, &qkv)?
            }
            None => qkv.iter().map(|c| c.forward(x)).collect::<Result<_>>()?,
        };
        let heads = |t: &Tensor| ops::reshape(t, [b, self.heads, head_dim, pixels]);
        let (q, k, v) = (heads(&projected[0])?, heads(&projected[1])?, heads(&projected[2])?);
        // (the projections store bf16 where a bf16 1×1 forward takes them: all three or none)
        let o = if q.dtype() == DType::BF16 { ops::attention_columns_scaled_query(&q, &k, &v)? } else { ops::attention_columns(&q, &k, &v, scale)? };
        self.output(x, &o, &wo)
    }

    /// to_out(o) + x (added as it stores), over the rescale factor.
    fn output(&self, x: &Tensor, o: &Tensor, wo: &Tensor) -> Result<Tensor> {
        let (b, h, w) = (x.dims()[0], x.dims()[2], x.dims()[3]);
        let to_out = ConvAdd { sample_bias: None, residual: Some(x) };
        let out = ops::conv2d_fused(&ops::reshape(o, [b, wo.dims()[1], h, w])?, wo, self.to_out.bias.as_ref(), to_out, Conv2dParams::default())?;
        if self.rescale == 1.0 { Ok(out) } else { ops::mul_scalar(&out, 1.0 / self.rescale) }
    }

    /// The inference path with the q, k and v projections as one conv of
    /// their stacked weights (x read once; one launch) and the attention
    /// reading q, k and v where that conv wrote them (`ops::attention_columns_packed`);
    /// stored in bf16 as `store` asks (q's third scaled), as [`Self::forward`] stores them apart.
    fn forward_packed(&self, x: &Tensor, [wq, wk, wv]: [&Tensor; 3], wo: &Tensor, scale: f32, store: Option<ops::Bf16Store>) -> Result<Tensor> {
        let (b, h, w) = (x.dims()[0], x.dims()[2], x.dims()[3]);
        let stacked = self.stacked_qkv([wq, wk, wv])?;
        let (weight, bias) = (&stacked.weight, stacked.bias.as_ref());
        let projection = ops::ConvAfter { weight, bias, add: ConvAdd::default(), params: Conv2dParams::default(), store_bf16: store };
        let qkv = match &self.group_norm {
            Some(norm) => {
                let first = ops::NormFirst { groups: norm.groups, weight: Some(&norm.weight), bias: Some(&norm.bias), eps: norm.eps, silu: false };
                ops::convs_after_norm(x, first, std::slice::from_ref(&projection))?.remove(0)
            }
            None => projection.forward(x)?,
        };
        let qkv = ops::reshape(&qkv, [b, weight.dims()[0], h * w])?;
        let o = if qkv.dtype() == DType::BF16 {
            ops::attention_columns_packed_scaled_query(&qkv, self.heads)?
        } else {
            ops::attention_columns_packed(&qkv, self.heads, scale)?
        };
        self.output(x, &o, wo)
    }

    /// The q, k, v projections' weights (as 1×1 convs) and biases stacked,
    /// made once and kept with to_q's weight for as long as none of the six
    /// tensors is written (so the conv's packed weights are kept too): a
    /// sampling run stacks them at its first step, not at every step. Not
    /// kept when first made inside a CUDA graph capture.
    fn stacked_qkv(&self, [wq, wk, wv]: [&Tensor; 3]) -> Result<std::sync::Arc<StackedQkv>> {
        let parts: Vec<&Tensor> = [&self.to_q, &self.to_k, &self.to_v].iter().flat_map(|l| std::iter::once(&l.weight).chain(l.bias.as_ref())).collect();
        let stamps: Vec<(usize, u64)> = parts.iter().map(|t| t.storage_stamp()).collect();
        let build = || -> Result<StackedQkv> {
            let bias = match (&self.to_q.bias, &self.to_k.bias, &self.to_v.bias) {
                (Some(bq), Some(bk), Some(bv)) => Some(ops::concat(&[bq, bk, bv], 0)?),
                _ => None,
            };
            Ok(StackedQkv { stamps: stamps.clone(), weight: ops::concat(&[wq, wk, wv], 0)?, bias })
        };
        let key = crate::tensor::DerivedKey { what: "attention q, k, v stacked", params: [0; 4] };
        let capturing = match &*self.to_q.weight.storage() {
            crate::tensor::Storage::Cuda(buf) => buf.backend().is_capturing(),
            _ => false,
        };
        if capturing && !self.to_q.weight.has_derived(key) {
            return Ok(std::sync::Arc::new(build()?));
        }
        let kept = self.to_q.weight.derived(key, build)?;
        // (kept while to_q's weight is unwritten: the other five are checked here)
        if kept.stamps == stamps { Ok(kept) } else { Ok(std::sync::Arc::new(build()?)) }
    }
}

/// [`AttentionBlock::stacked_qkv`]: the stacked weight [3·inner, C, 1, 1]
/// and bias, and the stamps of the tensors they were made from.
struct StackedQkv {
    stamps: Vec<(usize, u64)>,
    weight: Tensor,
    bias: Option<Tensor>,
}

thread_local! {
    static PACKED_QKV: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    static ATTENTION_IO_BF16: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether the attention blocks at inference on CUDA, where the attention
/// multiplies bf16 operands, store q, k and v in bf16 (their 1×1
/// projections round as they store, q multiplied first by the factor the
/// attention multiplies it by, `ops::attention::query_factor`; the attention
/// reads them as they are) and o in bf16 (the attention rounds as it
/// stores; to_out reads it as it is): each is read only by products that
/// round it to bf16 anyway, so ε̂ is the same, bit for bit, with half the
/// bytes written and read for those four maps. On by default;
/// `MINIDIFFUSION_ATTENTION_IO=f32` (the A/B) keeps them f32, as does
/// [`with_attention_io_bf16`]. The same with q, k and v as one packed
/// projection (`MINIDIFFUSION_QKV=packed`): its q third scaled.
pub fn attention_io_bf16() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::ops::ab_switch::switch(&ATTENTION_IO_BF16, &ENV, || std::env::var("MINIDIFFUSION_ATTENTION_IO").map_or(true, |v| v != "f32"))
}

/// `f` with k, v and o stored in bf16 or not (this thread).
pub fn with_attention_io_bf16<R>(on: bool, f: impl FnOnce() -> R) -> R {
    crate::ops::ab_switch::with_switch(&ATTENTION_IO_BF16, on, f)
}

/// Whether the attention blocks compute q, k and v as one conv at inference
/// on CUDA (`forward_packed`): `MINIDIFFUSION_QKV=packed`, or inside
/// [`with_packed_qkv`]. Off by default: GPU run 6 sampled no faster with it
/// (when it stacked and packed the weights again at every call; they are
/// now made once, `stacked_qkv`, and the group norm is applied as the 1×1
/// conv reads x, so x is read once instead of three times: run 9's A/B).
pub fn packed_qkv() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::ops::ab_switch::switch(&PACKED_QKV, &ENV, || std::env::var("MINIDIFFUSION_QKV").is_ok_and(|v| v == "packed"))
}

/// `f` with the packed q, k, v projection on or off (this thread).
pub fn with_packed_qkv<R>(on: bool, f: impl FnOnce() -> R) -> R {
    crate::ops::ab_switch::with_switch(&PACKED_QKV, on, f)
}

impl Module for AttentionBlock {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        if let Some(norm) = &self.group_norm {
            norm.visit(&join(prefix, "group_norm"), f);
        }
        self.to_q.visit(&join(prefix, "to_q"), f);
        self.to_k.visit(&join(prefix, "to_k"), f);
        self.to_v.visit(&join(prefix, "to_v"), f);
        self.to_out.visit(&join(prefix, "to_out.0"), f);
    }
}

/// A block's resampler: a conv (stride 2 down; nearest 2× then conv up), or
/// a resampling ResnetBlock2D (downsample_type / upsample_type "resnet",
/// ResnetDownsampleBlock2D, ResnetUpsampleBlock2D).
pub enum Resampler {
    Conv(Conv2d),
    Resnet(ResnetBlock),
}

impl Resampler {
    /// As diffusers builds a block's resampler: a resampling resnet in the
    /// Resnet{Down,Up}sampleBlock2D and in Attn blocks whose downsample_type /
    /// upsample_type is "resnet", else a conv (stride 2 down; 3×3 after the 2× upsample up).
    fn new(init: &mut Initializer, config: &UNet2DConfig, block_type: &str, channels: usize, kind: ResnetKind, resample: Resample, device: Device) -> Result<Resampler> {
        let (resnet_block, attn_block, attn_choice, (stride, padding)) = match resample {
            Resample::Down => ("ResnetDownsampleBlock2D", "AttnDownBlock2D", &config.downsample_type, (2, config.downsample_padding)),
            Resample::Up => ("ResnetUpsampleBlock2D", "AttnUpBlock2D", &config.upsample_type, (1, 1)),
            Resample::FirUp | Resample::FirDown => unreachable!("the Skip blocks build their FIR resnets themselves"),
        };
        Ok(if block_type == resnet_block || (block_type == attn_block && attn_choice == "resnet") {
            Resampler::Resnet(ResnetBlock::new(init, channels, channels, kind, 1.0, Some(resample), device)?)
        } else {
            Resampler::Conv(Conv2d::new(init, channels, channels, 3, stride, padding, device)?)
        })
    }
}

/// A down, mid or up block: resnets, each optionally followed by attention
/// (an AttnSkipUpBlock2D's one attention follows them all), then an optional
/// resampler, or a Skip block's image pyramid.
pub struct Block {
    pub resnets: Vec<ResnetBlock>,
    pub attentions: Vec<AttentionBlock>,
    pub resampler: Option<Resampler>,
    pub skip: Option<Skip>,
}

/// The score-SDE image pyramid of diffusers' Skip blocks, beside h. A down
/// block resamples h with its FIR resnet_down, FIR-downsamples the image
/// (first the input) and adds skip_conv(image) (3 → C, 1×1) to h; an up block
/// FIR-upsamples the image so far (none before the first), adds
/// skip_conv(silu(skip_norm(h))) (C → 3, 3×3) to it, then resamples h with
/// its FIR resnet_up. The last block of each side only passes the image on
/// (the last up block upsamples it; the model adds it to its output).
pub enum Skip {
    Down(Option<SkipDown>),
    Up(Option<SkipUp>),
}

pub struct SkipDown {
    pub resnet_down: ResnetBlock,
    pub skip_conv: Conv2d,
}

pub struct SkipUp {
    pub resnet_up: ResnetBlock,
    pub skip_norm: GroupNorm,
    pub skip_conv: Conv2d,
}

impl Block {
    fn visit(&self, prefix: &str, resampler_name: &str, f: &mut dyn FnMut(String, &Tensor)) {
        for (i, r) in self.resnets.iter().enumerate() {
            r.visit(&join(prefix, &format!("resnets.{i}")), f);
        }
        for (i, a) in self.attentions.iter().enumerate() {
            a.visit(&join(prefix, &format!("attentions.{i}")), f);
        }
        match &self.resampler {
            Some(Resampler::Conv(c)) => c.visit(&join(prefix, &format!("{resampler_name}.0.conv")), f),
            Some(Resampler::Resnet(r)) => r.visit(&join(prefix, &format!("{resampler_name}.0")), f),
            None => {}
        }
        match &self.skip {
            Some(Skip::Down(Some(d))) => {
                d.resnet_down.visit(&join(prefix, "resnet_down"), f);
                d.skip_conv.visit(&join(prefix, "skip_conv"), f);
            }
            Some(Skip::Up(Some(u))) => {
                u.resnet_up.visit(&join(prefix, "resnet_up"), f);
                u.skip_conv.visit(&join(prefix, "skip_conv"), f);
                u.skip_norm.visit(&join(prefix, "skip_norm"), f);
            }
            Some(Skip::Down(None) | Skip::Up(None)) | None => {}
        }
    }
}

/// The time projection before the time embedding's MLP (`time_proj`).
pub enum TimeProjection {
    /// Sinusoidal (diffusers' `Timesteps`).
    Positional,
    /// GaussianFourierProjection: fixed weights [C0], features [sin, cos] of ln σ·W·2π.
    Fourier { weight: Tensor },
    /// nn.Embedding(num_train_timesteps, C0).
    Learned { table: Tensor },
}

/// diffusers' `TimestepEmbedding`: linear_2(SiLU(linear_1(·))).
pub struct TimestepMlp {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepMlp {
    fn new(init: &mut Initializer, features_in: usize, width: usize, device: Device) -> Result<TimestepMlp> {
        Ok(TimestepMlp { linear_1: Linear::new(init, features_in, width, true, device)?, linear_2: Linear::new(init, width, width, true, device)? })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&ops::silu(&self.linear_1.forward(x)?)?)
    }
}

impl Module for TimestepMlp {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.linear_1.visit(&join(prefix, "linear_1"), f);
        self.linear_2.visit(&join(prefix, "linear_2"), f);
    }
}

/// The class embedding added to the time embedding (`class_embedding`).
pub enum ClassEmbedding {
    Table(Tensor),
    Timestep(TimestepMlp),
    Identity,
}

/// The model.
pub struct UNet2DModel {
    pub config: UNet2DConfig,
    pub time_proj: TimeProjection,
    pub time_embedding: TimestepMlp,
    pub class_embedding: Option<ClassEmbedding>,
    pub conv_in: Conv2d,
    pub down_blocks: Vec<Block>,
    pub mid_block: Option<Block>,
    pub up_blocks: Vec<Block>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    pub act: Activation,
    pub device: Device,
}

impl UNet2DModel {
    /// A new model on `device`, initialised as the lesson does: PyTorch's
    /// default init, then zero weights in each down/up resnet's conv2 (the
    /// resampling resnets' too) and in conv_out, and orthogonal downsampler convs.
    pub fn new(config: UNet2DConfig, seed: u64, device: Device) -> Result<UNet2DModel> {
        config.validate()?;
        let mut init = Initializer::new(seed);
        let model = UNet2DModel::build(config, &mut init, device)?;
        for block in model.down_blocks.iter().chain(&model.up_blocks) {
            for r in &block.resnets {
                r.conv2.zero_weight()?;
            }
            match &block.resampler {
                Some(Resampler::Resnet(r)) => r.conv2.zero_weight()?,
                Some(Resampler::Conv(_)) | None => {}
            }
        }
        for block in &model.down_blocks {
            if let Some(Resampler::Conv(d)) = &block.resampler {
                d.orthogonal_weight(&mut init)?;
            }
        }
        model.conv_out.zero_weight()?;
        Ok(model)
    }

    fn build(config: UNet2DConfig, init: &mut Initializer, device: Device) -> Result<UNet2DModel> {
        let ch = &config.block_out_channels;
        // (validated: set wherever a block other than a Skip block needs it)
        let groups = config.norm_num_groups.unwrap_or(0);
        let scale_shift = config.resnet_time_scale_shift == "scale_shift";
        let eps = config.norm_eps as f32;
        let act = config.activation()?;
        let c0 = ch[0];
        let temb = config.time_embed_dim();
        let kind = ResnetKind { temb, groups, eps, scale_shift, act };
        let n = ch.len();
        let (time_proj, proj_width) = match config.time_embedding_type.as_str() {
            // diffusers: GaussianFourierProjection(embedding_size=C0, scale=16), weights ~ N(0, 16²), fixed
            "fourier" => {
                let w: Vec<f32> = init.normal(c0).into_iter().map(|v| 16.0 * v).collect();
                (TimeProjection::Fourier { weight: Tensor::from_vec(w, [c0])?.to_device(device)? }, 2 * c0)
            }
            // nn.Embedding's init: N(0, 1)
            "learned" => {
                let rows = config.num_train_timesteps.unwrap_or(0);
                (TimeProjection::Learned { table: param(init.normal(rows * c0), &[rows, c0], device)? }, c0)
            }
            _ => (TimeProjection::Positional, c0),
        };
        let time_embedding = TimestepMlp::new(init, proj_width, temb, device)?;
        let class_embedding = match config.class_conditioning() {
            None => None,
            Some(ClassConditioning::Table(classes)) => Some(ClassEmbedding::Table(param(init.normal(classes * temb), &[classes, temb], device)?)),
            Some(ClassConditioning::Timestep) => Some(ClassEmbedding::Timestep(TimestepMlp::new(init, proj_width, temb, device)?)),
            Some(ClassConditioning::Identity) => Some(ClassEmbedding::Identity),
        };
        let conv_in = Conv2d::new(init, config.in_channels, c0, 3, 1, 1, device)?;
        let mut down_blocks = Vec::new();
        let mut out_c = c0;
        for (i, block_type) in config.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = ch[i];
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            if is_skip_block(block_type) {
                for j in 0..config.layers_per_block {
                    let cin = if j == 0 { in_c } else { out_c };
                    resnets.push(ResnetBlock::skip(init, cin, out_c, kind, (skip_groups(cin), skip_groups(out_c)), None, false, device)?);
                    if block_type == "AttnSkipDownBlock2D" {
                        attentions.push(AttentionBlock::new(init, out_c, config.attention_head_dim, Some(32), eps, std::f32::consts::SQRT_2, device)?);
                    }
                }
                let skip = if i + 1 < n {
                    let g = skip_groups(out_c);
                    Some(SkipDown {
                        resnet_down: ResnetBlock::skip(init, out_c, out_c, kind, (g, g), Some(Resample::FirDown), true, device)?,
                        skip_conv: Conv2d::new(init, 3, out_c, 1, 1, 0, device)?,
                    })
                } else {
                    None
                };
                down_blocks.push(Block { resnets, attentions, resampler: None, skip: Some(Skip::Down(skip)) });
                continue;
            }
            for j in 0..config.layers_per_block {
                resnets.push(ResnetBlock::new(init, if j == 0 { in_c } else { out_c }, out_c, kind, 1.0, None, device)?);
                if block_type == "AttnDownBlock2D" {
                    attentions.push(AttentionBlock::new(init, out_c, config.attention_head_dim, Some(groups), eps, 1.0, device)?);
                }
            }
            let resampler = if i + 1 < n { Some(Resampler::new(init, &config, block_type, out_c, kind, Resample::Down, device)?) } else { None };
            down_blocks.push(Block { resnets, attentions, resampler, skip: None });
        }
        let last = ch[n - 1];
        let mid_block = match &config.mid_block_type {
            None => None,
            Some(_) => {
                let scale = config.mid_block_scale_factor as f32;
                let groups = config.groups_or_default(last);
                let kind = ResnetKind { groups, ..kind };
                // diffusers' UNetMidBlock2D: attn_groups defaults to the resnets'
                // groups, or to none (no group norm) with "scale_shift"
                let attn_groups = config.attn_norm_num_groups.or((!scale_shift).then_some(groups));
                let mut attentions = Vec::new();
                if config.add_attention {
                    attentions.push(AttentionBlock::new(init, last, config.attention_head_dim, attn_groups, eps, scale, device)?);
                }
                let resnets = vec![
                    ResnetBlock::new(init, last, last, kind, scale, None, device)?,
                    ResnetBlock::new(init, last, last, kind, scale, None, device)?,
                ];
                Some(Block { resnets, attentions, resampler: None, skip: None })
            }
        };
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::new();
        let mut out_c = reversed[0];
        for (i, block_type) in config.up_block_types.iter().enumerate() {
            let prev_out = out_c;
            out_c = reversed[i];
            let in_c = reversed[(i + 1).min(n - 1)];
            let layers = config.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            if is_skip_block(block_type) {
                let attn = block_type == "AttnSkipUpBlock2D";
                for j in 0..layers {
                    let skip_c = if j == layers - 1 { in_c } else { out_c };
                    let res_in = if j == 0 { prev_out } else { out_c };
                    // (diffusers' AttnSkipUpBlock2D takes min(res_in + skip_c // 4, 32): its precedence, kept)
                    let groups_in = if attn { (res_in + skip_c / 4).min(32) } else { skip_groups(res_in + skip_c) };
                    resnets.push(ResnetBlock::skip(init, res_in + skip_c, out_c, kind, (groups_in, skip_groups(out_c)), None, false, device)?);
                }
                if attn {
                    attentions.push(AttentionBlock::new(init, out_c, config.attention_head_dim, Some(32), eps, std::f32::consts::SQRT_2, device)?);
                }
                let skip = if i + 1 < n {
                    let g = skip_groups(out_c);
                    Some(SkipUp {
                        resnet_up: ResnetBlock::skip(init, out_c, out_c, kind, (g, g), Some(Resample::FirUp), true, device)?,
                        skip_norm: GroupNorm::new(g, out_c, eps, device)?,
                        skip_conv: Conv2d::new(init, out_c, 3, 3, 1, 1, device)?,
                    })
                } else {
                    None
                };
                up_blocks.push(Block { resnets, attentions, resampler: None, skip: Some(Skip::Up(skip)) });
                continue;
            }
            for j in 0..layers {
                let skip_c = if j == layers - 1 { in_c } else { out_c };
                let res_in = if j == 0 { prev_out } else { out_c };
                resnets.push(ResnetBlock::new(init, res_in + skip_c, out_c, kind, 1.0, None, device)?);
                if block_type == "AttnUpBlock2D" {
                    attentions.push(AttentionBlock::new(init, out_c, config.attention_head_dim, Some(groups), eps, 1.0, device)?);
                }
            }
            let resampler = if i + 1 < n { Some(Resampler::new(init, &config, block_type, out_c, kind, Resample::Up, device)?) } else { None };
            up_blocks.push(Block { resnets, attentions, resampler, skip: None });
        }
        let conv_norm_out = GroupNorm::new(config.groups_or_default(c0), c0, eps, device)?;
        let conv_out = Conv2d::new(init, c0, config.out_channels, 3, 1, 1, device)?;
        Ok(UNet2DModel {
            config,
            time_proj,
            time_embedding,
            class_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            act,
            device,
        })
    }

    /// Refuse, by name, a model that integer timesteps 0…steps−1 cannot
    /// drive (the DDPM/DDIM samplers' and the trainer's): a "fourier" model
    /// takes noise levels σ, a "learned" one only as many steps as its table has rows.
    pub fn check_integer_timesteps(&self, steps: usize) -> Result<()> {
        let c = &self.config;
        if c.timesteps_are_noise_levels() {
            return Err(UNet2DConfig::refuse(
                "time_embedding_type",
                "fourier",
                "a score-SDE model whose timesteps are noise levels σ; DDPM/DDIM sampling and training here give integer timesteps (a ScoreSdeVeScheduler config samples it with --sampler sde-ve)",
            ));
        }
        if let TimeProjection::Learned { table } = &self.time_proj
            && table.dims()[0] < steps
        {
            return Err(UNet2DConfig::refuse("num_train_timesteps", table.dims()[0], &format!("a learned time embedding with that many rows cannot embed {steps} timesteps")));
        }
        Ok(())
    }

    /// The [count] class labels of samples first…first+count−1 on the model's
    /// device: `given` cycled (sample i gets given[i % len]), or with none
    /// given every class of a class table in turn. None for a model without
    /// class conditioning (which refuses labels).
    pub fn class_labels_for(&self, given: &[usize], first: usize, count: usize) -> Result<Option<Tensor>> {
        let refuse = |msg: String| Err(Error::Argument { op: "class labels", msg });
        let classes = match &self.class_embedding {
            None if given.is_empty() => return Ok(None),
            None => return refuse("the model is not class-conditional".into()),
            Some(ClassEmbedding::Identity) => {
                return refuse("class_embed_type \"identity\" takes [N, time_embed_dim] vectors, not class numbers".into());
            }
            Some(ClassEmbedding::Table(table)) => table.dims()[0],
            // labels through the time projection: as many as it embeds
            Some(ClassEmbedding::Timestep(_)) => match &self.time_proj {
                TimeProjection::Learned { table } => table.dims()[0],
                _ => usize::MAX,
            },
        };
        if given.is_empty() && classes == usize::MAX {
            return refuse("class_embed_type \"timestep\" has no class count: give the labels".into());
        }
        if let Some(&bad) = given.iter().find(|&&l| l >= classes) {
            return refuse(format!("label {bad} is out of range for {classes} classes"));
        }
        let label = |i: usize| if given.is_empty() { i % classes } else { given[i % given.len()] };
        let values: Vec<f32> = (first..first + count).map(|i| label(i) as f32).collect();
        Ok(Some(Tensor::from_vec_on(values, [count], self.device)?))
    }

    /// The time projection of timesteps (or of class labels, for "timestep" class embeddings).
    fn project_time(&self, t: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        match &self.time_proj {
            TimeProjection::Positional => ops::timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift as f32, 10000.0),
            // (UNet2DModel builds its GaussianFourierProjection with flip_sin_to_cos False, whatever the config says)
            TimeProjection::Fourier { weight } => ops::fourier_embedding(t, weight, false),
            TimeProjection::Learned { table } => ops::embedding_lookup(table, t),
        }
    }

    /// ε̂ = model(x_t, t): x [B, in, H, W] on the model's device, `t` [B] timesteps (as f32).
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward_with_labels(x, t, None)
    }

    /// `forward` with class labels: [B] class indices (or labels for a
    /// "timestep" class embedding, as f32), or [B, time_embed_dim] vectors for
    /// an "identity" one. A class-conditional model needs them, others refuse them.
    pub fn forward_with_labels(&self, x: &Tensor, t: &Tensor, class_labels: Option<&Tensor>) -> Result<Tensor> {
        self.forward_train(x, t, class_labels, None)
    }

    /// `forward_with_labels` in training: with `dropout`, each resnet drops
    /// before its conv2 (diffusers' train mode with the config's `dropout`).
    pub fn forward_train(&self, x: &Tensor, t: &Tensor, class_labels: Option<&Tensor>, dropout: Option<&DropoutStreams>) -> Result<Tensor> {
        let _nvtx = nvtx::range("UNet2DModel");
        let c = &self.config;
        if x.rank() != 4 || x.dims()[1] != c.in_channels || t.dims() != [x.dims()[0]] {
            return Err(Error::Shape {
                op: "unet",
                msg: format!("input {} and timesteps {} do not fit a UNet with {} input channels", x.shape(), t.shape(), c.in_channels),
            });
        }
        let levels = c.block_out_channels.len();
        let factor = 1usize << (levels - 1);
        if x.dims()[2] % factor != 0 || x.dims()[3] % factor != 0 {
            return Err(Error::Shape { op: "unet", msg: format!("height and width of {} must be multiples of {factor}", x.shape()) });
        }
        let x = if c.center_input_sample { ops::affine(x, 2.0, -1.0)? } else { x.clone() };
        let mut emb = self.time_embedding.forward(&self.project_time(t)?)?;
        match (&self.class_embedding, class_labels) {
            (None, None) => {}
            (None, Some(_)) => return Err(Error::Argument { op: "unet", msg: "class labels given to a model without class conditioning".into() }),
            (Some(_), None) => return Err(Error::Argument { op: "unet", msg: "this model is class-conditional: class labels are needed".into() }),
            (Some(kind), Some(labels)) => {
                let b = x.dims()[0];
                let want: &[usize] = if matches!(kind, ClassEmbedding::Identity) { &[b, emb.dims()[1]] } else { &[b] };
                if labels.dims() != want {
                    return Err(Error::Shape { op: "unet", msg: format!("class labels {} for a batch of {b}: expected {want:?}", labels.shape()) });
                }
                let class_emb = match kind {
                    ClassEmbedding::Table(table) => ops::embedding_lookup(table, labels)?,
                    ClassEmbedding::Timestep(mlp) => mlp.forward(&self.project_time(labels)?)?,
                    ClassEmbedding::Identity => labels.clone(),
                };
                emb = ops::add(&emb, &class_emb)?;
            }
        }
        let temb_act = ops::activation(&emb, self.act)?;

        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        // the Skip blocks' image pyramid: the input on the way down, built anew on the way up
        let mut image = Some(x.clone());
        for block in &self.down_blocks {
            let _nvtx = nvtx::range("down block");
            for (j, r) in block.resnets.iter().enumerate() {
                h = r.forward(&h, &temb_act, dropout)?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h)?;
                }
                skips.push(h.clone());
            }
            if let Some(Skip::Down(Some(d))) = &block.skip {
                let down = d.resnet_down.forward(&h, &temb_act, dropout)?;
                let img = ops::fir_downsample2x(image.as_ref().expect("the input until the up blocks"))?;
                h = d.skip_conv.forward_add(&img, ConvAdd { sample_bias: None, residual: Some(&down) })?;
                image = Some(img);
                skips.push(h.clone());
            }
            if let Some(resampler) = &block.resampler {
                h = match resampler {
                    Resampler::Conv(d) if c.downsample_padding == 0 => d.forward(&pad_bottom_right(&h)?)?,
                    Resampler::Conv(d) => d.forward(&h)?,
                    Resampler::Resnet(r) => r.forward(&h, &temb_act, dropout)?,
                };
                skips.push(h.clone());
            }
        }
        if let Some(mid) = &self.mid_block {
            let _nvtx = nvtx::range("mid block");
            h = mid.resnets[0].forward(&h, &temb_act, dropout)?;
            if let Some(a) = mid.attentions.first() {
                h = a.forward(&h)?;
            }
            h = mid.resnets[1].forward(&h, &temb_act, dropout)?;
        }
        image = None;
        for block in &self.up_blocks {
            let _nvtx = nvtx::range("up block");
            let skip_block = matches!(block.skip, Some(Skip::Up(_)));
            for (j, r) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                h = r.forward_concat(&h, &skip, &temb_act, dropout)?;
                if let Some(a) = block.attentions.get(j).filter(|_| !skip_block) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(Skip::Up(up)) = &block.skip {
                if let Some(a) = block.attentions.first() {
                    h = a.forward(&h)?;
                }
                image = image.map(|img| ops::fir_upsample2x(&img)).transpose()?;
                if let Some(u) = up {
                    // image + skip_conv(silu(skip_norm(h))), the sum by the conv as it stores
                    image = Some(u.skip_conv.forward_after_norm(&h, &u.skip_norm, true, ConvAdd { sample_bias: None, residual: image.as_ref() })?);
                    h = u.resnet_up.forward(&h, &temb_act, dropout)?;
                }
            }
            h = match &block.resampler {
                // at inference on CUDA the conv reads the upsampling in place (else it is
                // written, read only by the conv: bf16 at the bf16 precision when stored so)
                Some(Resampler::Conv(u)) if ops::conv2d::cuda::up_path_in_place() => {
                    ops::conv2d_after_upsample(&h, &u.weight, u.bias.as_ref(), ConvAdd::default(), u.params)?
                }
                Some(Resampler::Conv(u)) => u.forward(&ops::resample::upsample_nearest2x_stored(&h, ops::precision::conv_input_storage())?)?,
                Some(Resampler::Resnet(r)) => r.forward(&h, &temb_act, dropout)?,
                None => h,
            };
        }
        // (conv_act is always SiLU in UNet2DModel, whatever act_fn says; the
        // Skip blocks' image is added to the output)
        let out = self.conv_out.forward_after_norm(&h, &self.conv_norm_out, true, ConvAdd { sample_bias: None, residual: image.as_ref() })?;
        if c.timesteps_are_noise_levels() {
            // diffusers' score-SDE output: divided by σ
            let n = t.numel();
            ops::div(&out, &ops::reshape(t, [n, 1, 1, 1])?)
        } else {
            Ok(out)
        }
    }
}

/// One zero column on the right and one zero row at the bottom: what diffusers'
/// Downsample2D does before its stride-2 convolution when its padding is 0.
fn pad_bottom_right(x: &Tensor) -> Result<Tensor> {
    let &[n, c, h, w] = x.dims() else { unreachable!("the UNet's maps are NCHW") };
    let x = ops::concat(&[x, &Tensor::zeros_on([n, c, h, 1], x.device())?], 3)?;
    ops::concat(&[&x, &Tensor::zeros_on([n, c, 1, w + 1], x.device())?], 2)
}

impl Module for UNet2DModel {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        match &self.time_proj {
            TimeProjection::Positional => {}
            TimeProjection::Fourier { weight } => f(join(prefix, "time_proj.weight"), weight),
            TimeProjection::Learned { table } => f(join(prefix, "time_proj.weight"), table),
        }
        self.time_embedding.visit(&join(prefix, "time_embedding"), f);
        match &self.class_embedding {
            Some(ClassEmbedding::Table(table)) => f(join(prefix, "class_embedding.weight"), table),
            Some(ClassEmbedding::Timestep(mlp)) => mlp.visit(&join(prefix, "class_embedding"), f),
            Some(ClassEmbedding::Identity) | None => {}
        }
        self.conv_in.visit(&join(prefix, "conv_in"), f);
        for (i, b) in self.down_blocks.iter().enumerate() {
            b.visit(&join(prefix, &format!("down_blocks.{i}")), "downsamplers", f);
        }
        if let Some(m) = &self.mid_block {
            m.visit(&join(prefix, "mid_block"), "", f);
        }
        for (i, b) in self.up_blocks.iter().enumerate() {
            b.visit(&join(prefix, &format!("up_blocks.{i}")), "upsamplers", f);
        }
        self.conv_norm_out.visit(&join(prefix, "conv_norm_out"), f);
        self.conv_out.visit(&join(prefix, "conv_out"), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> UNet2DConfig {
        serde_json::from_str(json).unwrap()
    }

    /// What diffusers' Skip blocks need, refused by name before any weight is
    /// read: 3 input channels for the down image pyramid, 3 output channels
    /// for the up one, 32-group attention, and a group count for the other
    /// blocks; group counts that divide their channels; attention heads.
    #[test]
    fn configs_are_checked_as_diffusers_builds_them() {
        let skip = r#""down_block_types": ["SkipDownBlock2D", "AttnSkipDownBlock2D"], "up_block_types": ["AttnSkipUpBlock2D", "SkipUpBlock2D"], "block_out_channels": [32, 64], "norm_num_groups": null"#;
        assert!(config(&format!(r#"{{"in_channels": 3, "out_channels": 3, {skip}}}"#)).validate().is_ok());
        let err = |json: String| config(&json).validate().unwrap_err().to_string();
        assert!(err(format!(r#"{{"in_channels": 1, "out_channels": 3, {skip}}}"#)).contains("in_channels 1 is not supported (a SkipDownBlock2D's skip_conv reads the 3-channel input)"));
        assert!(err(format!(r#"{{"in_channels": 3, "out_channels": 1, {skip}}}"#)).contains("out_channels 1 is not supported"));
        let narrow = skip.replace("[32, 64]", "[64, 16]");
        assert!(err(format!(r#"{{"in_channels": 3, "out_channels": 3, {narrow}}}"#)).contains("AttnSkipDownBlock2D 16 is not supported (its attention normalises 32 groups"));
        let mixed = skip.replace("\"SkipUpBlock2D\"]", "\"UpBlock2D\"]");
        assert!(err(format!(r#"{{"in_channels": 3, "out_channels": 3, {mixed}}}"#)).contains("norm_num_groups null is not supported"));
        // a Skip up block's resnet over 40 + 100 concatenated channels takes min(140/4, 32) = 32 groups, which
        // do not divide 140: refused when the model is built (diffusers' GroupNorm refuses it too)
        let odd = r#""in_channels": 3, "out_channels": 3, "down_block_types": ["SkipDownBlock2D", "SkipDownBlock2D"], "up_block_types": ["SkipUpBlock2D", "SkipUpBlock2D"], "block_out_channels": [100, 40], "norm_num_groups": null, "attention_head_dim": null"#;
        let err = UNet2DModel::new(config(&format!("{{{odd}}}")), 0, Device::Cpu).err().expect("refused").to_string();
        assert!(err.contains("140 channels cannot be split into 32 groups"), "{err}");
        // an attention head size that does not divide the channels: ⌊C/h⌋ heads, as diffusers (24/16: one head of
        // 16); none at all is refused where there is attention, not where there is none
        let attn = |c0: usize, h: usize, down0: &str| {
            config(&format!(
                r#"{{"down_block_types": ["{down0}", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "block_out_channels": [{c0}, 40], "norm_num_groups": 4, "attention_head_dim": {h}}}"#
            ))
            .validate()
        };
        assert!(attn(24, 16, "AttnDownBlock2D").is_ok());
        assert!(attn(12, 16, "AttnDownBlock2D").unwrap_err().to_string().contains("attention_head_dim 16 is not supported (gives no attention head over 12 channels)"));
        assert!(attn(12, 16, "DownBlock2D").is_ok());
        // the last block of each side resamples nothing: any channels there
        let last_only = r#""down_block_types": ["DownBlock2D", "SkipDownBlock2D"], "up_block_types": ["UpBlock2D", "SkipUpBlock2D"], "block_out_channels": [8, 16], "norm_num_groups": 4"#;
        assert!(config(&format!(r#"{{"in_channels": 1, "out_channels": 1, {last_only}}}"#)).validate().is_ok());
    }
}
