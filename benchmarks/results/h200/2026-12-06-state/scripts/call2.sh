#!/usr/bin/env bash
# Device call 2 of 2 (machine still warm, bundle a in /root/peers): install the peers, then
# the model presets with the shipped H200 table against SGLang's JIT kernels and FlashInfer,
# the eager host cost, and the lean-kernel experiment.
set -uo pipefail
cp .peers/b/* /root/peers/ && source /root/peers/install.sh > $OUT/install.log 2>&1
export PYTHONPATH=$PWD/src:$PYTHONPATH
B="python -m qknorm.cli bench"
timeout 150 python benchmarks/results/h200/2026-12-06-rms-lean/scripts/lean.py $OUT/lean > $OUT/lean.log 2>&1
echo "lean rc=$?"
timeout 250 $B --preset qwen3-8b,qwen3-next,qwen3-235b,gemma3-27b --mode graph \
  --tokens 1,2,4,8,16,64,256,1024,4096,16384 --impl 'qknorm,sglang*,flashinfer*' --variants none --no-plots \
  --out $OUT/bench-graph > $OUT/bench-graph.log 2>&1; echo "graph rc=$?"
timeout 120 $B --preset qwen3-8b --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*,flashinfer*' \
  --variants none --no-plots --out $OUT/bench-eager > $OUT/bench-eager.log 2>&1; echo "eager rc=$?"
grep -A8 "^## Headline" $OUT/bench-graph/summary.md; grep -A6 "^## Headline" $OUT/bench-eager/summary.md
