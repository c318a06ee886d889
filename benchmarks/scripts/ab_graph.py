"""Same-run, interleaved comparison of this checkout's qknorm against another build imported
under another name, CUDA-graph replay (device time), bf16, Qwen3-8B shapes and two wider ones.

Usage:  PYTHONPATH=$PWD/src:<dir of the other build> python ab_graph.py <other module name> <label>
Writes $OUT/ab_<label>.json and ab_<label>.txt; each point is the best of 3 medians per build,
the builds alternating. Also checks that both give the same bits on ordinary data.
"""
import argparse
import importlib
import json
import os
import statistics
import sys

import torch

import qknorm
from qknorm.bench.timing import time_graph

_p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
_p.add_argument("other", help="module name of the other build (importable through PYTHONPATH)")
_p.add_argument("label", help="names the output files: $OUT/ab_<label>.json and .txt")
_a = _p.parse_args()
if not torch.cuda.is_available():
    sys.exit("ab_graph.py: needs a CUDA GPU (CUDA-graph replay)")
other = importlib.import_module(_a.other)
label = _a.label
OUT = os.environ.get("OUT", ".")
dev = "cuda"
torch.manual_seed(0)
log = open(os.path.join(OUT, f"ab_{label}.txt"), "w")


def say(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    log.write(s + "\n")
    log.flush()


def calls(m, T):
    d = 128
    g = torch.Generator(device=dev).manual_seed(T)
    r = lambda *s: torch.randn(*s, device=dev, dtype=torch.bfloat16, generator=g)  # noqa: E731
    qkv, x, res, w = r(T, 48 * d), r(T, 4096), r(T, 4096), r(4096)
    v = qkv[:, 40 * d:].view(T, 8, d)
    nb = (T + 15) // 16 + 4
    kc = torch.zeros(nb, 16, 8, d, device=dev, dtype=torch.float8_e4m3fn)
    vc = torch.zeros(nb, 16, 8, d, device=dev, dtype=torch.float8_e4m3fn)
    slots = torch.randperm(nb * 16, device=dev, generator=g)[:T]
    ks = torch.full((1,), 0.05, device=dev)
    q, k = qkv[:, :32 * d].view(T, 32, d), qkv[:, 32 * d:40 * d].view(T, 8, d)
    qw, kw = r(d), r(d)
    cs = torch.randn(40960, d, device=dev, generator=g)
    pos = torch.randint(0, 40960, (T,), device=dev, generator=g)
    x16, w16 = r(T, 16384), r(16384)
    qkvn = r(T, 20 * 256)
    qn, kn, wn = qkvn[:, :16 * 256].view(T, 16, 256), qkvn[:, 16 * 256:18 * 256].view(T, 2, 256), r(256)
    return {
        "rms4096": lambda: m.rms_norm(x, w, 1e-6),
        "add4096": lambda: m.fused_add_rms_norm(x, res, w, 1e-6),
        "qk32_8_128": lambda: m.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k),
        "rope32_8_128": lambda: m.qk_rms_norm_rope(q, k, qw, kw, cs, pos, 1e-6, q_out=q, k_out=k),
        "rms16384": lambda: m.rms_norm(x16, w16, 1e-6),
        "qk16_2_256": lambda: m.qk_rms_norm(qn, kn, wn, wn, 1e-6, q_out=qn, k_out=kn),
        "quant_tok4096": lambda: m.rms_norm_quant(x, w, 1e-6),
        "quant_g128": lambda: m.rms_norm_quant(x, w, 1e-6, group_size=128),
        "prologue_fp8": lambda: m.qk_norm_rope_cache(q, k, v, qw, kw, cs, pos, kc, vc, slots, 1e-6,
                                                     k_scale=ks, v_scale=ks),
    }


def same_bits(T):
    a, b = calls(qknorm, T), calls(other, T)
    ok = True
    for name in ("rms4096", "rms16384"):
        ok &= torch.equal(a[name](), b[name]())
    for name in ("qk32_8_128", "rope32_8_128", "qk16_2_256", "add4096", "quant_tok4096", "quant_g128"):
        ra, rb = a[name](), b[name]()
        ok &= all(torch.equal(u, v) for u, v in zip(ra, rb))
    return bool(ok)


say(torch.cuda.get_device_name(), "torch", torch.__version__, "other:", _a.other, "label:", label)
rows = []
for T in (1, 4, 16, 64, 256, 1024, 4096, 16384):
    say(f"T={T} same bits: {same_bits(T)}")
    fa, fb = calls(qknorm, T), calls(other, T)
    for case in fa:
        res = {"this": [], "other": []}
        for rep in range(3):
            for impl in (("this", "other") if rep % 2 == 0 else ("other", "this")):
                res[impl].append(time_graph([(fa if impl == "this" else fb)[case]]))
        a, b = min(res["this"]), min(res["other"])
        rows.append({"T": T, "case": case, "this_us": a, "other_us": b, "other_over_this": b / a,
                     "this_all": res["this"], "other_all": res["other"]})
        say(f"  {case:14s} this {a:8.3f} us  other {b:8.3f} us  other/this {b / a:6.3f}")
    torch.cuda.empty_cache()
sp = [r["other_over_this"] for r in rows]
say(f"geomean other/this {statistics.geometric_mean(sp):.4f}  min {min(sp):.4f}  max {max(sp):.4f}")
json.dump(rows, open(os.path.join(OUT, f"ab_{label}.json"), "w"), indent=1)
