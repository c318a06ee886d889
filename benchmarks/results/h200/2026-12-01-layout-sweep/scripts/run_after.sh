#!/usr/bin/env bash
# After the sweep: the new canonical layouts and decode tiles, checked (GPU invariance tests)
# and benched against SGLang's JIT kernels in one run.
set -uo pipefail
mkdir -p /tmp/peers && pip install -q --no-deps --target /tmp/peers .peers/s/*.whl >/dev/null 2>&1
tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers
export PYTHONPATH=$PWD/src:/tmp/peers
timeout 120 python -m pytest -q tests/test_invariance.py > $OUT/gpu-pytest-invariance.log 2>&1; tail -1 $OUT/gpu-pytest-invariance.log
timeout 380 python -m qknorm.cli bench --preset qwen3-8b,qwen3-next --mode graph --tokens 1,2,4,8,16,64,256,1024,4096 \
  --impl 'qknorm,sglang*' --variants none --no-plots --out $OUT/bench-after > $OUT/bench-after.log 2>&1
grep -A30 "^facts" $OUT/bench-after.log
