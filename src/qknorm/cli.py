"""``qknorm`` command line: ``bench``, ``explain``, ``selfcheck``."""
from __future__ import annotations

import argparse
import sys


def _explain(argv: list[str]) -> int:
    import torch

    from .dispatch import explain_config
    p = argparse.ArgumentParser(prog="qknorm explain",
                                description="Print which kernel variant and config a call would use, and why.")
    p.add_argument("--op", choices=["qk", "rms", "add"], default="qk")
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--heads", default="32,8", help="Q,K heads for --op qk (e.g. 32,8)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=4096, help="normalised width for --op rms/add")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    a = p.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    device = "cuda" if torch.cuda.is_available() else None
    if a.op == "qk":
        hq, hk = (int(h) for h in a.heads.split(","))
        print(explain_config("qk_rms_norm", dtype, a.head_dim, a.tokens * (hq + hk), device))
    else:
        op = "rms_norm" if a.op == "rms" else "fused_add_rms_norm"
        print(explain_config(op, dtype, a.hidden, a.tokens, device))
    return 0


def _selfcheck(argv: list[str]) -> int:
    from .selfcheck import run
    argparse.ArgumentParser(prog="qknorm selfcheck", description="Run each op once against fp64.").parse_args(argv)
    return 0 if run() else 1


def _bench(argv: list[str]) -> int:
    try:
        from .bench.cli import main as bench_main
    except ImportError as e:  # the benchmark package is optional at this stage
        print(f"qknorm bench is not available ({e}); running the self-check instead")
        return _selfcheck([])
    return bench_main(argv)


COMMANDS = {"bench": _bench, "explain": _explain, "selfcheck": _selfcheck}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: qknorm {bench,explain,selfcheck} [options]\n"
              "  bench      time qknorm against PyTorch, torch.compile, FlashInfer, Quack, Liger\n"
              "  explain    which kernel variant a call uses, and why\n"
              "  selfcheck  run each op once and print its error against fp64")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
