#!/usr/bin/env bash
# Session 10 device calls (H200 or H100), from the repository root. Each mode fits one 600 s call.
#   warps [TREES]  carry [".baseline3"]  issue 11: `qknorm bench --no-plots --preset qwen3-8b --impl 'qknorm,qknorm[*]'
#          --variants all` of each build of make_variants.py here (default start_w,this_w,branch_w,plain_w), one
#          process each; ../../2026-12-07-session9/scripts/variants_ab.py compares each build's pick and fastest
#          config with start_w's pick (= start's: the added candidates do not move a pick)
#   tune   `qknorm tune --merge <shipped table> --max-seconds 300` for this GPU (the table goes to $OUT and replaces
#          the shipped one in this copy), then issue 11's criterion with it: start (.baseline3/start) and this tree,
#          `qknorm bench --no-plots --preset qwen3-8b --impl qknorm --variants none`, interleaved x2 (ab.txt)
#   compile  issue 17: benchmarks/scripts/hf_decode.py --model ${MODEL:-qwen3-8b} --compile (reduce-overhead),
#          unpatched then qknorm (apply_qknorm's default under_compile="inductor") then qknorm_kernels, batches
#          ${BATCHES:-1,8}, 3 rounds, each variant started only while 90 s of ${BUDGET:-340} s are left
#   next   carry [".baseline3"]  for the next session, on this tree: the whole suite (270 s cap), then
#          bf16 criterion A/B start vs this, `qknorm bench --no-plots --preset qwen3-8b --impl qknorm --variants none`,
#          interleaved x2
#   eager  carry [".baseline3", ".peers/s"]  the host change: `qknorm bench --mode eager --tokens 1,16,64
#          --preset qwen3-8b,qwen3-next --impl 'qknorm,sglang*'` of .baseline3/this_w (b148ddc's host code) and this
#          tree, interleaved x2, SGLang's JIT kernels in every run (ab-eager: qknorm's before/after; summaries: vs SGLang);
#          then the fp16 A/B this_w (b148ddc: before the fp16 compile) vs this, the criterion's bench with --dtype fp16
#   suite_eager  carry [".baseline3", ".peers/s"]  the suite (240 s cap), then eager without the fp16 A/B (eager_only)
#   suite_qk  carry [".peers/s"]  the suite (230 s cap), then qkpeers (qwen3-8b, qwen3-next; T = 1..16384) until 560 s
#   qkpeers  carry [".peers/s"]  `qknorm bench --variants top --preset qwen3-8b,qwen3-next,qwen3-235b --impl 'qknorm,sglang*'`
#          at T = 1..16384 (graph replay, warm L2): summary and CSV to $OUT (a call brings back 8 files at most)
#   final  carry [".baseline3"]  ../../2026-12-07-session9/scripts/s9.sh final (criterion A/B, then the suite)
set -uo pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
S9=benchmarks/results/h200/2026-12-07-session9/scripts
SECONDS=0
BENCH='import sys; from qknorm.cli import main; sys.exit(main(sys.argv[1:]))'
# ab OUTFILE BASE [bench args]: `qknorm bench --no-plots --variants none [bench args]` of .baseline3/BASE and this
# tree, interleaved x2 (best of 2 per case: ../../2026-12-07-session6/scripts/bench_ab.py)
ab() {
  local out=$1 base=$2 i tree; shift 2
  for i in 1 2; do
    for tree in $base this; do
      [ $tree = this ] && PP=$PWD/src || PP=$PWD/.baseline3/$tree
      PYTHONPATH=$PP:/tmp/peers timeout 140 python -c "$BENCH" bench --no-plots --variants none "$@" \
        --out /tmp/ab/$out-$tree$i > /tmp/ab.$out-$tree$i.log 2>&1
      echo "bench $out $tree$i rc=$? ${SECONDS}s"
    done
  done
  python benchmarks/results/h200/2026-12-07-session6/scripts/bench_ab.py $OUT/$out.txt /tmp/ab/$out-${base}1 \
    /tmp/ab/$out-this1 /tmp/ab/$out-${base}2 /tmp/ab/$out-this2
  tail -3 $OUT/$out.txt
}
# SGLang's JIT kernels (carry .peers/s) into /tmp/peers
sglang_peers() {
  for w in .peers/s/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
  [ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
}
case "${1:-warps}" in
warps)
  TREES=${2:-start_w,this_w,branch_w,plain_w}
  for tree in ${TREES//,/ }; do
    PYTHONPATH=$PWD/.baseline3/$tree timeout 140 python -c "$BENCH" bench --no-plots --preset qwen3-8b \
      --impl 'qknorm,qknorm[*]' --variants all --out /tmp/v/$tree > /tmp/v.$tree.log 2>&1
    echo "bench $tree rc=$? ${SECONDS}s"; tail -2 /tmp/v.$tree.log
    cp /tmp/v/$tree/results.csv $OUT/$tree.csv 2>/dev/null
  done
  base=${TREES%%,*}
  python $S9/variants_ab.py $OUT/variants.txt /tmp/v/$base \
    $(for t in ${TREES//,/ }; do [ $t = $base ] || echo $t=/tmp/v/$t; done)
  cat $OUT/variants.txt | tail -45
  ;;
tune)
  K=$(PYTHONPATH=src python -c "import torch; from qknorm.tuned_table import gpu_key; print(gpu_key(torch.cuda.get_device_name()))")
  T=src/qknorm/tuned/$K.json
  M=""; [ -e $T ] && M="--merge $T"
  PYTHONPATH=$PWD/src timeout 300 python -c "$BENCH" tune $M --out /tmp/tuned/$K.json --max-seconds ${TUNE_S:-250} > $OUT/tune.log 2>&1
  echo "tune rc=$? ${SECONDS}s"; tail -4 $OUT/tune.log
  cp /tmp/tuned/$K.json $OUT/ && cp /tmp/tuned/$K.json $T
  ab ab start --preset qwen3-8b --impl qknorm
  ;;
compile)
  M=${MODEL:-qwen3-8b}
  export PYTHONPATH=$PWD/src  # (call 5 ran without it: its qknorm runs found no qknorm)
  for v in unpatched qknorm qknorm_kernels; do
    left=$((${BUDGET:-340} - SECONDS)); [ $left -lt 90 ] && { echo "no time for $v"; break; }
    timeout $left python benchmarks/scripts/hf_decode.py --model $M --variant $v --compile --batches ${BATCHES:-1,8} \
      --rounds 3 --out $OUT/e2e.jsonl > $OUT/compile.$v.log 2>&1; echo "compile $v rc=$? ${SECONDS}s"
    tail -3 $OUT/compile.$v.log | cut -c1-300
  done
  [ -s $OUT/e2e.jsonl ] && python benchmarks/scripts/hf_decode_report.py $OUT/e2e.jsonl
  ;;
next)
  PYTHONPATH=$PWD/src timeout 280 python benchmarks/results/h200/2026-12-07-session8/scripts/suite.py 8 270 tests
  cp src/qknorm/tuned/*.json .baseline3/this_w/qknorm/tuned/  # the same table in both: the A/B is the kernels'
  ab ab-bf16 start --preset qwen3-8b --impl qknorm
  ;;
eager)
  bash $0 eager_only
  ab ab-fp16 this_w --preset qwen3-8b --impl qknorm --dtype fp16
  ;;
final)
  bash $S9/s9.sh final
  ;;
suite_eager)
  PYTHONPATH=$PWD/src timeout 250 python benchmarks/results/h200/2026-12-07-session8/scripts/suite.py 8 240 tests
  bash $0 eager_only
  ;;
suite_qk)
  PYTHONPATH=$PWD/src timeout 240 python benchmarks/results/h200/2026-12-07-session8/scripts/suite.py 8 230 tests
  BUDGET=$((560 - SECONDS)) PRESETS=qwen3-8b,qwen3-next TOKENS=1,4,16,64,256,1024,4096,16384 bash $0 qkpeers
  ;;
qkpeers)
  sglang_peers
  PYTHONPATH=$PWD/src:/tmp/peers timeout ${BUDGET:-500} python -c "$BENCH" bench --no-plots --variants top \
    --preset ${PRESETS:-qwen3-8b,qwen3-next,qwen3-235b} --impl 'qknorm,sglang*' --tokens ${TOKENS:-1,2,4,8,16,64,256,1024,4096,16384} \
    --out /tmp/qkpeers > /tmp/qkpeers.log 2>&1
  echo "qkpeers rc=$? ${SECONDS}s"; tail -5 /tmp/qkpeers.log
  cp /tmp/qkpeers/summary.md $OUT/qkpeers-summary.md; cp /tmp/qkpeers/results.csv $OUT/qkpeers-results.csv  # 8 files come back
  ;;
eager_only)
  sglang_peers
  cp src/qknorm/tuned/*.json .baseline3/this_w/qknorm/tuned/
  ab eager this_w --preset qwen3-8b,qwen3-next --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*'
  for f in /tmp/ab/eager-*/summary.md; do cp $f $OUT/$(basename $(dirname $f)).summary.md; done
  ;;
esac
echo "done ${SECONDS}s"
