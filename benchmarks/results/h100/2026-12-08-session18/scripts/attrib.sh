#!/usr/bin/env bash
# Builds timed, interleaved x2: start (bdefcae, carry .baseline3/start), this tree (src), and mkexp.sh's .exp/{nohi,branch,f64}
# (experimental forms of the row kernels, see mkexp.sh).
# ATTRIB_VARIANTS (default all five), ATTRIB_OPS, ATTRIB_TS narrow it (attrib.py).
# carry [".baseline3/start", ".exp"]; output $OUT/attrib-*.json and $OUT/attrib.txt
S=benchmarks/results/h100/2026-12-08-session18/scripts
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
for i in 1 2; do
  for v in ${ATTRIB_VARIANTS:-start this nohi branch f64}; do
    case $v in start) P=$PWD/.baseline3/start;; this) P=$PWD/src;; nohi|branch|f64) P=$PWD/.exp/$v;; esac
    PYTHONPATH=$P timeout 200 python $S/attrib.py $v $OUT/attrib-$v-$i.json 2>&1 | tail -n 2
  done
done
python $S/attrib_table.py $OUT > $OUT/attrib.txt; cat $OUT/attrib.txt
