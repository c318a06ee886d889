#!/usr/bin/env bash
# Device calls of session 16 (s15.sh's suite/tune/tuneonly, plus probe), from the repository root.
#   suite  (carry nothing)  the whole suite in SUITE_K processes, capped at SUITE_S s, each failure's head and
#          tail kept (../../2026-12-07-session8/scripts/suite.py): $OUT/suite/summary.txt
#   probe  (carry [".peers/s"]) scripts/t1_probe.py with QKNORM_PDL unset (auto) and =0, and with a one-program
#          T=1 config (a user table: r64.b128.w8.tok at the 64-row bucket): $OUT/t1_probe_*.txt
#   auto   (carry both) tune on an H200, probe on any other card
#   tune   (carry [".baseline3/start", ".peers/s"]) `qknorm tune --merge` of this GPU's table (compiled ahead in
#          14 processes, TUNE_S s), shipped into src/; then issue 11's criterion: `qknorm bench --no-plots
#          --variants none --preset qwen3-8b --impl qknorm` of start (bdefcae) and this tree interleaved x2, best of 2
#          (../../2026-12-07-session6/scripts/bench_ab.py) -> $OUT/ab-start.txt; then the eager bench against
#          SGLang (T = 1, 16, 64; Qwen3-8B and Qwen3-Next) -> $OUT/eager.summary.md; the new table and data -> data.tgz
set -uo pipefail
SECONDS=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
MODE=${1:-suite}
if [ "$MODE" = auto ]; then  # whichever card came: an H200 retunes its table (tune), an H100 runs the probe
  grep -q H200 $OUT/gpu.txt && MODE=tune || MODE=probe
  echo "auto -> $MODE"
fi
case "$MODE" in
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
probe)
  for w in .peers/s/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
  [ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
  P=benchmarks/results/h200/2026-12-07-session16/scripts/t1_probe.py
  for pdl in auto 0; do QKNORM_PDL=$pdl PYTHONPATH=$PWD/src timeout 150 python $P pdl-$pdl 2>&1 | tail -n 14; done
  K=$(PYTHONPATH=src python -c "import torch; from qknorm.tuned_table import gpu_key; print(gpu_key(torch.cuda.get_device_name()))")
  python - src/qknorm/tuned/$K.json /tmp/one.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for e in d["entries"]:
    if e["op"] == "qk_rms_norm" and e["dtype"] == "bf16" and e["D"] == 128 and e["rows"] == 64:
        e["config"] = {"rows": 64, "block_d": 128, "num_warps": 8, "persistent": False, "programs_per_sm": 4,
                       "token_order": True, "pdl": False}
json.dump(d, open(sys.argv[2], "w"))
PY
  QKNORM_TUNED_TABLE=/tmp/one.json PYTHONPATH=$PWD/src timeout 150 python $P one-program 2>&1 | tail -n 14
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
