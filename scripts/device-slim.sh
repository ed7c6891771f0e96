#!/usr/bin/env bash
# Make room in what a device call carries (64 MiB): `aside` moves the tracked
# goldens and sample data, which the recipe stage does not read, into
# .device-aside/ (git-ignored); `back` returns them. Run `back` after the call:
# until then `git status` shows them deleted.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(tests/golden data/fashion-mnist-sample)
case "${1:-}" in
aside)
    [ -e .device-aside ] && { echo ".device-aside/ exists: run 'back' first" >&2; exit 2; }
    mkdir -p .device-aside
    for p in "${paths[@]}"; do mkdir -p ".device-aside/$(dirname "$p")" && mv "$p" ".device-aside/$p"; done
    echo "moved aside: ${paths[*]}"
    ;;
back)
    [ -d .device-aside ] || { echo "nothing aside (.device-aside/ missing)" >&2; exit 2; }
    for p in "${paths[@]}"; do
        [ -e "$p" ] && { echo "$p exists: not overwriting it (.device-aside/ kept)" >&2; exit 2; }
        mv ".device-aside/$p" "$p"
    done
    rm -rf .device-aside
    echo "back: ${paths[*]}"
    ;;
*)
    echo "usage: scripts/device-slim.sh aside|back" >&2
    exit 2
    ;;
esac
