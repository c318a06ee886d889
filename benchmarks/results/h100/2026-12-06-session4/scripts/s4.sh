#!/usr/bin/env bash
# Session 4 device calls (H200 wanted; any H100/H200), from the repository root, carry [".peers/s"]:
#   a   GPU tests of the express call and the compiled launch + host profile + eager bench vs SGLang, twice
#   p   host profile only (profile_host.py --grad)
#   b   the rest of the GPU suite (no peers on the path)
set -uo pipefail
mkdir -p /tmp/peers
for w in .peers/s/*.whl; do [ -e "$w" ] && pip install -q --no-deps --target /tmp/peers "$w" >/dev/null 2>&1; done
[ -e .peers/s/sglang-jit.tgz ] && tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers 2>/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
git log --oneline | head -1 | tee $OUT/tree.txt
P="python -m pytest -q -p no:cacheprovider --tb=short -rf"
B="python -m qknorm.cli bench --no-plots --variants none"
SECONDS=0
case "${1:-a}" in
a)
  PYTHONPATH=$PWD/src timeout 90 $P tests/test_native.py > $OUT/pytest-a.log 2>&1; echo "a rc=$? ${SECONDS}s"
  tail -5 $OUT/pytest-a.log
  export PYTHONPATH=$PWD/src:/tmp/peers
  for i in 1 2; do rm -rf /tmp/b; timeout 80 $B --preset qwen3-8b --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*' \
    --out /tmp/b/eager > $OUT/eager$i.log 2>&1; echo "eager$i rc=$? ${SECONDS}s"; cp /tmp/b/eager/summary.md $OUT/eager$i.summary.md
    grep -E "^- eager" $OUT/eager$i.summary.md | head -9; done
  timeout 60 python benchmarks/scripts/profile_host.py $OUT/profile --grad > $OUT/profile.log 2>&1; echo "profile rc=$? ${SECONDS}s"
  grep -E "T= 16|floors" $OUT/profile.log | head -8
  if [ $SECONDS -lt 170 ]; then rm -rf /tmp/b; timeout 100 $B --preset rope,prologue,quant --mode eager --tokens 16 \
    --impl 'qknorm,sglang*,torch' --out /tmp/b/eager > $OUT/eager3.log 2>&1; echo "eager3 rc=$? ${SECONDS}s"
    cp /tmp/b/eager/summary.md $OUT/eager3.summary.md; grep -E "^- eager" $OUT/eager3.summary.md | head -30; fi
  ;;
p)
  export PYTHONPATH=$PWD/src
  timeout 100 python benchmarks/scripts/profile_host.py $OUT/profile --grad > $OUT/profile.log 2>&1; echo "profile rc=$? ${SECONDS}s"
  grep -E "T=|floors" $OUT/profile.log | head -20
  ;;
b)
  PYTHONPATH=$PWD/src timeout 400 $P tests --ignore=tests/ops --ignore=tests/test_native.py --ignore=tests/distributed --deselect tests/test_command_line.py > $OUT/pytest-b.log 2>&1
  echo "b rc=$? ${SECONDS}s"; tail -8 $OUT/pytest-b.log
  ;;
esac
echo done
