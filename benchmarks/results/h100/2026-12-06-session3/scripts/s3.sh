#!/usr/bin/env bash
# Device calls of session 3 (2026-12-06), from the repository root.
#   a: SAFE_RANGE A/B (carry .baseline3 made by make_copy.sh ... qknorm_off safe_off), host profile,
#      eager bench vs SGLang, g40 check                                 carry [".peers/s", ".baseline3"]
#   t: GPU pytest in two parts                                           carry [".peers/s"]
set -uo pipefail
mkdir -p /tmp/peers && pip install -q --no-deps --target /tmp/peers .peers/s/*.whl >/dev/null 2>&1
tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
export PYTHONPATH=$PWD/src:/tmp/peers
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
S=benchmarks/results/h100/2026-12-06-session3/scripts; T=benchmarks/scripts
S2=benchmarks/results/h100/2026-12-06-session2/scripts
P="python -m pytest -q -p no:cacheprovider --tb=line -rf"
B="python -m qknorm.cli bench --no-plots --variants none"
keep() { cp /tmp/b/$1/summary.md $OUT/$1.summary.md 2>/dev/null; cp /tmp/b/$1/results.csv $OUT/$1.csv 2>/dev/null; }
case "${1:-a}" in
a)
  SECONDS=0
  timeout 100 $P tests/test_native.py tests/ops/test_plan.py tests/ops/test_rms_norm.py > $OUT/pytest-native.log 2>&1
  echo "native tests rc=$? ${SECONDS}s"; tail -3 $OUT/pytest-native.log
  rm -rf /tmp/b; timeout 80 $B --preset qwen3-8b --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*' \
    --out /tmp/b/eager > $OUT/eager.log 2>&1; echo "eager rc=$? ${SECONDS}s"; keep eager
  grep -E "^\|" $OUT/eager.summary.md | head -30
  timeout 110 python $T/profile_host.py $OUT/profile > $OUT/profile.log 2>&1; echo "profile rc=$? ${SECONDS}s"
  grep -E "T=|floors" $OUT/profile.log | head -30
  PYTHONPATH=$PYTHONPATH:$PWD/.baseline3 QKNORM_SAFE_RANGE=1 OUT=$OUT timeout 250 \
    python benchmarks/scripts/ab_graph.py qknorm_off safe > $OUT/ab.log 2>&1; echo "ab rc=$? ${SECONDS}s"; tail -2 $OUT/ab.log
  ;;
t)
  SECONDS=0
  timeout 50 python $S2/g40_fp32.py > $OUT/g40.log 2>&1; echo "g40 rc=$? ${SECONDS}s"; tail -3 $OUT/g40.log
  timeout 270 $P tests/test_invariance.py tests/kernels > $OUT/pytest-kernels.log 2>&1; echo "kernels rc=$? ${SECONDS}s"; tail -4 $OUT/pytest-kernels.log
  timeout 250 $P tests --ignore=tests/kernels --ignore=tests/test_invariance.py --ignore=tests/distributed \
    --deselect tests/test_command_line.py > $OUT/pytest-rest.log 2>&1; echo "rest rc=$? ${SECONDS}s"; tail -4 $OUT/pytest-rest.log
  ;;
r)  # the peer tests with the compiled parts off (does SGLang's illegal access come without them?), then the
   # rest suite without the peers on the path (the compiled parts on), with the fixed prologue test
  SECONDS=0
  QKNORM_NATIVE=0 timeout 60 $P tests/bench/test_peers.py > $OUT/pytest-peers-nonative.log 2>&1
  echo "peers native=0 rc=$? ${SECONDS}s"; grep -E "^FAILED|passed|failed|illegal" $OUT/pytest-peers-nonative.log | cut -c1-200 | tail -8
  PYTHONPATH=$PWD/src timeout 170 $P tests --ignore=tests/kernels --ignore=tests/test_invariance.py \
    --ignore=tests/distributed --deselect tests/test_command_line.py > $OUT/pytest-rest-nopeers.log 2>&1
  echo "rest (no peers) rc=$? ${SECONDS}s"; grep -E "^FAILED|passed|failed" $OUT/pytest-rest-nopeers.log | cut -c1-200 | tail -25
  PYTHONPATH=$PWD/src timeout 40 $P tests/kernels/test_qk_norm_rope_cache.py -k slots_past > $OUT/pytest-slots.log 2>&1
  echo "slots rc=$? ${SECONDS}s"; tail -1 $OUT/pytest-slots.log
  rm -rf /tmp/b; timeout 55 $B --preset qwen3-8b --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*' \
    --out /tmp/b/eager > $OUT/eager.log 2>&1; echo "eager rc=$? ${SECONDS}s"; keep eager
  grep -E "^\| qwen3" $OUT/eager.summary.md | head -3
  ;;
esac
echo done
