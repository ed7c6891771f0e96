#!/usr/bin/env bash
# The GPU device check, run on the GPU machine (no Rust toolchain, no network)
# from the bundle scripts/device-prepare.sh made:
#   bash device-bundle/device-run.sh OUTDIR
# Writes logs and a summary to OUTDIR. Budget: under 8 minutes.
set -uo pipefail
bundle="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: device-run.sh OUTDIR}"
mkdir -p "$out"
# unpack the gzipped binaries next to the bundle (it may be read-only)
here="$(mktemp -d)"
tar -C "$here" -xzf "$bundle/payload.tar.gz"
cp "$bundle/COMMIT" "$here/"
[ -d "$bundle/data" ] && ln -s "$bundle/data" "$here/data"
summary="$out/summary.txt"
: > "$summary"
export MINIDIFFUSION_REQUIRE_GPU=1

echo "commit: $(tr '\n' ' ' < "$here/COMMIT")" | tee -a "$summary"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" | tee -a "$summary"
head -n 15 "$out/nvidia-smi.txt"
"$here/bin/minidiffusion" info | tee -a "$summary"

status=0
for t in "$here"/tests/*; do
    name="$(basename "$t")"
    start=$(date +%s.%N)
    if timeout 120 "$t" --test-threads=1 > "$out/$name.log" 2>&1; then
        result=passed
    else
        result="FAILED (exit $?)"
        status=1
    fi
    secs=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')" 2>/dev/null || echo "?")
    echo "$name: $result in ${secs}s — $(grep -E '^test result' "$out/$name.log" | tail -n 1)" | tee -a "$summary"
done

echo "--- bench kernels (ours) ---" | tee -a "$summary"
timeout 180 "$here/bin/minidiffusion" bench kernels --device cuda --iters 20 --json > "$out/bench_kernels.jsonl" 2> "$out/bench_kernels.err" \
    || { echo "bench kernels FAILED" | tee -a "$summary"; status=1; }
cat "$out/bench_kernels.jsonl" | tee -a "$summary"

if [ -f "$here/bench_torch_kernels.py" ] && python3 -c "import torch" 2>/dev/null; then
    echo "--- bench kernels (PyTorch: cuDNN / cuBLAS) ---" | tee -a "$summary"
    timeout 120 python3 "$here/bench_torch_kernels.py" --iters 20 > "$out/bench_torch.jsonl" 2> "$out/bench_torch.err" \
        || echo "torch bench FAILED" | tee -a "$summary"
    cat "$out/bench_torch.jsonl" | tee -a "$summary"
fi
echo "exit status: $status" | tee -a "$summary"
exit $status
