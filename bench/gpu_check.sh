#!/usr/bin/env bash
# The device check: Loom's GPU path verified and measured in one run (bench/gpu_check.py says
# what it runs). It installs nothing: it runs from the source tree with whatever Python, torch,
# triton and transformers the machine has. Without a GPU it runs end to end on the CPU, with
# every part that needs a GPU skipped and saying so.
#
#   bench/gpu_check.sh                 # table last; full results in $OUT/gpu_check.json
#   PYTHON=python3.12 bench/gpu_check.sh --hf-batch-size 32
#
# It budgets itself to 450 s (--budget-s); the hard stop below keeps it inside 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=INT 475 "${PYTHON:-python3}" -m bench.gpu_check "$@"
