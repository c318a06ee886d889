"""Where the RoPE kernel's bandwidth goes at 16384 tokens (issue 16: >= 95% of copy bandwidth wanted, ~87% seen).

bf16, in place on a packed QKV buffer, CUDA-graph replay, two input sets rotated (each set's Q+K is
past L2 already: 168 MB for Qwen3-8B). Bytes = Q and K read once and written once. Rows:
  copy512   the bench's copy yardstick (512 MB contiguous device copy)
  strided   torch copy of the Q+K region between two packed buffers (the same strided bytes, no math)
  qk        qk_rms_norm in place (the dispatcher's pick)
  rope ...  qk_rms_norm_rope in place: the default, then forms x configs, positions random / all zero
Writes $OUT/rope_bw.txt (and .json). Usage: PYTHONPATH=$PWD/src python rope_bw.py [T]
"""
import json
import os
import sys

import torch

import qknorm
from qknorm import KernelConfig, dispatch
from qknorm.bench.timing import copy_gbps, time_graph

OUT = os.environ.get("OUT", ".")
T = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
dev = "cuda"
log = open(os.path.join(OUT, "rope_bw.txt"), "w")
rows = []


def say(s):
    print(s, flush=True)
    log.write(s + "\n")
    log.flush()


copy = copy_gbps(dev)
say(f"{torch.cuda.get_device_name()} torch {torch.__version__} T={T} copy {copy:.0f} GB/s")


def sets(hq, hkv, d, n=2, zero_pos=False):
    out = []
    for i in range(n):
        g = torch.Generator(device=dev).manual_seed(i)
        qkv = torch.randn(T, (hq + 2 * hkv) * d, device=dev, dtype=torch.bfloat16, generator=g)
        q, k = qkv[:, :hq * d].view(T, hq, d), qkv[:, hq * d:(hq + hkv) * d].view(T, hkv, d)
        pos = torch.zeros(T, dtype=torch.long, device=dev) if zero_pos else \
            torch.randint(0, 40960, (T,), device=dev, generator=g)
        out.append((qkv, q, k, pos))
    return out


def point(name, fns, nbytes):
    try:
        us = time_graph(fns)
    except Exception as e:  # a config the kernel refuses
        say(f"  {name:40s} failed: {type(e).__name__}: {str(e)[:120]}")
        return
    gbs = nbytes / us / 1e3
    rows.append({"name": name, "us": us, "gbps": gbs, "pct_copy": 100 * gbs / copy})
    say(f"  {name:40s} {us:9.2f} us {gbs:7.0f} GB/s {100 * gbs / copy:6.1f}% of copy")


for hq, hkv, d, rot in ((32, 8, 128, 128), (16, 2, 256, 64), (64, 4, 128, 128)):
    say(f"Hq={hq} Hkv={hkv} D={d} rotary={rot}")
    S, Z = sets(hq, hkv, d), sets(hq, hkv, d, zero_pos=True)
    qw = torch.randn(d, device=dev, dtype=torch.bfloat16)
    cs = torch.randn(40960, rot, device=dev)
    nbytes = 2 * T * (hq + hkv) * d * 2
    other = [torch.empty_like(s[0]) for s in S]
    point("strided copy of Q+K", [lambda s=s, o=o: o[:, :(hq + hkv) * d].copy_(s[0][:, :(hq + hkv) * d])
                                  for s, o in zip(S, other)], nbytes)
    point("qk_rms_norm", [lambda s=s: qknorm.qk_rms_norm(s[1], s[2], qw, qw, q_out=s[1], k_out=s[2]) for s in S], nbytes)

    def rope(sets_, cfg=None):
        return [lambda s=s: qknorm.qk_rms_norm_rope(s[1], s[2], qw, qw, cs, s[3], rotary_dim=rot, q_out=s[1],
                                                    k_out=s[2], config=cfg) for s in sets_]
    point("rope default", rope(S), nbytes)
    point("rope default, positions 0", rope(Z), nbytes)
    say("  " + qknorm.explain(S[0][1], S[0][2], op="qk_rms_norm_rope", rotary_dim=rot, top=0).replace("\n", "\n  "))
    bd = 1 << (d - 1).bit_length()
    for form in ("split", "load"):
        dispatch.ROPE_ROW_FORM = form
        dispatch.reset()
        point(f"rope {form} default", rope(S), nbytes)
        for r in (1, 2, 4, 8, 16):
            for w in (1, 2, 4, 8):
                if r * bd > 8192 or (r * bd) // (32 * w) < 4:
                    continue
                point(f"rope {form} r{r} w{w}", rope(S, KernelConfig(rows=r, block_d=bd, num_warps=w)), nbytes)
        for r, w in ((4, 4), (8, 4)):
            point(f"rope {form} r{r} w{w} persistent", rope(S, KernelConfig(rows=r, block_d=bd, num_warps=w,
                                                                            persistent=True)), nbytes)
    dispatch.ROPE_ROW_FORM = "auto"
    dispatch.reset()
    del S, Z, other
    torch.cuda.empty_cache()
json.dump(rows, open(os.path.join(OUT, "rope_bw.json"), "w"), indent=1)
