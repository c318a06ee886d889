#!/usr/bin/env bash
# Session 5 device calls, from the repository root (H100 or H200). Each mode fits one call.
#   rope   carry [".peers/s"]  issue 16: whole-row partial-rotary prototypes (gather / reload) vs qknorm vs SGLang
#   e2e    carry [".peers/l"]  issue 17: Qwen3-8B eager decode, unpatched / qknorm / liger
#   compile carry [".peers/l"] issue 17: Qwen3-8B decode under torch.compile(mode="reduce-overhead"), batch 1 and 8,
#                              unpatched / qknorm
#   all    carry [".peers/s", ".peers/l"]  one call (~9 min): the rope GPU tests, bench rope (warm + cold L2), then
#                              Qwen3-8B eager decode (batch 1, 8, 64) unpatched / qknorm / liger
#   check  carry [".peers/s"]  GPU tests of the rope kernels and ops; bench presets rope + prologue (graph, warm L2;
#                              then rope at 16384 tokens with --cold-l2) against SGLang and FlashInfer when present
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
all)
  export PYTHONPATH=$PWD/src:/tmp/peers
  P="python -m pytest -q -p no:cacheprovider --tb=line -rf"
  timeout 120 $P tests/kernels/test_qk_norm_rope.py tests/kernels/test_qk_norm_rope_cache.py tests/ops/test_qk_norm_rope.py \
    > $OUT/pytest-rope.log 2>&1; echo "pytest rc=$? ${SECONDS}s"; tail -3 $OUT/pytest-rope.log
  B="python -m qknorm.cli bench --no-plots --variants none"
  timeout 130 $B --preset rope --impl 'qknorm,sglang*' --tokens 1,16,64,512,4096,16384 \
    --out $OUT/bench-rope > $OUT/bench-rope.log 2>&1; echo "rope rc=$? ${SECONDS}s"; tail -3 $OUT/bench-rope.log
  timeout 70 $B --preset rope --impl 'qknorm,sglang*' --tokens 16384 --cold-l2 --out $OUT/bench-cold > $OUT/bench-cold.log 2>&1
  echo "cold rc=$? ${SECONDS}s"; tail -3 $OUT/bench-cold.log
  for v in qknorm unpatched liger; do
    left=$((530 - SECONDS)); [ $left -lt 40 ] && { echo "no time for $v"; break; }
    timeout $left python benchmarks/scripts/hf_decode.py --model qwen3-8b --variant $v --rounds 3 --out $OUT/e2e.jsonl \
      > $OUT/e2e.$v.log 2>&1; echo "e2e $v rc=$? ${SECONDS}s"; tail -1 $OUT/e2e.$v.log | cut -c1-400
  done
  ;;
compile)
  export PYTHONPATH=$PWD/src:/tmp/peers
  for v in unpatched qknorm; do
    timeout 250 python benchmarks/scripts/hf_decode.py --model qwen3-8b --variant $v --compile --batches 1,8 --rounds 5 \
      --out $OUT/e2e.jsonl > $OUT/compile.$v.log 2>&1; echo "compile $v rc=$? ${SECONDS}s"; tail -2 $OUT/compile.$v.log | cut -c1-300
  done
  ;;
check)
  export PYTHONPATH=$PWD/src:/tmp/peers
  P="python -m pytest -q -p no:cacheprovider --tb=line -rf"
  timeout 150 $P tests/kernels/test_qk_norm_rope.py tests/kernels/test_qk_norm_rope_cache.py tests/ops/test_qk_norm_rope.py \
    tests/ops/test_qk_norm_rope_cache.py > $OUT/pytest-rope.log 2>&1; echo "pytest rc=$? ${SECONDS}s"; tail -4 $OUT/pytest-rope.log
  B="python -m qknorm.cli bench --no-plots --variants none"
  timeout 150 $B --preset rope --impl 'qknorm,sglang*' --tokens 1,16,64,512,4096,16384 \
    --out $OUT/bench-rope > $OUT/bench-rope.log 2>&1; echo "rope rc=$? ${SECONDS}s"; tail -3 $OUT/bench-rope.log
  timeout 90 $B --preset rope --impl 'qknorm,sglang*' --tokens 16384 --cold-l2 --out $OUT/bench-cold > $OUT/bench-cold.log 2>&1
  echo "cold rc=$? ${SECONDS}s"; tail -3 $OUT/bench-cold.log
  timeout 150 $B --preset prologue --impl 'qknorm,sglang*,qknorm_rope*' --tokens 1,64,4096,16384 \
    --out $OUT/bench-prologue > $OUT/bench-prologue.log 2>&1; echo "prologue rc=$? ${SECONDS}s"; tail -3 $OUT/bench-prologue.log
  ;;
*) echo "mode?"; exit 2 ;;
esac
echo done
