#!/usr/bin/env bash
# Common-path sm_90 SASS instruction counts of the plain norm kernels, three trees side by side:
# start = bdefcae (issue 11's base, no fp32-range rescue), before = c578fc1~1, HEAD (RANGE_BRANCH, on as the host sets
# it: one-warp tiles of several rows); REVS="bdefcae ." compares the working tree.
# Compiled ahead of time without a GPU (Triton + ptxas + nvdisasm from the triton wheel) with the JIT's usual
# specialisation (unit strides constexpr 1, 16-divisible pointers/ints: gen.py); path.py walks one warp's
# instructions with the range branch not taken. Run from the repository root: bash benchmarks/results/cpu/2026-12-08-range-branch/counts.sh
set -euo pipefail
H=benchmarks/results/cpu/2026-12-08-range-branch
W=$(mktemp -d)
REVS=${REVS:-bdefcae c578fc1~1 HEAD}  # "." = the working tree
for rev in $REVS; do mkdir -p $W/$rev/src && if [ $rev = . ]; then cp -r src/qknorm $W/$rev/src/; else
  git archive $rev src/qknorm | tar -x -C $W/$rev; fi; done
for cfg in "qk_norm qk_rms_norm_kernel 8 1 128" "qk_norm qk_rms_norm_kernel 16 1 128" "qk_norm qk_rms_norm_kernel 32 4 128" \
           "rms_norm rms_norm_kernel 2 1 128" "rms_norm rms_norm_kernel 4 1 256" "rms_norm rms_norm_kernel 32 1 64" \
           "rms_norm rms_norm_kernel 4 1 1024"; do
  set -- $cfg
  for rev in $REVS; do
    python $H/gen.py $W/$rev/src $1 $2 $4 $W/s.sass HAS_WEIGHT=True D=$5 ROWS=$3 BLOCK_D=$5 CHUNKED=0 PERSISTENT=False \
      USE_PDL=False LO_SUMS=False RANGE_BRANCH=$([ $4 = 1 ] && [ $3 -gt 1 ] && echo True || echo False) N2=1 \
      > $W/out 2> $W/err || { cat $W/err; exit 1; }
    echo "$2 rows=$3 warps=$4 D=$5 $rev: $(python $H/path.py $W/s.sass | cut -d' ' -f1) instructions," \
      "$(grep -o "REG:[0-9]*" $W/out) registers"
  done
done
