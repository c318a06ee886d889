"""``qknorm`` command line: one subcommand per tool, each parsing its own options.

This module only routes: ``qknorm <command> ARGS`` calls the tool's own ``main(ARGS)``
(``qknorm <command> --help`` prints that tool's options). ``selfcheck`` has no module
``main`` of its own, so its few lines live here.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> ("module:function" taking argv and returning the exit status, one line of help)
COMMANDS = {
    "bench": ("qknorm.bench.cli:main", "time qknorm against PyTorch, torch.compile and the peer libraries"),
    "explain": ("qknorm.explain:main", "which kernel variant a call uses, and why"),
    "selfcheck": ("qknorm.cli:selfcheck_main", "run each op once and print its error against fp64"),
    "tune": ("qknorm.tune:main", "time every kernel config on this GPU and write its tuned table (GPU only)"),
}


def selfcheck_main(argv: list[str]) -> int:
    """``qknorm selfcheck``: run each op once against fp64; 0 when all pass, else 1."""
    argparse.ArgumentParser(prog="qknorm selfcheck", description="Run each op once against fp64.").parse_args(argv)
    from .selfcheck import run
    return 0 if run() else 1


def parser() -> argparse.ArgumentParser:
    """The top-level parser: the command name only (each tool parses the rest)."""
    p = argparse.ArgumentParser(prog="qknorm", description="Triton RMSNorm / QK norm kernels: tools. "
                                "`qknorm COMMAND --help` lists a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``qknorm COMMAND ARGS``.

    Parameters
    ----------
    argv : list of str or None
        ``[COMMAND, *ARGS]`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The command's exit status. A missing or unknown command, and ``--help``, exit
        through argparse (``SystemExit``, status 2 and 0).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = parser().parse_args(argv[:1]).command
    module, function = COMMANDS[command][0].split(":")
    return getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
