#!/usr/bin/env bash
# The next device session (H200 wanted; any H100/H200), from the repository root. Each mode fits one call.
#   tests   carry [".peers/s"]   GPU suite without peers on the path, quant + prologue kernel tests,
#                                the compiled-launch test (~6 min)
#   eager   carry [".peers/s"]   host profile + eager bench vs SGLang, twice (noisy host: read both) (~4 min)
#   e2e     carry [".peers/l"]   issue 17: Qwen3-8B eager decode, unpatched / qknorm / liger (~5 min)
#   rope    carry [".peers/s"]   issue 16: the whole-row gather prototype vs qknorm vs SGLang (~4 min)
set -uo pipefail
mkdir -p /tmp/peers
for w in .peers/s/*.whl .peers/l/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
[ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
P="python -m pytest -q -p no:cacheprovider --tb=line -rf"
B="python -m qknorm.cli bench --no-plots --variants none"
S2=benchmarks/results/h100/2026-12-06-session2/scripts
keep() { cp /tmp/b/$1/summary.md $OUT/$1.summary.md 2>/dev/null; cp /tmp/b/$1/results.csv $OUT/$1.csv 2>/dev/null; }
SECONDS=0
case "${1:-tests}" in
tests)
  PYTHONPATH=$PWD/src timeout 250 $P tests/test_native.py tests/test_invariance.py tests/kernels/test_rms_norm_quant.py \
    tests/kernels/test_qk_norm_rope_cache.py tests/ops > $OUT/pytest-a.log 2>&1; echo "a rc=$? ${SECONDS}s"; tail -6 $OUT/pytest-a.log
  PYTHONPATH=$PWD/src timeout 200 $P tests --ignore=tests/kernels --ignore=tests/ops --ignore=tests/test_invariance.py \
    --ignore=tests/distributed --deselect tests/test_command_line.py > $OUT/pytest-b.log 2>&1; echo "b rc=$? ${SECONDS}s"; tail -6 $OUT/pytest-b.log
  ;;
eager)
  export PYTHONPATH=$PWD/src:/tmp/peers
  timeout 100 python benchmarks/scripts/profile_host.py $OUT/profile --grad > $OUT/profile.log 2>&1; echo "profile rc=$?"
  grep -E "T=|floors" $OUT/profile.log | head -20
  for i in 1 2; do rm -rf /tmp/b; timeout 60 $B --preset qwen3-8b --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*' \
    --out /tmp/b/eager > $OUT/eager$i.log 2>&1; echo "eager$i rc=$? ${SECONDS}s"; cp /tmp/b/eager/summary.md $OUT/eager$i.summary.md
    grep -E "^\| qwen3" $OUT/eager$i.summary.md | head -3; done
  ;;
e2e)
  MODELS=qwen3-8b bash $S2/e2e.sh eager
  ;;
rope)
  export PYTHONPATH=$PWD/src:/tmp/peers
  OUT=$OUT timeout 400 python $S2/rope_gather_proto.py > $OUT/rope_gather.log 2>&1; echo "rope rc=$?"; tail -25 $OUT/rope_gather.log
  ;;
esac
echo done
