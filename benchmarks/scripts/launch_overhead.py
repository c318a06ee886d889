"""Per-call host cost of qknorm launches at decode sizes, eager and under CUDA graphs.

Usage (GPU):  python benchmarks/scripts/launch_overhead.py out.csv [--quick]

Eager: back-to-back calls, one synchronize at the end of each batch, per-call time =
batch wall time / calls; the median over batches is reported. At these sizes the GPU
work per call is ~2 µs, so the number is the host cost of one call (validation,
dispatch, launch) unless the kernels are slower than the host.
Graph: the same calls captured in one CUDA graph and replayed (per-call = replay / calls,
median of replays): the GPU-side cost, which the launch path must not change.

Implementations (a missing peer is reported as skipped):
  qknorm.fast      the public function with the cached raw launcher (launch.py)
  qknorm.plain     the same, with fast launches switched off: kernel[grid](...) each call
  torch.ops        the torch.library custom op (what a torch.compile graph calls)
  flashinfer       flashinfer.norm.rmsnorm (for QK: once for Q, once for K)
  torch.mul_       x.mul_(1.0): one trivial PyTorch op, the floor of any eager launch

Shapes: Qwen3-8B (Hq=32, Hkv=8, D=128, QK norm in place on the packed QKV buffer) and
hidden=4096 (rms_norm allocating its output), bf16, tokens 1, 4, 16, 64. Run under
torch.inference_mode() as engines do. Timers, relative error and packed QKV views are the
bench's (``qknorm.bench.timing``, ``qknorm.bench.common``); ``qknorm bench --mode eager``
compares qknorm with every peer the same way, with the fast launcher on.

Why this script uses ``qknorm.launch`` (not the ops' API): it measures the launcher itself.
``launch.set_enabled`` switches fast launches off and on inside one process (the
``QKNORM_FAST_LAUNCH=0`` environment variable does it for a whole process), and
``launch.PROTOCOL``/``launch.entry_states`` say which launch protocol was found and which
specialisations run fast. All are in ``launch.__all__``; if the launcher is replaced, this
script goes with it.
"""
from __future__ import annotations

import csv
import sys

import torch

import qknorm
from qknorm import launch
from qknorm.bench.common import EPS, packed_qkv_views, rel_l2
from qknorm.bench.timing import time_eager, time_graph
from qknorm.reference import rms_norm_ref

HQ, HKV, D, HIDDEN = 32, 8, 128, 4096
TOKENS = (1, 4, 16, 64)


def eager_us(fn, calls=400, batches=9):
    """Per-call µs of back-to-back calls, median of ``batches`` (the bench's eager timer)."""
    for _ in range(50):  # warm: compile, verify, then fast launches
        fn()
    return time_eager([fn], True, batches=batches, calls=calls)


def graph_us(fn, calls=100, replays=15):
    """Per-call µs of ``calls`` calls captured in one CUDA graph (the bench's graph timer)."""
    return time_graph([fn], replays=replays, calls=calls)


def qk_views(qkv, t):
    q, k, _ = packed_qkv_views(qkv, HQ * D, HKV * D)
    return q.view(t, HQ, D), k.view(t, HKV, D)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out_csv = args[0] if args else None
    quick = "--quick" in sys.argv
    if not torch.cuda.is_available():
        print("launch_overhead: needs a CUDA GPU (host-cost numbers are meaningless on the CPU path)")
        return 0
    import triton
    dev = torch.device("cuda")
    try:
        import flashinfer
        import flashinfer.norm as fi_norm
        fi_ver = getattr(flashinfer, "__version__", "?")
    except Exception as e:  # noqa: BLE001
        fi_norm, fi_ver = None, f"not importable ({type(e).__name__})"
    torch.manual_seed(0)
    qw = torch.rand(D, device=dev, dtype=torch.bfloat16) + 0.5
    kw = torch.rand(D, device=dev, dtype=torch.bfloat16) + 0.5
    w = torch.rand(HIDDEN, device=dev, dtype=torch.bfloat16) + 0.5
    rows = []
    calls = 200 if quick else 400
    print(f"GPU {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"flashinfer {fi_ver}")

    with torch.inference_mode():
        # one call first: the launcher detects the protocol when the first kernel is made
        qknorm.rms_norm(torch.randn(2, HIDDEN, device=dev, dtype=torch.bfloat16), w, EPS)
        print(f"launch protocol: {launch.PROTOCOL} ({launch.PROTOCOL_REASON}); fast launches "
              f"{'on' if launch.enabled() else 'OFF'}")
        for t in TOKENS:
            qkv = torch.randn(t, (HQ + 2 * HKV) * D, device=dev, dtype=torch.bfloat16)
            q, k = qk_views(qkv, t)
            x = torch.randn(t, HIDDEN, device=dev, dtype=torch.bfloat16)
            # correctness first (fp64 reference), on copies
            ref_q = rms_norm_ref(q, qw, EPS, 0.0, torch.float64)
            ref_k = rms_norm_ref(k, kw, EPS, 0.0, torch.float64)
            ref_x = rms_norm_ref(x, w, EPS, 0.0, torch.float64)
            for fast in (True, False):
                launch.set_enabled(fast)
                for _ in range(3):  # compile, verify, fast
                    c = qkv.clone()
                    cq, ck = qk_views(c, t)
                    qknorm.qk_rms_norm(cq, ck, qw, kw, EPS, q_out=cq, k_out=ck)
                    y = qknorm.rms_norm(x, w, EPS)
                e = max(rel_l2(cq, ref_q), rel_l2(ck, ref_k), rel_l2(y, ref_x))
                assert e < 1e-2, f"qknorm ({'fast' if fast else 'plain'}) wrong at T={t}: rel err {e:.2e}"
            launch.set_enabled(True)

            qk_impls = {
                "qknorm.fast": lambda: qknorm.qk_rms_norm(q, k, qw, kw, EPS, q_out=q, k_out=k),
                "qknorm.plain": lambda: qknorm.qk_rms_norm(q, k, qw, kw, EPS, q_out=q, k_out=k),
                "torch.ops": lambda: torch.ops.qknorm.qk_rms_norm_(q, k, qw, kw, EPS, 0.0),
            }
            rms_impls = {
                "qknorm.fast": lambda: qknorm.rms_norm(x, w, EPS),
                "qknorm.plain": lambda: qknorm.rms_norm(x, w, EPS),
                "torch.ops": lambda: torch.ops.qknorm.rms_norm(x, w, EPS, 0.0),
            }
            if fi_norm is not None:
                qk_impls["flashinfer"] = lambda: (fi_norm.rmsnorm(q, qw, EPS, out=q), fi_norm.rmsnorm(k, kw, EPS, out=k))
                rms_impls["flashinfer"] = lambda: fi_norm.rmsnorm(x, w, EPS)
            qk_impls["torch.mul_"] = rms_impls["torch.mul_"] = lambda: x.mul_(1.0)

            for op, impls in (("qk_rms_norm", qk_impls), ("rms_norm", rms_impls)):
                for name, fn in impls.items():
                    launch.set_enabled(name != "qknorm.plain")
                    note = ""
                    try:
                        fn()
                        us = eager_us(fn, calls=calls, batches=5 if quick else 9)
                    except Exception as e:  # noqa: BLE001 - a peer that cannot run this case
                        us, note = float("nan"), f"skipped: {type(e).__name__}: {str(e)[:80]}"
                    gus = float("nan")
                    if name in ("qknorm.fast", "qknorm.plain") and not note:
                        gus = graph_us(fn)
                    rows.append(dict(op=op, tokens=t, impl=name, eager_us=round(us, 2), graph_us=round(gus, 3),
                                     note=note))
                launch.set_enabled(True)

    states = launch.entry_states()
    fast_n = sum(1 for s in states if s[3] == "fast")
    print(f"launch entries: {fast_n} fast, {len(states) - fast_n} other")
    for s in states:
        if s[3] != "fast" and s[4] != "fast launches disabled":
            print(f"  {s[0]} bits={s[2]} {s[3]}: {s[4]}")

    names = ["qknorm.fast", "qknorm.plain", "torch.ops", "flashinfer", "torch.mul_"]
    for op in ("qk_rms_norm", "rms_norm"):
        print(f"\n{op}: eager µs per call (graph µs per call)   "
              + ("[QK in place on packed QKV, FlashInfer = Q then K]" if op == "qk_rms_norm"
                 else "[allocating output]"))
        print(f"{'tokens':>6} " + " ".join(f"{n:>20}" for n in names))
        for t in TOKENS:
            cells = []
            for n in names:
                r = next((r for r in rows if r["op"] == op and r["tokens"] == t and r["impl"] == n), None)
                if r is None or r["note"]:
                    cells.append(f"{'-':>20}")
                else:
                    g = f" ({r['graph_us']:.2f})" if r["graph_us"] == r["graph_us"] else ""
                    cells.append(f"{r['eager_us']:.2f}{g}".rjust(20))
            print(f"{t:>6} " + " ".join(cells))
    skipped = {r["impl"]: r["note"] for r in rows if r["note"]}
    for k_, v_ in skipped.items():
        print(f"{k_}: {v_}")
    if out_csv:
        meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                    flashinfer=fi_ver, protocol=launch.PROTOCOL)
        with open(out_csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]) + list(meta))
            wr.writeheader()
            for r in rows:
                wr.writerow({**r, **meta})
        print(f"\nwrote {out_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
