#!/usr/bin/env bash
# One device call: GPU tests with the shipped H200 table present, the lean-kernel experiment,
# the model presets (graph) and the eager host cost against SGLang's JIT kernels.
# carry [".peers/s"] = tvm_ffi + torch_c_dlpack_ext wheels + sglang-jit.tgz (from stage_peers.sh)
set -uo pipefail
mkdir -p /tmp/peers && pip install -q --no-deps --target /tmp/peers .peers/s/*.whl >/dev/null 2>&1
tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers
export PYTHONPATH=$PWD/src:/tmp/peers
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
B="python -m qknorm.cli bench"
timeout 150 python benchmarks/results/h200/2026-12-06-rms-lean/scripts/lean.py $OUT/lean > $OUT/lean.log 2>&1
echo "lean rc=$?"
timeout 130 $B --preset qwen3-8b,qwen3-next,qwen3-235b,gemma3-27b --mode graph \
  --tokens 1,2,4,8,16,64,256,1024,4096,16384 --impl 'qknorm,sglang*' --variants none --no-plots \
  --out $OUT/bench-graph > $OUT/bench-graph.log 2>&1; echo "graph rc=$?"
timeout 50 $B --preset qwen3-8b,qwen3-next --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*' \
  --variants none --no-plots --out $OUT/bench-eager > $OUT/bench-eager.log 2>&1; echo "eager rc=$?"
timeout 60 python -m pytest -q -p no:cacheprovider tests/test_invariance.py tests/kernels/test_rms_norm_quant.py tests/ops/test_rms_norm_quant.py \
  > $OUT/gpu-pytest.log 2>&1; echo "pytest rc=$?"; tail -3 $OUT/gpu-pytest.log
grep -A8 "^## Headline" $OUT/bench-graph/summary.md; grep -A6 "^## Headline" $OUT/bench-eager/summary.md
tail -50 $OUT/lean.log
