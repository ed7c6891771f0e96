"""The PyTorch + diffusers baseline for `minidiffusion bench sample` and
`minidiffusion bench train`: the same UNet (diffusers UNet2DModel with the
`seed` preset's config: 1→1 channels, (32, 64, 128, 256), 8 groups, attention
at 16×16, 8×8, 4×4 and in the middle), the same DDIM loop (leading spacing,
η = 0, no clipping) and the same training step (noisify, MSE on ε, AdamW
eps 1e-5 wd 0.01). Prints one JSON object per line.

    python3 scripts/bench_pytorch.py sample [--n 2048] [--steps 100] [--batch-size 2048] [--device cuda]
                                            [--dtype fp32|bf16] [--compile] [--threads 2] [--config seed|tiny]
    python3 scripts/bench_pytorch.py train  [--batch-size 512] [--iters 20] [--windows 3] [--device cuda]
                                            [--dtype fp32|bf16] [--compile] [--threads 2] [--config seed|tiny]

`--config tiny` is the `tiny` preset instead (16, 32, 64 channels, one
resnet a block, attention at 8×8 only): the UNet `minidiffusion train`
trains on a CPU.

Needs torch and diffusers (scripts/golden-requirements.txt). The GPU machines
have PyTorch but no network: carry diffusers as a wheel (pure Python).
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel

SEED_CONFIG = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 128, 256),
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)

TINY_CONFIG = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
)


def model_and_sched(device, config="seed"):
    torch.manual_seed(0)
    model = UNet2DModel(**(TINY_CONFIG if config == "tiny" else SEED_CONFIG)).to(device)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.01, beta_schedule="linear",
                          clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    return model, sched


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_sample(args, device, dtype):
    model, sched = model_and_sched(device, args.config)
    model.eval()
    fwd = torch.compile(model) if args.compile else model
    sched.set_timesteps(args.steps)

    def run(n):
        x = torch.randn(n, 1, 32, 32, device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            for t in sched.timesteps:
                eps = fwd(x, t.to(device).expand(n)).sample
                x = sched.step(eps.float(), t, x, eta=0.0).prev_sample
        return x

    run(min(args.batch_size, args.n))  # warm-up (and compilation)
    sync(device)
    start = time.perf_counter()
    for first in range(0, args.n, args.batch_size):
        run(min(args.batch_size, args.n - first))
    sync(device)
    seconds = time.perf_counter() - start
    return {"bench": "sample", "config": args.config, "samples_per_s": args.n / seconds, "model_evals_per_s": args.n * args.steps / seconds,
            "n": args.n, "steps": args.steps, "batch_size": args.batch_size, "seconds": seconds}


def bench_train(args, device, dtype):
    model, sched = model_and_sched(device, args.config)
    model.train()
    fwd = torch.compile(model) if args.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-5, weight_decay=0.01)
    abar = sched.alphas_cumprod.to(device)
    x0 = torch.rand(args.batch_size, 1, 32, 32, device=device) - 0.5

    def step():
        t = torch.randint(0, 1000, (args.batch_size,), device=device)
        eps = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = F.mse_loss(fwd(xt, t).sample.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up (and compilation)
        step()
    # the median of several timed windows: one window of eager training on an
    # H100 took 0.072 to 0.139 s a step across runs 1-6
    rates = []
    for _ in range(args.windows):
        sync(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            step()
        sync(device)
        rates.append(args.iters * args.batch_size / (time.perf_counter() - start))
    rate = sorted(rates)[len(rates) // 2]
    return {"bench": "train", "config": args.config, "images_per_s": rate, "batch_size": args.batch_size, "iters": args.iters,
            "seconds_per_step": args.batch_size / rate, "windows_images_per_s": rates}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["sample", "train"])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--windows", type=int, default=3, help="train: timed windows of --iters steps (the median is reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (2 to match the CI machine kind)")
    ap.add_argument("--config", choices=["seed", "tiny"], default="seed", help="the UNet: the seed preset or the tiny one")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size is None:
        args.batch_size = 512 if args.what == "train" else 2048
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = bench_sample(args, device, args.dtype) if args.what == "sample" else bench_train(args, device, args.dtype)
    out.update({"framework": f"torch {torch.__version__}", "device": str(device), "dtype": args.dtype,
                "compile": args.compile, "threads": torch.get_num_threads()})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
