#!/usr/bin/env bash
# Builds timed, interleaved x2: start (bdefcae, carry .baseline3/start), this tree (src), and .exp/nohi (this tree
# with every row kernel's range handling removed: row_normalized's IN_RANGE path forced; made by mkexp.sh).
# carry [".baseline3/start", ".exp"]; output $OUT/attrib-*.json and $OUT/attrib.txt
S=benchmarks/results/h100/2026-12-08-session18/scripts
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
for i in 1 2; do
  for v in start this nohi; do
    case $v in start) P=$PWD/.baseline3/start;; this) P=$PWD/src;; nohi) P=$PWD/.exp/nohi;; esac
    PYTHONPATH=$P timeout 200 python $S/attrib.py $v $OUT/attrib-$v-$i.json 2>&1 | tail -n 2
  done
done
python $S/attrib_table.py $OUT > $OUT/attrib.txt; cat $OUT/attrib.txt
