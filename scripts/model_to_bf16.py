#!/usr/bin/env python3
"""Rewrite a safetensors file with its f32 tensors rounded to bf16 (to nearest,
ties to even), so that a trained model fits the device tool's 16 MB returned
files (in parts) and half the room; minidiffusion reads bf16 tensors as f32.

    python3 scripts/model_to_bf16.py IN.safetensors OUT.safetensors
"""
import json
import struct
import sys

import numpy as np


def round_bf16(a: np.ndarray) -> np.ndarray:
    u = a.astype("<f4").view("<u4").astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def main(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out_header, chunks, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        if info["dtype"] == "F32":
            raw = round_bf16(np.frombuffer(raw, dtype="<f4")).tobytes()
            info = {**info, "dtype": "BF16"}
        chunks.append(raw)
        out_header[name] = {**info, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    text = json.dumps(out_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for c in chunks:
            f.write(c)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python3 scripts/model_to_bf16.py IN.safetensors OUT.safetensors", file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
