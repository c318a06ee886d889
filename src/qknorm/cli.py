"""``qknorm`` command line: one subcommand per tool, each parsing its own options.

This module only routes: ``qknorm <command> ARGS`` calls the tool's own ``main(ARGS)``
(``qknorm <command> --help`` prints that tool's options). ``selfcheck`` has no module
``main`` of its own, so its few lines live here.

Every tool parses with :class:`ArgParser`: a mistake in a flag or its value is ONE line on
stderr (``qknorm bench: error: argument --tp: ...``) and exit status 2, before anything is
written.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile

from . import __version__

# command -> ("module:function" taking argv and returning the exit status, one line of help)
COMMANDS = {
    "bench": ("qknorm.bench.cli:main", "time qknorm against PyTorch, torch.compile and the peer libraries"),
    "explain": ("qknorm.explain:main", "which kernel variant a call uses, and why"),
    "selfcheck": ("qknorm.cli:selfcheck_main", "run each op once and print its error against fp64"),
    "tune": ("qknorm.tune:main", "time every kernel config on this GPU and write its tuned table (GPU only)"),
}


class ArgParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors are one line on stderr.

    ``error(message)`` prints ``<prog>: error: <message> (see '<prog> -h')`` and exits with
    status 2 (argparse's own status for a usage error); ``-h`` prints the full usage as usual.
    The tools raise their own value checks through ``error`` too, so every mistake reads the
    same way.
    """

    def error(self, message: str):  # noqa: D102 - argparse's hook
        message = " ".join(str(message).split())  # one line, whatever the message held
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} -h')\n")


def write_probe(target: str) -> str | None:
    """Whether this process can create ``target`` (a file or folder path): None, or why not. Creates and removes an
    entry of the kind a run makes in ``target``'s nearest existing folder (a file when ``target``'s own folder
    exists, else the missing folder): ``os.access`` says yes to root everywhere and knows nothing of /proc, /sys or
    some mounts. Used by ``qknorm bench --out`` and ``qknorm tune --out`` before anything is measured."""
    d = os.path.dirname(os.path.abspath(target))
    e = d
    while not os.path.exists(e):
        e = os.path.dirname(e)
    if not os.path.isdir(e):
        return f"{e} is a file, not a folder"
    try:
        if e == d:
            fd, probe = tempfile.mkstemp(prefix=".qknorm-write-check-", dir=d)
            os.close(fd)
            os.remove(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".qknorm-write-check-", dir=e))
    except OSError as exc:
        return f"cannot write in {e} ({exc.strerror or exc})"
    return None


def selfcheck_main(argv: list[str]) -> int:
    """``qknorm selfcheck``: run each op once against fp64; 0 when all pass, else 1."""
    ArgParser(prog="qknorm selfcheck", description="Run each op once against fp64.").parse_args(argv)
    import torch

    from .selfcheck import run, why_not
    why = why_not("cuda" if torch.cuda.is_available() else "cpu")
    if why:
        print(f"qknorm selfcheck: {why}", file=sys.stderr)
        return 2
    return 0 if run() else 1


def parser() -> ArgParser:
    """The top-level parser: ``--version``, ``-h`` and the command name (each tool parses the rest)."""
    p = ArgParser(prog="qknorm", description="Triton RMSNorm / QK norm kernels: tools. "
                  "`qknorm COMMAND --help` lists a command's options.")
    p.add_argument("--version", action="version", version=f"qknorm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
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
        The command's exit status. A missing or unknown command, and ``--help`` and
        ``--version``, exit through argparse (``SystemExit``: status 2 with one line on
        stderr, and 0).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    # Options before the command are the top-level parser's (-h, --version); the command and
    # everything after it go to the tool.
    i = next((j for j, a in enumerate(argv) if not a.startswith("-")), len(argv))
    p = parser()
    unknown = [a for a in argv[:i] if a not in ("-h", "--help", "--version")]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)} (options of a command go after it: "
                f"qknorm COMMAND OPTIONS)")
    command = p.parse_args(argv[:i + 1]).command
    module, function = COMMANDS[command][0].split(":")
    try:
        return getattr(importlib.import_module(module), function)(argv[i + 1:])
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`): not an error of ours
        # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
