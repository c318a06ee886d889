#!/usr/bin/env bash
# Second device call: the quant tests on the GPU after their fixes, and the QK layout A/B again
# (5 alternating rounds). carry [".peers/s"].
set -uo pipefail
mkdir -p /tmp/peers && pip install -q --no-deps --target /tmp/peers .peers/s/*.whl >/dev/null 2>&1
tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers
export PYTHONPATH=$PWD/src:/tmp/peers
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout 80 python -m pytest -q --tb=line -rf -p no:cacheprovider tests/kernels/test_rms_norm_quant.py \
  tests/ops/test_rms_norm_quant.py > $OUT/gpu-pytest-quant.log 2>&1; echo "pytest rc=$?"
grep -E "^FAILED|passed|failed" $OUT/gpu-pytest-quant.log | tail -12
timeout 60 python benchmarks/results/h200/2026-12-06-rms-lean/scripts/lean.py $OUT/qk qk > $OUT/qk_ab.log 2>&1
echo "qk rc=$?"; cat $OUT/qk_ab.log | grep QK
