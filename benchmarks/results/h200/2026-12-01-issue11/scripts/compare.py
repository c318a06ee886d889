"""Same-run comparison of this checkout's qknorm against main's (a768406, as qknorm_main),
CUDA-graph replay, plus GPU checks of issue 11's adversarial inputs. Output: JSON + text."""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import torch  # noqa: E402

import qknorm  # noqa: E402
import qknorm_main  # noqa: E402
from qknorm.bench.timing import time_eager, time_graph  # noqa: E402

OUT = os.environ.get("OUT", ".")
dev = "cuda"
torch.manual_seed(0)
rows = []
log = open(os.path.join(OUT, "compare.txt"), "w")


def say(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    log.write(s + "\n")
    log.flush()


def cases(T):
    d = 128
    qkv = torch.randn(T, (32 + 16) * d, device=dev, dtype=torch.bfloat16)
    q = qkv[:, :32 * d].view(T, 32, d)
    k = qkv[:, 32 * d:40 * d].view(T, 8, d)
    qw = torch.randn(d, device=dev, dtype=torch.bfloat16)
    kw = torch.randn(d, device=dev, dtype=torch.bfloat16)
    x = torch.randn(T, 4096, device=dev, dtype=torch.bfloat16)
    r = torch.randn(T, 4096, device=dev, dtype=torch.bfloat16)
    w = torch.randn(4096, device=dev, dtype=torch.bfloat16)
    cs = torch.randn(40960, d, device=dev, dtype=torch.float32)
    pos = torch.randint(0, 40960, (T,), device=dev)
    x16 = torch.randn(T, 16384, device=dev, dtype=torch.bfloat16)
    w16 = torch.randn(16384, device=dev, dtype=torch.bfloat16)
    qkvn = torch.randn(T, (16 + 4) * 256, device=dev, dtype=torch.bfloat16)
    qn = qkvn[:, :16 * 256].view(T, 16, 256)
    kn = qkvn[:, 16 * 256:18 * 256].view(T, 2, 256)
    wn = torch.randn(256, device=dev, dtype=torch.bfloat16)
    out = {}
    for name, m in (("new", qknorm), ("main", qknorm_main)):
        out[name] = {
            "rms4096": lambda m=m: m.rms_norm(x, w, 1e-6),
            "add4096": lambda m=m: m.fused_add_rms_norm(x, r, w, 1e-6),
            "qk32_8_128": lambda m=m: m.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k),
            "rope32_8_128": lambda m=m: m.qk_rms_norm_rope(q, k, qw, kw, cs, pos, 1e-6, q_out=q, k_out=k),
            "rms16384": lambda m=m: m.rms_norm(x16, w16, 1e-6),
            "qk16_2_256": lambda m=m: m.qk_rms_norm(qn, kn, wn, wn, 1e-6, q_out=qn, k_out=kn),
        }
    return out, (x, r, q, k, qkv, x16, qn, kn)


def bitwise(T):
    """new and main give the same bits on ordinary data (the fast path's numerics are unchanged)."""
    d = 128
    x = torch.randn(T, 4096, device=dev, dtype=torch.bfloat16)
    w = torch.randn(4096, device=dev, dtype=torch.bfloat16)
    a, b = qknorm.rms_norm(x, w), qknorm_main.rms_norm(x, w)
    qkv = torch.randn(T, 48 * d, device=dev, dtype=torch.bfloat16)
    q, k = qkv[:, :32 * d].view(T, 32, d), qkv[:, 32 * d:40 * d].view(T, 8, d)
    qw = torch.randn(d, device=dev, dtype=torch.bfloat16)
    qa, ka = qknorm.qk_rms_norm(q, k, qw, qw)
    qb, kb = qknorm_main.qk_rms_norm(q, k, qw, qw)
    return torch.equal(a, b) and torch.equal(qa, qb) and torch.equal(ka, kb)


mode = sys.argv[1] if len(sys.argv) > 1 else "graph"
say(torch.cuda.get_device_name(), torch.__version__, "mode", mode)
for T in (1, 4, 16, 64, 256, 1024, 4096, 16384):
    say(f"T={T} bitwise equal to main: {bitwise(T)}")
    fns, keep = cases(T)
    for case in fns["new"]:
        res = {"new": [], "main": []}
        for rep in range(3):
            for impl in (("new", "main") if rep % 2 == 0 else ("main", "new")):
                f = fns[impl][case]
                if mode == "graph":
                    res[impl].append(time_graph([f]))
                else:
                    res[impl].append(time_eager([f], True))
        new, main = min(res["new"]), min(res["main"])
        rows.append({"T": T, "case": case, "mode": mode, "new_us": new, "main_us": main, "speedup": main / new,
                     "new_all": res["new"], "main_all": res["main"]})
        say(f"  {case:14s} new {new:8.3f} us  main {main:8.3f} us  main/new {main / new:6.3f}")
    del fns, keep
    torch.cuda.empty_cache()
sp = [r["speedup"] for r in rows]
say(f"geomean main/new {statistics.geometric_mean(sp):.4f}  min {min(sp):.4f}  max {max(sp):.4f}")
json.dump(rows, open(os.path.join(OUT, f"compare_{mode}.json"), "w"), indent=1)
