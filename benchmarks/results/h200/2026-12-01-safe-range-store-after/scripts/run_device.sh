#!/usr/bin/env bash
# One device call: the safe range (rescue stored after the common store) against the default
# build of the same tree, a default-vs-default control, and the GPU tests with the rescue on.
set -uo pipefail
S=benchmarks/results/h200/2026-12-01-host-cost/scripts  # make_copy.sh lives there (ab_graph.py: benchmarks/scripts/)
export PYTHONPATH=$PWD/src:/tmp/ab
bash $S/make_copy.sh src/qknorm /tmp/ab qknorm_default safe_off
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt
QKNORM_SAFE_RANGE=1 python benchmarks/scripts/ab_graph.py qknorm_default safe_vs_default
python benchmarks/scripts/ab_graph.py qknorm_default control_default_vs_default
QKNORM_SAFE_RANGE=1 timeout 240 python -m pytest -q -x tests/kernels tests/test_adversarial.py tests/ops > $OUT/gpu-pytest-safe-range.log 2>&1
tail -3 $OUT/gpu-pytest-safe-range.log
