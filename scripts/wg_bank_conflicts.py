#!/usr/bin/env python3
"""Shared-memory bank simulation of the conv weight gradient's B-fragment loads
(kernels/conv2d_same.cu, same::weight_grad): for the seed UNet's 3×3 shapes,
the mean wavefronts a warp's 32 loads take (1 = conflict-free), for a choice
of the bf16 odd-plane pad and the channel-row padding. It picked
WG_PLANE_PAD = 28 and rows ≡ 12 (mod 16).

    python3 scripts/wg_bank_conflicts.py [--search]
"""
import collections
import sys

BN = 128  # pixels per tile
WG_PHASE = 64  # words of a tile staged at a time


def wavefronts(bm, ks, ow, plane_pad, row_extra, per_word=2):
    ct = 16 if bm == 64 else 32
    kk, warps_m = ks * ks, bm // 16
    warps_n = 8 // warps_m
    nt = ct * kk // 8 // warps_n
    pad = ks // 2
    pw, oh = ow + 2 * pad, ow
    px_max = 288 if bm == 64 else 256
    cs = ((px_max // 2 + 1 if per_word == 2 else px_max) + 3) // 8 * 8 + 4 + row_extra
    plane = ct * cs + (plane_pad if per_word == 2 else 0)
    multi = oh * ow < BN  # a tile spans images: each its own rows with halo

    def word_patch(j):
        n = per_word * j
        seg, local = (n // (oh * ow), n % (oh * ow)) if multi else (0, n)
        r, col = local // ow, local % ow
        return ((seg * (oh + 2 * pad if multi else 0) + r) * pw + col) // per_word

    total = count = 0
    for warp_n in range(warps_n):
        for ni in range(nt):
            for k in range(WG_PHASE // 8):
                for second in (0, 4):
                    banks = collections.defaultdict(set)
                    for lane in range(32):
                        g, t = lane // 4, lane % 4
                        col = 8 * (warp_n * nt + ni) + g
                        c, tap = col // kk, col % kk
                        shift = (tap // ks) * pw + tap % ks
                        at = (shift % per_word) * plane + c * cs + shift // per_word + word_patch(8 * k + t + second)
                        banks[at % 32].add(at)
                    total += max(len(v) for v in banks.values())
                    count += 1
    return total / count


SHAPES = [(32, 3, 32), (64, 3, 16), (64, 3, 8), (64, 3, 4)]  # (block rows, K, map width)

if __name__ == "__main__":
    for name, pp, extra in [("before (rows ≡ 4 mod 16, no plane pad)", 0, 0), ("now (rows ≡ 12 mod 16, plane pad 28)", 28, 8)]:
        print(f"{name}: bf16", [round(wavefronts(*s, pp, extra), 2) for s in SHAPES],
              "f32", [round(wavefronts(*s, pp, extra, per_word=1), 2) for s in SHAPES])
    if "--search" in sys.argv:
        best = sorted((sum(wavefronts(*s, pp, ex) for s in SHAPES), pp, ex) for pp in range(32) for ex in (0, 8, 16, 24))
        print("best (sum over shapes, plane pad, row extra):", [(round(b, 2), pp, ex) for b, pp, ex in best[:5]])
