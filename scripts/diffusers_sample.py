#!/usr/bin/env python3
"""Sample a minidiffusion (diffusers-format) model directory with diffusers'
own DDIMScheduler, for comparing our sampler's FID with diffusers' on the
same weights:

    python3 scripts/diffusers_sample.py --model DIR -n 2048 --steps 100 [--eta 0] --out samples.npy
    minidiffusion fid samples.npy fashion-mnist:test --kid --json

Writes an (N, C, H, W) float32 .npy in [-1, 1] (the model's training range,
from DIR/minidiffusion.json, mapped as `minidiffusion eval` maps it; [-1, 1]
when the file is absent). Needs torch and diffusers (scripts/golden-requirements.txt).
"""
import argparse
import json
import os

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel


def data_range(model_dir):
    try:
        with open(os.path.join(model_dir, "minidiffusion.json")) as f:
            lo, hi = (float(v) for v in json.load(f)["train"]["input_range"].split(","))
        return lo, hi
    except (OSError, KeyError, ValueError):
        return -1.0, 1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("-n", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--noise-out", help="also write x_T as float32 .npy (for `minidiffusion sample --init-noise`)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = UNet2DModel.from_pretrained(args.model, torch_dtype=torch.float32).to(device).eval()
    sched = DDIMScheduler.from_pretrained(args.model)
    sched.set_timesteps(args.steps)
    c, size = model.config.in_channels, model.config.sample_size
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    out, noise = [], []
    with torch.no_grad():
        for first in range(0, args.n, args.batch_size):
            count = min(args.batch_size, args.n - first)
            x = torch.randn(count, c, size, size, generator=gen).to(device)
            noise.append(x.cpu().numpy())
            for t in sched.timesteps:
                eps = model(x, t).sample
                x = sched.step(eps, t, x, eta=args.eta, generator=gen if args.eta > 0 else None).prev_sample
            out.append(x.float().cpu().numpy())
    lo, hi = data_range(args.model)
    samples = 2.0 * (np.concatenate(out) - lo) / (hi - lo) - 1.0
    np.save(args.out, samples.astype(np.float32))
    if args.noise_out:
        np.save(args.noise_out, np.concatenate(noise).astype(np.float32))
    print(json.dumps({"n": args.n, "steps": args.steps, "eta": args.eta, "out": args.out,
                      "mean": float(samples.mean()), "std": float(samples.std())}))


if __name__ == "__main__":
    main()
