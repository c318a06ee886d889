#!/usr/bin/env bash
# Session 13 device calls, from the repository root.
#   first  carry [".baseline3/start"]  rope_sass.py (the fp32 RoPE picks' compiled variants, one tarball), then
#          ../../../h100/2026-12-07-session12/scripts/s12.sh (config bit-groups, GPU invariance tests, issue 11's
#          criterion start vs this x2)
#   verify carry [".baseline3/start"]  the whole suite (8 processes, ${SUITE_S:-500} s cap; call 2 ran 330; its summary comes back), then issue 11's
#          criterion, start (bdefcae) vs this tree, `qknorm bench --no-plots --variants none --preset qwen3-8b
#          --impl qknorm`, interleaved x2 (best of 2 per case)
set -uo pipefail
S=benchmarks/results/h200/2026-12-07-session13/scripts
case "${1:-first}" in
first)
  PYTHONPATH=src timeout 120 python $S/rope_sass.py /tmp/rs > $OUT/rope_sass.txt 2>&1; echo "rope_sass rc=$?"
  head -8 $OUT/rope_sass.txt; tar -czf $OUT/rope_sass.tgz -C /tmp rs
  bash benchmarks/results/h100/2026-12-07-session12/scripts/s12.sh
  ;;
verify)
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
  SECONDS=0
  PYTHONPATH=$PWD/src timeout $((${SUITE_S:-500} + 10)) python benchmarks/results/h200/2026-12-07-session8/scripts/suite.py 8 ${SUITE_S:-500} tests
  echo "suite ${SECONDS}s"; head -30 $OUT/suite/summary.txt
  BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
  for i in 1 2; do
    for t in start this; do
      [ $t = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$t
      PYTHONPATH=$PP timeout 60 python -c "$BENCH" bench --no-plots --variants none --preset qwen3-8b --impl qknorm \
        --out /tmp/b13/$t-$i > /tmp/b13.$t-$i.log 2>&1; echo "bench $t $i rc=$? ${SECONDS}s"
    done
  done
  python benchmarks/results/h200/2026-12-07-session6/scripts/bench_ab.py $OUT/ab.txt /tmp/b13/start-1 /tmp/b13/this-1 \
    /tmp/b13/start-2 /tmp/b13/this-2 > /dev/null; tail -1 $OUT/ab.txt
  echo "done ${SECONDS}s"
  ;;
esac
