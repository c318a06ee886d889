#!/usr/bin/env bash
# Session 5 device calls, from the repository root (H100 or H200). Each mode fits one call.
#   rope   carry [".peers/s"]  issue 16: whole-row partial-rotary prototypes (gather / reload) vs qknorm vs SGLang
#   e2e    carry [".peers/l"]  issue 17: Qwen3-8B eager decode, unpatched / qknorm / liger
set -uo pipefail
mkdir -p /tmp/peers
for w in .peers/s/*.whl .peers/l/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
[ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
D=benchmarks/results/h100/2026-12-07-session5/scripts
SECONDS=0
case "${1:-rope}" in
rope)
  export PYTHONPATH=$PWD/src:/tmp/peers
  OUT=$OUT timeout 500 python $D/rope_proto.py > $OUT/rope_proto.log 2>&1; echo "rope rc=$? ${SECONDS}s"; tail -20 $OUT/rope_proto.log
  ;;
e2e)
  MODELS=qwen3-8b TMO=150 bash benchmarks/results/h100/2026-12-06-session2/scripts/e2e.sh eager
  ;;
*) echo "mode?"; exit 2 ;;
esac
echo done
