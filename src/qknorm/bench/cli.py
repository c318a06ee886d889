"""``qknorm bench``: check and time qknorm against its peers; write CSV, Markdown and plots.

Examples::

    qknorm bench --quick                              # seconds; runs on a CPU too (a smoke test)
    qknorm bench --preset qwen3-8b,qwen3-235b,qwen3-next --out results/h100
    qknorm bench --preset llama3-70b --out results/h100 --append   # add rows to that folder
    qknorm bench --preset seed --variants all         # the original question's grid
    qknorm bench --preset qwen3-8b --mode eager --tokens 1,4,16,64 --variants none
    qknorm bench --preset rope --impl 'qknorm,flashinfer*,torch*'
    qknorm bench --preset tp --tp 2                   # tensor-parallel full-width norm (2+ GPUs)
    qknorm bench --report-only results/h100/results.csv   # rebuild summary.md and plots/

Results are never lost: a folder that already holds bench results is refused unless
--append (add this run's rows to them) or --overwrite (replace them) says otherwise;
every row is on disk (flushed) as soon as it is measured, and an interrupted (Ctrl-C,
SIGTERM) or crashed run keeps every row so far. Every mistake in a flag is one line on
stderr and exit status 2, before anything is written.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass

import torch

from qknorm.cli import ArgParser, write_probe
from qknorm.explain import plural

from .cases import DTYPES, PRESETS, preset_cases, quick_cases
from .peers import matches, peer_status, qknorm_variants, static_impls
from .report import (REPORT_COLUMNS, CsvSink, csv_header, cut_tail, facts, failed_rows, is_smoke, plot, read_csv,
                     summary_markdown)
from .runner import COLUMNS, MODES, VARIANT_CHOICES, Options, Runner
from .common import triton_version
from .timing import measure_baselines

EXTRA_PRESETS = ("tp",)  # run by their own launcher (several processes), not by the case runner
QUICK_MAX_TOKENS = 64
# What a run writes into --out (its folder); any of them there already means earlier results.
RUN_OUTPUTS = ("results.csv", "summary.md", "meta.json", "plots")
TP_OUTPUTS = ("tp.csv", "tp-meta.json")
SMOKE_LINE = ("qknorm bench: CPU run = a smoke test, not a comparison: every implementation runs and is checked "
              "against the fp32 reference, but CPU times vary by orders of magnitude between identical runs and "
              "say nothing about GPU kernels; no speedups are printed.")


def _csv_list(s: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip()) if s else ()


def _tokens(s: str | None) -> tuple[int, ...] | None:
    if s is None:
        return None
    if not s.strip():
        raise argparse.ArgumentTypeError(f"{s!r} is empty; give token counts (e.g. 1,16,512), or leave --tokens out")
    try:
        t = tuple(int(x) for x in _csv_list(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma list of integers (e.g. 1,16,512)") from None
    if not t or any(v < 1 for v in t):
        raise argparse.ArgumentTypeError(f"{s!r}: token counts must be >= 1")
    return tuple(dict.fromkeys(t))  # each count once, in the order given


def parser() -> ArgParser:
    p = ArgParser(
        prog="qknorm bench",
        description="Check every implementation against the fp32 reference, then time it: qknorm (the "
                    "dispatcher's pick and its kernel variants) side by side with FlashInfer, SGLang's JIT kernels "
                    "and sgl_kernel, Quack, Liger, vLLM (when importable; otherwise listed as skipped with the "
                    "reason), torch eager, torch.compile and F.rms_norm. Writes results.csv (row by row), "
                    "summary.md, meta.json and plots/ under --out (the tp preset: tp.csv and tp-meta.json). On a "
                    "CPU the run is a smoke test: it checks that everything runs and is correct; its times are not "
                    "a comparison.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1])
    p.add_argument("--preset", default=None,
                   help=f"comma list of presets: {', '.join(PRESETS + EXTRA_PRESETS)}, or 'all' (default qwen3-8b; "
                        "with --quick: one small case of each op kind)")
    p.add_argument("--impl", default=None, help="comma list of implementation names or globs to run "
                                              "(e.g. 'qknorm,flashinfer*,torch'; 'qknorm[*]' = every variant, "
                                              "GPU only); default: all. A name or glob that matches nothing is an "
                                              "error")
    p.add_argument("--exclude", default=None, help="comma list of names or globs to leave out")
    p.add_argument("--tokens", type=_tokens, default=None,
                   help="comma list of token counts (default: the preset's, 1..16384; with --quick: 1,16, "
                        f"at most {QUICK_MAX_TOKENS})")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="activation dtype of every case (default bf16)")
    p.add_argument("--mode", choices=list(MODES) + ["both"], default=None,
                   help="graph: CUDA-graph replay (device time; CUDA only); eager: back-to-back calls (host cost "
                        "included); both. Default: graph on a GPU, eager on a CPU")
    p.add_argument("--cold-l2", action="store_true",
                   help="rotate over input sets larger than 2x L2 (CUDA only; default: warm L2, inputs may stay "
                        "cached)")
    p.add_argument("--variants", choices=VARIANT_CHOICES, default=None,
                   help="qknorm kernel variants to time beside the pick (GPU only): none, top (the default: the "
                        "tuned table's best for the case + the pick; all candidates where the table has none), all")
    p.add_argument("--out", default=None,
                   help="output folder (default ./qknorm-bench/<device>-<time>). A folder that already holds "
                        "bench results is refused unless --append or --overwrite is given")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--append", action="store_true",
                      help="--out holds earlier results: add this run's rows to its CSV (same device and columns) "
                           "and rebuild summary.md and plots from all of them")
    keep.add_argument("--overwrite", action="store_true",
                      help="--out holds earlier results: delete them (results.csv, summary.md, meta.json, plots/*.png, "
                           "tp.csv, tp-meta.json) before this run")
    p.add_argument("--quick", action="store_true", help="a few small cases (seconds, CPU included)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--no-plots", action="store_true", help="write no plots/ (the CSV and summary.md only)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    p.add_argument("--tp", type=int, default=None, help="ranks for --preset tp, >= 2 (default: the GPUs here, or 2 "
                                                        "CPU processes)")
    p.add_argument("--report-only", metavar="CSV",
                   help="rebuild summary.md and plots/ from an existing bench results.csv, next to it (or in "
                        "--out); runs nothing")
    return p


# --------------------------------------------------------------------------- checking the flags

@dataclass
class Plan:
    """What a checked command line runs."""

    device: str
    cuda: bool
    device_name: str
    modes: tuple[str, ...]
    presets: list[str] | None   # case presets (not tp); None: the default
    tp: int | None              # ranks of the tp preset; None: no tp preset
    cases: list
    out: str


def _presets(p: ArgParser, s: str) -> list[str]:
    """The presets of ``--preset``, in order, each once (``all`` = every case preset, also inside a
    list such as ``all,tp``)."""
    names: list[str] = []
    for n in _csv_list(s):
        for x in (PRESETS if n == "all" else (n,)):
            if x not in names:
                names.append(x)
    bad = [n for n in names if n not in PRESETS + EXTRA_PRESETS]
    if bad or not names:
        p.error(f"argument --preset: unknown preset {', '.join(map(repr, bad)) or repr(s)}; choose from "
                f"{', '.join(PRESETS + EXTRA_PRESETS)} or all (comma list)")
    return names


def _device(p: ArgParser, s: str | None) -> tuple[str, bool, str]:
    """(device string, is CUDA, device name) of ``--device``; a bad one is a usage error."""
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    s = s or ("cuda" if have else "cpu")
    try:
        d = torch.device(s)
    except (RuntimeError, ValueError):
        p.error(f"argument --device: {s!r} is not a device; use cuda, cuda:N or cpu")
    if d.type not in ("cuda", "cpu"):
        p.error(f"argument --device: {s!r}: the bench runs on cuda, cuda:N or cpu (not {d.type})")
    if d.type == "cpu":
        return s, False, "cpu"
    if not have:
        p.error(f"argument --device: {s!r}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu "
                "(a smoke test)")
    if d.index is not None and d.index >= have:
        p.error(f"argument --device: {s!r}: this machine has {have} GPU(s), cuda:0 .. cuda:{have - 1}")
    return s, True, torch.cuda.get_device_name(d)


def _selection(p: ArgParser, a, cases, device: str, cuda: bool) -> None:
    """Every ``--impl`` / ``--exclude`` name or glob must match an implementation of this run,
    and together they must leave at least one to run."""
    include, exclude = _csv_list(a.impl), _csv_list(a.exclude)
    for flag, given, pats in (("--impl", a.impl, include), ("--exclude", a.exclude, exclude)):
        if given is not None and not pats:
            p.error(f"argument {flag}: {given!r} names no implementation; give a comma list of names or globs "
                    "(e.g. 'qknorm,torch*'), or leave the flag out")
    if not include and not exclude:
        return
    static = [i.name for i in static_impls()]
    variants: list[str] = []
    if cuda and a.variants != "none":
        variants = sorted({v.name for c in cases for v in qknorm_variants(c, device)})
    known = static + variants
    choose = f"choose from {', '.join(static)}" + (" or qknorm[<config>] (GPU only)" if not variants else
                                                    f" or one of {len(variants)} qknorm[<config>] variants")
    for flag, pats in (("--impl", include), ("--exclude", exclude)):
        for pat in pats:
            if any(matches(n, (pat,)) for n in known):
                continue
            if pat.startswith("qknorm[") and not variants:
                if flag == "--exclude":
                    continue  # excluding variants from a run without variants: nothing to do
                why = ("qknorm variants run on a CUDA GPU only" if not cuda else
                       "--variants none runs no qknorm variants")
                p.error(f"argument --impl: {pat!r} matches no implementation of this run: {why}")
            p.error(f"argument {flag}: {pat!r} matches no implementation; {choose} (globs allowed, e.g. "
                    "'flashinfer*')")
    left = [n for n in known if (not include or matches(n, include)) and not (exclude and matches(n, exclude))]
    if not left:
        p.error(f"argument --impl/--exclude: --impl {a.impl or '(all)'!r} --exclude {a.exclude or ''!r} leave no "
                "implementation to run")


def _writable_folder(p: ArgParser, flag: str, out: str) -> None:
    """``out`` is, or can be made, a folder this process can write in."""
    if os.path.exists(out) and not os.path.isdir(out):
        p.error(f"argument {flag}: {out!r} is a file, not a folder")
    d = os.path.abspath(out)
    while not os.path.exists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        p.error(f"argument {flag}: {out!r}: {d} is a file, not a folder")
    if not os.access(d, os.W_OK | os.X_OK):
        p.error(f"argument {flag}: {out!r}: cannot write in {d} (permission denied); pick another folder")
    why = write_probe(os.path.join(out, "results.csv"))  # (root passes os.access everywhere: a real write)
    if why:
        p.error(f"argument {flag}: {out!r}: {why}; pick another folder")


def _check_out(p: ArgParser, a, out: str, names: tuple[str, ...], device_name: str,
               tp_device: str | None = None) -> None:
    """``--out`` must be a writable folder; earlier results in it need ``--append`` or
    ``--overwrite``; ``--append`` needs CSVs of this version's columns from the same device."""
    _writable_folder(p, "--out", out)
    held = [n for n in RUN_OUTPUTS + TP_OUTPUTS if os.path.exists(os.path.join(out, n))]
    odd = [n for n in held if n != "plots" and not os.path.isfile(os.path.join(out, n))]
    if odd:
        p.error(f"argument --out: in {out!r}, {', '.join(odd)} {'is not a file' if len(odd) == 1 else 'are not files'} "
                "(a bench writes files by those names); move it aside or pick another --out")
    if held and not (a.append or a.overwrite):
        p.error(f"argument --out: {out!r} already holds bench results ({', '.join(held)}); add --append to add "
                "this run's rows to them, or --overwrite to replace them, or pick another --out")
    if not a.append:
        return
    for name, cols in (("results.csv", COLUMNS), ("tp.csv", _tp_columns())):
        path = os.path.join(out, name)
        if name in names and os.path.exists(path) and os.path.getsize(path):
            try:
                header = csv_header(path)
            except (OSError, UnicodeDecodeError) as e:
                p.error(f"argument --append: cannot read {path}: {e}")
            if tuple(header) != tuple(cols):
                p.error(f"argument --append: {path} has other columns than this version writes (another "
                        "qknorm version, or not a bench CSV); use --overwrite or another --out")
    earlier = _read_meta(os.path.join(out, "meta.json"))
    if "results.csv" in names and earlier.get("device") not in (None, device_name):
        p.error(f"argument --append: the results in {out!r} are from {earlier['device']}, this run is on "
                f"{device_name}; one folder holds one device's results (pick another --out)")
    earlier = _read_meta(os.path.join(out, "tp-meta.json"))
    if tp_device is not None and earlier.get("device") not in (None, tp_device):
        p.error(f"argument --append: the tp results in {out!r} are from {earlier['device']}, this run is on "
                f"{tp_device}; one folder holds one device's results (pick another --out)")


def _tp_device(tp: int, cuda: bool) -> str:
    """The tp preset's device, as ``tp-meta.json`` records it."""
    return f"{tp} x {torch.cuda.get_device_name(0)}" if cuda else f"{tp} gloo CPU processes"


def _tp_columns() -> tuple[str, ...]:
    from .tp import TP_COLUMNS
    return tuple(COLUMNS) + tuple(TP_COLUMNS)


def _read_meta(path: str) -> dict:
    try:
        with open(path) as f:
            m = json.load(f)
        return m if isinstance(m, dict) else {}
    except (OSError, ValueError):
        return {}


def _not_empty(p: ArgParser, flag: str, value: str | None) -> None:
    """A flag given an empty value (``--out ''``) is a mistake, not the default."""
    if value is not None and not value.strip():
        p.error(f"argument {flag}: {value!r} is empty; give a value, or leave {flag} out")


def check(p: ArgParser, a) -> Plan:
    """Check every flag against the others and this machine; a mistake is ``p.error`` (one
    line on stderr, exit status 2) before anything is written."""
    for flag, value in (("--out", a.out), ("--device", a.device)):
        _not_empty(p, flag, value)
    if not 0 <= a.seed < 2**63:
        p.error(f"argument --seed: must be in 0 ... 2**63 - 1, got {a.seed}")
    device, cuda, device_name = _device(p, a.device)
    if not cuda:
        from ..backend import active, interpreter_on
        if active == "triton" and not interpreter_on():
            p.error("QKNORM_BACKEND=triton: qknorm's Triton kernels run on the CPU only through the Triton "
                    "interpreter; set TRITON_INTERPRET=1 as well (slow: seconds per call) or use QKNORM_BACKEND=auto")
    if a.mode in ("graph", "both") and not cuda:
        p.error(f"argument --mode: {a.mode!r} needs CUDA (graph mode is CUDA-graph replay); on the CPU the "
                "only mode is eager")
    if a.cold_l2 and not cuda:
        p.error("argument --cold-l2: needs a CUDA GPU (it rotates inputs past the GPU's L2 cache)")
    if a.variants not in (None, "none") and not cuda:
        p.error(f"argument --variants: {a.variants!r} needs a CUDA GPU (qknorm's kernel variants are Triton "
                "kernels); a CPU run times the pick only")
    a.variants = a.variants or "top"
    modes = (("graph", "eager") if a.mode == "both" else (a.mode,)) if a.mode else (("graph",) if cuda else ("eager",))
    presets = _presets(p, a.preset) if a.preset is not None else None
    tp = None
    if presets and "tp" in presets:
        n_gpu = torch.cuda.device_count() if cuda else 0
        tp = a.tp if a.tp is not None else (n_gpu if n_gpu >= 2 else 2)
        presets = [x for x in presets if x != "tp"] or None
        only_tp = presets is None
    else:
        only_tp = False
    if a.tp is not None:
        if tp is None:
            p.error(f"argument --tp: {a.tp} ranks given, but --tp is for the tensor-parallel preset only; add "
                    "--preset tp")
        if a.tp < 2:
            p.error(f"argument --tp: {a.tp}: the tp preset splits Q and K over ranks and needs --tp >= 2")
    if tp is not None:
        from .tp import MODELS as TP_MODELS
        hq, hkv, d = TP_MODELS["olmo2-7b"]
        if (hq * d) % tp or (hkv * d) % tp:
            p.error(f"argument --tp: {tp} ranks do not split the olmo2-7b Q and K widths ({hq * d}, {hkv * d}) "
                    "evenly; use a power of two")
    if tp is not None and cuda and torch.cuda.device_count() < tp:
        p.error(f"argument --tp: {tp} ranks need {tp} GPUs, this machine has {torch.cuda.device_count()}")
    if a.quick and a.tokens and max(a.tokens) > QUICK_MAX_TOKENS:
        p.error(f"argument --tokens: {','.join(map(str, a.tokens))} with --quick: quick cases take at most "
                f"{QUICK_MAX_TOKENS} tokens (drop --quick for larger ones)")
    dtype = DTYPES[a.dtype]
    if only_tp:
        cases = []
        if a.impl or a.exclude:
            p.error("argument --impl/--exclude: the tp preset times its own fixed set (ours, allgather, "
                    "allgather-1, comm-ours, comm-allgather); --impl and --exclude do not apply")
    elif a.quick:
        cases = quick_cases(presets, dtype, a.tokens)
    else:
        cases = [c for x in (presets or ["qwen3-8b"]) for c in preset_cases(x, a.tokens, dtype)]
    if cases:
        _selection(p, a, cases, device, cuda)
    stamp = _dt.datetime.now()
    out = a.out or os.path.join("qknorm-bench", f"{_slug_device(device_name)}-{stamp:%Y%m%d-%H%M%S}")
    names = (RUN_OUTPUTS if cases else ()) + (TP_OUTPUTS if tp else ())
    _check_out(p, a, out, names, device_name, _tp_device(tp, cuda) if tp else None)
    return Plan(device, cuda, device_name, modes, presets, tp, cases, out)


def _non_default(p: ArgParser, a) -> list[str]:
    """The options of ``a`` that differ from the parser's defaults, as flags."""
    return [act.option_strings[-1] for act in p._actions
            if act.option_strings and act.dest != "help" and getattr(a, act.dest, None) != act.default]


def _clear(out: str) -> list[str]:
    """``--overwrite``: delete the bench outputs in ``out`` (only the files a run writes)."""
    gone = []
    for n in RUN_OUTPUTS + TP_OUTPUTS:
        path = os.path.join(out, n)
        if n == "plots" and os.path.isdir(path):
            for f in sorted(os.listdir(path)):
                if f.endswith(".png"):
                    os.remove(os.path.join(path, f))
                    gone.append(os.path.join(n, f))
            if not os.listdir(path):
                os.rmdir(path)
        elif os.path.isfile(path):
            os.remove(path)
            gone.append(n)
    return gone


# --------------------------------------------------------------------------- running

def _run_tp(a, argv: list[str], plan: Plan, modes) -> int:
    """The ``tp`` preset: full-width QK norm under tensor parallelism, one all-reduce vs
    all-gather, on ``plan.tp`` ranks (GPUs; gloo processes on a CPU). Its rows go to ``tp.csv``; what
    the run was (device, date, command, versions, status; earlier runs with ``--append``) to ``tp-meta.json``."""
    import qknorm

    from .tp import launch
    if not plan.cuda:
        print(f"qknorm bench --preset tp: no CUDA device; running {plan.tp} gloo processes on the CPU as a smoke "
              "test (correctness check and bytes per rank; the times are not GPU numbers and no speedups are "
              "printed)")
    csv_path = os.path.join(plan.out, "tp.csv")
    meta_path = os.path.join(plan.out, "tp-meta.json")
    meta = dict(device=_tp_device(plan.tp, plan.cuda), date=f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
                command="qknorm bench " + " ".join(shlex.quote(x) for x in argv), torch=torch.__version__,
                triton=triton_version(), qknorm=qknorm.__version__, tp=plan.tp, status="running")
    earlier = _read_meta(meta_path) if a.append else {}
    if earlier or (a.append and os.path.exists(csv_path)):  # ([] : earlier rows whose run left no record)
        meta["earlier_runs"] = earlier.pop("earlier_runs", []) + (
            [{k: earlier.get(k) for k in ("date", "command", "status")}] if earlier else [])
    _write_meta(meta, plan.out, "tp-meta.json")
    got: list[int] = []
    rc = 1
    try:
        with _forward_signals(got):
            rc = launch(plan.tp, a.tokens, a.dtype, csv_path, modes=modes, append=a.append, cpu=not plan.cuda)
    except KeyboardInterrupt:  # no child to pass the signal to (no /proc): the launcher was stopped
        got.append(signal.SIGINT)
    finally:
        meta["status"] = "interrupted" if got else ("complete" if rc == 0 else "failed")
        _write_meta(meta, plan.out, "tp-meta.json")
    if got:
        print(f"qknorm bench: interrupted ({signal.Signals(got[0]).name}); the rows the tp ranks measured are "
              f"in {csv_path}", file=sys.stderr)
        return 130
    return rc


def _child_pids() -> list[int]:
    """This process's children (Linux /proc); [] where that cannot be read."""
    me, kids = os.getpid(), []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for n in names:
        if not n.isdigit():
            continue
        try:
            with open(f"/proc/{n}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            kids.append(int(n))
    return kids


class _forward_signals:
    """While the tp launcher (``torch.distributed.run``) runs: SIGINT or SIGTERM sent to this
    process (``kill``, a job scheduler) goes on to it as SIGINT, so it stops the ranks (each keeps
    the rows it measured, flushed) and exits; this process then says so in one line. Without
    this, Python's Ctrl-C made ``subprocess.call`` SIGKILL the launcher and leave the ranks running,
    and SIGTERM killed this process alone. ``got`` collects the signals received. Where the
    children cannot be found (no /proc), the signal raises KeyboardInterrupt as before."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, got: list[int]):
        self.got, self.old = got, {}

    def _handler(self, signum, frame):
        kids = _child_pids()
        if not kids:
            raise KeyboardInterrupt
        self.got.append(signum)
        if signum == signal.SIGINT and _terminal_foreground():
            return  # Ctrl-C at a terminal reached the launcher and the ranks already
        for pid in kids:
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self.old[s] = signal.signal(s, self._handler)
            except (ValueError, OSError):  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False


def _terminal_foreground() -> bool:
    """Whether this process is in its terminal's foreground group (then a Ctrl-C reached every
    process of the group, the tp ranks included)."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _make_folder(p: ArgParser, out: str) -> None:
    """Create ``out``; a failure (a race after the checks) is one line, exit 2, nothing written."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        p.error(f"argument --out: {out!r}: cannot create it ({e.strerror or e}); pick another folder")


def _progress(total: int, quiet: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, unit="impl", dynamic_ncols=True, disable=quiet, file=sys.stderr)
    except Exception:  # noqa: BLE001 - tqdm is optional

        class _Bar:
            def __init__(self):
                self.n, self.t0, self.last = 0, time.time(), 0.0

            def update(self, k=1):
                self.n += k
                now = time.time()
                if not quiet and (now - self.last > 5 or self.n == total):
                    self.last = now
                    print(f"  [{self.n}/{total}] {now - self.t0:.0f} s", file=sys.stderr, flush=True)

            def set_description(self, s):
                pass

            def close(self):
                pass
        return _Bar()


def _write_report(rows: list[dict], meta: dict, out: str, plots: bool, write_meta: bool = True) -> list[str]:
    if write_meta:  # first: the run's record (status) must not wait on the summary and plots
        _write_meta(meta, out)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary_markdown(rows, meta))
    if not plots:
        return []
    pdir = os.path.join(out, "plots")
    os.makedirs(pdir, exist_ok=True)
    return plot(rows, pdir, smoke=is_smoke(meta, rows))


def _write_meta(meta: dict, out: str, name: str = "meta.json") -> None:
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, default=str)
    os.replace(tmp, os.path.join(out, name))


def _report_only(p: ArgParser, a) -> int:
    """``--report-only CSV``: rebuild summary.md and plots/ from a bench results CSV."""
    _not_empty(p, "--report-only", a.report_only)
    extra = [f for f in _non_default(p, a) if f not in ("--report-only", "--no-plots", "--out")]
    if extra:
        p.error(f"argument --report-only: rebuilds the report from a CSV and runs nothing; it takes only --out "
                f"and --no-plots (got {', '.join(extra)})")
    _not_empty(p, "--out", a.out)
    path = a.report_only
    if os.path.isdir(path):
        hint = os.path.join(path, "results.csv")
        p.error(f"argument --report-only: {path!r} is a folder; give its bench CSV"
                + (f" ({hint})" if os.path.isfile(hint) else " (a results.csv)"))
    if not os.path.isfile(path):
        p.error(f"argument --report-only: {path!r}: no such file")
    try:
        header = csv_header(path)
    except (OSError, UnicodeDecodeError) as e:
        p.error(f"argument --report-only: cannot read {path!r}: {e}")
    missing = [c for c in REPORT_COLUMNS if c not in header]
    if "speedup_vs_allgather" in header:
        p.error(f"argument --report-only: {path!r} is the tp preset's table (tp.csv), which is its own report; "
                "--report-only rebuilds summary.md and plots from a results.csv")
    if missing:
        p.error(f"argument --report-only: {path!r} is not a qknorm bench results CSV (it has no "
                f"{', '.join(missing)} column{'s' if len(missing) > 1 else ''})")
    here = os.path.dirname(os.path.abspath(path))
    out = a.out or here
    _writable_folder(p, "--out", out)
    held = [n for n in RUN_OUTPUTS + TP_OUTPUTS if os.path.exists(os.path.join(out, n))]
    if os.path.abspath(out) != here and held:
        p.error(f"argument --out: {out!r} holds another run's results ({', '.join(held)}); --report-only writes a "
                "report only into the CSV's own folder or a folder without bench results")
    try:
        rows = read_csv(path)
        for r in rows:
            int(r["tokens"])
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        p.error(f"argument --report-only: {path!r} has a row that is not a bench row ({type(e).__name__}: {e})")
    meta = _read_meta(os.path.join(here, "meta.json"))
    _make_folder(p, out)
    paths = _write_report(rows, meta, out, not a.no_plots, write_meta=False)
    print(f"qknorm bench: rewrote {os.path.join(out, 'summary.md')}"
          + (f" and {plural(len(paths), 'plot')}" if not a.no_plots else "") + f" from the {len(rows)} rows of {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``qknorm bench``: 0 when the run completed and its report was written; 1 when the
    report could not be written (the rows are kept) or the tp preset failed; 130 when
    interrupted (the rows so far are kept); 2 for a usage mistake (nothing written)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    a = p.parse_args(argv)
    if a.report_only is not None:
        return _report_only(p, a)
    plan = check(p, a)
    out = plan.out
    _make_folder(p, out)
    if a.overwrite:
        gone = _clear(out)
        if gone:
            print(f"qknorm bench: --overwrite: deleted the earlier {', '.join(gone[:6])}"
                  + (f" and {len(gone) - 6} more" if len(gone) > 6 else "") + f" in {out}")
    if not plan.cuda:
        print(SMOKE_LINE)
    rc_tp = 0
    if plan.tp:
        rc_tp = _run_tp(a, argv, plan, plan.modes if a.mode else None)
        if not plan.cases or rc_tp == 130:  # interrupted: stop here, as a case run does
            return rc_tp
    rc = _run_cases(a, argv, plan)
    return rc if rc else (1 if rc_tp else 0)


def _run_cases(a, argv: list[str], plan: Plan) -> int:
    device, out, cases, modes = plan.device, plan.out, plan.cases, plan.modes
    if not plan.cuda:
        import qknorm
        where = "--device cpu" if torch.cuda.is_available() else "no CUDA GPU here"
        print(f"qknorm bench: {where}. Running the CPU paths only (qknorm on its "
              f"{'Triton-interpreter' if qknorm.get_backend() == 'triton' else 'PyTorch'} path, torch eager); "
              "GPU implementations are listed as skipped.")
    base = measure_baselines(device)
    stamp = _dt.datetime.now(_dt.timezone.utc)
    import qknorm
    csv_path = os.path.join(out, "results.csv")
    if a.append and os.path.exists(csv_path):
        cut = cut_tail(csv_path)
        if cut:
            print(f"qknorm bench: {csv_path} ended in a cut-off line (a full disk or a crash while writing); moved it "
                  f"to {cut}, appending after the last whole row", file=sys.stderr)
    earlier_rows = read_csv(csv_path) if a.append and os.path.exists(csv_path) else []
    earlier_meta = _read_meta(os.path.join(out, "meta.json")) if a.append else {}
    meta = dict(device=base.device, date=f"{stamp:%Y-%m-%d %H:%M} UTC",
                command="qknorm bench " + " ".join(shlex.quote(x) for x in argv),
                torch=torch.__version__, triton=triton_version(), qknorm=qknorm.__version__,
                peers="; ".join(f"{k} {v}" for k, v in peer_status().items()),
                copy_gbps=round(base.copy_gbps, 1), empty_graph_us=base.empty_graph_us,
                empty_eager_us=base.empty_eager_us, l2="cold" if a.cold_l2 else "warm", modes=",".join(modes),
                sm_count=base.sm_count, l2_bytes=base.l2_bytes, status="running")
    if earlier_meta or earlier_rows:
        prev = earlier_meta.pop("earlier_runs", []) if earlier_meta else []
        meta["earlier_runs"] = prev + ([{k: earlier_meta.get(k) for k in ("date", "command", "status")}]
                                       if earlier_meta else [])
    opt = Options(device=device, modes=modes, cold_l2=a.cold_l2, include=_csv_list(a.impl),
                  exclude=_csv_list(a.exclude), variants=a.variants, seed=a.seed)
    try:
        sink = CsvSink(csv_path, append=a.append, exclusive=True)
    except FileExistsError:
        print(f"qknorm bench: {csv_path} appeared after this run checked --out (another bench writing the same "
              "folder?); nothing written. Give another --out, or --append", file=sys.stderr)
        return 2
    _write_meta(meta, out)  # a run killed outright still says what it was
    rows: list[dict] = []

    def keep(row: dict) -> None:
        """On disk first (flushed), then in the report's list: the report holds every row of the
        CSV, those of a case cut short included."""
        sink(row)
        rows.append(row)
    runner = Runner(opt, base, keep)
    print(f"qknorm bench: {len(cases)} cases on {base.device} (copy {base.copy_gbps:.0f} GB/s"
          + (f", empty kernel {base.empty_graph_us:.2f} us graph / {base.empty_eager_us:.2f} us eager"
             if base.empty_graph_us else "") + f"); modes {','.join(modes)}; L2 {meta['l2']}; out {out}"
          + (f" (appending to {len(earlier_rows)} earlier rows)" if a.append else ""))
    _sigterm_interrupts()
    bar = _progress(runner.count(cases), quiet=False)
    crash = None
    try:
        for c in cases:
            bar.set_description(f"{c.preset} {c.op} T={c.tokens}")
            runner.run_case(c, tick=bar.update)
        meta["status"] = "complete"
    except KeyboardInterrupt:
        meta["status"] = f"interrupted after {sink.rows} rows (kept)"
        print(f"\nqknorm bench: interrupted; the {sink.rows} rows measured are in {csv_path}", file=sys.stderr)
    except BaseException as e:
        crash = e
        meta["status"] = f"crashed after {sink.rows} rows (kept): {type(e).__name__}: {e}"
        print(f"\nqknorm bench: crashed ({type(e).__name__}); the {sink.rows} rows measured are in {csv_path}",
              file=sys.stderr)
    finally:
        bar.close()
        sink.close()
    ran = sorted({r["ran"] for r in rows if r["impl"] == "torch_rms_norm" and r.get("ran")})
    if ran:
        meta["torch_rms_norm_ran"] = " | ".join(ran)
    all_rows = earlier_rows + rows
    try:
        paths = _write_report(all_rows, meta, out, not a.no_plots)
    except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM) while the summary and plots are written
        if crash is not None:
            raise crash from None
        print(f"\nqknorm bench: interrupted while writing the report; the {sink.rows} rows are in {csv_path} "
              f"(`qknorm bench --report-only {csv_path}` rebuilds it)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the rows are on disk; say so in one line
        if crash is not None:
            raise crash from None
        print(f"qknorm bench: writing the report failed ({type(e).__name__}: {e}); the {sink.rows} rows are in "
              f"{csv_path} (`qknorm bench --report-only {csv_path}` rebuilds it)", file=sys.stderr)
        return 1
    if crash is not None:
        raise crash
    _print_console(rows, out, paths, smoke=is_smoke(meta, rows), earlier=len(earlier_rows))
    return 0 if meta["status"] == "complete" else 130


def _sigterm_interrupts() -> None:
    """A SIGTERM (``timeout``, a job scheduler) ends the run like Ctrl-C: the rows measured so
    far are kept and the summary is written from them."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not the main thread
        pass


def _slug_device(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-") or "device"


def _case_name(preset: str, group: str) -> str:
    """``preset group``, the preset said once where the group starts with it (``rope rope ...``)."""
    return group if group.split(" ", 1)[0] == preset else f"{preset} {group}"


def _print_console(rows: list[dict], out: str, plots: list[str], smoke: bool = False, earlier: int = 0) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    by = {}
    for r in ok:
        by.setdefault((r["preset"], r["group"], r["mode"], int(r["tokens"])), []).append(r)
    w = max([len("case")] + [len(_case_name(p, g)) for p, g, _, _ in by])
    if smoke:
        print(f"\nCPU smoke test: times as measured, not a comparison\n"
              f"{'case':<{w}} {'T':>6} {'mode':>5}  {'qknorm us':>10}  {'checked and timed':>17}")
    else:
        print(f"\n{'case':<{w}} {'T':>6} {'mode':>5}  {'qknorm us':>10}  {'best peer':>22}  {'speedup':>7}")
    for (preset, group, mode, t), rs in sorted(by.items()):
        q = next((r for r in rs if r["impl"] == "qknorm"), None)
        peers = [r for r in rs if r["family"] == "peer"]
        if q is None:
            continue
        name = _case_name(preset, group)
        if smoke:
            print(f"{name:<{w}} {t:>6} {mode:>5}  {float(q['us']):>10.2f}  {plural(len(rs), 'impl'):>17}")
            continue
        bp = min(peers, key=lambda r: float(r["us"])) if peers else None
        sp = f"{float(bp['us']) / float(q['us']):.2f}x" if bp else ""
        bps = f"{bp['impl']} {float(bp['us']):.2f}" if bp else "-"
        print(f"{name:<{w}} {t:>6} {mode:>5}  {float(q['us']):>10.2f}  {bps:>22}  {sp:>7}")
    bad, traps = failed_rows(rows)
    for r in bad:
        print(f"{r['status']:>7}: {r['impl']} on {_case_name(r['preset'], r['group'])} T={r['tokens']}: "
              f"{r['reason']}")
    for impl in sorted({r["impl"] for r in traps}):
        n = sum(r["impl"] == impl for r in traps)
        print(f"by design: {impl} computes a different function (one RMS over all heads of a token), so it fails "
              f"the correctness gate: {plural(n, 'case')}, not timed (summary.md, Notes)")
    # Implementations that ran nowhere, grouped by why (those skipped only where a case does not apply to them
    # are in summary.md's Skipped table)
    ran = {r["impl"] for r in rows if r["status"] != "skipped"}
    reasons: dict[str, list[str]] = {}  # implementation -> its skip reasons, first seen first
    for r in rows:
        if r["status"] == "skipped" and r["impl"] not in ran and r["reason"] not in reasons.setdefault(r["impl"], []):
            reasons[r["impl"]].append(r["reason"])
    why_not: dict[str, list[str]] = {}
    for impl, whys in reasons.items():
        more = f" (and {plural(len(whys) - 1, 'other reason')}: summary.md)" if len(whys) > 1 else ""
        why_not.setdefault(whys[0] + more, []).append(impl)
    if why_not:
        print(f"not run ({plural(len(reasons), 'implementation')}; summary.md lists every skip):")
        for why, names in sorted(why_not.items()):
            print(f"  {', '.join(sorted(names))}: {why}")
    fl = [] if smoke else facts(rows)
    if fl:
        print("\n".join(["facts (this run):"] + fl))
    if smoke:
        print(SMOKE_LINE)
    print(f"\nwrote {out}/results.csv ({len(rows)} rows" + (f" added to {earlier}" if earlier else "")
          + f"), {out}/summary.md" + (f", {plural(len(plots), 'plot')}" if plots else ""))
