#!/usr/bin/env bash
# On the lent GPU machine: install test wheels carried in .wheels, run the whole test
# suite on the GPU, the self-check, and the config sweep. Logs go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/wh && python3 -m pip install -q --no-index --no-deps --target /tmp/wh .wheels/*.whl
export PYTHONPATH=$PWD/src:/tmp/wh${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee $OUT/pytest.log | tail -25
python3 -m qknorm.cli selfcheck 2>&1 | tee $OUT/selfcheck.log
[ "${SWEEP:-1}" = 1 ] && python3 benchmarks/scripts/sweep_configs.py $OUT/sweep.csv 2>&1 | tee $OUT/sweep.log
