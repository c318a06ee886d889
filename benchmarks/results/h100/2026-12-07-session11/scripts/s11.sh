#!/usr/bin/env bash
# Session 11 device calls, from the repository root.
#   builds  carry [".baseline3"]  make_variants.py's builds and start (.baseline3/start, bdefcae), `qknorm bench --no-plots
#           --preset qwen3-8b --impl qknorm --variants none` (issue 11's criterion bench), interleaved x${REPS:-3},
#           each build against start (../../../h200/2026-12-07-session6/scripts/bench_ab.py: best of the runs per case)
#   suite   the whole suite alone, 8 processes, 560 s (its summary only comes back)
#   table   carry [".baseline3", ".peers/s"]  s10.sh tune (this GPU's table on this tree, then issue 11's criterion
#           start vs this), then s10.sh qkpeers for qwen3-8b and qwen3-next with the new table (5 files come back)
set -uo pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
SECONDS=0
BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
AB=benchmarks/results/h200/2026-12-07-session6/scripts/bench_ab.py
case "${1:-builds}" in
builds)
  TREES="start s11_this s11_wtile s11_plain"
  for i in $(seq ${REPS:-3}); do
    for t in $TREES; do
      PYTHONPATH=$PWD/.baseline3/$t timeout 100 python -c "$BENCH" bench --no-plots --variants none --preset qwen3-8b \
        --impl qknorm --out /tmp/b/$t-$i > /tmp/b.$t-$i.log 2>&1; echo "bench $t $i rc=$? ${SECONDS}s"
    done
  done
  for t in s11_this s11_wtile s11_plain; do
    python $AB /tmp/b/ab-$t.txt $(for i in $(seq ${REPS:-3}); do echo /tmp/b/start-$i /tmp/b/$t-$i; done) > /dev/null
    echo "== $t vs start"; tail -1 /tmp/b/ab-$t.txt
  done
  paste -d'|' /tmp/b/ab-s11_this.txt /tmp/b/ab-s11_wtile.txt /tmp/b/ab-s11_plain.txt > $OUT/ab-builds.txt
  cp /tmp/b/ab-s11_this.txt /tmp/b/ab-s11_wtile.txt /tmp/b/ab-s11_plain.txt $OUT/
  ;;
suite)
  PYTHONPATH=$PWD/src timeout 575 python benchmarks/results/h200/2026-12-07-session8/scripts/suite.py 8 560 tests
  ;;
table)
  S10=benchmarks/results/h200/2026-12-07-session10/scripts/s10.sh
  TUNE_S=240 bash $S10 tune
  BUDGET=$((585 - SECONDS)) PRESETS=qwen3-8b,qwen3-next TOKENS=1,4,16,64,256,1024,4096,16384 bash $S10 qkpeers
  ;;
esac
echo "done ${SECONDS}s"
