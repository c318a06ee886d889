#!/usr/bin/env bash
# One device call: the fp64 sum of squares (QKNORM_SAFE_RANGE=wide) against the default build of
# the same tree (imported as a copy with both switches pinned off), then the GPU tests with it on.
set -uo pipefail
S=benchmarks/results/h200/2026-12-01-host-cost/scripts  # make_copy.sh lives there (ab_graph.py: benchmarks/scripts/)
export PYTHONPATH=$PWD/src:/tmp/ab
bash $S/make_copy.sh src/qknorm /tmp/ab qknorm_default safe_off
sed -i 's/^WIDE_SUM = .*/WIDE_SUM = tl.constexpr(False)/' /tmp/ab/qknorm_default/kernels/rows.py
grep -n "^WIDE_SUM\|^SAFE_RANGE" /tmp/ab/qknorm_default/kernels/rows.py
QKNORM_SAFE_RANGE=wide python benchmarks/scripts/ab_graph.py qknorm_default wide_vs_default
QKNORM_SAFE_RANGE=wide timeout 200 python -m pytest -q -x tests/kernels tests/test_adversarial.py > $OUT/gpu-pytest-wide.log 2>&1
tail -3 $OUT/gpu-pytest-wide.log
