"""Time every candidate KernelConfig of qknorm on a few shapes (CUDA-graph replay, warm L2
for small inputs). Prints one line per (case, config) and the best per case.
Usage: python benchmarks/scripts/sweep_configs.py [out.csv]"""
import csv
import sys

import torch
import triton.testing as tt

import qknorm
from qknorm.dispatch import candidate_configs, choose_config


def copy_bw():
    n = 1 << 28
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = tt.do_bench(lambda: b.copy_(a), warmup=50, rep=200, return_mode="median")
    return 2 * n / ms / 1e6  # GB/s


def cases():
    for t in (1, 64, 512, 4096, 16384):
        yield "qk", t, 128, (32, 8)
    for t in (1, 64, 512, 4096, 16384):
        yield "qk", t, 256, (16, 2)
    for t in (1, 64, 1024, 16384):
        yield "rms", t, 4096, None
        yield "add", t, 8192, None


def build(kind, t, d, heads):
    dt = torch.bfloat16
    if kind == "qk":
        hq, hk = heads
        qkv = torch.randn(t, (hq + 2 * hk) * d, device="cuda", dtype=dt)
        q = qkv[:, : hq * d].view(t, hq, d)
        k = qkv[:, hq * d:(hq + hk) * d].view(t, hk, d)
        qw = torch.randn(d, device="cuda", dtype=dt)
        kw = torch.randn(d, device="cuda", dtype=dt)
        nbytes = 2 * (q.numel() + k.numel()) * 2
        return (lambda cfg: qknorm.qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k, config=cfg)), \
            "qk_rms_norm", t * (hq + hk), nbytes
    x = torch.randn(t, d, device="cuda", dtype=dt)
    w = torch.randn(d, device="cuda", dtype=dt)
    if kind == "rms":
        return (lambda cfg: qknorm.rms_norm(x, w, out=x, config=cfg)), "rms_norm", t, 2 * x.numel() * 2
    r = torch.randn(t, d, device="cuda", dtype=dt)
    return (lambda cfg: qknorm.fused_add_rms_norm(x, r, w, config=cfg)), "fused_add_rms_norm", t, 4 * x.numel() * 2


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    bw = copy_bw()
    print(f"device {torch.cuda.get_device_name()} copy bandwidth {bw:.0f} GB/s")
    rows = []
    for kind, t, d, heads in cases():
        fn, op, n_rows, nbytes = build(kind, t, d, heads)
        pick, _ = choose_config(op, torch.bfloat16, d, n_rows, "cuda")
        res = []
        for cfg in candidate_configs(op, torch.bfloat16, d, n_rows, "cuda"):
            fn(cfg)
            us = tt.do_bench_cudagraph(lambda: fn(cfg), rep=30, return_mode="median") * 1e3
            res.append((us, cfg))
            rows.append(dict(kind=kind, tokens=t, d=d, config=cfg.name, us=round(us, 3),
                             gbps=round(nbytes / us / 1e3, 1), pick=int(cfg == pick)))
        res.sort(key=lambda r: r[0])
        pick_us = next(u for u, c in res if c == pick) if any(c == pick for _, c in res) else float("nan")
        print(f"{kind:4s} T={t:6d} D={d:5d} best {res[0][1].name:16s} {res[0][0]:8.2f}us "
              f"({nbytes / res[0][0] / 1e3:6.0f} GB/s)  pick {pick.name:16s} {pick_us:8.2f}us  "
              f"2nd {res[1][1].name} {res[1][0]:.2f}")
    if out:
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
