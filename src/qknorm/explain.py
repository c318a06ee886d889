"""``qknorm.explain`` and ``qknorm explain``: which kernel variant and config a call would use,
and why.

The text names the pick, the tuned-table entry (file and key) or the heuristic rule behind
it (:mod:`qknorm.dispatch`), the table's provenance, and the fastest measured alternatives
when the table has them (:mod:`qknorm.tuned_table`). Nothing is launched.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from . import dispatch, invariance, launch, native, validate
from .backend import get_backend
from .dispatch import DTYPES, OPS, Decision, device_decision
from . import layout
from .layout import row_layout
from .tuned_table import OP_ALIASES, TableError, TunedTable, load_table, shipped_table_path, shipped_tables


def plural(n: int, word: str) -> str:
    """``"1 row"``, ``"2 rows"``: a count and its noun (the bench's console uses it too)."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def explain_config(op: str, dtype: torch.dtype, D: int, n_rows: int, device=None, *,
                   table: TunedTable | None = None, top: int = 5, rotary_dim: int | None = None) -> str:
    """Which config runs a problem and why, as text.

    Parameters
    ----------
    op : str
        The op's name, e.g. ``"qk_rms_norm"``.
    dtype : torch.dtype
        Element type.
    D : int
        Width of one row in elements (>= 1).
    n_rows : int
        How many rows the call normalises (>= 0); for ``qk_rms_norm`` the Q rows plus the K rows.
    device : torch.device, str, int or None
        Where the call would run; None: no GPU.
    table : TunedTable or None
        Explain the decision under this table instead of the device's own.
    top : int
        How many measured alternatives to list, fastest first.
    rotary_dim : int or None
        For ``op="qk_rms_norm_rope"`` (and the attention prologue, which takes the same config): the
        rotated dims of each head, even, 2 ... ``D`` (default ``D``). Not taken by the other ops.

    Returns
    -------
    str
        Several lines: the variant and config, the table entry or heuristic rule, the
        table's provenance and the measured alternatives when the table has them.

    Raises
    ------
    ValueError
        As :func:`qknorm.dispatch.choose_config`.
    """
    if op in ROPE_OPS:
        r = D if rotary_dim is None else validate.integer("rotary_dim", rotary_dim, minimum=2)
        return _describe_rope(op, dtype, D, r, n_rows, device, table, top)
    if rotary_dim is not None:
        raise ValueError(f"rotary_dim is for {' and '.join(ROPE_OPS)}, not {op!r}")
    return _describe(op, dtype, D, n_rows, device_decision(op, dtype, D, n_rows, device, table=table), top)


#: The RoPE ops: their kernels take ``dispatch.choose_rope_config``'s config (from the qk_rms_norm pick).
ROPE_OPS = ("qk_rms_norm_rope", "qk_norm_rope_cache")


def _describe_rope(op, dtype, D, r, n_rows, device, table, top) -> str:
    qk = device_decision("qk_rms_norm", dtype, D, n_rows, device, table=table)
    cfg, why = dispatch.rope_config(qk.config, qk.reason, dtype, D, r, n_rows, device)
    form = dispatch.rope_row_form(D, r)
    grid = (f"persistent grid-stride, {cfg.programs_per_sm} programs/SM" if cfg.persistent
            else "one program per block")
    shape = "whole rows" if form != "split" else "rotary halves and tail as separate tiles"
    lines = [f"{op}: dtype={str(dtype).replace('torch.', '')} D={D} rotary_dim={r} rows={n_rows} -> {cfg.name} "
             f"({form} form: {shape}; {grid}{', PDL' if cfg.pdl else ''}, {plural(cfg.rows, 'row')} x {cfg.block_d} cols, "
             f"{plural(cfg.num_warps, 'warp')})", f"  {why}"]
    if form != "split":
        lay = invariance.row_layout(cfg.rows, cfg.block_d, cfg.num_warps, dtype.itemsize)
        how = f"{lay.per_thread} elements/thread x {lay.lanes} lanes x {lay.warps} warps per row"
        lines.append(f"  batch-invariant: row layout {how}, the one every whole-row config for this (dtype, D) uses")
    else:
        half = dispatch.next_pow2(max(r // 2, 1))
        lay = invariance.row_layout(cfg.rows, half, cfg.num_warps, dtype.itemsize)
        how = f"{lay.per_thread} elements/thread x {lay.lanes} lanes x {lay.warps} warps per rotary half"
        lines.append(f"  batch-invariant: layout {how}, the one every split-form config for this (dtype, D) uses")
    if qk.table is not None:
        lines.append(f"  the qk_rms_norm decision it starts from: table {qk.table.path or qk.table.name}")
    return "\n".join(lines)


def _addressing(t: torch.Tensor) -> str:
    """How the kernels address ``t``'s rows, or which fallback runs (the general call's rules)."""
    shape, stride = tuple(t.shape), tuple(t.stride())
    lay = row_layout(shape, stride)
    if lay is None:
        return "copied to contiguous once (more than 3 leading dims that do not merge)"
    how = (f"{lay.n_rows} rows addressed as sizes {lay.sizes} strides {lay.strides[0][:3]}, "
           f"last-dim stride {lay.strides[0][3]}")
    if abs(lay.strides[0][3]) * shape[-1] > layout.INT32_MAX:
        return how + "; the last-dim offsets pass int32: run once on a contiguous copy"
    if lay.n_rows > layout.ROW_LIMIT:
        return how + f"; more than {layout.ROW_LIMIT} rows: launched in pieces of at most that many rows"
    return how


def _versions() -> tuple[str | None, str]:
    try:
        from importlib.metadata import version
        tv = version("triton")
    except Exception:  # noqa: BLE001 - only for a remark in explain
        tv = None
    return tv, torch.__version__


def _alternative(name: str, us: float, best: float, pick: bool) -> str:
    return f"    {name:22s} {us:9.2f} us  {100 * (us / best - 1):+6.1f}%" + ("  <- pick" if pick else "")


def _invariance(cfg, dtype, D) -> str:
    """One line on batch invariance (``qknorm.invariance``) of ``cfg`` for rows of width ``D``."""
    lay = invariance.row_layout(cfg.rows, cfg.block_d, cfg.num_warps, dtype.itemsize)
    how = f"{lay.per_thread} elements/thread x {lay.lanes} lanes x {lay.warps} warps per row"
    if dispatch.row_invariant(cfg, dtype.itemsize, D):
        return (f"batch-invariant: row layout {how}, the one every pick for this (op, dtype, D) uses, so a row's "
                "output does not depend on the call's row count (nor on in place or not)")
    return (f"NOT the batch-invariant row layout ({how}): a row may differ in the last bit from the same row in a "
            "call the dispatcher runs with another config")


def _describe(op, dtype, D, n_rows, d: Decision, top: int) -> str:
    cfg = d.config
    mode = cfg.chunk_mode(D)
    chunk = ("row in registers" if mode == 0 else f"row as {mode} tiles in registers" if mode >= 2
             else "chunked two-pass")
    grid = (f"persistent grid-stride, {cfg.programs_per_sm} programs/SM" if cfg.persistent
            else "one program per block")
    extra = (", token order" if cfg.token_order else "") + (", PDL" if cfg.pdl else "")
    head = (f"{op}: dtype={str(dtype).replace('torch.', '')} D={D} rows={n_rows} (bucket rows<={d.bucket}) "
            f"-> {cfg.name} ({chunk}, {grid}{extra}, {plural(cfg.rows, 'row')} x {cfg.block_d} cols, "
            f"{plural(cfg.num_warps, 'warp')})")
    lines = [head, f"  {d.reason}", "  " + _invariance(cfg, dtype, D)]
    t = d.table
    if t is not None:
        m = t.meta
        now = _versions()
        tv = m["triton"] + (f" (running {now[0]})" if now[0] and now[0] != m["triton"] else "")
        pv = m["torch"] + (f" (running {now[1]})" if now[1] != m["torch"] else "")
        lines.append(f"  table: {t.path or t.name} ({t.gpu}, {t.sm_count} SMs, triton {tv}, torch {pv}, "
                     f"{m['date']})")
    e = d.lookup.entry if d.lookup else None
    if e is not None:
        if e.shape or e.n_rows:
            lines.append(f"  measured on: {e.shape or ''}{' ' if e.shape else ''}({e.n_rows} rows)")
        if e.alternatives:
            best = e.alternatives[0][1]
            lines.append(f"  measured alternatives ({min(top, len(e.alternatives))} fastest of "
                         f"{len(e.alternatives)}):")
            shown = e.alternatives[:top]
            lines += [_alternative(name, us, best, name == cfg.name) for name, us in shown]
            us = dict(e.alternatives).get(cfg.name)
            if cfg.name not in dict(shown) and us is not None:
                lines.append(_alternative(cfg.name, us, best, True))
    return "\n".join(lines)


def _rows(t: torch.Tensor) -> int:
    n = 1
    for s in t.shape[:-1]:
        n *= s
    return n


def explain(x: torch.Tensor, k: torch.Tensor | None = None, *, op: str | None = None,
            table: TunedTable | str | None = None, top: int = 5, rotary_dim: int | None = None) -> str:
    """Describe the kernel decision for a call, without launching anything.

    ``explain(x)`` explains ``rms_norm(x)``; ``explain(q, k)`` explains
    ``qk_rms_norm(q, k, ...)``; ``explain(x, residual, op="fused_add_rms_norm")`` explains
    ``fused_add_rms_norm(x, residual, ...)``.

    Parameters
    ----------
    x : torch.Tensor
        ``[..., D]``, bfloat16, float16 or float32: the normalised tensor (Q for QK norm).
        Any strides; only its shape, strides, dtype and device are read.
    k : torch.Tensor or None
        ``[..., D]``, same last dim as ``x``: K for ``qk_rms_norm``, or the residual (the
        shape of ``x``) for ``fused_add_rms_norm``.
    op : str or None
        ``"rms_norm"``, ``"fused_add_rms_norm"`` or ``"qk_rms_norm"``; default
        ``"rms_norm"`` without ``k``, ``"qk_rms_norm"`` with it. Also ``"rms_norm_quant"`` and
        ``"fused_add_rms_norm_quant"``, whose kernels run on the tile the dispatcher picks for
        ``rms_norm`` and ``fused_add_rms_norm`` (:data:`SHARED_DECISIONS`): that decision is explained.
        ``"qk_rms_norm_rope"`` or ``"qk_norm_rope_cache"`` (with ``k``): the RoPE kernels' config and row form.
    table : TunedTable, str, os.PathLike or None
        A tuned table (loaded, or a path) to explain the decision under instead of the
        one the device uses.
    top : int
        How many measured alternatives to list (>= 0).
    rotary_dim : int or None
        The RoPE ops' rotary dims (even, 2 ... D; default D); not taken by the other ops.

    Returns
    -------
    str
        The chosen variant and config, the tuned-table entry (file and key) or the heuristic
        rule behind it, the ``top`` fastest measured alternatives when the table has them,
        how each tensor's rows are addressed, which backend the call would run, and (Triton
        kernels) how the host side reads tensors and launches (:func:`host_path`).

    Raises
    ------
    TypeError
        ``x`` or ``k`` is not a tensor of a supported dtype, ``k`` of another dtype than ``x``, ``op`` not a
        str, ``table`` neither a table nor a path, or ``top`` not an int.
    ValueError
        A 0-d tensor, ``k`` on another device, a RoPE op's q/k not ``[T, H, head_dim]`` of one token
        count (or head_dim past 1024), ``k`` of another last dim (or another shape than ``x`` for the
        residual), an unknown ``op``, ``op="qk_rms_norm"`` or a fused-add op without ``k``, an
        ``rms_norm`` op with ``k``, or ``top < 0``.
    TableError
        ``table`` is a path that does not load (:func:`qknorm.tuned_table.load_table`).
    """
    validate.activation("x", x)
    if k is not None:
        validate.activation("k", k)
        validate.same_dtype("k", k, "x", x)  # the call itself refuses these (q/k or x/residual of one dtype)
        validate.same_device("k", k, "x", x)
        if k.shape[-1] != x.shape[-1]:
            raise ValueError(f"k must have the last dim of x ({x.shape[-1]}), got shape {tuple(k.shape)}")
    if op is None:
        op = "rms_norm" if k is None else "qk_rms_norm"
    if not isinstance(op, str):
        raise TypeError(f"op must be a str or None, got {validate.type_name(op)} {op!r}")
    if table is not None and not isinstance(table, (str, os.PathLike, TunedTable)):
        raise TypeError(f"table must be a TunedTable, a path or None, got {validate.type_name(table)}")
    if op not in OPS and op not in SHARED_DECISIONS and op not in ROPE_OPS:
        raise ValueError(f"op must be one of {', '.join(OPS + tuple(SHARED_DECISIONS) + ROPE_OPS)}, got {op!r}")
    if op in ("rms_norm", "rms_norm_quant") and k is not None:
        raise ValueError(f"op={op!r} takes one tensor; got a second one (k, shape {tuple(k.shape)})")
    if op in ("fused_add_rms_norm", "fused_add_rms_norm_quant") and k is None:
        raise ValueError(f"op={op!r} needs the residual (pass it as k, the shape of x)")
    if op in ("qk_rms_norm",) + ROPE_OPS and k is None:
        raise ValueError(f"op={op!r} needs k (the K tensor)")
    if op in ROPE_OPS:  # q [T, Hq, D] and k [T, Hkv, D], as the RoPE ops take them
        validate.rope_pair(op, x, k, None, None, dispatch.ROPE_MAX_HEAD_DIM)
    if op in ("fused_add_rms_norm", "fused_add_rms_norm_quant") and k.shape != x.shape:
        raise ValueError(f"residual (passed as k) must have the shape of x {tuple(x.shape)}, got {tuple(k.shape)}")
    top = validate.integer("top", top, minimum=0)
    if isinstance(table, (str, os.PathLike)):
        table = load_table(table)
    if op not in ROPE_OPS and rotary_dim is None and x.numel() == 0 and (k is None or k.numel() == 0):
        # zero rows or width 0, every argument checked: the call launches nothing (the RoPE ops check their
        # rotary_dim against the width: explain_config below says what they do)
        shapes = " and ".join(str(tuple(t.shape)) for t in ((x,) if k is None else (x, k)))
        return f"{op} on shape {shapes}: no elements, so no kernel runs (the call only checks its arguments)"
    shared = SHARED_DECISIONS.get(op)
    if shared is not None:  # an op whose kernel takes another op's tile: explain that decision
        lines = [f"{op} runs its own kernel on the tile {shared} picks for the same call:",
                 explain(x, k, op=shared, table=table, top=top)]
        return "\n".join(lines)
    tensors = [x] if k is None else [x, k]
    d = x.shape[-1]
    qk = op in ("qk_rms_norm",) + ROPE_OPS
    n_rows = sum(_rows(t) for t in tensors) if qk else _rows(x)
    lines = [explain_config(op, x.dtype, d, n_rows, x.device, table=table, top=top, rotary_dim=rotary_dim)]
    for name, t in zip(("q", "k") if qk else ("x", "residual"), tensors):
        lines.append(f"  {name}: shape {tuple(t.shape)} stride {tuple(t.stride())}: {_addressing(t)}")
    backend = get_backend()
    runs = "Triton kernels" if (backend == "triton" or (backend == "auto" and x.is_cuda)) else "PyTorch path"
    lines.append(f"  backend={backend}: this call runs the {runs}")
    if runs == "Triton kernels":
        lines.append("  host: " + host_path(x.is_cuda))
    return "\n".join(lines)


def host_path(cuda: bool) -> str:
    """How an eager call's host side runs here, in one line (builds the compiled parts of the
    fast call if that was not done yet; launches nothing)."""
    s = "fast calls read their tensors' metadata " + (
        "in C" if native.load() is not None else f"in Python ({native.reason()})")
    if not cuda:
        return s + "; CPU tensors: PyTorch path (or the Triton interpreter)"
    launch.init()
    if not launch.enabled():
        return s + f"; launches: kernel[grid] ({launch.PROTOCOL_REASON if launch.PROTOCOL is None else 'disabled'})"
    if native.load_launcher() is None:
        return s + f"; launches: Triton's C launcher (no compiled launch: {native.reason(launcher=True)})"
    return s + ("; launches: compiled (cuLaunchKernelEx from a record checked against the driver's list of the "
                "kernel's parameters) from a plan's third call, Triton's C launcher before; from then on "
                "every op's calls with known argument metadata run entirely in C (the express call: "
                "metadata, overlap checks, new outputs, launch)")


#: Ops whose kernels take the dispatcher's tile of another op (the same canonical row layout, so
#: the same per-row reduction): what :func:`explain` explains for them.
SHARED_DECISIONS = {"rms_norm_quant": "rms_norm", "fused_add_rms_norm_quant": "fused_add_rms_norm"}


# --------------------------------------------------------------------------- command line

def _count(minimum: int):
    """An argparse type: an integer >= ``minimum`` (a bad value names the flag, the value and the rule)."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v}: must be >= {minimum}")
        return v
    return parse


def _heads(s: str) -> tuple[int, int]:
    parts = s.split(",")
    try:
        hq, hk = (int(h) for h in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: give the Q and K head counts as Q,K (e.g. 32,8)") from None
    if hq < 1 or hk < 1:
        raise argparse.ArgumentTypeError(f"{s!r}: head counts must be >= 1 (e.g. 32,8)")
    return hq, hk


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``qknorm explain``, added to ``p``."""
    p.add_argument("--op", choices=list(OP_ALIASES) + ["rope"], default="qk",
                   help="qk, rms, add, or rope (qk_rms_norm_rope; the attention prologue takes the same config)")
    p.add_argument("--rotary-dim", type=_count(2), default=None,
                   help="rotated dims of each head for --op rope (even; default the head dim)")
    p.add_argument("--tokens", type=_count(1), default=1, help="tokens in the call (>= 1; default 1)")
    p.add_argument("--heads", type=_heads, default=None, help="Q,K heads for --op qk (default 32,8)")
    p.add_argument("--head-dim", type=_count(1), default=None, help="head dim for --op qk (default 128)")
    p.add_argument("--hidden", type=_count(1), default=None, help="normalised width for --op rms/add (default 4096)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--table", help="explain under this tuned table (default: the one this GPU uses)")
    src.add_argument("--gpu", help="explain under the table shipped for this GPU name or key "
                                   f"({', '.join(shipped_tables()) or 'none shipped'}), on any machine")
    p.add_argument("--top", type=_count(0), default=5, help="measured alternatives to show (default 5)")


def main(argv: list[str] | None = None) -> int:
    """``qknorm explain``: print the decision for a problem given by flags.

    Parameters
    ----------
    argv : list of str or None
        The options (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0. A bad flag or value, a ``--gpu`` without a shipped table and a ``--table`` that
        does not load exit through argparse: one line on stderr, status 2.
    """
    from .cli import ArgParser  # here, not at the top: `import qknorm` must not import the command line

    p = ArgParser(prog="qknorm explain",
                  description="Print which kernel variant and config a call would use, and why: "
                              "the tuned-table entry or heuristic rule behind it and the measured "
                              "alternatives.")
    add_arguments(p)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    op = "qk_rms_norm_rope" if a.op == "rope" else OP_ALIASES[a.op]
    if a.rotary_dim is not None and op != "qk_rms_norm_rope":
        p.error(f"argument --rotary-dim: is for --op rope, not --op {a.op}")
    op_heads = op in ("qk_rms_norm", "qk_rms_norm_rope")
    if op_heads and a.hidden is not None:
        p.error(f"argument --hidden: {a.hidden} is for --op rms/add; --op {a.op} takes --heads and --head-dim")
    if not op_heads and (a.heads is not None or a.head_dim is not None):
        flag = "--heads" if a.heads is not None else "--head-dim"
        p.error(f"argument {flag}: is for --op qk; --op {a.op} takes --hidden")
    device = "cuda" if torch.cuda.is_available() else None
    table = None
    if a.gpu:
        from .tuned_table import gpu_key
        keys = shipped_tables()
        if gpu_key(a.gpu) not in keys:
            p.error(f"argument --gpu: no table shipped for {a.gpu!r} (key {gpu_key(a.gpu)}); shipped: "
                    f"{', '.join(keys) or 'none'}")
    if a.table or a.gpu:
        try:
            table = load_table(a.table or shipped_table_path(a.gpu))
        except TableError as e:
            p.error(f"argument {'--table' if a.table else '--gpu'}: {e}")
    if op_heads:
        hq, hk = a.heads or (32, 8)
        d, rows = a.head_dim or 128, a.tokens * (hq + hk)
    else:
        d, rows = a.hidden or 4096, a.tokens
    try:
        print(explain_config(op, DTYPES[a.dtype], d, rows, device, table=table, top=a.top, rotary_dim=a.rotary_dim))
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
