"""The shapes of `minidiffusion bench kernels`, through PyTorch (cuDNN for
convolutions, cuBLAS for products), so both run on the same GPU in one
session. Prints one JSON object per line with the same keys.

    python3 scripts/bench_torch_kernels.py [--batch-size 64] [--iters 20] [--device cuda] [--precision f32|bf16]

--precision bf16 runs the convolutions and the product on bf16 tensors (what
torch.autocast(dtype=torch.bfloat16) gives them), next to our `bench kernels
--precision bf16`; the other cases stay f32.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    args = ap.parse_args()
    prod = torch.bfloat16 if args.precision == "bf16" else torch.float32
    dev = torch.device(args.device)
    b = args.batch_size
    torch.backends.cudnn.benchmark = True
    # the same arithmetic as ours: f32, no TF32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cases = []
    # the seed UNet's 3x3 convs per level, and its attention blocks' 1x1 projections
    convs = [(32, 32, 32, 3), (64, 64, 16, 3), (128, 128, 8, 3), (256, 256, 4, 3), (64, 64, 16, 1), (128, 128, 8, 1), (256, 256, 4, 1)]
    for ci, co, hw, k in convs:
        x = torch.randn(b, ci, hw, hw, device=dev, dtype=prod, requires_grad=True)
        w = (0.05 * torch.randn(co, ci, k, k, device=dev, dtype=prod)).requires_grad_()
        bias = torch.randn(co, device=dev, dtype=prod, requires_grad=True)
        flops = 2.0 * b * co * hw * hw * ci * k * k
        nbytes = 4.0 * (x.numel() + b * co * hw * hw + w.numel())
        shape = f"{b}x{ci}x{hw}x{hw}->{co} k{k}"
        pad = k // 2
        cases.append(("conv2d_forward", shape, flops, nbytes, lambda x=x, w=w, bias=bias, pad=pad: F.conv2d(x, w, bias, padding=pad)))
        if k == 3:
            # a resnet's group norm -> SiLU -> conv at inference: the norm on the f32 stream (as autocast runs it)
            xs = torch.randn(b, ci, hw, hw, device=dev)
            gn_w, gn_b = torch.randn(ci, device=dev), torch.randn(ci, device=dev)
            cases.append(("norm_silu_conv2d", shape, flops, nbytes,
                          lambda xs=xs, gn_w=gn_w, gn_b=gn_b, w=w, bias=bias, pad=pad:
                          F.conv2d(F.silu(F.group_norm(xs, 8, gn_w, gn_b, 1e-5)).to(prod), w, bias, padding=pad)))
        y = F.conv2d(x, w, bias, padding=pad).sum()
        cases.append(("conv2d_backward", shape, 2 * flops, 2 * nbytes,
                      lambda y=y, x=x, w=w, bias=bias: torch.autograd.grad(y, (x, w, bias), retain_graph=True)))
    m, k, n = b * 256, 64, 192
    a = torch.randn(m, k, device=dev, dtype=prod)
    wt = torch.randn(n, k, device=dev, dtype=prod)
    cases.append(("matmul", f"{m}x{k}·({n}x{k})ᵀ", 2.0 * m * k * n, 4.0 * (m * k + k * n + m * n), lambda: a @ wt.t()))
    for ch, hw in [(32, 32), (64, 16)]:
        x = torch.randn(b, ch, hw, hw, device=dev)
        g = torch.randn(ch, device=dev)
        be = torch.randn(ch, device=dev)
        cases.append(("group_norm", f"{b}x{ch}x{hw}x{hw} g8", 0.0, 8.0 * x.numel(),
                      lambda x=x, g=g, be=be: F.group_norm(x, 8, g, be, 1e-5)))
    for heads, pixels in [(8, 256), (16, 64)]:
        q, kk, v = (torch.randn(b, heads, pixels, 8, device=dev, requires_grad=True) for _ in range(3))
        flops, nbytes = 4.0 * b * heads * pixels * pixels * 8, 16.0 * b * heads * pixels * 8
        shape = f"{b}x{heads}h x{pixels}px d8"
        cases.append(("attention", shape, flops, nbytes,
                      lambda q=q, kk=kk, v=v: F.scaled_dot_product_attention(q, kk, v)))
        o = F.scaled_dot_product_attention(q, kk, v).sum()
        cases.append(("attention_backward", shape, 2.5 * flops, 2 * nbytes,
                      lambda o=o, q=q, kk=kk, v=v: torch.autograd.grad(o, (q, kk, v), retain_graph=True)))
    x = torch.randn(b, 32, 32, 32, device=dev)
    y2 = torch.randn(b, 32, 32, 32, device=dev)
    cases.append(("add", f"{b}x32x32x32", 0.0, 12.0 * x.numel(), lambda: x + y2))
    cases.append(("silu", f"{b}x32x32x32", 0.0, 8.0 * x.numel(), lambda: F.silu(x)))

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for name, shape, flops, nbytes, work in cases:
        with torch.no_grad() if not name.endswith("_backward") else torch.enable_grad():
            for _ in range(2):
                work()
            sync()
            start = time.perf_counter()
            for _ in range(args.iters):
                work()
            sync()
        seconds = (time.perf_counter() - start) / args.iters
        print(json.dumps({"kernel": name, "shape": shape, "device": f"torch-{args.device}",
                          "precision": args.precision if name in ("conv2d_forward", "conv2d_backward", "matmul", "norm_silu_conv2d") else "f32",
                          "ms": round(seconds * 1e3, 4), "gflops": round(flops / seconds / 1e9, 2),
                          "gbps": round(nbytes / seconds / 1e9, 2)}), flush=True)


if __name__ == "__main__":
    main()
