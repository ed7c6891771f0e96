"""Reference FID / KID values for tests/metrics.rs (tests/golden/fid/).

Writes small feature sets as float32 .npy and, in reference.json, the FID of
pairs of them computed as pytorch-fid does (scipy.linalg.sqrtm of sigma1 @
sigma2, retried with eps=1e-6 added to both diagonals when the result is not
finite, real part, trace) and the KID of the lesson's `_calc_kid` (polynomial
kernel (a.b/d + 1)^3, unbiased MMD^2 over max(ceil(min(nx, ny)/50), 4)
contiguous chunks with Python's round for the chunk bounds), all in float64
from the float32 features. Also the eigen-decomposition value of
tr sqrt(sqrt(S1) S2 sqrt(S1)) as a second reference.

Run (outside the repository's tree for the venv):
    python3 -m venv /tmp/fid-venv
    /tmp/fid-venv/bin/pip install numpy==2.2.6 scipy==1.15.3
    /tmp/fid-venv/bin/python scripts/fid_reference.py

Pinned: Python 3.11, numpy 2.2.6, scipy 1.15.3.
"""

import json
import math
import os

import numpy as np
import scipy
from scipy import linalg

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "fid")


def features(n, d, seed, shift=0.0, dead=0):
    """GeneralRelu-like features with a decaying spectrum (leaky 0.1, minus 0.4)."""
    r = np.random.default_rng(seed)
    w = r.standard_normal((d, d)) / np.sqrt(d)
    z = r.standard_normal((n, d)) @ w.T * np.linspace(3.0, 0.01, d) + shift
    f = np.where(z > 0, z, 0.1 * z) - 0.4
    if dead:
        f[:, :dead] = -0.4  # dead units: constant features, zero variance
    return f.astype(np.float32)


def stats(f):
    f = f.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def fid_pytorch(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance."""
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    offset_used = False
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
        offset_used = True
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    tr = np.trace(covmean)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr), float(tr), offset_used


def tr_sqrt_eig(s1, s2):
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(r @ s2 @ r)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def squared_mmd(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return (kxx.sum() - np.trace(kxx)) / m / (m - 1) + (kyy.sum() - np.trace(kyy)) / n / (n - 1) - 2 * kxy.sum() / m / n


def kid(x, y, maxs=50):
    x, y = x.astype(np.float64), y.astype(np.float64)
    xs, ys = len(x), len(y)
    n = max(math.ceil(min(xs / maxs, ys / maxs)), 4)
    mmd = 0.0
    for i in range(n):
        mmd += squared_mmd(x[round(i * xs / n) : round((i + 1) * xs / n)], y[round(i * ys / n) : round((i + 1) * ys / n)])
    return float(mmd / n)


def main():
    os.makedirs(OUT, exist_ok=True)
    sets = {
        "a_300x64": features(300, 64, 1),
        "b_200x64": features(200, 64, 2, shift=0.05),
        "s_40x64": features(40, 64, 3),  # singular covariance: 40 samples < 64 dims
        "t_30x64_dead": features(30, 64, 4, dead=4),  # singular, with dead units
    }
    for name, f in sets.items():
        np.save(os.path.join(OUT, name + ".npy"), f)
    st = {k: stats(v) for k, v in sets.items()}
    pairs = [("a_300x64", "b_200x64"), ("a_300x64", "a_300x64"), ("a_300x64", "s_40x64"), ("s_40x64", "b_200x64"),
             ("s_40x64", "t_30x64_dead")]
    out = {"versions": {"numpy": np.__version__, "scipy": scipy.__version__}, "fid": [], "kid": []}
    for p, q in pairs:
        (m1, s1), (m2, s2) = st[p], st[q]
        value, tr, offset_used = fid_pytorch(m1, s1, m2, s2)
        eig = float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt_eig(s1, s2))
        out["fid"].append({"a": p, "b": q, "fid": value, "trace_sqrt": tr, "offset_used": offset_used, "fid_eig": eig})
        print(f"fid {p} {q}: {value:.10f} (eig {eig:.10f}, offset {offset_used})")
    for p, q in [("a_300x64", "b_200x64"), ("a_300x64", "s_40x64"), ("b_200x64", "a_300x64")]:
        v = kid(sets[p], sets[q])
        out["kid"].append({"a": p, "b": q, "kid": v})
        print(f"kid {p} {q}: {v:.10e}")
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
