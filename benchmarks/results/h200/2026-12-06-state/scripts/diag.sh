#!/usr/bin/env bash
# Device call: the GPU failures of next_session.sh 1 (every CUDA case of the prologue tests) with
# tracebacks, the test files the 150 s limit cut off, and the model/eager benches.
set -uo pipefail
mkdir -p /tmp/peers && pip install -q --no-deps --target /tmp/peers .peers/s/*.whl >/dev/null 2>&1
tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers
export PYTHONPATH=$PWD/src:/tmp/peers
keep() { cp /tmp/b/$1/summary.md $OUT/$1.summary.md 2>/dev/null; cp /tmp/b/$1/results.csv $OUT/$1.csv 2>/dev/null; }
P="python -m pytest -q -p no:cacheprovider"
timeout 90 $P --tb=short -rf -k cuda tests/kernels/test_qk_norm_rope_cache.py tests/kernels/test_qk_norm_rope.py > $OUT/prologue-cuda.log 2>&1
echo "prologue rc=$?"; grep -E "Error|error|assert" $OUT/prologue-cuda.log | head -20
timeout 170 $P --tb=line -rf tests/kernels/test_rms_norm.py tests/kernels/test_rms_norm_quant.py tests/ops \
  > $OUT/gpu-pytest-rest.log 2>&1; echo "rest rc=$?"; tail -25 $OUT/gpu-pytest-rest.log
B="python -m qknorm.cli bench --no-plots --variants none"
timeout 100 $B --preset qwen3-8b,qwen3-next --mode graph --tokens 1,2,4,8,16,64,256,1024,4096,16384 \
  --impl 'qknorm,sglang*' --out /tmp/b/models > $OUT/models.log 2>&1; echo "models rc=$?"; keep models
timeout 60 $B --preset qwen3-8b --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*' --out /tmp/b/eager \
  > $OUT/eager.log 2>&1; echo "eager rc=$?"; keep eager
timeout 80 $B --preset quant --mode graph --tokens 1,16,128,1024,4096,16384 --impl 'qknorm,torch*,sglang*' \
  --out /tmp/b/quant > $OUT/quant.log 2>&1; echo "quant rc=$?"; keep quant
timeout 80 $B --preset prologue --mode graph --tokens 1,16,128,1024,4096 --impl 'qknorm*,torch*,sglang*' \
  --out /tmp/b/prologue > $OUT/prologue.log 2>&1; echo "prologue rc=$?"; keep prologue
timeout 50 $B --preset rope --mode graph --tokens 1,64,512,4096,16384 --impl 'qknorm,sglang*' \
  --out /tmp/b/rope > $OUT/rope.log 2>&1; echo "rope rc=$?"; keep rope
echo done
