#!/usr/bin/env bash
# Session 6 device calls (H200 or H100), from the repository root. Each mode fits one call.
#   range  carry [".baseline3"]  issue 11 kind 5 (rows out of fp32's range, always on): the same-process A/B of
#          every kernel family against the session's starting tree (ab_graph.py), the GPU tests, then (time
#          left) the A/B of the one-sum alternative in .baseline3/alt
#   ab     carry [".baseline3"]  the A/B of `range` alone, then the alternative's, in 400 s
#   compile  issue 17: decode step under torch.compile(mode="reduce-overhead"), batch 1/8/64, Qwen3-8B shape
#          (MODEL=gemma3-12b for the Gemma 3 shape): unpatched / qknorm (norms left to Inductor, the default) /
#          qknorm_kernels (qknorm's custom ops in the graph), interleaved
#   bench  carry [".baseline3"]  `qknorm bench --preset qwen3-8b` (graph mode) of the starting tree and of this
#          tree, interleaved twice (A B A B), summarised per case by bench_ab.py
# .baseline3/qknorm_main: the session's starting tree (bdefcae) as a package of its own, made with
#   bash benchmarks/results/h200/2026-12-01-host-cost/scripts/make_copy.sh src/qknorm .baseline3 qknorm_main
set -uo pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
D=benchmarks/results/h200/2026-12-07-session6/scripts
export PYTHONPATH=$PWD/src:$PWD/.baseline3
SECONDS=0
case "${1:-range}" in
range)
  OUT=$OUT timeout 230 python benchmarks/scripts/ab_graph.py qknorm_main range > /dev/null 2>&1
  echo "ab rc=$? ${SECONDS}s"; tail -1 $OUT/ab_range.txt
  P="python -m pytest -q -p no:cacheprovider --tb=short -rf -x"
  timeout 240 $P tests/test_adversarial.py tests/test_autograd.py tests/kernels > $OUT/pytest.log 2>&1
  echo "pytest rc=$? ${SECONDS}s"; tail -4 $OUT/pytest.log
  if [ -d .baseline3/alt/qknorm ] && [ $SECONDS -lt 420 ]; then  # the one-sum alternative, as `qknorm`
    OUT=$OUT PYTHONPATH=$PWD/.baseline3/alt:$PYTHONPATH timeout $((580 - SECONDS)) python benchmarks/scripts/ab_graph.py \
      qknorm_main alt > /dev/null 2>&1; echo "ab alt rc=$? ${SECONDS}s"; tail -1 $OUT/ab_alt.txt
  fi
  ;;
ab)  # the A/B alone (short device budget): this tree, then the one-sum alternative, against the start
  OUT=$OUT timeout ${AB_S:-250} python benchmarks/scripts/ab_graph.py qknorm_main range > /dev/null 2>&1
  echo "ab rc=$? ${SECONDS}s"; tail -1 $OUT/ab_range.txt
  [ $SECONDS -lt 330 ] && OUT=$OUT PYTHONPATH=$PWD/.baseline3/alt:$PYTHONPATH timeout $((390 - SECONDS)) python benchmarks/scripts/ab_graph.py \
    qknorm_main alt > /dev/null 2>&1; echo "ab alt rc=$? ${SECONDS}s"; tail -1 $OUT/ab_alt.txt
  ;;
compile)
  M=${MODEL:-qwen3-8b}
  for v in unpatched qknorm qknorm_kernels; do
    left=$((560 - SECONDS)); [ $left -lt 60 ] && { echo "no time for $v"; break; }
    timeout $left python benchmarks/scripts/hf_decode.py --model $M --variant $v --compile --batches ${BATCHES:-1,8,64} \
      --rounds 5 --out $OUT/e2e.jsonl > $OUT/compile.$v.log 2>&1; echo "compile $v rc=$? ${SECONDS}s"
    tail -3 $OUT/compile.$v.log | cut -c1-300
  done
  ;;
*) echo "mode?"; exit 2 ;;
esac
echo done
