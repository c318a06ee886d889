#!/usr/bin/env bash
# Device call: the issue-17 end-to-end decode benchmark (benchmarks/scripts/hf_decode.py), eager for
# Qwen3-8B and Gemma-3-12B shapes x unpatched / qknorm / liger, then (arg "compile") reduce-overhead.
# carry [".peers/l"] (Liger's wheel).
set -uo pipefail
mkdir -p /tmp/peers && pip install -q --no-deps --target /tmp/peers .peers/l/liger_kernel-*.whl >/dev/null 2>&1
export PYTHONPATH=$PWD/src:/tmp/peers
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
R=$OUT/e2e.jsonl
if [ "${1:-eager}" = eager ]; then
  for m in ${MODELS:-qwen3-8b gemma3-12b}; do for v in unpatched qknorm liger; do
    timeout ${TMO:-90} python benchmarks/scripts/hf_decode.py --model $m --variant $v --out $R > $OUT/$m.$v.log 2>&1
    echo "$m $v rc=$?"; tail -2 $OUT/$m.$v.log | cut -c1-300
  done; done
else
  for v in unpatched qknorm liger; do
    timeout ${TMO:-170} python benchmarks/scripts/hf_decode.py --model qwen3-8b --variant $v --compile --batches 1,8,64 \
      --out $R > $OUT/compile.$v.log 2>&1; echo "compile $v rc=$?"; tail -2 $OUT/compile.$v.log | cut -c1-300
  done
fi
