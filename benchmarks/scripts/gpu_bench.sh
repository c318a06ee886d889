#!/usr/bin/env bash
# Device call after `cp .peers/a/* /root/peers/` (see ../shared/device/stage_peers.sh):
# install the peers (once per warm machine) and the test wheels, then run what the
# arguments name: `tests`, `bench:<name>:<qknorm bench args>` (bench output under
# $OUT/<name>), or `launch` (launch overhead script). Each bench step runs under
# `timeout` so that a long one stops cleanly and keeps its rows.
set -uo pipefail
export PYTHONUNBUFFERED=1
if [ ! -f /tmp/peers/.installed ]; then
  cp .peers/b/* /root/peers/ 2>/dev/null; source /root/peers/install.sh && touch /tmp/peers/.installed
  mkdir -p /tmp/wh && python3 -m pip install -q --no-index --no-deps --target /tmp/wh .wheels/*.whl
fi
# what install.sh exports, again for later calls on the same warm machine
export PYTHONPATH=/tmp/peers:/tmp/peers/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
export FLASHINFER_CUDA_ARCH_LIST=${FLASHINFER_CUDA_ARCH_LIST:-9.0a}
export PYTHONPATH=$PWD/src:$PYTHONPATH:/tmp/wh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
for step in "$@"; do
  case "$step" in
    tests) python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee $OUT/pytest.log | tail -25 ;;
    launch) python3 benchmarks/scripts/launch_overhead.py $OUT/launch_overhead.csv 2>&1 | tee $OUT/launch_overhead.log ;;
    bench:*) rest=${step#bench:}; name=${rest%%:*}; args=${rest#*:}; budget=${BENCH_SECONDS:-300}
      echo "== qknorm bench $args (timeout ${budget}s) -> $OUT/$name"
      timeout -s TERM $budget python3 -m qknorm.cli bench $args --no-plots --out $OUT/$name 2>&1 \
        | grep -v "it/s\]$" | tail -60 > $OUT/$name.log; tail -25 $OUT/$name.log
      # one archive per step: the device tool returns a limited number of files
      tar czf $OUT/$name.tgz -C $OUT $name && rm -rf $OUT/$name ;;
  esac
done
