#!/usr/bin/env bash
# Prepare the GPU device check, here (no GPU needed): build the CLI and the
# GPU-facing release test binaries with every kernel compiled by nvcc, and put
# them with scripts/device-run.sh (and the Fashion-MNIST files, when present)
# into device-bundle/ (git-ignored), which is carried to the GPU machine.
# Then, on the GPU machine:  bash device-bundle/device-run.sh "$OUT"
#
# DEVICE_TESTS=0 leaves the test binaries (and the diffusers wheels) out and
# DEVICE_DATA=1 adds the Fashion-MNIST files (26 MB as xz): the bundle for the
# `recipe` stage (the seed recipe and its FID). Tests, data and wheels together
# pass the carry limit; DEVICE_DATA=1 DEVICE_WHEELS=0 (tests and data, no
# PyTorch baseline) fits. The script prints what will travel.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/install-nvcc.sh
export MINIDIFFUSION_REQUIRE_NVCC=1
# H100 and H200 are compute capability 9.0: sm_90a SASS (and PTX) alone
# keeps the bundle and the tree under the device tool's 64 MiB carry limit
# (all four targets: 7 MB of kernels in each of the ~17 binaries); the "a"
# (arch-specific) target is what the wgmma kernels need
export MINIDIFFUSION_CUDA_ARCHS="${MINIDIFFUSION_CUDA_ARCHS:-90a}"

# DEVICE_BUNDLE names another folder (device-bundle-*, git-ignored too), so
# that two bundles can be made ahead and carried by two calls in a row
bundle="${DEVICE_BUNDLE:-device-bundle}"
case "$bundle" in device-bundle | device-bundle-*) ;; *) echo "DEVICE_BUNDLE must be device-bundle or device-bundle-NAME"; exit 2 ;; esac
rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests"

cargo build --release --bin minidiffusion
cp target/release/minidiffusion "$bundle/bin/"

# the test binaries that touch CUDA: parity_*, cuda_backend and cuda_graph
[ "${DEVICE_TESTS:-1}" = 0 ] || cargo test --release --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    name = msg.get("target", {}).get("name", "")
    if exe and msg.get("profile", {}).get("test") and (name.startswith("parity_") or name in ("cuda_backend", "cuda_graph")):
        print(name, exe)
' | while read -r name exe; do
        cp "$exe" "$bundle/tests/$name"
    done

strip "$bundle"/bin/* "$bundle"/tests/* 2>/dev/null || true
[ -f scripts/bench_torch_kernels.py ] && cp scripts/bench_torch_kernels.py "$bundle/"
cp scripts/ncu_summary.py scripts/model_to_bf16.py "$bundle/"
[ -f scripts/bench_pytorch.py ] && cp scripts/bench_pytorch.py scripts/train_pytorch.py "$bundle/"
# the carry limit is 64 MiB: binaries travel in xz with a 64 MB dictionary,
# which finds what the ~17 binaries share (the kernels, the library): 12 MB
# where gzip made 34 (device-run.sh unpacks it with tar -J or Python's lzma)
XZ_OPT=-9 tar -C "$bundle" -cJf "$bundle/payload.tar.xz" bin tests $(cd "$bundle" && ls *.py 2>/dev/null)
rm -rf "$bundle/bin" "$bundle/tests" "$bundle"/*.py
cp scripts/device-run.sh "$bundle/"
# diffusers for the PyTorch baseline (pure Python; the GPU machine has torch but
# no network): fetched here into .whl/ (git-ignored) with importlib_metadata
if [ ! -f .whl/diffusers-0.42.1-py3-none-any.whl ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl diffusers==0.42.1 importlib_metadata || echo "no diffusers wheel: the PyTorch baseline will be skipped"
fi
# (not in the recipe bundle: it runs no PyTorch, and the data takes the room;
# DEVICE_WHEELS=0 leaves them out of a test bundle too)
if [ "${DEVICE_WHEELS:-${DEVICE_TESTS:-1}}" != 0 ] && ls .whl/*.whl > /dev/null 2>&1; then
    mkdir -p "$bundle/wheels" && cp .whl/diffusers-*.whl .whl/importlib_metadata-*.whl "$bundle/wheels/"
fi
data=/usr/share/datasets/fashion-mnist
# the full data only when asked: with the tree it would pass the carry limit.
# The IDX files travel raw in one xz archive (26.6 MB where the four .gz are
# 30.9 MB): the recipe bundle and the tree must fit 64 MiB together
if [ "${DEVICE_DATA:-0}" = 1 ] && [ ! -d "$data" ]; then
    # (the recipe would train on the embedded 5,000-image sample instead)
    echo "error: DEVICE_DATA=1 needs $data (apt-get install dataset-fashion-mnist)" >&2
    exit 2
fi
if [ "${DEVICE_DATA:-0}" = 1 ]; then
    raw="$(mktemp -d)"
    for f in "$data"/*.gz; do gzip -dc "$f" > "$raw/$(basename "$f" .gz)"; done
    XZ_OPT=-9e tar -C "$raw" -cJf "$bundle/data.tar.xz" .
    rm -rf "$raw"
fi
git rev-parse HEAD > "$bundle/COMMIT"
git status --porcelain | grep -q . && echo "dirty" >> "$bundle/COMMIT" || true
du -sh "$bundle"
ls -la "$bundle"
# what travels: the tree (tracked and untracked files git does not ignore) and
# the bundle. Each file counted in whole 4 KiB blocks: the tool refused a
# recipe call whose plain byte sum was 66.5 MB of 67.1 (run 6), and the sum
# in blocks, 68.9 MB, was over.
in_blocks() { xargs -0 -r stat -c %s 2>/dev/null | awk '{s += int(($1 + 4095) / 4096) * 4096} END {print s + 0}'; }
tree_bytes=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | in_blocks)
bundle_bytes=$(find "$bundle" -type f -print0 | in_blocks)
total=$((tree_bytes + bundle_bytes))
echo "carried: tree $tree_bytes + bundle $bundle_bytes = $total bytes of 67108864 (64 MiB, files in 4 KiB blocks)"
if [ "$total" -gt 67108864 ]; then
    aside=$( (git ls-files -z tests/golden data/fashion-mnist-sample) | in_blocks)
    if [ $((total - aside)) -le 67108864 ]; then
        echo "over the device tool's 64 MiB carry limit by $((total - 67108864)) bytes: before the call run"
        echo "  bash scripts/device-slim.sh aside   (the goldens and the sample data, which the recipe does not read; $aside bytes)"
        echo "and after it: bash scripts/device-slim.sh back"
    else
        echo "WARNING: over the device tool's 64 MiB carry limit: leave out the wheels (DEVICE_WHEELS=0), the tests (DEVICE_TESTS=0) or the data"
    fi
fi
