"""``qknorm`` command line: ``bench``, ``explain``, ``selfcheck``, ``tune``."""
from __future__ import annotations

import argparse
import sys


def _explain(argv: list[str]) -> int:
    import torch

    from .explain import explain_config
    from .tuned_table import TableError, load_table, shipped_table_path
    p = argparse.ArgumentParser(prog="qknorm explain",
                                description="Print which kernel variant and config a call would use, and why: "
                                            "the tuned-table entry or heuristic rule behind it and the measured "
                                            "alternatives.")
    p.add_argument("--op", choices=["qk", "rms", "add"], default="qk")
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--heads", default="32,8", help="Q,K heads for --op qk (e.g. 32,8)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=4096, help="normalised width for --op rms/add")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--table", help="explain under this tuned table (default: the one this GPU uses)")
    src.add_argument("--gpu", help="explain under the table shipped for this GPU name or key "
                                   "(e.g. nvidia-h100-80gb-hbm3), on any machine")
    p.add_argument("--top", type=int, default=5, help="measured alternatives to show (default 5)")
    a = p.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    device = "cuda" if torch.cuda.is_available() else None
    table = None
    if a.table or a.gpu:
        try:
            table = load_table(a.table or shipped_table_path(a.gpu))
        except TableError as e:
            print(f"qknorm explain: {e}", file=sys.stderr)
            return 1
    try:
        if a.op == "qk":
            hq, hk = (int(h) for h in a.heads.split(","))
            op, d, rows = "qk_rms_norm", a.head_dim, a.tokens * (hq + hk)
        else:
            op = "rms_norm" if a.op == "rms" else "fused_add_rms_norm"
            d, rows = a.hidden, a.tokens
        print(explain_config(op, dtype, d, rows, device, table=table, top=a.top))
    except ValueError as e:
        p.error(str(e))
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


def _tune(argv: list[str]) -> int:
    from .tune import main as tune_main
    return tune_main(argv)


COMMANDS = {"bench": _bench, "explain": _explain, "selfcheck": _selfcheck, "tune": _tune}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: qknorm {bench,explain,selfcheck,tune} [options]\n"
              "  bench      time qknorm against PyTorch, torch.compile, FlashInfer, Quack, Liger\n"
              "  explain    which kernel variant a call uses, and why\n"
              "  selfcheck  run each op once and print its error against fp64\n"
              "  tune       time every kernel config on this GPU and write its tuned table (GPU only)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
