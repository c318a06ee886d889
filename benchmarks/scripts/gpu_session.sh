#!/usr/bin/env bash
# Second device call of a session (after `cp .peers/a/* /root/peers/` in the first):
# install the peers and the test wheels, then run the GPU test suite and the launch
# overhead measurement. Logs and CSVs go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
cp .peers/b/* /root/peers/ && source /root/peers/install.sh
mkdir -p /tmp/wh && python3 -m pip install -q --no-index --no-deps --target /tmp/wh .wheels/*.whl
export PYTHONPATH=$PWD/src:$PYTHONPATH:/tmp/wh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee $OUT/pytest.log | tail -30
python3 benchmarks/scripts/launch_overhead.py $OUT/launch_overhead.csv 2>&1 | tee $OUT/launch_overhead.log
