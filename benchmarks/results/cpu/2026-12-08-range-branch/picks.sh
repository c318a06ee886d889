#!/usr/bin/env bash
# The shipped tables' QK picks that are one-warp tiles of several rows (tuned/nvidia-h100-80gb-hbm3.json,
# tuned/nvidia-h200.json; bf16), compiled for sm_90 before (c578fc1~1) and after (HEAD) RANGE_BRANCH:
# common-path instructions per warp and registers per thread. Run from the repository root (venv with triton).
set -euo pipefail
H=benchmarks/results/cpu/2026-12-08-range-branch
W=$(mktemp -d)
for rev in c578fc1~1 HEAD; do mkdir -p $W/$rev && git archive $rev src/qknorm | tar -x -C $W/$rev; done
for cfg in "16 32 tok" "16 64 seg" "32 4 seg" "32 32 seg" "32 64 seg" "128 8 seg" "256 2 seg" "256 4 seg" "1024 2 seg" \
           "64 16 seg"; do
  set -- $cfg
  for rev in c578fc1~1 HEAD; do
    if [ $3 = tok ]; then
      python $H/gen.py $W/$rev/src qk_norm qk_rms_norm_tokens_kernel 1 $W/s.sass HAS_WEIGHT=True D=$1 ROWS=$2 BLOCK_D=$1 \
        PERSISTENT=False USE_PDL=False LO_SUMS=False RANGE_BRANCH=True qxh=$1 > $W/o 2> $W/err || { cat $W/err; exit 1; }
    else
      python $H/gen.py $W/$rev/src qk_norm qk_rms_norm_kernel 1 $W/s.sass HAS_WEIGHT=True D=$1 ROWS=$2 BLOCK_D=$1 CHUNKED=0 \
        PERSISTENT=False USE_PDL=False LO_SUMS=False RANGE_BRANCH=True N2=1 > $W/o 2> $W/err || { cat $W/err; exit 1; }
    fi
    echo "QK D=$1 rows=$2 ($3) $rev: $(python $H/path.py $W/s.sass | cut -d' ' -f1) instructions, $(grep -o 'REG:[0-9]*' $W/o)"
  done
done
