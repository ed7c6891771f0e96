"""The lesson's DDPM training recipe in PyTorch + diffusers, to hold
`minidiffusion train` against: the same UNet config (a preset or a
config.json), Fashion-MNIST padded to 32×32 in [−0.5, 0.5], t uniform on
0..999, linear β 1e-4 → 0.01, MSE on ε, AdamW (eps 1e-5, weight decay 0.01),
OneCycleLR over the run, the lesson's init (`init_ddpm`: zero conv2 of every
resnet and conv_out, orthogonal downsamplers). Prints one JSON line per
--every steps (loss, lr, the gradients' global norm and the largest since
the last line) and one at the end (eval loss on --eval-images test images).

    python3 scripts/train_pytorch.py --config tiny --lr 1e-2 --steps 150 --batch-size 64 --seed 42 [--clip 1.0]
                                     [--init DIR] [--dtype fp32|bf16|fp16] [--skip-rule] [--device cpu]
                                     [--threads 2] [--every 10] [--eval-images 1000]

--dtype fp16 is the lesson's MixedPrecision (autocast + GradScaler, which
skips a step whose scaled gradients overflow); --skip-rule applies
GradScaler's rule to f32 weight gradients alone (fp16 is slow on a CPU).

--init DIR starts from a model directory `minidiffusion train --out DIR`
wrote (diffusers layout) instead of a fresh init; with --steps 0 it only
evaluates it (the eval's noise and timesteps are the same every run, so two
models are compared on the same draws). Needs torch and diffusers
(scripts/golden-requirements.txt) and the dataset (Debian's
dataset-fashion-mnist, or --data DIR, default $MINIDIFFUSION_FASHION_MNIST,
with the IDX files, gzipped or not).
"""
import argparse
import gzip
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

PRESETS = {
    "tiny": dict(
        sample_size=32, in_channels=1, out_channels=1, block_out_channels=(16, 32, 64), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")),
    "seed": dict(
        sample_size=32, in_channels=1, out_channels=1, block_out_channels=(32, 64, 128, 256), norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
}


def images(stem):
    """An IDX image file, `stem` or `stem`.gz, padded to 32×32 in [−0.5, 0.5]."""
    try:
        with gzip.open(stem + ".gz") as f:
            raw = f.read()
    except FileNotFoundError:
        with open(stem, "rb") as f:
            raw = f.read()
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    x = torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, h, w).astype(np.float32) / 255.0)
    return F.pad(x, (2, 2, 2, 2)) - 0.5


def init_ddpm(model):
    """The lesson's init, as its notebook writes it."""
    for o in model.down_blocks:
        for p in o.resnets:
            p.conv2.weight.data.zero_()
            for d in o.downsamplers or []:
                torch.nn.init.orthogonal_(d.conv.weight)
    for o in model.up_blocks:
        for p in o.resnets:
            p.conv2.weight.data.zero_()
    model.conv_out.weight.data.zero_()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--init")
    ap.add_argument("--out", help="save the trained model here (diffusers layout)")
    ap.add_argument("--data", default=os.environ.get("MINIDIFFUSION_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--clip", type=float)
    ap.add_argument("--beta2", type=float, default=0.999, help="AdamW's β2 (the recipe's: PyTorch's default)")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--skip-rule", action="store_true",
                    help="fp32 with GradScaler's skip rule on the weight gradients: skip a step when max|g|·scale > 65504")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)

    if a.init:
        model = UNet2DModel.from_pretrained(a.init)
    else:
        config = PRESETS[a.config] if a.config in PRESETS else json.load(open(a.config))
        model = UNet2DModel(**config)
        init_ddpm(model)
    model = model.to(dev).train()
    train = images(f"{a.data}/train-images-idx3-ubyte")
    test = images(f"{a.data}/t10k-images-idx3-ubyte")[: a.eval_images]

    beta = torch.linspace(1e-4, 0.01, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - beta, 0).float().to(dev)

    def loss_of(x0, gen=None):
        t = torch.randint(0, 1000, (x0.shape[0],), device=dev, generator=gen)
        eps = torch.randn(x0.shape, device=dev, generator=gen)
        ab = abar[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.dtype)
        with torch.autocast(dev.type, dtype=half or torch.float32, enabled=half is not None):
            pred = model(xt, t).sample
        return F.mse_loss(pred.float(), eps)

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, a.beta2), eps=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=max(a.steps, 1))
    # fp16: the lesson's MixedPrecision callback (GradScaler: a step whose
    # scaled gradients overflow is skipped and the scale halved)
    scaler = torch.amp.GradScaler(dev.type, enabled=a.dtype == "fp16")
    step, largest, skipped = 0, 0.0, 0
    rule_scale, good = 65536.0, 0
    while step < a.steps:
        for idx in torch.randperm(train.shape[0]).split(a.batch_size):
            if step == a.steps:
                break
            loss = loss_of(train[idx].to(dev))
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip if a.clip else math.inf).item()
            largest = max(largest, norm if math.isfinite(norm) else 0.0)
            lr = sched.get_last_lr()[0]
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            if a.skip_rule:
                big = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
                if not math.isfinite(big) or big * rule_scale > 65504.0:
                    rule_scale, good = rule_scale / 2, 0
                    skipped += 1
                else:
                    opt.step()
                    good += 1
                    if good == 2000:
                        rule_scale, good = rule_scale * 2, 0
            else:
                scaler.step(opt)
                scaler.update()
                skipped += scaler.is_enabled() and scaler.get_scale() < scale
            sched.step()
            step += 1
            if step % a.every == 0 or step == a.steps:
                print(json.dumps(dict(step=step, loss=round(loss.item(), 5), lr=lr, grad_norm=round(norm, 4),
                                      largest=round(largest, 4), skipped=int(skipped))), flush=True)
                largest = 0.0

    model.eval()
    gen = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        losses = [loss_of(x.to(dev), gen).item() * len(x) for x in test.split(a.batch_size)]
    print(json.dumps(dict(step=step, eval_loss=round(sum(losses) / len(test), 5))), flush=True)
    if a.out:
        model.save_pretrained(a.out)


if __name__ == "__main__":
    main()
