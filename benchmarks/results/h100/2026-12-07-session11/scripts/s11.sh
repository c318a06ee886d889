#!/usr/bin/env bash
# Session 11 device calls, from the repository root.
#   builds  carry [".baseline3"]  make_variants.py's builds and start (.baseline3/start, bdefcae), `qknorm bench --no-plots
#           --preset qwen3-8b --impl qknorm --variants none` (issue 11's criterion bench), interleaved x${REPS:-3},
#           each build against start (../../../h200/2026-12-07-session6/scripts/bench_ab.py: best of the runs per case)
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
esac
echo "done ${SECONDS}s"
