#!/usr/bin/env bash
# The next device session (H200 wanted; any H100/H200), from the repository root.
#   bash benchmarks/results/h100/2026-12-06-session2/scripts/next.sh tests   carry [".peers/s"]  (~6 min)
#   bash benchmarks/results/h100/2026-12-06-session2/scripts/next.sh bench   carry [".peers/s"]  (~9 min)
#   MODELS=qwen3-8b bash .../e2e.sh eager, then MODELS=gemma3-12b (carry [".peers/l"], ~5 min each)
#   bash benchmarks/results/h100/2026-12-06-session2/scripts/e2e.sh compile  carry [".peers/l"]  (~9 min)
#   bash .../next.sh rope   carry [".peers/s"]  (issue 16 prototype, ~4 min)
#   issue 11 kind 5, the re-read SAFE_RANGE design against the default, same process:
#     here:   bash benchmarks/results/h200/2026-12-01-host-cost/scripts/make_copy.sh src/qknorm .baseline3 qknorm_off safe_off
#     device: bash benchmarks/results/h100/2026-12-06-session2/scripts/next.sh safe   carry [".baseline3"]  (~3 min)
# Copies only summaries/CSVs/logs to $OUT (the reply drops files past a count).
set -uo pipefail
mkdir -p /tmp/peers && pip install -q --no-deps --target /tmp/peers .peers/s/*.whl >/dev/null 2>&1
tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
export PYTHONPATH=$PWD/src:/tmp/peers
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
S=benchmarks/results/h100/2026-12-06-session2/scripts
P="python -m pytest -q -p no:cacheprovider --tb=line -rf"
keep() { cp /tmp/b/$1/summary.md $OUT/$1.summary.md 2>/dev/null; cp /tmp/b/$1/results.csv $OUT/$1.csv 2>/dev/null; }
B="python -m qknorm.cli bench --no-plots --variants none"
if [ "${1:-tests}" = rope ]; then   # issue 16: the whole-row gather prototype vs qknorm vs SGLang (~4 min)
  OUT=$OUT timeout 400 python $S/rope_gather_proto.py > $OUT/rope_gather.log 2>&1; echo "rope rc=$?"; cat $OUT/rope_gather.log | tail -25
elif [ "${1:-tests}" = safe ]; then
  PYTHONPATH=$PYTHONPATH:$PWD/.baseline3 QKNORM_SAFE_RANGE=1 OUT=$OUT timeout 300 \
    python benchmarks/scripts/ab_graph.py qknorm_off safe-range-reread > $OUT/ab.log 2>&1
  echo "ab rc=$?"; tail -3 $OUT/ab.log   # other/this < 1: SAFE_RANGE on (this) is slower
elif [ "${1:-tests}" = tests ]; then
  timeout 60 python $S/g40_fp32.py > $OUT/g40.log 2>&1; cat $OUT/g40.log
  timeout 240 $P tests/test_invariance.py tests/kernels > $OUT/pytest-kernels.log 2>&1; echo "kernels rc=$?"; tail -4 $OUT/pytest-kernels.log
  timeout 200 $P tests --ignore=tests/kernels --ignore=tests/test_invariance.py --ignore=tests/distributed \
    --deselect tests/test_command_line.py > $OUT/pytest-rest.log 2>&1; echo "rest rc=$?"; tail -4 $OUT/pytest-rest.log
else
  rm -rf /tmp/b
  timeout 200 $B --preset quant --mode graph --tokens 1,16,128,1024,4096,16384 --impl 'qknorm,torch*,sglang*,flashinfer*' \
    --out /tmp/b/quant > $OUT/quant.log 2>&1; echo "quant rc=$?"; keep quant
  timeout 160 $B --preset prologue --mode graph --tokens 1,16,128,1024,4096 --impl 'qknorm*,torch*,sglang*' \
    --out /tmp/b/prologue > $OUT/prologue.log 2>&1; echo "prologue rc=$?"; keep prologue
  timeout 120 $B --preset qwen3-8b,qwen3-next --mode graph --tokens 1,2,4,8,16,64,256,1024,4096,16384 \
    --impl 'qknorm,sglang*' --out /tmp/b/models > $OUT/models.log 2>&1; echo "models rc=$?"; keep models
  timeout 60 $B --preset qwen3-8b --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*' --out /tmp/b/eager \
    > $OUT/eager.log 2>&1; echo "eager rc=$?"; keep eager
fi
echo done
