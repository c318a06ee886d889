#!/usr/bin/env bash
# Session 12 device call (carry [".baseline3"]), from the repository root: the fp32 RoPE config groups after the
# explicit-fma fix (rope_inv.py, fp32 head_dim 256 and 128), the GPU invariance tests, then issue 11's criterion bench
# (start = .baseline3/start, bdefcae, vs this tree) interleaved x2.
set -uo pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
SECONDS=0
S=benchmarks/results/h100/2026-12-07-session12/scripts
NCASES=${NCASES:-2} NPERS=1 PYTHONPATH=src timeout 90 python $S/rope_inv.py > $OUT/rope_inv_fma.txt 2>&1
echo "rope_inv rc=$? ${SECONDS}s"; grep "groups\|default T=1" $OUT/rope_inv_fma.txt
PYTHONPATH=src timeout 120 python -m pytest -q -x tests/test_invariance.py > $OUT/invariance.txt 2>&1
echo "invariance rc=$? ${SECONDS}s"; tail -3 $OUT/invariance.txt
BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
for i in 1 2; do
  for t in start this; do
    [ $t = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$t
    PYTHONPATH=$PP timeout 60 python -c "$BENCH" bench --no-plots --variants none --preset qwen3-8b --impl qknorm \
      --out /tmp/b12/$t-$i > /tmp/b12.$t-$i.log 2>&1; echo "bench $t $i rc=$? ${SECONDS}s"
  done
done
python benchmarks/results/h200/2026-12-07-session6/scripts/bench_ab.py $OUT/ab.txt /tmp/b12/start-1 /tmp/b12/this-1 \
  /tmp/b12/start-2 /tmp/b12/this-2 > /dev/null; tail -1 $OUT/ab.txt
echo "done ${SECONDS}s"
