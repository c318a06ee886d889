#!/usr/bin/env bash
# Session 14 device calls, from the repository root.
#   first  carry [".baseline3/start", ".baseline3/head", ".peers/s"]: hostprof.py (eager host cost split, T = 1,
#          with SGLang); the whole suite (8 processes, SUITE_S cap, summary back); then
#          `qknorm bench --no-plots --variants none --preset qwen3-8b --impl qknorm` of start (bdefcae: issue 11's
#          criterion base), head (53f1dbb: before the unsigned row split) and this tree, interleaved x2, best of 2
#          per case: ab-start.txt (this vs start), ab-head.txt (this vs head)
#   second (call 2; see the case's comment)
#   next1  (for the next session) the in-place Inductor test's error, then the whole suite (scripts/suite.py)
set -uo pipefail
S=benchmarks/results/h200/2026-12-07-session14/scripts
SECONDS=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
# ab3 PREFIX: `qknorm bench --no-plots --variants none --preset qwen3-8b --impl qknorm` of start, head and this tree
# interleaved x2; best of 2 per case, this vs each (../../2026-12-07-session6/scripts/bench_ab.py): $OUT/PREFIX-start.txt,
# $OUT/PREFIX-head.txt
ab3() {
  local i t PP
  for i in 1 2; do
    for t in start head this; do
      [ $t = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$t
      PYTHONPATH=$PP timeout 60 python -c "$BENCH" bench --no-plots --variants none --preset qwen3-8b --impl qknorm \
        --out /tmp/b14/$t-$i > /tmp/b14.$t-$i.log 2>&1; echo "bench $t $i rc=$? ${SECONDS}s"
    done
  done
  for t in start head; do
    python benchmarks/results/h200/2026-12-07-session6/scripts/bench_ab.py $OUT/$1-$t.txt /tmp/b14/$t-1 /tmp/b14/this-1 \
      /tmp/b14/$t-2 /tmp/b14/this-2 > /dev/null
    tail -n 1 $OUT/$1-$t.txt
  done
}
case "${1:-first}" in
first)
  for w in .peers/s/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
  [ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
  PYTHONPATH=$PWD/src:/tmp/peers timeout 150 python $S/hostprof.py > $OUT/hostprof.txt 2>&1; echo "hostprof rc=$? ${SECONDS}s"
  tail -22 $OUT/hostprof.txt
  PYTHONPATH=$PWD/src timeout $((${SUITE_S:-330} + 10)) python benchmarks/results/h200/2026-12-07-session8/scripts/suite.py 8 ${SUITE_S:-330} tests
  echo "suite ${SECONDS}s"; head -30 $OUT/suite/summary.txt
  ab3 ab
  ;;
second)
  # carry [".baseline3/start", ".baseline3/head", ".peers/s"]: the autograd tests (the compile ones failed in call 1),
  # eager bench against SGLang x2, `qknorm tune --merge` of this GPU's table on this tree (TUNE_S), the new table
  # copied into head too (the head/this A/B is the kernels'), then start / head / this interleaved x2 (graph replay)
  rm -rf /tmp/b14 /tmp/e14
  for w in .peers/s/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
  [ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
  PYTHONPATH=$PWD/src timeout 150 python -m pytest -q -p no:cacheprovider tests/test_autograd.py 2>&1 | tail -15 > $OUT/autograd.txt
  echo "autograd ${SECONDS}s"; tail -3 $OUT/autograd.txt
  for i in 1 2; do
    PYTHONPATH=$PWD/src:/tmp/peers timeout 100 python -c "$BENCH" bench --no-plots --variants none --mode eager \
      --tokens 1,16,64 --preset qwen3-8b,qwen3-next --impl 'qknorm,sglang*' --out /tmp/e14/e$i > /tmp/e14.$i.log 2>&1
    echo "eager $i rc=$? ${SECONDS}s"; cp /tmp/e14/e$i/summary.md $OUT/eager$i.summary.md
  done
  K=$(PYTHONPATH=src python -c "import torch; from qknorm.tuned_table import gpu_key; print(gpu_key(torch.cuda.get_device_name()))")
  T=src/qknorm/tuned/$K.json
  PYTHONPATH=$PWD/src timeout $((${TUNE_S:-200} + 40)) python -c "$BENCH" tune --merge $T --out /tmp/tuned/$K.json \
    --max-seconds ${TUNE_S:-200} > /tmp/tune.log 2>&1; echo "tune rc=$? ${SECONDS}s"; tail -4 /tmp/tune.log
  [ -s /tmp/tuned/$K.json ] && cp /tmp/tuned/$K.json $T && cp /tmp/tuned/$K.json .baseline3/head/qknorm/tuned/
  ab3 ab2
  cp /tmp/tune.log $OUT/ 2>/dev/null
  tar -czf $OUT/data.tgz -C /tmp b14 e14 tuned 2>/dev/null
  ;;
next1)
  # (written for the next session; carry nothing) the whole suite, uncapped as far as one call allows (SUITE_S, 540 s
  # default), each failure's head and tail kept; then the in-place Inductor compile test alone with its error's end
  PYTHONPATH=$PWD/src timeout 70 python -m pytest -q -x -p no:cacheprovider -p no:logging --tb=long \
    "tests/test_autograd.py::test_gradients_of_in_place_forms_under_torch_compile[inductor]" > /tmp/ind.log 2>&1
  echo "inductor test rc=$? ${SECONDS}s"; tail -c 4000 /tmp/ind.log > $OUT/inductor-tail.txt; tail -5 $OUT/inductor-tail.txt
  left=$((${SUITE_S:-540} - SECONDS))
  PYTHONPATH=$PWD/src timeout $((left + 10)) python benchmarks/results/h200/2026-12-07-session8/scripts/suite.py 8 $left tests
  echo "suite ${SECONDS}s"; head -30 $OUT/suite/summary.txt
  ;;
esac
echo "s14 done ${SECONDS}s"
