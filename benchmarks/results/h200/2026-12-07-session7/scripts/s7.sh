#!/usr/bin/env bash
# Session 7 device calls (H200 or H100), from the repository root. Each mode fits one 600 s call.
#   first  carry [".baseline3", ".peers/s"]  issue 11's criterion and the GPU suite, issue 12's eager cost:
#          1. `qknorm bench --preset qwen3-8b --impl qknorm --variants none` (graph) of the session-6 starting
#             tree (bdefcae, .baseline3/start/qknorm) and of this tree, interleaved A B A B (bench_ab.py);
#          2. the GPU tests (adversarial, autograd, kernels, invariance);
#          3. eager cost per call against SGLang's JIT kernels (T = 1, 16, 64).
#   branch carry [".baseline3"]  issue 11: the bench A/B of `first` with a third build, .baseline3/branch (make_branch.py:
#          the scaled sums behind one branch per program for multi-row tiles too), then the GPU tests
#   ab     carry [".baseline3"]  every kernel family, same process, this tree vs the start (ab_graph.py),
#          then the one-sum alternative (.baseline3/alt) vs the start
#   ropebw issue 16: rope_tok.py (a one-program-per-token prototype), then rope_bw.py (qk_rms_norm_rope at 16384
#          tokens, forms x configs, against a strided copy of the same bytes)
#   compile  issue 17 (see ../../2026-12-07-session6/scripts/s6.sh compile)
# .baseline3 (ignored) is rebuilt with:
#   git worktree add /tmp/start bdefcae && mkdir -p .baseline3/start && cp -r /tmp/start/src/qknorm .baseline3/start/
#   bash benchmarks/results/h200/2026-12-01-host-cost/scripts/make_copy.sh /tmp/start/src/qknorm .baseline3 qknorm_main
#   python benchmarks/results/h200/2026-12-07-session6/scripts/make_alt.py
#   python benchmarks/results/h200/2026-12-07-session7/scripts/make_branch.py
set -uo pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
S6=benchmarks/results/h200/2026-12-07-session6/scripts
SECONDS=0
BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
case "${1:-first}" in
first)
  B="bench --no-plots --preset qwen3-8b --impl qknorm --variants none"
  for i in 1 2; do
    for tree in start this; do
      [ $tree = start ] && PP=$PWD/.baseline3/start || PP=$PWD/src
      PYTHONPATH=$PP timeout 100 python -c "$BENCH" $B --out /tmp/b/$tree$i > /tmp/b.$tree$i.log 2>&1
      echo "bench $tree$i rc=$? ${SECONDS}s"
    done
  done
  mkdir -p $OUT/bench; cp /tmp/b/this1/summary.md $OUT/bench/this1.summary.md 2>/dev/null
  python $S6/bench_ab.py $OUT/bench/bench_ab.txt /tmp/b/start1 /tmp/b/this1 /tmp/b/start2 /tmp/b/this2
  export PYTHONPATH=$PWD/src
  P="python -m pytest -q -p no:cacheprovider --tb=short -rf"
  timeout $((470 - SECONDS)) $P tests/test_adversarial.py tests/test_autograd.py tests/test_invariance.py tests/kernels \
    > $OUT/pytest.log 2>&1
  echo "pytest rc=$? ${SECONDS}s"; tail -4 $OUT/pytest.log
  for w in .peers/s/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
  [ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
  export PYTHONPATH=$PWD/src:/tmp/peers
  timeout $((590 - SECONDS)) python -c "$BENCH" bench --no-plots --variants none --preset qwen3-8b,qwen3-next --mode eager \
    --tokens 1,16,64 --impl 'qknorm,sglang*' --out /tmp/e > $OUT/eager.log 2>&1
  echo "eager rc=$? ${SECONDS}s"; cp /tmp/e/summary.md $OUT/eager.summary.md 2>/dev/null; tail -30 $OUT/eager.log
  ;;
branch)  # issue 11: start vs this tree vs .baseline3/branch (make_branch.py), interleaved twice, then the GPU tests
  B="bench --no-plots --preset qwen3-8b --impl qknorm --variants none"
  for i in 1 2; do
    for tree in start this branch; do
      [ $tree = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$tree
      PYTHONPATH=$PP timeout 100 python -c "$BENCH" $B --out /tmp/b/$tree$i > /tmp/b.$tree$i.log 2>&1
      echo "bench $tree$i rc=$? ${SECONDS}s"
    done
  done
  mkdir -p $OUT/bench
  python $S6/bench_ab.py $OUT/bench/this.txt /tmp/b/start1 /tmp/b/this1 /tmp/b/start2 /tmp/b/this2
  python $S6/bench_ab.py $OUT/bench/branch.txt /tmp/b/start1 /tmp/b/branch1 /tmp/b/start2 /tmp/b/branch2
  PYTHONPATH=$PWD/src timeout $((580 - SECONDS)) python -m pytest -q -p no:cacheprovider --tb=short -rf \
    tests/test_adversarial.py tests/test_invariance.py tests/kernels tests/test_autograd.py > $OUT/pytest.log 2>&1
  echo "pytest rc=$? ${SECONDS}s"; tail -4 $OUT/pytest.log
  ;;
ab)
  export PYTHONPATH=$PWD/src:$PWD/.baseline3
  OUT=$OUT timeout 280 python benchmarks/scripts/ab_graph.py qknorm_main range > /dev/null 2>&1
  echo "ab rc=$? ${SECONDS}s"; tail -1 $OUT/ab_range.txt
  OUT=$OUT PYTHONPATH=$PWD/.baseline3/alt:$PYTHONPATH timeout $((580 - SECONDS)) python benchmarks/scripts/ab_graph.py \
    qknorm_main alt > /dev/null 2>&1; echo "ab alt rc=$? ${SECONDS}s"; tail -1 $OUT/ab_alt.txt
  ;;
ropebw)  # issue 16: where qk_rms_norm_rope's bandwidth goes at 16384 tokens (forms x configs, positions 0)
  D=benchmarks/results/h200/2026-12-07-session7/scripts
  PYTHONPATH=$PWD/src timeout 150 python $D/rope_tok.py > $OUT/rope_tok.log 2>&1; echo "ropetok rc=$? ${SECONDS}s"
  cat $OUT/rope_tok.txt
  PYTHONPATH=$PWD/src timeout $((575 - SECONDS)) python $D/rope_bw.py 16384 > $OUT/rope_bw.log 2>&1
  echo "ropebw rc=$? ${SECONDS}s"; tail -5 $OUT/rope_bw.log
  ;;
compile) bash $S6/s6.sh compile ;;
*) echo "mode?"; exit 2 ;;
esac
echo done
