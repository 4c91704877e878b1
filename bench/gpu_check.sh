#!/usr/bin/env bash
# The device check: Loom's GPU path verified, then measured, in one run (bench/gpu_check.py says
# what it runs). It installs nothing: it runs from the source tree with whatever Python, torch,
# triton and transformers the machine has. Without a GPU it runs end to end on the CPU in about
# a minute, every part that needs a GPU skipped and saying so (CI runs it so).
#
#   bench/gpu_check.sh --quick         # 3-4 minutes on an H100 (estimated); table last
#   bench/gpu_check.sh                 # then throughput against transformers (about 7 minutes)
#   PYTHON=python3.12 bench/gpu_check.sh --hf-batch-size 32
#
# Exit 0: every verification passed and no part failed. Exit 1: a verification missed (the
# measurements are then skipped) or a part failed. Results: $OUT/gpu_check.json, else bench/out/gpu_check.json.
# It budgets itself (no measurement starts after --budget-s: 240 s with --quick, else 400 s);
# past the hard stop below (330 s, 460 s) it is interrupted (its table still printed) and, 15 s
# later, killed, even if stuck inside CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Triton compiles into a cache it must be able to write; a container's user may have no home.
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-${TMPDIR:-/tmp}/loom-triton-cache}"
limit=460
for arg in "$@"; do
    if [[ $arg == --quick ]]; then limit=330; fi
done
exec timeout --signal=INT --kill-after=15 "${GPU_CHECK_LIMIT_S:-$limit}" \
    "${PYTHON:-python3}" -m bench.gpu_check "$@"
