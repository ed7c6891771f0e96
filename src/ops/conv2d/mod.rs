//! 2-D convolution, NCHW, PyTorch weight layout [OC, C, KH, KW], any kernel
//! size, one stride and one zero padding for both spatial dims.
//!
//!   y[n, o, oy, ox] = b[o] + Σ_{c, ki, kj} W[o, c, ki, kj] · x[n, c, oy·s − p + ki, ox·s − p + kj]
//!   OH = (H + 2p − KH)/s + 1,  OW = (W + 2p − KW)/s + 1
//!
//! Backward (g = dL/dy), computed as matrix products over the im2col matrix
//! (see `cpu.rs` for the notation):
//!   dX_n = col2im(Wᵀ · g_n)    dW = Σ_n g_n · col_nᵀ    dB[o] = Σ_{n, oy, ox} g[n, o, oy, ox]
//!
//! On CUDA (`cuda.rs`, kernels/conv2d.cu) the same three products run as
//! implicit GEMMs that gather the im2col entries on the fly; a 1×1 conv's
//! weight-gradient kernel also sums dB as it reads g (f32 sums of the f32
//! g); other convs' dB use the reduce kernel.
//!
//! A forward's weights in the layout its kernel reads (the CPU's direct
//! kernel's channel panels, the CUDA same-conv kernels' mma fragments) are
//! kept with the weight tensor ([`Tensor::derived`]) until it is written,
//! unless it is being trained: a sampling run packs each weight once, not
//! once per step.
//!
//! The three products run at this thread's compute precision when the forward
//! runs ([`crate::ops::precision`]): at bf16 their operands (x, W, dY) are
//! rounded to bf16; bias, the per-image bias, the residual and dB stay f32.

pub mod channel_lanes;
pub mod cpu;
pub mod cuda;
pub mod direct;
pub mod direct_weight_grad;
mod wg_layout;

use crate::autograd::Node;
use crate::device::Device;
use crate::error::{Result, arg_err, shape_err};
use crate::ops::precision::{self, Precision, operand};
use crate::tensor::{DType, DerivedKey, Shape, Storage, Tensor, cpu_f32_storage};
use cpu::ConvGeom;

/// Stride and zero padding, the same for height and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
}

impl Default for Conv2dParams {
    /// Stride 1, no padding (PyTorch's defaults).
    fn default() -> Self {
        Conv2dParams { stride: 1, padding: 0 }
    }
}

/// Checks the shapes and returns the geometry of the convolution.
fn geometry(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<ConvGeom> {
    geometry_of(x.shape(), weight, bias, p)
}

/// [`geometry`] of an input of shape `x`.
fn geometry_of(x: &Shape, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<ConvGeom> {
    const OP: &str = "conv2d";
    if p.stride == 0 {
        return arg_err(OP, "stride must be at least 1");
    }
    let &[n, c, h, w] = x.dims() else {
        return shape_err(OP, format!("input must be [N, C, H, W], got {x}"));
    };
    let &[oc, wc, kh, kw] = weight.dims() else {
        return shape_err(OP, format!("weight must be [OC, C, KH, KW], got {}", weight.shape()));
    };
    if wc != c {
        return shape_err(OP, format!("weight {} expects {wc} input channels, input {x} has {c}", weight.shape()));
    }
    if kh == 0 || kw == 0 {
        return shape_err(OP, format!("weight {} has an empty kernel", weight.shape()));
    }
    if let Some(b) = bias
        && b.dims() != [oc]
    {
        return shape_err(OP, format!("bias must be [{oc}] for weight {}, got {}", weight.shape(), b.shape()));
    }
    let (ph, pw) = (h + 2 * p.padding, w + 2 * p.padding);
    if kh > ph || kw > pw {
        return shape_err(
            OP,
            format!("kernel {kh}×{kw} is larger than the padded input {ph}×{pw} (input {x}, padding {})", p.padding),
        );
    }
    let (oh, ow) = ((ph - kh) / p.stride + 1, (pw - kw) / p.stride + 1);
    Ok(ConvGeom { n, c, h, w, oc, kh, kw, stride: p.stride, pad: p.padding, oh, ow })
}

/// y = conv2d(x [N, C, H, W], weight [OC, C, KH, KW]) + bias [OC] → [N, OC, OH, OW].
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    conv2d_fused(x, weight, bias, ConvAdd::default(), p)
}

/// What [`conv2d_fused`] adds to the convolution as it writes its output,
/// beyond the per-channel bias.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvAdd<'a> {
    /// [N, OC]: a bias per image and output channel (the UNet's time
    /// embedding, broadcast over the pixels).
    pub sample_bias: Option<&'a Tensor>,
    /// [N, OC, OH, OW]: added elementwise (a residual connection).
    pub residual: Option<&'a Tensor>,
}

/// y = conv2d(x, weight) + bias[o] + sample_bias[n, o] + residual[n, o, oy, ox]
/// in one pass over y (each term optional): what the UNet's resnet blocks
/// chain as conv, broadcast add and residual add, with no intermediate tensors.
/// Gradients: d sample_bias[n, o] = Σ_pixels dy[n, o], d residual = dy.
pub fn conv2d_fused(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, add: ConvAdd, p: Conv2dParams) -> Result<Tensor> {
    let _nvtx = crate::device::nvtx::range("conv2d_fused");
    conv2d_with(x, None, weight, bias, add, p, None)
}

/// conv2d_fused(concat([x, x2], 1), weight, bias, add, p). At inference (no
/// gradient wanted) on CUDA the concatenation is never written (the UNet's
/// up path: a skip joining the map is read by the block's group norm,
/// `group_norm_concat_stored`, and by this 1×1 shortcut): a 1×1 conv whose
/// first part has a multiple of 32 channels (the UNet's) is one launch
/// reading both parts where they lie (`cuda::forward_1x1_concat`, the same
/// bits as over the written concatenation); other same convs the tensor
/// cores take are two — x with the weight's first channels, x2 with the
/// rest, the second adding the first's output as it stores (the products
/// are the same; the sum is rounded to f32 once more, between the parts).
/// Otherwise the concatenation, then the conv.
pub fn conv2d_concat(x: &Tensor, x2: &Tensor, weight: &Tensor, bias: Option<&Tensor>, add: ConvAdd, p: Conv2dParams) -> Result<Tensor> {
    conv2d_concat_stored(x, x2, weight, bias, add, p, None)
}

/// [`conv2d_concat`] with its output stored in bf16 where `store_bf16` asks
/// and its one-launch 1×1 forward runs at bf16 (the up resnets' shortcut
/// with bf16 activations); else f32 — the output's dtype says which.
pub fn conv2d_concat_stored(x: &Tensor, x2: &Tensor, weight: &Tensor, bias: Option<&Tensor>, add: ConvAdd, p: Conv2dParams, store_bf16: Option<Bf16Store>) -> Result<Tensor> {
    if let Some(y) = concat_in_two(x, x2, weight, bias, add, p, store_bf16)? {
        return Ok(y);
    }
    conv2d_fused(&crate::ops::concat(&[x, x2], 1)?, weight, bias, add, p)
}

/// conv2d_fused(upsample_nearest2x(x), weight, bias, add, p): the UNet's
/// upsampler. At inference (no gradient wanted) on CUDA a stride-1 3×3 same
/// conv of an f32 x reads the upsampling in place — the upsampled map, four
/// times x, is never written — with the same values, bit for bit.
/// Otherwise the two ops, the upsampled map stored as
/// `precision::conv_input_storage` says.
pub fn conv2d_after_upsample(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, add: ConvAdd, p: Conv2dParams) -> Result<Tensor> {
    if let Some(y) = upsampled_in_place(x, weight, bias, add, p)? {
        return Ok(y);
    }
    let up = crate::ops::resample::upsample_nearest2x_stored(x, precision::conv_input_storage())?;
    conv2d_fused(&up, weight, bias, add, p)
}

/// [`conv2d_after_upsample`]'s one kernel, where it runs (else None).
fn upsampled_in_place(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, add: ConvAdd, p: Conv2dParams) -> Result<Option<Tensor>> {
    const OP: &str = "conv2d";
    let &[n, c, h, w] = x.dims() else { return Ok(None) };
    if !f32_inference_on_cuda(OP, &[x], weight, bias, add)? {
        return Ok(None);
    }
    let g = geometry_of(&Shape::new(vec![n, c, 2 * h, 2 * w]), weight, bias, p)?;
    check_adds(&g, add)?;
    if !cuda::same_conv_takes(&g) {
        return Ok(None);
    }
    let prec = precision::current();
    let (sx, sw) = (x.storage(), weight.storage());
    let (sb, ss, sr) = (bias.map(|t| t.storage()), add.sample_bias.map(|t| t.storage()), add.residual.map(|t| t.storage()));
    let epi = cuda::Epilogue { bias: dev(&sb)?, sample_bias: dev(&ss)?, residual: dev(&sr)?, bf16_out: None };
    let packed = packed_weights(weight, &sw, &g, prec)?;
    let y = cuda::forward_upsampled(sx.cuda(OP)?, cuda::Weights::Packed(&packed), &epi, &g, prec)?;
    Ok(y.map(|y| Tensor::from_storage(Storage::Cuda(y), Shape::new(vec![g.n, g.oc, g.oh, g.ow]))))
}

/// [`conv2d_concat`] without the concatenation — one 1×1 launch over both
/// parts, or two same convs — where they run (else None).
fn concat_in_two(x: &Tensor, x2: &Tensor, weight: &Tensor, bias: Option<&Tensor>, add: ConvAdd, p: Conv2dParams, store_bf16: Option<Bf16Store>) -> Result<Option<Tensor>> {
    const OP: &str = "conv2d";
    let joinable = x.rank() == 4 && x2.rank() == 4 && x.dims()[0] == x2.dims()[0] && x.dims()[2..] == x2.dims()[2..];
    if !joinable || !f32_inference_on_cuda(OP, &[x, x2], weight, bias, add)? {
        return Ok(None);
    }
    let (c1, c2) = (x.dims()[1], x2.dims()[1]);
    let mut dims = x.dims().to_vec();
    dims[1] = c1 + c2;
    let g = geometry_of(&Shape::new(dims), weight, bias, p)?;
    let (g1, g2) = (ConvGeom { c: c1, ..g }, ConvGeom { c: c2, ..g });
    if !(c1 > 0 && c2 > 0 && cuda::same_conv_takes(&g1) && cuda::same_conv_takes(&g2)) {
        return Ok(None);
    }
    check_adds(&g, add)?;
    let prec = precision::current();
    let sw = weight.storage();
    let (sx, sx2) = (x.storage(), x2.storage());
    let (sb, ss, sr) = (bias.map(|t| t.storage()), add.sample_bias.map(|t| t.storage()), add.residual.map(|t| t.storage()));
    let first_epi = cuda::Epilogue { bias: dev(&sb)?, sample_bias: dev(&ss)?, residual: dev(&sr)?, bf16_out: None };
    let joined = |y: crate::device::cuda::CudaBuffer| Some(Tensor::from_storage(Storage::Cuda(y), Shape::new(vec![g.n, g.oc, g.oh, g.ow])));
    // a 1×1 whose parts split at a 32-channel slice: one launch over both parts
    if cuda::one_by_one_takes(&g) && c1.is_multiple_of(32) {
        let whole = packed_weights(weight, &sw, &g, prec)?;
        let epi = cuda::Epilogue { bf16_out: store_bf16, ..first_epi };
        if let Some(y) = cuda::forward_1x1_concat(sx.cuda(OP)?, sx2.cuda(OP)?, c1, &whole, &epi, &g, prec)? {
            return Ok(joined(y));
        }
    }
    let w1 = packed_weights_part(weight, &sw, &g1, prec, 0)?;
    let first = cuda::forward(sx.cuda(OP)?, cuda::Weights::Packed(&w1), &first_epi, &g1, prec)?;
    let w2 = packed_weights_part(weight, &sw, &g2, prec, c1)?;
    let second_epi = cuda::Epilogue { residual: Some(&first), ..Default::default() };
    let y = cuda::forward(sx2.cuda(OP)?, cuda::Weights::Packed(&w2), &second_epi, &g2, prec)?;
    Ok(joined(y))
}

/// Whether a convolution of `inputs` runs off the tape on CUDA with every
/// operand f32 (a gradient wanted, or any other device or dtype: false), its
/// operands on one device.
fn f32_inference_on_cuda(op: &'static str, inputs: &[&Tensor], weight: &Tensor, bias: Option<&Tensor>, add: ConvAdd) -> Result<bool> {
    let mut all = inputs.to_vec();
    all.push(weight);
    all.extend(bias);
    all.extend(add.sample_bias);
    all.extend(add.residual);
    let grad_wanted = crate::autograd::is_grad_enabled() && all.iter().any(|t| t.requires_grad());
    if grad_wanted || !matches!(inputs[0].device(), Device::Cuda(_)) || all.iter().any(|t| t.dtype() != DType::F32) {
        return Ok(false);
    }
    Tensor::common_device(op, &all)?;
    Ok(true)
}

/// Checks `add`'s shapes against the convolution `g`.
fn check_adds(g: &ConvGeom, add: ConvAdd) -> Result<()> {
    const OP: &str = "conv2d";
    if let Some(sb) = add.sample_bias
        && sb.dims() != [g.n, g.oc]
    {
        return shape_err(OP, format!("per-image bias must be [{}, {}], got {}", g.n, g.oc, sb.shape()));
    }
    if let Some(r) = add.residual
        && r.dims() != [g.n, g.oc, g.oh, g.ow]
    {
        return shape_err(OP, format!("residual must be [{}, {}, {}, {}], got {}", g.n, g.oc, g.oh, g.ow, r.shape()));
    }
    Ok(())
}

/// The group norm (+ SiLU) in front of [`conv2d_after_norm`]'s convolution,
/// as `group_norm` / `group_norm_silu` take it.
#[derive(Clone, Copy, Debug)]
pub struct NormFirst<'a> {
    pub groups: usize,
    pub weight: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    pub eps: f32,
    pub silu: bool,
}

/// conv2d_fused(act(group_norm(x)), weight, bias, add, p), act = SiLU when
/// `norm.silu`: the UNet's norm → conv. On CUDA at inference (no gradient
/// wanted) a stride-1 1×1 or 3×3 conv of an f32 input applies the norm as it
/// stages x — one small launch computes each (image, channel)'s affine, and
/// the normalised map is never written or read back (the same values, bit for
/// bit, as the two ops). Otherwise the two ops, the normalised map stored as
/// `precision::conv_input_storage` says.
pub fn conv2d_after_norm(x: &Tensor, norm: NormFirst, weight: &Tensor, bias: Option<&Tensor>, add: ConvAdd, p: Conv2dParams) -> Result<Tensor> {
    let mut out = convs_after_norm(x, norm, &[ConvAfter { weight, bias, add, params: p, store_bf16: None }])?;
    Ok(out.remove(0))
}

/// How a conv asked to store its output in bf16 ([`ConvAfter::store_bf16`])
/// scales it before the rounding: the channels below `scaled_channels` times
/// `times` — the attention's q by its query factor
/// (`ops::attention::query_factor`): every channel of a q projection, the
/// first third of a packed q, k, v projection — the others as they are.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bf16Store {
    pub times: f32,
    pub scaled_channels: usize,
}

impl Bf16Store {
    /// Every channel as it is.
    pub const AS_IS: Bf16Store = Bf16Store { times: 1.0, scaled_channels: 0 };

    /// Every channel times `times`.
    pub fn times(times: f32) -> Bf16Store {
        Bf16Store { times, scaled_channels: usize::MAX }
    }
}

/// One of the convolutions [`convs_after_norm`] runs on the normalised map.
#[derive(Clone, Copy, Debug)]
pub struct ConvAfter<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub add: ConvAdd<'a>,
    pub params: Conv2dParams,
    /// Store the output in bf16, scaled as asked: at inference on CUDA at
    /// the bf16 precision, where a kernel that stores bf16 takes the conv (a
    /// 1×1 of an f32 input, a 3×3 of bf16 storage); else the output in f32,
    /// not scaled — the output's dtype says which. For outputs read only by
    /// bf16 products (the attention's k and v as they are, q times the
    /// factor it multiplies q by: the bits they read anyway), or stored in
    /// bf16 in any case (the resnets' conv1 with
    /// `precision::bf16_activations`, cast where the kernel stored f32).
    pub store_bf16: Option<Bf16Store>,
}

impl ConvAfter<'_> {
    /// This convolution of `x` itself (no norm first): [`conv2d_fused`],
    /// stored in bf16 where `store_bf16` asks and the forward can.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _nvtx = crate::device::nvtx::range("conv2d_fused");
        conv2d_with(x, None, self.weight, self.bias, self.add, self.params, self.store_bf16)
    }
}

/// [`conv2d_after_norm`] for several convolutions of the same normalised map
/// (the attention block's q, k and v projections): the norm's statistics are
/// computed once, and at inference on CUDA each conv applies them as it reads x.
pub fn convs_after_norm(x: &Tensor, norm: NormFirst, convs: &[ConvAfter]) -> Result<Vec<Tensor>> {
    let _nvtx = crate::device::nvtx::range("conv2d_after_norm");
    let mut inputs = vec![Some(x), norm.weight, norm.bias];
    for c in convs {
        inputs.extend([Some(c.weight), c.bias, c.add.sample_bias, c.add.residual]);
    }
    let grad_wanted = crate::autograd::is_grad_enabled() && inputs.iter().flatten().any(|t| t.requires_grad());
    // the norm applied by the convs: every same conv with MINIDIFFUSION_NORM_IN_CONV=on,
    // by default where they are all 1×1 (`cuda::norm_in_1x1`) or all direct
    // (conv_out: each value staged about once)
    let takes = |pick: fn(&ConvGeom) -> bool| convs.iter().all(|c| geometry(x, c.weight, c.bias, c.params).is_ok_and(|g| pick(&g)));
    let fused = !grad_wanted
        && matches!(x.device(), Device::Cuda(_))
        && x.dtype() == DType::F32
        && ((cuda::norm_in_conv() && takes(cuda::same_conv_takes))
            || (cuda::norm_in_1x1() && takes(cuda::one_by_one_takes))
            || takes(cuda::direct_takes));
    if fused {
        let affine = crate::ops::group_norm::cuda_affine(x, norm.groups, norm.weight, norm.bias, norm.eps)?;
        let input_norm = cuda::InputNorm { affine: &affine, silu: norm.silu };
        return convs.iter().map(|c| conv2d_with(x, Some(&input_norm), c.weight, c.bias, c.add, c.params, c.store_bf16)).collect();
    }
    use crate::ops::group_norm::{group_norm_silu_stored, group_norm_stored};
    let store = precision::conv_input_storage();
    let normed = if norm.silu { group_norm_silu_stored } else { group_norm_stored }(x, norm.groups, norm.weight, norm.bias, norm.eps, store)?;
    convs.iter().map(|c| c.forward(&normed)).collect()
}

/// [`conv2d_fused`], with `input_norm` (CUDA, no gradient) applied to x as
/// the conv reads it, and the output stored in bf16 where `store_bf16` asks
/// and the forward can (see [`ConvAfter::store_bf16`]).
fn conv2d_with(
    x: &Tensor,
    input_norm: Option<&cuda::InputNorm>,
    weight: &Tensor,
    bias: Option<&Tensor>,
    add: ConvAdd,
    p: Conv2dParams,
    store_bf16: Option<Bf16Store>,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let mut all = vec![x, weight];
    all.extend(bias);
    all.extend(add.sample_bias);
    all.extend(add.residual);
    let device = Tensor::common_device(OP, &all)?;
    let g = geometry(x, weight, bias, p)?;
    check_adds(&g, add)?;
    let prec = precision::current();
    // bf16 storage (the bf16 path's GroupNorm + SiLU output): the same-conv
    // bf16 kernels read it as it is (forward and weight gradient); every
    // other case widens it to f32 (exact)
    let widened;
    let x = if x.dtype() != DType::F32 && !cuda_reads_bf16(device, &g, prec) {
        widened = crate::ops::cast(x, DType::F32)?;
        &widened
    } else {
        x
    };
    // a bf16 residual (a resnet's shortcut output with bf16 activations):
    // read as it is where the CUDA kernel can, at inference with an f32
    // output; else widened (exact)
    let widened_residual;
    let add = match add.residual {
        Some(r) if r.dtype() != DType::F32 => {
            let grad_wanted = crate::autograd::is_grad_enabled() && all.iter().any(|t| t.requires_grad());
            let as_is = !grad_wanted
                && store_bf16.is_none()
                && r.dtype() == DType::BF16
                && matches!(&*x.storage(), Storage::Cuda(b) if cuda::reads_bf16_residual(b, &g, prec));
            if as_is {
                add
            } else {
                widened_residual = crate::ops::cast(r, DType::F32)?;
                ConvAdd { residual: Some(&widened_residual), ..add }
            }
        }
        _ => add,
    };
    // training on CUDA: the input gradient's flipped weights packed with the
    // forward's, in one launch, kept for this step's backward
    let mut flipped = None;
    let storage = match device {
        Device::Cpu => {
            let (sx, sw) = (x.storage(), weight.storage());
            let (sb, ss, sr) = (bias.map(|t| t.storage()), add.sample_bias.map(|t| t.storage()), add.residual.map(|t| t.storage()));
            let epi = cpu::Epilogue { bias: host(&sb)?, sample_bias: host(&ss)?, residual: host(&sr)? };
            let ox = operand(sx.cpu_f32(OP)?, prec);
            cpu_f32_storage(if direct::available() && keeps_packed(weight) {
                let panels = weight.derived(panels_key(&g, prec), || Ok(direct::Panels::new(&operand(sw.cpu_f32(OP)?, prec), &g)))?;
                direct::forward_packed(&ox, &panels, &epi, &g)
            } else {
                cpu::conv2d_forward_fused(&ox, &operand(sw.cpu_f32(OP)?, prec), &epi, &g)
            })
        }
        Device::Cuda(_) => {
            let (sx, sw) = (x.storage(), weight.storage());
            let (sb, ss, sr) = (bias.map(|t| t.storage()), add.sample_bias.map(|t| t.storage()), add.residual.map(|t| t.storage()));
            let grad_wanted = crate::autograd::is_grad_enabled() && all.iter().any(|t| t.requires_grad());
            let bf16_out = store_bf16.filter(|_| !grad_wanted);
            let residual = sr.as_deref().map(|s| s.cuda_any(OP)).transpose()?;
            let epi = cuda::Epilogue { bias: dev(&sb)?, sample_bias: dev(&ss)?, residual, bf16_out };
            // few channels on one side (conv_in, conv_out): the direct forward, from the weights as they are
            let direct = cuda::direct_takes(&g);
            let packed = if !direct && cuda::forward_reads_packed(&g) && keeps_packed(weight) { Some(packed_weights(weight, &sw, &g, prec)?) } else { None };
            let pair_wanted = packed.is_none() && input_norm.is_none() && crate::autograd::is_grad_enabled() && x.requires_grad();
            let pair = if pair_wanted && cuda::input_gradient_is_same_conv(&g) { Some(cuda::pack_same_pair(sw.cuda(OP)?, &g, prec)?) } else { None };
            let w = match (&packed, &pair) {
                (Some(p), _) => cuda::Weights::Packed(p),
                (None, Some((forward, _))) => cuda::Weights::Packed(forward),
                (None, None) => cuda::Weights::Plain(sw.cuda(OP)?),
            };
            let y = match input_norm {
                _ if direct => cuda::forward_direct(sx.cuda_any(OP)?, input_norm, sw.cuda(OP)?, &epi, &g, prec)?,
                None => cuda::forward(sx.cuda_any(OP)?, w, &epi, &g, prec)?,
                Some(norm) => cuda::forward_normed(sx.cuda(OP)?, norm, w, &epi, &g, prec)?,
            };
            flipped = pair.map(|(_, flip)| flip);
            Storage::Cuda(y)
        }
    };
    let out_shape = Shape::new(vec![g.n, g.oc, g.oh, g.ow]);
    Ok(Tensor::from_op(storage, out_shape, |_| {
        let (x, weight) = (x.clone(), weight.clone());
        let (bias, sample_bias, residual) = (bias.cloned(), add.sample_bias.cloned(), add.residual.cloned());
        let mut inputs = vec![x.clone(), weight.clone()];
        inputs.extend(bias.clone());
        inputs.extend(sample_bias.clone());
        inputs.extend(residual.clone());
        // x's gradient from its other uses (beside a shortcut conv, the block's
        // first norm) is added by the input-gradient kernel where it can
        Node::accumulating(OP, inputs, move |dy, earlier| {
            let mut earlier = earlier.into_iter();
            let mut dx_earlier = earlier.next().flatten();
            let dx = x.requires_grad().then(|| conv2d_backward_input(dy, &weight, &g, prec, &mut dx_earlier, flipped.as_ref())).transpose()?;
            let dx = crate::autograd::plus(dx, dx_earlier)?;
            // the other inputs' gradients, summed with their earlier ones below;
            // the per-image sums, when wanted, also give dB (Σ over the images
            // of [N, OC] instead of a second pass over dY: the UNet's conv1s),
            // else the weight gradient's kernel may sum it as it reads dY
            let sb_wanted = sample_bias.as_ref().is_some_and(|t| t.requires_grad());
            let db_with_dw = bias.as_ref().is_some_and(|b| b.requires_grad()) && !sb_wanted;
            let (dw, mut db_from_dw) = match weight.requires_grad() {
                true => conv2d_backward_weight(dy, &x, &g, prec, db_with_dw).map(|(dw, db)| (Some(dw), db))?,
                false => (None, None),
            };
            let mut grads = vec![dw];
            let sb_grad = sb_wanted.then(|| sample_bias_grad(dy, &g)).transpose()?;
            if let Some(b) = &bias {
                let db = || match (db_from_dw.take(), &sb_grad) {
                    (Some(db), _) => Ok(db),
                    (None, Some(per_image)) => crate::ops::reduce::sum(per_image, &[0], false),
                    (None, None) => bias_grad(dy, &g),
                };
                grads.push(b.requires_grad().then(db).transpose()?);
            }
            if sample_bias.is_some() {
                grads.push(sb_grad);
            }
            if let Some(r) = &residual {
                grads.push(r.requires_grad().then(|| dy.clone()));
            }
            let rest = grads.into_iter().zip(earlier).map(|(own, e)| crate::autograd::plus(own, e));
            std::iter::once(Ok(dx)).chain(rest).collect()
        })
    }))
}

/// Whether a forward keeps its packed weights with `weight`: not when it is
/// trained (a gradient is recorded for it), as the optimiser is about to
/// write it — those forwards pack per call, as the backward does.
fn keeps_packed(weight: &Tensor) -> bool {
    !(crate::autograd::is_grad_enabled() && weight.requires_grad())
}

/// What the CPU forward of `g` at `prec` keeps with its weight: the direct
/// kernel's channel panels (MR rows high) or channel-lane tiles.
fn panels_key(g: &ConvGeom, prec: Precision) -> DerivedKey {
    DerivedKey { what: "conv2d direct weight panels", params: [prec as u64, g.oc as u64, g.k() as u64, direct::Panels::kind(g) as u64] }
}

/// `weight` (whose storage guard is `sw`) packed for a same-conv forward of
/// `g` at `prec`, kept with the weight's storage until it is written (an
/// optimiser step, a load): every step of a sampling run after the first
/// reads the same packed buffer, with no pack launch. Allocated outside
/// graph pools (it outlives any one graph), and held by the graph being
/// captured, if any, that reads it. A capture that finds no packed weights
/// packs them into its own pool, uncached: a value cached during a capture
/// would be read by eager work before any replay had written it.
fn packed_weights(weight: &Tensor, sw: &Storage, g: &ConvGeom, prec: Precision) -> Result<std::sync::Arc<cuda::PackedWeights>> {
    packed_weights_part(weight, sw, g, prec, 0)
}

/// [`packed_weights`] of input channels `first .. first + g.c` of `weight`
/// (a conv of one part of a concatenated input, [`conv2d_concat`]).
fn packed_weights_part(weight: &Tensor, sw: &Storage, g: &ConvGeom, prec: Precision, first: usize) -> Result<std::sync::Arc<cuda::PackedWeights>> {
    let buf = sw.cuda("conv2d")?;
    let part = (first, weight.dims()[1]);
    let key = DerivedKey {
        what: "conv2d same-conv forward weights",
        params: [prec as u64, g.oc as u64, g.c as u64 | (first as u64) << 32, g.kh as u64],
    };
    let backend = buf.backend();
    let pack = |target| cuda::pack_same_part(buf, g, false, prec, target, part);
    if backend.is_capturing() && !weight.has_derived(key) {
        return Ok(std::sync::Arc::new(pack(cuda::PackTarget::Current)?));
    }
    let packed = weight.derived(key, || pack(cuda::PackTarget::OutsidePools))?;
    backend.keep_for_graph(packed.clone());
    Ok(packed)
}

/// Whether the CUDA forward reads a bf16-stored input directly (a same conv at bf16).
fn cuda_reads_bf16(device: Device, g: &ConvGeom, prec: Precision) -> bool {
    matches!(device, Device::Cuda(_)) && prec == Precision::Bf16 && cuda::same_conv_takes(g)
}

/// dX = col2im(Wᵀ · dY) per image, shaped like x, plus `*add` where the
/// kernel can add it as it writes (an f32 gradient on the same device, a
/// same conv's input gradient: then `*add` is taken).
fn conv2d_backward_input(
    dy: &Tensor,
    weight: &Tensor,
    g: &ConvGeom,
    prec: Precision,
    add: &mut Option<Tensor>,
    flipped: Option<&cuda::PackedWeights>,
) -> Result<Tensor> {
    const OP: &str = "conv2d backward";
    let storage = match Tensor::common_device(OP, &[dy, weight])? {
        Device::Cpu => {
            let (sd, sw) = (dy.storage(), weight.storage());
            let (od, ow) = (operand(sd.cpu_f32(OP)?, prec), operand(sw.cpu_f32(OP)?, prec));
            cpu_f32_storage(cpu::conv2d_backward_input(&od, &ow, g))
        }
        Device::Cuda(_) => {
            let (sd, sw) = (dy.storage(), weight.storage());
            let summable = add.as_ref().filter(|t| t.dtype() == DType::F32 && t.device() == dy.device());
            let sa = summable.map(|t| t.storage());
            let (dx, summed) = cuda::backward_input(sd.cuda(OP)?, sw.cuda(OP)?, g, prec, dev(&sa)?, flipped)?;
            drop(sa);
            if summed {
                *add = None;
            }
            Storage::Cuda(dx)
        }
    };
    Ok(Tensor::from_storage(storage, Shape::new(vec![g.n, g.c, g.h, g.w])))
}

/// dW = Σ_n dY_n · col_nᵀ, shaped like the weight; with `bias`, also dB
/// where the weight gradient's kernel sums it as it reads dY (CUDA, 1×1
/// convs), else None.
fn conv2d_backward_weight(dy: &Tensor, x: &Tensor, g: &ConvGeom, prec: Precision, bias: bool) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "conv2d backward";
    let (storage, db) = match Tensor::common_device(OP, &[dy, x])? {
        Device::Cpu => {
            let (sd, sx) = (dy.storage(), x.storage());
            let (od, ox) = (operand(sd.cpu_f32(OP)?, prec), operand(sx.cpu_f32(OP)?, prec));
            (cpu_f32_storage(cpu::conv2d_backward_weight(&od, &ox, g)), None)
        }
        Device::Cuda(_) => {
            let (sd, sx) = (dy.storage(), x.storage());
            let (dw, db) = cuda::backward_weight_and_bias(sd.cuda(OP)?, sx.cuda_any(OP)?, g, prec, bias)?;
            (Storage::Cuda(dw), db.map(|db| Tensor::from_storage(Storage::Cuda(db), Shape::new(vec![g.oc]))))
        }
    };
    Ok((Tensor::from_storage(storage, Shape::new(vec![g.oc, g.c, g.kh, g.kw])), db))
}

/// The host slice of an optional operand's storage.
fn host<'a>(s: &'a Option<StorageGuard<'_>>) -> Result<Option<&'a [f32]>> {
    s.as_deref().map(|s| s.cpu_f32("conv2d")).transpose()
}

/// The device buffer of an optional operand's storage.
fn dev<'a>(s: &'a Option<StorageGuard<'_>>) -> Result<Option<&'a crate::device::cuda::CudaBuffer>> {
    s.as_deref().map(|s| s.cuda("conv2d")).transpose()
}

type StorageGuard<'a> = std::sync::RwLockReadGuard<'a, Storage>;

/// d sample_bias [N, OC] = Σ over each image's pixels of dY.
fn sample_bias_grad(dy: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    let rows = crate::ops::reshape(dy, [g.n * g.oc, g.p()])?;
    let summed = crate::ops::reduce::sum(&rows, &[1], false)?;
    crate::ops::reshape(&summed, [g.n, g.oc])
}

/// dB = Σ over batch and pixels of dY, shape [OC].
fn bias_grad(dy: &Tensor, g: &ConvGeom) -> Result<Tensor> {
    let storage = match dy.device() {
        Device::Cpu => cpu_f32_storage(cpu::bias_grad(dy.storage().cpu_f32("conv2d backward")?, g.n, g.oc, g.p())),
        Device::Cuda(_) => Storage::Cuda(cuda::bias_grad(dy.storage().cuda("conv2d backward")?, g)?),
    };
    Ok(Tensor::from_storage(storage, Shape::new(vec![g.oc])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::randn;

    /// On the CPU the direct kernel's weight panels are kept with the weight
    /// (one key per precision and shape) and give the bits of packing per
    /// call; a write packs again, from the new values.
    #[test]
    fn cpu_weight_panels_are_kept_until_the_weight_is_written() {
        let x = Tensor::from_vec(randn(&[2, 8, 8, 8], 1), [2, 8, 8, 8]).unwrap();
        let w = Tensor::from_vec(randn(&[16, 8, 3, 3], 2), [16, 8, 3, 3]).unwrap();
        let p = Conv2dParams { stride: 1, padding: 1 };
        let g = geometry(&x, &w, None, p).unwrap();
        let per_call = |w: &Tensor, prec| {
            let (sx, sw) = (x.storage(), w.storage());
            let (ox, ow) = (operand(sx.cpu_f32("t").unwrap(), prec), operand(sw.cpu_f32("t").unwrap(), prec));
            cpu::conv2d_forward_fused(&ox, &ow, &cpu::Epilogue::default(), &g)
        };
        let first = conv2d(&x, &w, None, p).unwrap().to_vec();
        assert_eq!(first, per_call(&w, Precision::F32));
        assert_eq!(w.has_derived(panels_key(&g, Precision::F32)), direct::available());
        assert_eq!(conv2d(&x, &w, None, p).unwrap().to_vec(), first);
        let bf16 = {
            let _p = precision::with_precision(Precision::Bf16);
            conv2d(&x, &w, None, p).unwrap().to_vec()
        };
        assert_eq!(bf16, per_call(&w, Precision::Bf16));
        assert_ne!(bf16, first);
        assert_eq!(w.has_derived(panels_key(&g, Precision::Bf16)), direct::available());
        w.copy_from_slice(&randn(&[16, 8, 3, 3], 3)).unwrap();
        assert!(!w.has_derived(panels_key(&g, Precision::F32)));
        let after = conv2d(&x, &w, None, p).unwrap().to_vec();
        assert_eq!(after, per_call(&w, Precision::F32));
        assert_ne!(after, first);
        // a weight being trained packs per call: the optimiser writes it next
        let trained = Tensor::from_vec(randn(&[16, 8, 3, 3], 4), [16, 8, 3, 3]).unwrap().requires_grad_();
        let y = conv2d(&x, &trained, None, p).unwrap();
        assert!(!trained.has_derived(panels_key(&g, Precision::F32)));
        assert_eq!(y.to_vec(), per_call(&trained, Precision::F32));
        crate::no_grad(|| conv2d(&x, &trained, None, p)).unwrap();
        assert_eq!(trained.has_derived(panels_key(&g, Precision::F32)), direct::available(), "kept when no gradient is recorded");
    }
}
