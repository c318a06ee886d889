#!/usr/bin/env bash
# Session 9 device calls (H200 or H100), from the repository root. Each mode fits one 600 s call.
#   all [TREES]  carry [".baseline3"]  issue 11: `qknorm bench --no-plots --preset qwen3-8b --impl 'qknorm,qknorm[*]'
#          --variants all` (graph: the pick and every candidate config) of the session-6 start tree
#          (.baseline3/start, bdefcae), this tree and .baseline3/pbranch (every tile behind one branch per
#          program); variants_ab.py compares each build's pick and best config with start's pick. TREES: a
#          comma list (default start,this,pbranch): start, this, or any .baseline3/<name> (make_variants.py here)
#   final  carry [".baseline3"]  issue 11's criterion: `qknorm bench --no-plots --preset qwen3-8b --impl qknorm
#          --variants none` of start (bdefcae) and this tree, interleaved x2 (ab.txt, ../../2026-12-07-session6/
#          scripts/bench_ab.py), then `all start,this` (variants.txt), then the whole suite in what is left of 585 s
#   prof   carry [".peers/s"]  issue 12: benchmarks/scripts/profile_host.py (where an eager call's microseconds go,
#          T = 1/16/64, with SGLang's JIT kernels' eager calls in the same process)
#   suite  the whole test suite in 8 processes (../../2026-12-07-session8/scripts/suite.py), 560 s
#   se     carry [".baseline3", ".peers/s"]  s8.sh eager (start and this tree against SGLang's JIT kernels, eager,
#          T = 1, 16, 64, x2), then the whole suite in what is left of 585 s
# .baseline3: as ../../2026-12-07-session8/scripts/s8.sh says (pbranch: make_variants.py there).
set -uo pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
echo "(the device copy's .git is not this tree's: see the README for the commit that ran)" >> $OUT/gpu.txt
S8=benchmarks/results/h200/2026-12-07-session8/scripts
D=benchmarks/results/h200/2026-12-07-session9/scripts
SECONDS=0
BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
case "${1:-all}" in
all)
  TREES=${2:-start,this,pbranch}
  for tree in ${TREES//,/ }; do
    [ $tree = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$tree
    PYTHONPATH=$PP timeout 150 python -c "$BENCH" bench --no-plots --preset qwen3-8b --impl 'qknorm,qknorm[*]' \
      --variants all --out /tmp/v/$tree > /tmp/v.$tree.log 2>&1
    echo "bench $tree rc=$? ${SECONDS}s"; tail -3 /tmp/v.$tree.log
    cp /tmp/v/$tree/results.csv $OUT/$tree.csv 2>/dev/null
  done
  python $D/variants_ab.py $OUT/variants.txt /tmp/v/start $(for t in ${TREES//,/ }; do [ $t = start ] || echo $t=/tmp/v/$t; done)
  ;;
final)
  B="bench --no-plots --preset qwen3-8b --impl qknorm --variants none"
  for i in 1 2; do
    for tree in start this; do
      [ $tree = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$tree
      PYTHONPATH=$PP timeout 60 python -c "$BENCH" $B --out /tmp/f/$tree$i > /tmp/f.$tree$i.log 2>&1
      echo "bench $tree$i rc=$? ${SECONDS}s"
    done
  done
  python benchmarks/results/h200/2026-12-07-session6/scripts/bench_ab.py $OUT/ab.txt /tmp/f/start1 /tmp/f/this1 \
    /tmp/f/start2 /tmp/f/this2
  for tree in start this; do
    [ $tree = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$tree
    PYTHONPATH=$PP timeout 100 python -c "$BENCH" bench --no-plots --preset qwen3-8b --impl 'qknorm,qknorm[*]' \
      --variants all --out /tmp/v/$tree > /tmp/v.$tree.log 2>&1
    echo "bench all $tree rc=$? ${SECONDS}s"
  done
  python $D/variants_ab.py $OUT/variants.txt /tmp/v/start this=/tmp/v/this
  PYTHONPATH=$PWD/src python $S8/suite.py 8 $((585 - SECONDS)) tests
  ;;
prof)
  for w in .peers/s/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
  [ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
  PYTHONPATH=$PWD/src:/tmp/peers timeout 300 python benchmarks/scripts/profile_host.py $OUT/profile 2>&1 | tail -40
  ;;
se)
  bash $S8/s8.sh eager | grep -v "^done"
  PYTHONPATH=$PWD/src python $S8/suite.py 8 $((585 - SECONDS)) tests
  ;;
suite)
  PYTHONPATH=$PWD/src python $S8/suite.py 8 560 tests
  ;;
esac
echo "done ${SECONDS}s"
