"""Check that a model directory written by `minidiffusion train` loads in
diffusers and gives the same ε̂ and DDIM samples as minidiffusion.

    python3 scripts/check_diffusers_load.py MODEL_DIR X_T.npy MINIDIFFUSION_SAMPLES.npy [--steps 10] [--class-labels 0,3]

X_T.npy is the noise passed to `minidiffusion sample --init-noise`, and the
samples .npy what that command wrote with --npy (DDIM, eta 0, no clipping);
for a class-conditional model, the same --class-labels (cycled over the
samples; without them every class in turn, as `sample` does).
Needs torch and diffusers (scripts/golden-requirements.txt).
"""
import argparse

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("x_t")
    ap.add_argument("samples")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--class-labels", default=None)
    args = ap.parse_args()
    unet = UNet2DModel.from_pretrained(args.model).eval()
    sched = DDIMScheduler.from_pretrained(args.model)
    sched.set_timesteps(args.steps)
    x = torch.from_numpy(np.load(args.x_t))
    labels = None
    if unet.class_embedding is not None:
        given = [int(v) for v in args.class_labels.split(",")] if args.class_labels else None
        n_classes = unet.config.num_class_embeds
        labels = torch.tensor([given[i % len(given)] if given else i % n_classes for i in range(x.shape[0])])
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(x, t.expand(x.shape[0]), class_labels=labels).sample
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    ours = np.load(args.samples)
    err = np.abs(x.numpy() - ours).max() / (np.abs(ours).max() + 1e-8)
    print(f"diffusers loaded {args.model}: {sum(p.numel() for p in unet.parameters())} parameters, "
          f"timesteps {sched.timesteps.tolist()}, max |diffusers - minidiffusion| / max|x| = {err:.2e}")
    assert err < 1e-3, err


if __name__ == "__main__":
    main()
