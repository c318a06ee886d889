#!/usr/bin/env bash
# Session 8 device calls (H200 or H100), from the repository root. Each mode fits one 600 s call.
#   ab     carry [".baseline3"]  issue 11: `qknorm bench --no-plots --preset qwen3-8b --impl qknorm --variants none`
#          (graph) of the session-6 start tree (.baseline3/start, bdefcae), this tree and .baseline3/prev (d218065:
#          multi-row tiles take the scaled sum in parallel), interleaved start this prev x2; then the whole test
#          suite in 8 processes (suite.py)
#   ab2    carry [".baseline3"]  the same bench A/B: start, this tree, .baseline3/prev, .baseline3/pbranch
#          (make_variants.py), interleaved x2
#   suite  the whole test suite in 8 processes (suite.py), 560 s
#   eager  carry [".baseline3", ".peers/s"]  issue 12: eager cost per call, start tree and this tree against
#          SGLang's JIT kernels (T = 1, 16, 64), interleaved x2
# .baseline3: start and qknorm_main as ../../2026-12-07-session7/scripts/s7.sh says; prev:
#   git worktree add /tmp/prevwt d218065 && mkdir -p .baseline3/prev && cp -r /tmp/prevwt/src/qknorm .baseline3/prev/
set -uo pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
echo "(the device copy's .git is not this tree's: see the README for the commit that ran)" >> $OUT/gpu.txt
S6=benchmarks/results/h200/2026-12-07-session6/scripts
D=benchmarks/results/h200/2026-12-07-session8/scripts
SECONDS=0
BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
case "${1:-ab}" in
ab)
  B="bench --no-plots --preset qwen3-8b --impl qknorm --variants none"
  for i in 1 2; do
    for tree in start this prev; do
      [ $tree = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$tree
      PYTHONPATH=$PP timeout 100 python -c "$BENCH" $B --out /tmp/b/$tree$i > /tmp/b.$tree$i.log 2>&1
      echo "bench $tree$i rc=$? ${SECONDS}s"
    done
  done
  mkdir -p $OUT/bench; cp /tmp/b/this1/summary.md $OUT/bench/this1.summary.md 2>/dev/null
  python $S6/bench_ab.py $OUT/bench/this.txt /tmp/b/start1 /tmp/b/this1 /tmp/b/start2 /tmp/b/this2
  python $S6/bench_ab.py $OUT/bench/prev.txt /tmp/b/start1 /tmp/b/prev1 /tmp/b/start2 /tmp/b/prev2
  tail -2 $OUT/bench/this.txt $OUT/bench/prev.txt
  PYTHONPATH=$PWD/src python $D/suite.py 8 $((585 - SECONDS)) tests
  ;;
ab2)  # issue 11, second round: start, this (row_normalized: plain-first), prev, pbranch (make_variants.py) x2
  B="bench --no-plots --preset qwen3-8b --impl qknorm --variants none"
  for i in 1 2; do
    for tree in start this prev pbranch; do
      [ $tree = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$tree
      PYTHONPATH=$PP timeout 60 python -c "$BENCH" $B --out /tmp/c/$tree$i > /tmp/c.$tree$i.log 2>&1
      echo "bench $tree$i rc=$? ${SECONDS}s"
    done
  done
  mkdir -p $OUT/bench
  for tree in this prev pbranch; do
    python $S6/bench_ab.py $OUT/bench/$tree.txt /tmp/c/start1 /tmp/c/${tree}1 /tmp/c/start2 /tmp/c/${tree}2
    tail -1 $OUT/bench/$tree.txt
  done
  ;;
suite)
  PYTHONPATH=$PWD/src python $D/suite.py 8 560 tests
  ;;
eager)
  for w in .peers/s/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
  [ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
  for i in 1 2; do
    for tree in start this; do
      [ $tree = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$tree
      PYTHONPATH=$PP:/tmp/peers timeout 140 python -c "$BENCH" bench --no-plots --variants none --preset qwen3-8b,qwen3-next \
        --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*' --out /tmp/e/$tree$i > $OUT/eager.$tree$i.log 2>&1
      echo "eager $tree$i rc=$? ${SECONDS}s"; cp /tmp/e/$tree$i/summary.md $OUT/eager.$tree$i.summary.md 2>/dev/null
    done
  done
  ;;
esac
echo "done ${SECONDS}s"
