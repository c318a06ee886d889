#!/usr/bin/env bash
# For the next device session: today's kernel changes (layout padded at the end, D a constexpr)
# against the tree before them (43d3f52), same process, graph replay.
#   here:    bash benchmarks/results/h200/2026-12-06-state/scripts/ab_next.sh prepare
#   device:  bash benchmarks/results/h200/2026-12-06-state/scripts/ab_next.sh run   (carry [".baseline2"])
set -euo pipefail
case "${1:-}" in
  prepare)
    tmp=$(mktemp -d); git archive 43d3f52 src/qknorm | tar -x -C "$tmp"
    bash benchmarks/results/h200/2026-12-01-host-cost/scripts/make_copy.sh "$tmp/src/qknorm" .baseline2 qknorm_before
    rm -rf "$tmp"; echo "baseline in .baseline2/qknorm_before" ;;
  run)
    export PYTHONPATH=$PWD/src:$PWD/.baseline2
    python benchmarks/scripts/ab_graph.py qknorm_before kernels-2026-12-06 ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
