#!/usr/bin/env bash
# Device calls planned in session 15 (no device was lent then), from the repository root.
#   suite  (carry nothing)  the whole suite in SUITE_K processes, capped at SUITE_S s, each failure's head and
#          tail kept (../../2026-12-07-session8/scripts/suite.py): $OUT/suite/summary.txt
#   tune   (carry [".baseline3/start", ".peers/s"]) `qknorm tune --merge` of this GPU's table (compiled ahead in
#          14 processes, TUNE_S s), shipped into src/; then issue 11's criterion: `qknorm bench --no-plots
#          --variants none --preset qwen3-8b --impl qknorm` of start (bdefcae) and this tree interleaved x2, best of 2
#          (../../2026-12-07-session6/scripts/bench_ab.py) -> $OUT/ab-start.txt; then the eager bench against
#          SGLang (T = 1, 16, 64; Qwen3-8B and Qwen3-Next) -> $OUT/eager.summary.md; the new table and data -> data.tgz
set -uo pipefail
SECONDS=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
case "${1:-suite}" in
suite)
  PYTHONPATH=$PWD/src timeout $((${SUITE_S:-560} + 10)) python benchmarks/results/h200/2026-12-07-session8/scripts/suite.py \
    ${SUITE_K:-12} ${SUITE_S:-560} tests
  echo "suite ${SECONDS}s"; head -40 $OUT/suite/summary.txt
  ;;
tune)
  rm -rf /tmp/b15 /tmp/e15 /tmp/tuned
  for w in .peers/s/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
  [ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
  K=$(PYTHONPATH=src python -c "import torch; from qknorm.tuned_table import gpu_key; print(gpu_key(torch.cuda.get_device_name()))")
  T=src/qknorm/tuned/$K.json
  PYTHONPATH=$PWD/src timeout $((${TUNE_S:-300} + 60)) python -c "$BENCH" tune --merge $T --out /tmp/tuned/$K.json \
    --jobs 14 --max-seconds ${TUNE_S:-300} > /tmp/tune.log 2>&1; echo "tune rc=$? ${SECONDS}s"
  grep -E "compiled ahead|heuristic vs|wrote|deadline" /tmp/tune.log; cp /tmp/tune.log $OUT/
  [ -s /tmp/tuned/$K.json ] && cp /tmp/tuned/$K.json $T
  for i in 1 2; do
    for t in start this; do
      [ $t = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$t
      PYTHONPATH=$PP timeout 60 python -c "$BENCH" bench --no-plots --variants none --preset qwen3-8b --impl qknorm \
        --out /tmp/b15/$t-$i > /tmp/b15.$t-$i.log 2>&1; echo "bench $t $i rc=$? ${SECONDS}s"
    done
  done
  python benchmarks/results/h200/2026-12-07-session6/scripts/bench_ab.py $OUT/ab-start.txt /tmp/b15/start-1 \
    /tmp/b15/this-1 /tmp/b15/start-2 /tmp/b15/this-2 > /dev/null; tail -n 1 $OUT/ab-start.txt
  PYTHONPATH=$PWD/src:/tmp/peers timeout 100 python -c "$BENCH" bench --no-plots --variants none --mode eager \
    --tokens 1,16,64 --preset qwen3-8b,qwen3-next --impl 'qknorm,sglang*' --out /tmp/e15 > /tmp/e15.log 2>&1
  echo "eager rc=$? ${SECONDS}s"; cp /tmp/e15/summary.md $OUT/eager.summary.md
  tar -czf $OUT/data.tgz -C /tmp b15 e15 tuned 2>/dev/null
  ;;
tuneonly)
  # (carry nothing) `qknorm tune --merge` of this GPU's table with --jobs 14 for TUNE_S s: the new table and log
  # to $OUT (not shipped by the script)
  K=$(PYTHONPATH=src python -c "import torch; from qknorm.tuned_table import gpu_key; print(gpu_key(torch.cuda.get_device_name()))")
  PYTHONPATH=$PWD/src timeout $((${TUNE_S:-170} + 60)) python -c "$BENCH" tune --merge src/qknorm/tuned/$K.json \
    --out $OUT/$K.json --jobs 14 --max-seconds ${TUNE_S:-170} > $OUT/tune.log 2>&1; echo "tune rc=$? ${SECONDS}s"
  grep -E "compiled ahead|heuristic vs|wrote|deadline" $OUT/tune.log
  ;;
esac
echo "s15 done ${SECONDS}s"
