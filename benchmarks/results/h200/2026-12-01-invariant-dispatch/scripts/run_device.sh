#!/usr/bin/env bash
# One device call for issue 13 (batch-invariant dispatcher) and issue 12 (eager cost).
set -uo pipefail
R=benchmarks/results/h200/2026-12-01-invariant-dispatch
mkdir -p /tmp/peers && pip install -q --no-deps --target /tmp/peers .peers/s/*.whl >/dev/null 2>&1
tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers
export PYTHONPATH=$PWD/src:/tmp/peers
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt
timeout 200 python $R/scripts/invariance_gpu.py $OUT 2>&1 | grep -v Warning | tail -40
timeout 200 python -m qknorm.cli bench --preset qwen3-8b --mode graph --tokens 1,2,4,8,16,32,64,1024 \
  --impl 'qknorm,sglang*' --variants none --no-plots --out $OUT/bench-decode > $OUT/bench-decode.log 2>&1
tail -30 $OUT/bench-decode.log
PYTHONPATH=$PWD/src:$PWD/.baseline2:/tmp/peers timeout 150 python benchmarks/results/h200/2026-12-01-host-cost/scripts/eager_ab.py $OUT/eager-ab 2>&1 | tail -12
