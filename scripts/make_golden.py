#!/usr/bin/env python3
"""Generate golden reference data from Hugging Face diffusers for minidiffusion.

Writes everything under tests/golden/ (relative to the repository root, or to
the directory given with --out). Run from anywhere:

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install -r scripts/golden-requirements.txt
    /tmp/golden-venv/bin/python scripts/make_golden.py

Versions this data was generated with (see scripts/golden-requirements.txt):
    Python 3.11.7, torch 2.15.0 (CPU execution), diffusers 0.42.1,
    safetensors 0.8.0, numpy 2.4.6

What is produced (all arrays are .npy, little-endian, C order; float data is
float32 unless the name says f64, timesteps are int64). tests/golden/index.json
describes every file with its shape and dtype; tests/golden/README.md explains
the layout and the diffusers behaviour a reimplementation must match.

  <model>/config.json, diffusion_pytorch_model.safetensors, scheduler_config.json
        nine small random UNet2DModel directories (unet_a … unet_i)
  <model>/forward/   x, t and eps = model(x, t).sample for several timestep cases
        (σ cases, float32, for the "fourier" unet_h; class_labels.npy where the
        model is class-conditional),
        plus the time-embedding intermediates and (one case) per-module outputs
  schedules/         betas / alphas_cumprod for linear(1e-4,0.01),
        linear(1e-4,0.02), squaredcos_cap_v2 (float32 as diffusers, float64 numpy)
  sampling/          DDIM eta=0 and eta=1 (10 steps), DDIM from saved scheduler_config.json
                     files (trailing + clip 0.5, v_prediction, sample), DDPM (10 steps) with unet_a,
        and a model-free 1000-step DDPM replay; every step's model output,
        variance noise, prev_sample and pred_original_sample are recorded
  noisify/           DDPMScheduler.add_noise (training forward process)

Determinism: CPU, float32, torch.use_deterministic_algorithms(True), one thread,
fixed seeds. Regenerating with the pinned versions should give identical bytes;
other versions may differ in the last float bits.

How the random noise is recorded:
  * DDIM eta=1: noise for every step is drawn by this script with
    torch.randn(shape, generator=g) (g = torch.Generator().manual_seed(...)) and
    passed to DDIMScheduler.step(variance_noise=...). This is bit-identical to
    what step(generator=g) would draw internally (checked in the script).
  * DDPM: DDPMScheduler.step() has no variance_noise argument; it calls
    diffusers.utils.torch_utils.randn_tensor(shape, generator=g, ...) only when
    t > 0. The script wraps the module-level name `randn_tensor` in
    diffusers.schedulers.scheduling_ddpm with a recorder that calls the original
    and keeps a copy of what it returned. The recorded noise for the last step
    (t == 0, no draw) is stored as zeros. The script then re-derives every step
    from the DDPM formula with the recorded noise and asserts it matches.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import diffusers  # noqa: E402
import safetensors  # noqa: E402
from safetensors import safe_open  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as ddpm_module  # noqa: E402

T = 1000
SEED = 20240521

# ---------------------------------------------------------------------------
# Model configurations
# ---------------------------------------------------------------------------

MODELS = {
    # Mirrors the SPEC's Fashion-MNIST UNet layout, scaled down: Down, AttnDown, AttnDown /
    # AttnUp, AttnUp, Up; 2 layers per block; heads = 16 / 4 = 4 where there is attention.
    "unet_a": dict(
        config=dict(
            sample_size=16,
            in_channels=1,
            out_channels=1,
            center_input_sample=False,
            time_embedding_type="positional",
            flip_sin_to_cos=True,
            freq_shift=0,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2D",
            block_out_channels=(8, 16, 16),
            layers_per_block=2,
            norm_num_groups=4,
            attention_head_dim=4,
            act_fn="silu",
            add_attention=True,
        ),
        scheduler=("DDIMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.01)),
        input_hw=(16, 16),
    ),
    # RGB, attention at the top resolution, 1 layer per block, heads 8/8 = 1 (down/up
    # attention) and 16/8 = 2 (mid), flip_sin_to_cos False, freq_shift 1.
    "unet_b": dict(
        config=dict(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            center_input_sample=False,
            time_embedding_type="positional",
            flip_sin_to_cos=False,
            freq_shift=1,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            mid_block_type="UNetMidBlock2D",
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=2,
            attention_head_dim=8,
            act_fn="silu",
            add_attention=True,
        ),
        scheduler=("DDPMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
        input_hw=(8, 8),
    ),
    # in_channels != out_channels (3 -> 1), alternating block kinds, flip True with
    # freq_shift 1, plus a non-square input (8 x 12) to catch H/W mix-ups.
    "unet_c": dict(
        config=dict(
            sample_size=8,
            in_channels=3,
            out_channels=1,
            center_input_sample=False,
            time_embedding_type="positional",
            flip_sin_to_cos=True,
            freq_shift=1,
            down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
            mid_block_type="UNetMidBlock2D",
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            norm_num_groups=2,
            attention_head_dim=4,
            act_fn="silu",
            add_attention=True,
        ),
        scheduler=("DDIMScheduler", dict(beta_schedule="squaredcos_cap_v2", beta_start=1e-4, beta_end=0.02)),
        input_hw=(8, 8),
        extra_input_hw=(8, 12),
    ),
    # the less common switches: downsample_padding 0 (diffusers pads one zero row
    # and column at the bottom right before the stride-2 conv), centred input,
    # no mid-block attention, mid_block_scale_factor, 2 -> 2 channels, norm_eps 1e-6.
    "unet_d": dict(
        config=dict(
            sample_size=16,
            in_channels=2,
            out_channels=2,
            center_input_sample=True,
            time_embedding_type="positional",
            flip_sin_to_cos=False,
            freq_shift=0,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2D",
            block_out_channels=(8, 12, 16),
            layers_per_block=1,
            norm_num_groups=4,
            attention_head_dim=None,
            act_fn="silu",
            add_attention=False,
            downsample_padding=0,
            mid_block_scale_factor=1.414,
            norm_eps=1e-6,
        ),
        scheduler=("DDIMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
        input_hw=(16, 16),
    ),
    # resnet_time_scale_shift "scale_shift": time_emb_proj gives 2·C values, the
    # block computes norm2(h)·(1 + scale) + shift; the mid block's attention then
    # has no group norm (attn_norm_num_groups unset), attention down and up.
    "unet_e": dict(
        config=dict(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            center_input_sample=False,
            time_embedding_type="positional",
            flip_sin_to_cos=True,
            freq_shift=0,
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D"),
            mid_block_type="UNetMidBlock2D",
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=2,
            attention_head_dim=4,
            act_fn="silu",
            add_attention=True,
            resnet_time_scale_shift="scale_shift",
        ),
        scheduler=("DDIMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
        input_hw=(8, 8),
    ),
    # act_fn "mish", time_embedding_dim 24 (not 4·C0), class conditioning by a
    # table (num_class_embeds 5), and resnet resamplers: AttnDownBlock2D with
    # downsample_type "resnet" (2×2 average pool inside a ResnetBlock2D),
    # AttnUpBlock2D with upsample_type "resnet" (nearest 2× inside one).
    "unet_f": dict(
        config=dict(
            sample_size=16,
            in_channels=1,
            out_channels=1,
            time_embedding_type="positional",
            time_embedding_dim=24,
            flip_sin_to_cos=True,
            freq_shift=0,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2D",
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            attention_head_dim=4,
            act_fn="mish",
            downsample_type="resnet",
            upsample_type="resnet",
            num_class_embeds=5,
        ),
        scheduler=("DDIMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
        input_hw=(16, 16),
        class_labels="table",
    ),
    # act_fn "gelu", a learned time embedding (nn.Embedding over 1000 steps),
    # ResnetDownsampleBlock2D / ResnetUpsampleBlock2D, "scale_shift" (in the
    # resampling resnets too), class_embed_type "timestep" (labels through
    # the learned time_proj and their own TimestepEmbedding).
    "unet_g": dict(
        config=dict(
            sample_size=8,
            in_channels=2,
            out_channels=1,
            time_embedding_type="learned",
            num_train_timesteps=1000,
            down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2D",
            block_out_channels=(8, 16),
            layers_per_block=2,
            norm_num_groups=2,
            attention_head_dim=8,
            act_fn="gelu",
            resnet_time_scale_shift="scale_shift",
            class_embed_type="timestep",
        ),
        scheduler=("DDIMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
        input_hw=(8, 8),
        class_labels="timestep",
    ),
    # the score-SDE layout: a Gaussian Fourier time embedding of noise levels σ
    # (the output divided by σ), act_fn "relu", class_embed_type "identity"
    # ([B, time_embed_dim] vectors added to the time embedding), no mid block.
    "unet_h": dict(
        config=dict(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            time_embedding_type="fourier",
            flip_sin_to_cos=True,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            mid_block_type=None,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            attention_head_dim=4,
            act_fn="relu",
            class_embed_type="identity",
        ),
        scheduler=("DDIMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
        input_hw=(8, 8),
        class_labels="identity",
        t_cases="sigma",
    ),
    # the score-SDE (NCSN++) block layout: Skip blocks with FIR-resampling
    # resnet_down / resnet_up and the 3-channel image pyramid (skip_conv,
    # skip_norm), AttnSkip blocks (32-group attention, outputs / sqrt 2; the
    # up block's one attention after its resnets), norm_num_groups null
    # (min(C/4, 32) groups in the mid block and conv_norm_out),
    # mid_block_scale_factor sqrt 2; integer timesteps, so it samples and trains.
    "unet_i": dict(
        config=dict(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            down_block_types=("AttnSkipDownBlock2D", "SkipDownBlock2D"),
            up_block_types=("SkipUpBlock2D", "AttnSkipUpBlock2D"),
            block_out_channels=(32, 32),
            layers_per_block=1,
            time_embedding_dim=32,
            norm_num_groups=None,
            attention_head_dim=8,
            mid_block_scale_factor=2 ** 0.5,
        ),
        scheduler=("DDPMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
        input_hw=(16, 16),
        debug=False,  # (no per-module dumps: 0.9 MB the device bundles cannot spare)
    ),
}

SCHED_COMMON = dict(
    num_train_timesteps=T,
    clip_sample=False,
    prediction_type="epsilon",
    steps_offset=0,
    timestep_spacing="leading",
)

# Timestep cases for the forward pass: name -> per-sample timesteps (batch 2).
T_CASES = {
    "t0": [0, 0],
    "t1": [1, 1],
    "t500": [500, 500],
    "t999": [999, 999],
    "mixed_1_999": [1, 999],
    "mixed_500_0": [500, 0],
}
DEBUG_CASE = "mixed_1_999"

# Noise levels σ for the "fourier" (score-SDE) model: name -> per-sample σ (batch 2).
SIGMA_CASES = {
    "s_small": [0.01, 0.01],
    "s_one": [1.0, 1.0],
    "s_mixed": [0.3, 50.0],
}


def class_labels_for(kind: str, temb: int, gen: torch.Generator):
    """Batch-2 class labels: table indices, labels for the time projection, or identity vectors."""
    if kind == "table":
        return torch.tensor([3, 1], dtype=torch.int64)
    if kind == "timestep":
        return torch.tensor([7, 980], dtype=torch.int64)
    return torch.randn((2, temb), generator=gen)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

class Writer:
    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, dict] = {}

    def npy(self, rel: str, arr, desc: str, dtype=None) -> str:
        if isinstance(arr, torch.Tensor):
            arr = arr.detach().cpu().numpy()
        arr = np.asarray(arr)
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype == np.float64 and "f64" not in rel:
            raise AssertionError(f"{rel}: float64 array without f64 in its name")
        arr = np.ascontiguousarray(arr)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr, allow_pickle=False)
        self.files[rel] = dict(shape=list(arr.shape), dtype=str(arr.dtype), desc=desc)
        return rel

    def other(self, rel: str, desc: str):
        path = self.root / rel
        self.files[rel] = dict(desc=desc, bytes=path.stat().st_size)


def setup_determinism():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def randomise_(model: torch.nn.Module, gen: torch.Generator):
    """Perturb every parameter so that no weight is zero or one and nothing is at
    its default init: norms get weight 1 + 0.2 n, bias 0.1 n; everything else gets
    + 0.5 * max(std, 0.05) * n (n ~ N(0, 1))."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            is_norm = "norm" in name.split(".")[-2] if "." in name else False
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * n)
            elif is_norm and name.endswith("bias"):
                p.copy_(0.1 * n)
            else:
                s = max(float(p.std()) if p.numel() > 1 else 0.0, 0.05)
                p.add_(0.5 * s * n)
            if bool((p == 0).any()):
                raise AssertionError(f"{name} still has zeros")


def make_scheduler(kind: str, sched: dict, **over):
    cls = {"DDIMScheduler": DDIMScheduler, "DDPMScheduler": DDPMScheduler}[kind]
    kw = dict(SCHED_COMMON)
    kw.update(sched)
    if cls is DDIMScheduler:
        kw.update(set_alpha_to_one=False)
    else:
        kw.update(variance_type="fixed_small")
    kw.update(over)
    return cls(**kw)


def sched_cfg(s) -> dict:
    """The scheduler's config without diffusers' bookkeeping (_use_default_values is a set-ordered list)."""
    return {k: v for k, v in dict(s.config).items() if k != "_use_default_values"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# 1 + 2 + 5: models, forward passes, round trip
# ---------------------------------------------------------------------------

def build_models(w: Writer, index: dict) -> dict[str, UNet2DModel]:
    models = {}
    index["models"] = {}
    for mi, (name, spec) in enumerate(MODELS.items()):
        gen = torch.Generator().manual_seed(SEED + 100 * mi)
        torch.manual_seed(SEED + 100 * mi)
        model = UNet2DModel(**spec["config"]).eval()
        randomise_(model, gen)
        mdir = w.root / name
        model.save_pretrained(mdir, safe_serialization=True)
        kind, sched = spec["scheduler"]
        make_scheduler(kind, sched).save_pretrained(mdir)
        for f in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
            w.other(f"{name}/{f}", f"diffusers {'UNet2DModel' if f != 'scheduler_config.json' else kind} file")

        # key names / shapes of the safetensors, as stored
        st_path = mdir / "diffusion_pytorch_model.safetensors"
        tensors = {}
        with safe_open(st_path, framework="pt") as f:
            meta = f.metadata()
            for k in f.keys():
                t = f.get_tensor(k)
                tensors[k] = dict(shape=list(t.shape), dtype=str(t.dtype).replace("torch.", ""))
        index["models"][name] = dict(
            dir=name,
            config=json.loads((mdir / "config.json").read_text()),
            scheduler_config=json.loads((mdir / "scheduler_config.json").read_text()),
            safetensors_metadata=meta,
            safetensors_sha256=sha256(st_path),
            num_parameters=sum(p.numel() for p in model.parameters()),
            tensors=tensors,
            forward_cases=[],
        )
        models[name] = model
    return models


def record_debug(model: UNet2DModel, x, t, labels=None):
    """Outputs of every top-level stage and every resnet / attention module."""
    out = {}
    hooks = []

    def hook(name):
        def fn(mod, inp, res):
            if isinstance(res, tuple):
                res = res[0]
            out[name] = res.detach().clone()
        return fn

    stages = ["time_proj", "time_embedding", "conv_in", "mid_block", "conv_norm_out", "conv_out"]
    for n in stages:
        hooks.append(getattr(model, n).register_forward_hook(hook(n)))
    for i, b in enumerate(model.down_blocks):
        hooks.append(b.register_forward_hook(hook(f"down_blocks.{i}")))
    for i, b in enumerate(model.up_blocks):
        hooks.append(b.register_forward_hook(hook(f"up_blocks.{i}")))
    for n, m in model.named_modules():
        cls = type(m).__name__
        if cls in ("ResnetBlock2D", "Attention", "Downsample2D", "Upsample2D"):
            hooks.append(m.register_forward_hook(hook(n)))
    with torch.no_grad():
        model(x, t, class_labels=labels)
    for h in hooks:
        h.remove()
    return out


def forward_goldens(w: Writer, index: dict, models: dict[str, UNet2DModel]):
    for mi, (name, model) in enumerate(models.items()):
        spec = MODELS[name]
        cin = spec["config"]["in_channels"]
        gen = torch.Generator().manual_seed(SEED + 1000 + mi)
        inputs = {"x": torch.randn((2, cin, *spec["input_hw"]), generator=gen)}
        if "extra_input_hw" in spec:
            h, wd = spec["extra_input_hw"]
            inputs[f"x_{h}x{wd}"] = torch.randn((2, cin, h, wd), generator=gen)
        model64 = UNet2DModel.from_pretrained(w.root / name).double().eval()
        labels = labels64 = None
        if "class_labels" in spec:
            temb_dim = spec["config"].get("time_embedding_dim") or 4 * spec["config"]["block_out_channels"][0]
            labels = class_labels_for(spec["class_labels"], temb_dim, gen)
            labels64 = labels.double() if labels.is_floating_point() else labels
            w.npy(f"{name}/forward/class_labels.npy", labels, f"class_labels ({spec['class_labels']}) for every case")
        sigma = spec.get("t_cases") == "sigma"
        for xname, x in inputs.items():
            xrel = w.npy(f"{name}/forward/{xname}.npy", x, f"{name} input sample (N,C,H,W)")
            cases = SIGMA_CASES if sigma else T_CASES if xname == "x" else {"mixed_1_999": T_CASES["mixed_1_999"]}
            for cname, tv in cases.items():
                t = torch.tensor(tv, dtype=torch.float32 if sigma else torch.int64)
                tag = cname if xname == "x" else f"{cname}_{xname[2:]}"
                with torch.no_grad():
                    eps = model(x, t, class_labels=labels).sample
                    tproj = model.time_proj(t)
                    temb = model.time_embedding(tproj)
                    eps64 = model64(x.double(), t.double() if sigma else t, class_labels=labels64).sample
                err64 = float((eps.double() - eps64).abs().max())
                trel = w.npy(f"{name}/forward/t_{tag}.npy", t, "per-sample noise levels (float32)" if sigma else "per-sample timesteps (int64)")
                orel = w.npy(f"{name}/forward/eps_{tag}.npy", eps, f"model({xname}, t).sample")
                prel = w.npy(f"{name}/forward/time_proj_{tag}.npy", tproj,
                             "time_proj(t): sinusoidal, learned or Fourier features")
                erel = w.npy(f"{name}/forward/time_emb_{tag}.npy", temb,
                             "time_embedding(time_proj(t)) = linear_2(silu(linear_1(.))), (N, 4*C0)")
                case = dict(
                    name=tag, x=xrel, t=trel, t_values=tv, output=orel, time_proj=prel, time_emb=erel,
                    x_shape=list(x.shape), output_shape=list(eps.shape),
                    max_abs_diff_f32_vs_f64=err64, output_abs_max=float(eps.abs().max()),
                )
                if cname == DEBUG_CASE and xname == "x" and spec.get("debug", True):
                    dbg = record_debug(model, x, t, labels)
                    dfiles = {}
                    for mod, arr in dbg.items():
                        dfiles[mod] = w.npy(f"{name}/forward/debug_{tag}/{mod}.npy", arr,
                                            f"output of module {mod} (first tuple element for blocks)")
                    case["debug_module_outputs"] = dfiles
                index["models"][name]["forward_cases"].append(case)


def round_trip(w: Writer, models: dict[str, UNet2DModel]):
    for name, model in models.items():
        re = UNet2DModel.from_pretrained(w.root / name).eval()
        sd0, sd1 = model.state_dict(), re.state_dict()
        assert sd0.keys() == sd1.keys(), name
        for k in sd0:
            assert torch.equal(sd0[k], sd1[k]), (name, k)
        x = torch.from_numpy(np.load(w.root / name / "forward" / "x.npy"))
        labels_path = w.root / name / "forward" / "class_labels.npy"
        labels = torch.from_numpy(np.load(labels_path)) if labels_path.exists() else None
        for cname in SIGMA_CASES if MODELS[name].get("t_cases") == "sigma" else T_CASES:
            t = torch.from_numpy(np.load(w.root / name / "forward" / f"t_{cname}.npy"))
            want = torch.from_numpy(np.load(w.root / name / "forward" / f"eps_{cname}.npy"))
            with torch.no_grad():
                got = re(x, t, class_labels=labels).sample
            assert torch.equal(got, want), (name, cname, float((got - want).abs().max()))
        print(f"round trip ok: {name}")


def training_step_goldens(w: Writer, index: dict, models: dict[str, UNet2DModel]):
    """One training step in PyTorch: loss = mse(model(x_t, t).sample, eps) (mean),
    the gradient of every parameter, and (unet_d) the weights after one
    torch.optim.AdamW step (lr 1e-3, betas (0.9, 0.999), eps 1e-5, weight decay
    0.01), in float32."""
    from safetensors.torch import save_file

    index["training_step"] = {}
    # unet_f and unet_g: class labels (one repeated) through a table and through
    # the learned time projection; mish/gelu and the resnet resamplers backward
    train_labels = {"unet_f": [3, 1, 3], "unet_g": [7, 980, 7]}
    for name in ("unet_a", "unet_d", "unet_f", "unet_g", "unet_i"):
        model = UNet2DModel.from_pretrained(w.root / name).train()
        spec = MODELS[name]
        c = spec["config"]
        g = torch.Generator().manual_seed(SEED + 7000)
        x_t = torch.randn(3, c["in_channels"], *spec["input_hw"], generator=g)
        eps = torch.randn(3, c["out_channels"], *spec["input_hw"], generator=g)
        t = torch.tensor([3, 480, 999], dtype=torch.int64)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.01)
        labels = torch.tensor(train_labels[name], dtype=torch.int64) if name in train_labels else None
        loss = torch.nn.functional.mse_loss(model(x_t, t, class_labels=labels).sample, eps)
        loss.backward()
        grads = {k: p.grad.detach().clone().contiguous() for k, p in model.named_parameters()}
        opt.step()
        after = {k: p.detach().clone().contiguous() for k, p in model.named_parameters()}
        d = w.root / "training_step" / name
        d.mkdir(parents=True, exist_ok=True)
        save_file(grads, str(d / "grads.safetensors"))
        w.other(f"training_step/{name}/grads.safetensors", "d loss / d parameter, every parameter (diffusers names)")
        if name == "unet_d":  # (one model's step is enough: the update follows from the gradients)
            save_file(after, str(d / "weights_after_adamw.safetensors"))
            w.other(f"training_step/{name}/weights_after_adamw.safetensors", "every parameter after one AdamW step")
        index["training_step"][name] = dict(
            model=name, loss=float(loss), t=t.tolist(), **({"class_labels": train_labels[name]} if name in train_labels else {}),
            x_t=w.npy(f"training_step/{name}/x_t.npy", x_t, "model input"),
            eps=w.npy(f"training_step/{name}/eps.npy", eps, "target"),
            loss_fn="torch.nn.functional.mse_loss(model(x_t, t, class_labels).sample, eps), mean",
            optimizer="torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.01), one step",
        )


def pipeline_golden(w: Writer, index: dict, models: dict[str, UNet2DModel]):
    """unet_a saved the way diffusers users often have it: a DDIMPipeline
    directory (model_index.json, unet/, scheduler/) with fp16 weights under the
    "fp16" variant name; eps of those rounded weights, evaluated in float32."""
    from diffusers import DDIMPipeline

    name = "unet_a"
    unet = UNet2DModel.from_pretrained(w.root / name).eval()
    sched = DDIMScheduler.from_pretrained(w.root / name)
    pipe = DDIMPipeline(unet=unet.to(torch.float16), scheduler=sched)
    pipe.save_pretrained(w.root / "pipeline_a", variant="fp16")
    for p in sorted((w.root / "pipeline_a").rglob("*")):
        if p.is_file():
            w.other(str(p.relative_to(w.root)), "DDIMPipeline.save_pretrained(variant='fp16') of unet_a in float16")
    x = torch.from_numpy(np.load(w.root / name / "forward" / "x.npy"))
    t = torch.from_numpy(np.load(w.root / name / "forward" / "t_mixed_1_999.npy"))
    with torch.no_grad():
        eps = unet.float()(x, t).sample
    index["pipeline_a"] = dict(
        source=name, variant="fp16", x=f"{name}/forward/x.npy", t=f"{name}/forward/t_mixed_1_999.npy",
        eps=w.npy("pipeline_a_eps_mixed_1_999.npy", eps, "eps of the fp16-rounded unet_a weights, in float32"),
    )


# ---------------------------------------------------------------------------
# 3: schedules
# ---------------------------------------------------------------------------

def schedules_f64(kind: str, b0: float, b1: float):
    if kind == "linear":
        betas = np.linspace(b0, b1, T, dtype=np.float64)
    elif kind == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=np.float64) ** 2
    elif kind == "sigmoid":
        x = np.linspace(-6.0, 6.0, T, dtype=np.float64)
        betas = 1.0 / (1.0 + np.exp(-x)) * (b1 - b0) + b0
    else:
        raise ValueError(kind)
    return betas, np.cumprod(1.0 - betas)


def schedule_goldens(w: Writer, index: dict):
    index["schedules"] = {}
    for key, (kind, b0, b1) in {
        "linear_1e-4_0.01": ("linear", 1e-4, 0.01),
        "linear_1e-4_0.02": ("linear", 1e-4, 0.02),
        "squaredcos_cap_v2": ("squaredcos_cap_v2", 1e-4, 0.02),
        "scaled_linear_8.5e-4_0.012": ("scaled_linear", 8.5e-4, 0.012),
        "sigmoid_1e-4_0.02": ("sigmoid", 1e-4, 0.02),
    }.items():
        s = DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, beta_start=b0, beta_end=b1)
        b64, a64 = schedules_f64(kind, b0, b1)
        assert s.betas.dtype == torch.float32 and s.alphas_cumprod.dtype == torch.float32
        files = dict(
            betas=w.npy(f"schedules/{key}/betas.npy", s.betas, "diffusers scheduler.betas (float32)"),
            alphas_cumprod=w.npy(f"schedules/{key}/alphas_cumprod.npy", s.alphas_cumprod,
                                 "diffusers scheduler.alphas_cumprod = torch.cumprod(1-betas) in float32"),
            betas_f64=w.npy(f"schedules/{key}/betas_f64.npy", b64, "same, recomputed in float64 numpy"),
            alphas_cumprod_f64=w.npy(f"schedules/{key}/alphas_cumprod_f64.npy", a64,
                                     "cumprod(1-betas) in float64 numpy"),
        )
        index["schedules"][key] = dict(
            beta_schedule=kind, beta_start=b0, beta_end=b1, num_train_timesteps=T, files=files,
            max_abs_diff_alphas_cumprod_f32_vs_f64=float(np.abs(s.alphas_cumprod.numpy() - a64).max()),
            alphas_cumprod_first=float(s.alphas_cumprod[0]), alphas_cumprod_last=float(s.alphas_cumprod[-1]),
        )


# ---------------------------------------------------------------------------
# 4: sampling
# ---------------------------------------------------------------------------

def sampling_goldens(w: Writer, index: dict, models: dict[str, UNet2DModel]):
    index["sampling"] = {}
    name = "unet_a"
    model = models[name]
    spec = MODELS[name]
    shape = (2, spec["config"]["out_channels"], *spec["input_hw"])
    n_steps = 10

    def stack_and_save(prefix, rec, desc_extra):
        files = {}
        for k, desc in (
            ("model_output", "eps = model(x_t, t) at each step (input to scheduler.step)"),
            ("variance_noise", "noise z used at each step (zeros where none is added)"),
            ("prev_sample", "x after each step (scheduler.step(...).prev_sample)"),
            ("pred_original_sample", "predicted x0 of each step (before it is used; clip_sample=False)"),
        ):
            files[k] = w.npy(f"{prefix}/{k}.npy", torch.stack(rec[k]), f"(steps, N, C, H, W): {desc}")
        files["timesteps"] = w.npy(f"{prefix}/timesteps.npy", torch.tensor(rec["t"], dtype=torch.int64),
                                   f"timesteps visited, in order ({desc_extra})")
        return files

    # ---- DDIM eta 0 and eta 1 -------------------------------------------------------------
    kind, sched = spec["scheduler"]
    assert kind == "DDIMScheduler"
    xT = torch.randn(shape, generator=torch.Generator().manual_seed(SEED + 5000))
    xT_rel = w.npy("sampling/x_T.npy", xT, "initial noise x_T for every sampler run with unet_a")
    for eta in (0.0, 1.0):
        s = make_scheduler(kind, sched)
        s.set_timesteps(n_steps)
        g = torch.Generator().manual_seed(SEED + 6000)
        rec = {k: [] for k in ("model_output", "variance_noise", "prev_sample", "pred_original_sample", "t")}
        x = xT.clone()
        for t in s.timesteps:
            ti = int(t)
            with torch.no_grad():
                eps = model(x, torch.full((shape[0],), ti, dtype=torch.int64)).sample
            if eta > 0:
                z = torch.randn(shape, generator=g, dtype=torch.float32)
                out = s.step(eps, ti, x, eta=eta, variance_noise=z)
            else:
                z = torch.zeros(shape)
                out = s.step(eps, ti, x, eta=eta)
            for k, v in (("model_output", eps), ("variance_noise", z), ("prev_sample", out.prev_sample),
                         ("pred_original_sample", out.pred_original_sample)):
                rec[k].append(v.clone())
            rec["t"].append(ti)
            x = out.prev_sample
        # check: the generator path gives the same bits as the explicit noise
        if eta > 0:
            s2 = make_scheduler(kind, sched)
            s2.set_timesteps(n_steps)
            g2 = torch.Generator().manual_seed(SEED + 6000)
            x2 = xT.clone()
            for i, t in enumerate(s2.timesteps):
                x2 = s2.step(rec["model_output"][i], int(t), x2, eta=eta, generator=g2).prev_sample
                assert torch.equal(x2, rec["prev_sample"][i]), "generator vs variance_noise mismatch"
        # check: recompute from the SPEC formula in float64 with diffusers' alpha_prev rule
        ac = s.alphas_cumprod.double()
        x = xT.double()
        for i, ti in enumerate(rec["t"]):
            prev = ti - T // n_steps
            a_t = ac[ti]
            a_p = ac[prev] if prev >= 0 else ac[0]  # set_alpha_to_one=False -> alphas_cumprod[0]
            e = rec["model_output"][i].double()
            x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
            sig = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
            x = a_p.sqrt() * x0 + (1 - a_p - sig ** 2).sqrt() * e + sig * rec["variance_noise"][i].double()
            err = float((x - rec["prev_sample"][i].double()).abs().max())
            assert err < 1e-4, ("ddim formula mismatch", eta, ti, err)
            x = rec["prev_sample"][i].double()  # follow the recorded trajectory
        key = f"ddim_eta{int(eta)}"
        files = stack_and_save(f"sampling/{key}", rec, "DDIM leading spacing")
        files["x_T"] = xT_rel
        index["sampling"][key] = dict(
            model=name, scheduler="DDIMScheduler", scheduler_config=sched_cfg(s),
            num_inference_steps=n_steps, eta=eta, timesteps=rec["t"],
            noise_source=("none (eta=0)" if eta == 0 else
                          f"torch.randn(shape, generator=torch.Generator().manual_seed({SEED + 6000})) per step, "
                          "passed as variance_noise; identical to step(generator=...)"),
            model_call="eps = model(x_t, torch.full((N,), t, int64)).sample",
            files=files, final_sample=files["prev_sample"] + "[-1]",
        )

    # ---- DDIM as a scheduler_config.json asks ---------------------------------------------
    # (sample --model must honour the model directory's scheduler config, as
    # DDIMScheduler.from_pretrained does; each config is saved next to its result):
    # trailing spacing with x0 clipped at 0.5, and unet_a's output read as v or as x0
    for key, over, desc in (
        ("ddim_trailing_clip", dict(timestep_spacing="trailing", clip_sample=True, clip_sample_range=0.5),
         "trailing, clip 0.5"),
        ("ddim_v_prediction", dict(prediction_type="v_prediction"), "the model output read as v"),
        ("ddim_sample_prediction", dict(prediction_type="sample"), "the model output read as x0"),
        # zero terminal SNR (rescale_betas_zero_snr): ᾱ = 0 at t = 999, which trailing
        # spacing visits first; x0 there is -v (or the output itself), not from eps
        ("ddim_zero_snr_v", dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"),
         "zero terminal SNR, trailing, v"),
        ("ddim_zero_snr_sample", dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="sample"),
         "zero terminal SNR, trailing, x0"),
        # squaredcos_cap_v2 reaches tiny ᾱ at the last timesteps, which trailing spacing visits:
        # x0 from v or x0 outputs must be formed directly, not through eps
        ("ddim_cosine_v_trailing", dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing"),
         "squaredcos_cap_v2, trailing, v"),
        ("ddim_cosine_sample_trailing", dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="trailing"),
         "squaredcos_cap_v2, trailing, x0"),
        # dynamic thresholding (replaces clip_sample): s per sample from the 0.9 quantile of |x0|, in [1, 2]
        ("ddim_threshold", dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.0),
         "dynamic thresholding, ratio 0.9, max 2"),
    ):
        s = make_scheduler(kind, sched, **over)
        s.set_timesteps(n_steps)
        x = xT.clone()
        visited = []
        for t in s.timesteps:
            with torch.no_grad():
                eps = model(x, torch.full((shape[0],), int(t), dtype=torch.int64)).sample
            x = s.step(eps, int(t), x, eta=0.0).prev_sample
            visited.append(int(t))
        s.save_config(w.root / f"sampling/{key}")
        w.other(f"sampling/{key}/scheduler_config.json", "the DDIMScheduler config of this run")
        if over.get("thresholding"):
            # _threshold_sample on its own: samples with |x0| quantiles below 1, between 1 and 2, above 2
            g = torch.Generator().manual_seed(SEED + 8000)
            raw = torch.randn((3, 2, 4, 5), generator=g) * torch.tensor([0.3, 1.5, 6.0]).reshape(3, 1, 1, 1)
            w.npy(f"sampling/{key}/threshold_in.npy", raw, "x0 before DDIMScheduler._threshold_sample (this config)")
            w.npy(f"sampling/{key}/threshold_out.npy", s._threshold_sample(raw.clone()), "after _threshold_sample")
        if over.get("rescale_betas_zero_snr"):
            assert float(s.alphas_cumprod[-1]) == 0.0 and bool(torch.isfinite(x).all())
            w.npy(f"sampling/{key}/alphas_cumprod.npy", s.alphas_cumprod, "alphas_cumprod after rescale_zero_terminal_snr (float32)")
        index["sampling"][key] = dict(
            model=name, scheduler="DDIMScheduler", scheduler_config=sched_cfg(s), num_inference_steps=n_steps, eta=0.0,
            timesteps=visited, x_T=xT_rel,
            final_sample=w.npy(f"sampling/{key}/final_sample.npy", x,
                               f"x_0 of DDIM eta 0 from x_T with this scheduler config ({desc})"),
        )

    # ---- DDPM, 10 steps, with the model ---------------------------------------------------
    s = make_scheduler("DDPMScheduler", sched)
    s.set_timesteps(n_steps)
    recorded = []
    orig = ddpm_module.randn_tensor

    def recording_randn(*a, **k):
        r = orig(*a, **k)
        recorded.append(r.clone())
        return r

    def recorded_ddpm_run(s, x, output, gnoise):
        """s's steps from x, output(x, ti) the model output at each: every step's
        output, noise (drawn inside step and recorded by wrapping randn_tensor;
        zeros where none), result and x0."""
        recorded.clear()
        ddpm_module.randn_tensor = recording_randn
        try:
            rec = {k: [] for k in ("model_output", "variance_noise", "prev_sample", "pred_original_sample", "t")}
            for t in s.timesteps:
                ti = int(t)
                out_in = output(x, ti)
                n_before = len(recorded)
                out = s.step(out_in, ti, x, generator=gnoise)
                z = recorded[-1] if len(recorded) > n_before else torch.zeros(x.shape)
                assert (len(recorded) > n_before) == (ti > 0)
                for k, v in (("model_output", out_in), ("variance_noise", z), ("prev_sample", out.prev_sample),
                             ("pred_original_sample", out.pred_original_sample)):
                    rec[k].append(v.clone())
                rec["t"].append(ti)
                x = out.prev_sample
        finally:
            ddpm_module.randn_tensor = orig
        return rec

    def model_output(x, ti):
        with torch.no_grad():
            return model(x, torch.full((shape[0],), ti, dtype=torch.int64)).sample

    rec = recorded_ddpm_run(s, xT.clone(), model_output, torch.Generator().manual_seed(SEED + 7000))
    check_ddpm(s, rec, xT)
    files = stack_and_save("sampling/ddpm_10", rec, "DDPM set_timesteps(10), leading")
    files["x_T"] = xT_rel
    index["sampling"]["ddpm_10"] = dict(
        model=name, scheduler="DDPMScheduler", scheduler_config=sched_cfg(s),
        num_inference_steps=n_steps, timesteps=rec["t"],
        prev_timestep_rule="next entry of scheduler.timesteps; -1 after the last (alpha_prod_prev = 1.0)",
        noise_source=(f"drawn inside DDPMScheduler.step via randn_tensor(shape, generator=torch.Generator()"
                      f".manual_seed({SEED + 7000})) only while t > 0; recorded by wrapping "
                      "diffusers.schedulers.scheduling_ddpm.randn_tensor; zeros stored for t == 0"),
        model_call="eps = model(x_t, torch.full((N,), t, int64)).sample",
        files=files, final_sample=files["prev_sample"] + "[-1]",
    )

    def synthetic_ddpm_run(s, shp, seed, extra_output=None):
        """A model-free run from a random start: the stand-in model's eps is the
        true noise of a fixed x0 plus a perturbation (then, with
        `extra_output(gen, ti)`, more channels concatenated)."""
        gsyn = torch.Generator().manual_seed(seed)
        x0_fixed = torch.rand(shp, generator=gsyn) - 0.5
        x_start = torch.randn(shp, generator=gsyn)

        def output(x, ti):
            a = s.alphas_cumprod[ti]
            eps = (x - a.sqrt() * x0_fixed) / (1 - a).sqrt() + 0.3 * torch.randn(shp, generator=gsyn)
            return eps if extra_output is None else torch.cat([eps, extra_output(gsyn, ti)], dim=1)

        return recorded_ddpm_run(s, x_start.clone(), output, torch.Generator().manual_seed(seed + 1000)), x_start

    # ---- DDPM, all 1000 steps, model-free (synthetic eps) --------------------------------
    s = make_scheduler("DDPMScheduler", sched)  # no set_timesteps: timesteps 999..0, prev_t = t-1
    rec, x_start = synthetic_ddpm_run(s, (1, 1, 4, 4), SEED + 8000)
    check_ddpm(s, rec, x_start)
    files = stack_and_save("sampling/ddpm_1000_synthetic", rec, "999..0, no set_timesteps")
    files["x_T"] = w.npy("sampling/ddpm_1000_synthetic/x_T.npy", x_start, "initial sample (1,1,4,4)")
    index["sampling"]["ddpm_1000_synthetic"] = dict(
        model=None, scheduler="DDPMScheduler", scheduler_config=sched_cfg(s),
        num_inference_steps=None, timesteps="999, 998, ..., 0",
        note=("model-free: model_output is a recorded synthetic eps; replay it and the recorded noise "
              "through the DDPM update of the SPEC (alpha_bar_{-1} = 1, z = 0 at t = 0)"),
        files=files, final_sample=files["prev_sample"] + "[-1]",
    )

    # ---- DDPM with a learned variance (improved DDPM), and spacings, model-free ----------
    # A learned variance: the model's output has twice the sample's channels: eps,
    # then the variance ("learned": the variance itself; "learned_range": v in
    # [-1, 1] interpolating log beta_tilde_t .. log beta_t). step() splits it and
    # draws the noise inside. DDPMScheduler steps from each timestep to the next
    # one it visits (previous_timestep), which is not t - T/n for linspace
    # spacing nor for trailing spacing when n does not divide T.
    for key, vt, n, spacing in (("ddpm_learned_range_10", "learned_range", 10, "leading"),
                                ("ddpm_learned_25_trailing", "learned", 25, "trailing"),
                                ("ddpm_linspace_7", "fixed_small", 7, "linspace"),
                                ("ddpm_learned_range_trailing_7", "learned_range", 7, "trailing")):
        s = make_scheduler("DDPMScheduler", sched, variance_type=vt, timestep_spacing=spacing)
        s.set_timesteps(n)
        shp = (2, 1, 4, 4)
        variance_half = {
            "learned_range": lambda gen, ti: torch.rand(shp, generator=gen) * 2 - 1,
            "learned": lambda gen, ti: (0.5 + torch.rand(shp, generator=gen)) * s.betas[ti],
        }.get(vt)
        rec, x_start = synthetic_ddpm_run(s, shp, SEED + 8100, variance_half)
        files = stack_and_save(f"sampling/{key}", rec, f"DDPM set_timesteps({n}), {spacing}, variance_type {vt}")
        files["x_T"] = w.npy(f"sampling/{key}/x_T.npy", x_start, "initial sample (2,1,4,4)")
        index["sampling"][key] = dict(
            model=None, scheduler="DDPMScheduler", scheduler_config=sched_cfg(s),
            num_inference_steps=n, timesteps=rec["t"],
            note=("model-free: model_output is a synthetic eps" + (
                "" if vt.startswith("fixed") else
                " (first C channels) and variance output (last C: "
                + ("v in [-1, 1)" if vt == "learned_range" else "the variance, (0.5..1.5)*beta_t") + ")")
                + "; variance_noise is the recorded z (zeros at t == 0); each step goes from a timestep to the "
                "next one visited (-1 after the last)"),
            files=files, final_sample=files["prev_sample"] + "[-1]",
        )

    # ---- timestep lists for other step counts ---------------------------------------------
    lists = {}
    for n in (1, 3, 7, 10, 25, 50, 100, 200, 333, 1000):
        d = make_scheduler("DDIMScheduler", sched)
        d.set_timesteps(n)
        lists[str(n)] = [int(v) for v in d.timesteps]
        p = make_scheduler("DDPMScheduler", sched)
        p.set_timesteps(n)
        assert [int(v) for v in p.timesteps] == lists[str(n)]
    index["sampling"]["timesteps_leading_steps_offset_0"] = lists

    # ---- DDIM timesteps for every spacing, odd T and n, steps_offset 0 and 1 -------------------
    # (numpy's rounding is half to even: linspace(0, 999, 7) has 832.5 -> 832)
    by_spacing = []
    for spacing in ("leading", "trailing", "linspace"):
        for t_train in (1000, 100, 37):
            for n in (1, 3, 7, 10, 25, 33, 50):
                for offset in (0, 1):
                    if n > t_train:
                        continue
                    d = DDIMScheduler(num_train_timesteps=t_train, timestep_spacing=spacing, steps_offset=offset)
                    d.set_timesteps(n)
                    by_spacing.append(dict(spacing=spacing, num_train_timesteps=t_train, num_inference_steps=n,
                                           steps_offset=offset, timesteps=[int(v) for v in d.timesteps]))
    index["sampling"]["ddim_timesteps_by_spacing"] = by_spacing


def check_ddpm(s: DDPMScheduler, rec: dict, x_start):
    """Re-derive each DDPM step (float64) from the formula with the recorded noise."""
    ac = s.alphas_cumprod.double()
    ts = rec["t"]
    x = x_start.double()
    for i, ti in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        a_t = ac[ti]
        a_p = ac[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        beta_t = 1 - a_t / a_p
        e = rec["model_output"][i].double()
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        mean = x0 * a_p.sqrt() * beta_t / (1 - a_t) + x * (1 - beta_t).sqrt() * (1 - a_p) / (1 - a_t)
        var = torch.clamp((1 - a_p) / (1 - a_t) * beta_t, min=1e-20)
        xn = mean + (var.sqrt() * rec["variance_noise"][i].double() if ti > 0 else 0)
        ref = rec["prev_sample"][i].double()
        err = float((xn - ref).abs().max()) / max(1.0, float(ref.abs().max()))
        assert err < 1e-4, ("ddpm formula mismatch", ti, err)
        x = ref


# ---------------------------------------------------------------------------
# noisify
# ---------------------------------------------------------------------------

def noisify_goldens(w: Writer, index: dict):
    s = make_scheduler("DDPMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.01))
    g = torch.Generator().manual_seed(SEED + 10000)
    x0 = torch.rand((4, 1, 8, 8), generator=g) - 0.5
    noise = torch.randn((4, 1, 8, 8), generator=g)
    t = torch.tensor([0, 1, 500, 999], dtype=torch.int64)
    xt = s.add_noise(x0, noise, t)
    index["noisify"] = dict(
        scheduler="DDPMScheduler linear(1e-4, 0.01)",
        formula="x_t = sqrt(alphas_cumprod[t]) * x0 + sqrt(1 - alphas_cumprod[t]) * noise (float32)",
        files=dict(
            x0=w.npy("noisify/x0.npy", x0, "clean samples in [-0.5, 0.5]"),
            noise=w.npy("noisify/noise.npy", noise, "eps"),
            t=w.npy("noisify/t.npy", t, "per-sample timesteps"),
            x_t=w.npy("noisify/x_t.npy", xt, "DDPMScheduler.add_noise(x0, noise, t)"),
        ),
    )


def public_config(s) -> dict:
    """A scheduler's config without diffusers' bookkeeping keys (`_use_default_values`
    is a set: its order would change index.json from run to run)."""
    return {k: v for k, v in dict(s.config).items() if not k.startswith("_")}


def sde_ve_goldens(w: Writer, index: dict):
    """ScoreSdeVeScheduler: the levels of N-step runs (timesteps, sigmas,
    discrete_sigmas), and a model-free predictor-corrector run as
    ScoreSdeVePipeline drives it, every corrector and predictor step recorded
    with its synthetic score and the noise drawn inside (randn_tensor wrapped)."""
    import diffusers.schedulers.scheduling_sde_ve as ve_module
    from diffusers import ScoreSdeVeScheduler

    index["sde_ve"] = {"levels": []}
    for n, kw in ((1, {}), (2, {}), (7, {}), (1000, {}), (7, dict(sampling_eps=1e-3, sigma_min=0.005, sigma_max=90.0))):
        s = ScoreSdeVeScheduler(**kw)
        s.set_timesteps(n)
        s.set_sigmas(n)
        tag = f"n{n}" + ("_custom" if kw else "")
        index["sde_ve"]["levels"].append(dict(
            num_inference_steps=n, config=public_config(s),
            timesteps=w.npy(f"sde_ve/{tag}_timesteps.npy", s.timesteps, "set_timesteps(n): linspace(1, sampling_eps, n), float32"),
            sigmas=w.npy(f"sde_ve/{tag}_sigmas.npy", s.sigmas, "sigma_min * (sigma_max / sigma_min) ** t, float32"),
            discrete_sigmas=w.npy(f"sde_ve/{tag}_discrete_sigmas.npy", s.discrete_sigmas,
                                  "exp(linspace(log sigma_min, log sigma_max, n)), float32"),
        ))

    # a 6-step run with 2 corrector steps each, model-free: score = -(x - 0.3) / sigma^2 + 0.1 * randn
    s = ScoreSdeVeScheduler(sigma_max=50.0, snr=0.16, correct_steps=2)
    n = 6
    s.set_timesteps(n)
    s.set_sigmas(n)
    g = torch.Generator().manual_seed(SEED + 12000)
    gnoise = torch.Generator().manual_seed(SEED + 12100)
    shape = (2, 1, 4, 4)
    x = torch.randn(shape, generator=g) * s.init_noise_sigma
    x_start = x.clone()
    recorded = []
    orig = ve_module.randn_tensor

    def recording_randn(*a, **k):
        r = orig(*a, **k)
        recorded.append(r.clone())
        return r

    rec = {k: [] for k in ("x_in", "score", "noise", "x_out", "mean")}
    ve_module.randn_tensor = recording_randn
    try:
        for i, t in enumerate(s.timesteps):
            sigma = s.sigmas[i]
            for _ in range(s.config.correct_steps):
                score = -(x - 0.3) / sigma ** 2 + 0.1 * torch.randn(shape, generator=g)
                out = s.step_correct(score, x, generator=gnoise).prev_sample
                for k, v in (("x_in", x), ("score", score), ("noise", recorded[-1]), ("x_out", out), ("mean", torch.full(shape, float("nan")))):
                    rec[k].append(v.clone())
                x = out
            score = -(x - 0.3) / sigma ** 2 + 0.1 * torch.randn(shape, generator=g)
            out = s.step_pred(score, t, x, generator=gnoise)
            for k, v in (("x_in", x), ("score", score), ("noise", recorded[-1]), ("x_out", out.prev_sample), ("mean", out.prev_sample_mean)):
                rec[k].append(v.clone())
            x = out.prev_sample
    finally:
        ve_module.randn_tensor = orig
    files = {k: w.npy(f"sde_ve/run/{k}.npy", torch.stack(v), f"(updates, N, C, H, W): {k} of each update, in order")
             for k, v in rec.items()}
    index["sde_ve"]["run"] = dict(
        config=public_config(s), num_inference_steps=n,
        order="each step i: correct_steps corrector updates (step_correct), then one predictor update (step_pred); "
              "mean is NaN for corrector updates",
        x_T=w.npy("sde_ve/run/x_T.npy", x_start, "randn * init_noise_sigma"),
        files=files,
    )


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "golden")
    args = ap.parse_args()
    root: Path = args.out
    setup_determinism()

    # start clean, but keep the hand-written README
    root.mkdir(parents=True, exist_ok=True)
    for p in root.iterdir():
        if p.name == "README.md":
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    w = Writer(root)
    versions = dict(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                    safetensors=safetensors.__version__, numpy=np.__version__)
    index: dict = dict(
        generator="scripts/make_golden.py", versions=versions, seed=SEED,
        conventions=dict(
            npy="little-endian, C order; float32 unless the file name contains f64; timesteps int64",
            layout="NCHW",
            timesteps_to_model="int64 tensor of shape (N,), one per sample",
        ),
    )

    models = build_models(w, index)
    forward_goldens(w, index, models)
    round_trip(w, models)
    pipeline_golden(w, index, models)
    training_step_goldens(w, index, models)
    schedule_goldens(w, index)
    sampling_goldens(w, index, models)
    noisify_goldens(w, index)
    sde_ve_goldens(w, index)

    index["files"] = w.files
    (root / "index.json").write_text(json.dumps(index, indent=1, sort_keys=False) + "\n")

    total = 0
    print(f"\nfiles under {root}:")
    for p in sorted(root.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.relative_to(root)}  {p.stat().st_size} B")
    print(f"total: {total / 1024:.1f} KiB in {sum(1 for p in root.rglob('*') if p.is_file())} files")
    print("versions:", json.dumps(versions))
    for name, m in index["models"].items():
        errs = [c["max_abs_diff_f32_vs_f64"] for c in m["forward_cases"]]
        mags = [c["output_abs_max"] for c in m["forward_cases"]]
        print(f"{name}: {m['num_parameters']} params, |eps|max {max(mags):.3f}, f32-vs-f64 max err {max(errs):.2e}")
    # the repository travels to the GPU machine with the device bundle (64 MiB in all)
    if total > 4 * 1024 * 1024:
        print("WARNING: golden data exceeds 4 MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
