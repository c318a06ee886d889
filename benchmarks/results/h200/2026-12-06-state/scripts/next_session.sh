#!/usr/bin/env bash
# The next device session's first two calls (H200, ~5 min each): everything today's CPU-only work
# needs measured.  bash next_session.sh 1   then   bash next_session.sh 2 carry [".peers/s", ".baseline2"] (.peers/s from stage_peers.sh: tvm_ffi and
# torch_c_dlpack_ext wheels + sglang-jit.tgz; .baseline2 from ab_next.sh prepare).
# Bench folders go to /tmp; only summaries, CSVs and logs are copied to $OUT (the reply drops
# files past a count).
set -uo pipefail
mkdir -p /tmp/peers && pip install -q --no-deps --target /tmp/peers .peers/s/*.whl >/dev/null 2>&1
tar -xzf .peers/s/sglang-jit.tgz -C /tmp/peers
export PYTHONPATH=$PWD/src:/tmp/peers:$PWD/.baseline2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/gpu.txt
keep() { cp /tmp/b/$1/summary.md $OUT/$1.summary.md 2>/dev/null; cp /tmp/b/$1/results.csv $OUT/$1.csv 2>/dev/null; }
B="python -m qknorm.cli bench --no-plots --variants none"
PART=${1:-1}
if [ "$PART" = 1 ]; then
# 1. correctness on the GPU: quant (fixed tests), invariance, kernels, ops
timeout 150 python -m pytest -q --tb=line -rf -p no:cacheprovider tests/test_invariance.py tests/kernels tests/ops \
  > $OUT/gpu-pytest.log 2>&1; echo "pytest rc=$?"; tail -3 $OUT/gpu-pytest.log
# 2. today's kernel changes (row layout, constexpr width) against 43d3f52, same process
OUT=$OUT timeout 120 python benchmarks/scripts/ab_graph.py qknorm_before kernels-2026-12-06 \
  > $OUT/ab.log 2>&1; echo "ab rc=$?"
# 4. non-power-of-two widths: exact tiles in registers (KernelConfig.chunk_mode) vs the padded tile vs SGLang
timeout 90 python benchmarks/results/h200/2026-12-06-rms-lean/scripts/lean.py $OUT/chunks chunks > $OUT/chunks.log 2>&1
echo "chunks rc=$?"; grep CHUNKS $OUT/chunks.log | head -20
else
# 3. the benches
timeout 100 $B --preset qwen3-8b,qwen3-next --mode graph --tokens 1,2,4,8,16,64,256,1024,4096,16384 \
  --impl 'qknorm,sglang*' --out /tmp/b/models > $OUT/models.log 2>&1; keep models
timeout 60 $B --preset qwen3-8b --mode eager --tokens 1,16,64 --impl 'qknorm,sglang*' --out /tmp/b/eager \
  > $OUT/eager.log 2>&1; keep eager
timeout 80 $B --preset quant --mode graph --tokens 1,16,128,1024,4096,16384 --impl 'qknorm,torch*,sglang*' \
  --out /tmp/b/quant > $OUT/quant.log 2>&1; keep quant
timeout 90 $B --preset prologue --mode graph --tokens 1,16,128,1024,4096 --impl 'qknorm*,torch*,sglang*' \
  --out /tmp/b/prologue > $OUT/prologue.log 2>&1; keep prologue
timeout 60 $B --preset rope --mode graph --tokens 1,64,512,4096,16384 --impl 'qknorm,sglang*' \
  --out /tmp/b/rope > $OUT/rope.log 2>&1; keep rope   # partial rotary after choose_rope (6583730)
fi
echo done
