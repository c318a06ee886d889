#!/usr/bin/env bash
# Device call 1 of 2: keep bundle a of the peers on the machine, then the GPU tests with the
# shipped H200 table present (dispatcher picks from it).
set -uo pipefail
mkdir -p /root/peers && cp .peers/a/* /root/peers/
export PYTHONPATH=$PWD/src
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
timeout 500 python -m pytest -q -x -p no:cacheprovider tests/test_invariance.py tests/ops tests/kernels \
  > $OUT/gpu-pytest.log 2>&1; echo "pytest rc=$?"; tail -3 $OUT/gpu-pytest.log
