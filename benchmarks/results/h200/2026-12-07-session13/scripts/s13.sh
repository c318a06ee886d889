#!/usr/bin/env bash
# Session 13 device calls, from the repository root.
#   first  carry [".baseline3/start"]  rope_sass.py (the fp32 RoPE picks' compiled variants, one tarball), then
#          ../../../h100/2026-12-07-session12/scripts/s12.sh (config bit-groups, GPU invariance tests, issue 11's
#          criterion start vs this x2)
set -uo pipefail
S=benchmarks/results/h200/2026-12-07-session13/scripts
case "${1:-first}" in
first)
  PYTHONPATH=src timeout 120 python $S/rope_sass.py /tmp/rs > $OUT/rope_sass.txt 2>&1; echo "rope_sass rc=$?"
  head -8 $OUT/rope_sass.txt; tar -czf $OUT/rope_sass.tgz -C /tmp rs
  bash benchmarks/results/h100/2026-12-07-session12/scripts/s12.sh
  ;;
esac
