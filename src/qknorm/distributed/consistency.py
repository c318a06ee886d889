"""What the ranks of a group must agree on: the group itself, and (``check=True``) the
arguments every rank passed.

:func:`group_size` and :func:`backend_fits` raise before any collective when there is no
usable group. :func:`check_across_ranks` is the ``check=True`` protocol: ONE
``all_gather`` of a fixed-size fp64 descriptor per rank, after which every rank evaluates
the same table and raises the same error, so a mismatch (or a local error on one rank,
through :func:`raise_everywhere`) raises on every rank and leaves none waiting in the
all-reduce. It costs a collective and a host sync; there is deliberately no per-shape
"checked once" cache, because whether a rank joins this collective must not depend on
its own local state.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..validate import dtype_name

RMS_OP, QK_OP = 1, 2
OP_NAMES = {RMS_OP: "rms_norm_tp", QK_OP: "qk_rms_norm_tp"}
DTYPE_CODE = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}
_CODE_DTYPE = {v: dtype_name(k) for k, v in DTYPE_CODE.items()}
# descriptor fields (fixed length whatever the op, so ranks calling different ops still agree on sizes)
FIELDS = ("error", "op", "a_rows", "a_width", "a_full", "a_dtype", "b_rows", "b_width", "b_full",
          "b_dtype", "has_weight", "eps", "weight_offset")


def group_size(group) -> int:
    """World size of ``group``; raises before any collective when there is no usable group."""
    if not dist.is_available():
        raise RuntimeError("qknorm.distributed needs torch.distributed, which this PyTorch build lacks")
    if not dist.is_initialized():
        raise RuntimeError("qknorm.distributed: no process group is initialised; call "
                           "torch.distributed.init_process_group(...) first (NCCL for CUDA tensors, "
                           "gloo for CPU tensors)")
    if dist.get_rank(group) < 0:
        raise ValueError("qknorm.distributed: this process is not a member of `group`")
    return dist.get_world_size(group)


def backend_fits(group, t) -> None:
    """Raise when CPU tensors meet an NCCL group (which only reduces CUDA tensors)."""
    if not t.is_cuda and str(dist.get_backend(group)) == "nccl":
        raise ValueError(f"tensors are on {t.device} but the process group's backend is NCCL, "
                         f"which only reduces CUDA tensors (use a gloo group for CPU tensors)")


def raise_everywhere(err: Exception, check: bool, group, t, op: int):
    """Re-raise a local argument error; with ``check=True`` first tell the other ranks
    (through the check collective they are about to enter) so that they raise too."""
    if not check:
        raise err
    group_size(group)
    if isinstance(t, torch.Tensor):
        device = t.device
    elif "nccl" in str(dist.get_backend(group)) and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    check_across_ranks(group, device, dict(error=1, op=op), ("x", None) if op == RMS_OP else ("q", "k"), err)


def check_across_ranks(group, device, desc: dict, names: tuple, own_error: Exception | None = None) -> None:
    """All-gather ``desc`` (one fixed-size fp64 vector per rank, fields :data:`FIELDS`) and
    raise, identically on every rank, if any rank rejected its arguments or the ranks
    disagree. ``names``: the tensors' names (``("x", None)`` or ``("q", "k")``). One
    collective, then a host sync."""
    if device.type == "meta":  # shape inference: no values to exchange, no collective to run
        return
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("check=True needs a host sync and cannot run during CUDA-graph capture; "
                           "make one eager call with check=True before capturing")
    mine = torch.tensor([float(desc.get(f, 0)) for f in FIELDS], dtype=torch.float64, device=device)
    world = dist.get_world_size(group)
    table = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(table, mine, group=group)
    rows = [dict(zip(FIELDS, t.tolist())) for t in table]
    op_name = OP_NAMES.get(int(desc["op"]), "?")
    bad = [r for r, row in enumerate(rows) if row["error"]]
    if own_error is not None:
        raise own_error
    if bad:
        raise ValueError(f"{op_name} check=True: rank(s) {bad} of the group rejected their arguments "
                         f"(their own error says why); raised on every rank")
    problems, dtype_problem = [], False

    def per_rank(field, fmt=lambda v: v):
        return "[" + ", ".join(str(fmt(r[field])) for r in rows) + "]"

    if len({r["op"] for r in rows}) > 1:
        raise ValueError(f"{op_name} check=True: ranks call different ops: "
                         f"{per_rank('op', lambda v: OP_NAMES.get(int(v), v))} (raised on every rank)")
    for seg, name in (("a", names[0]), ("b", names[1])):
        if name is None:
            continue
        if len({r[f"{seg}_dtype"] for r in rows}) > 1:
            dtype_problem = True
            problems.append(f"{name} dtypes differ across ranks: "
                            f"{per_rank(f'{seg}_dtype', lambda v: _CODE_DTYPE.get(int(v), v))}")
        if len({r[f"{seg}_rows"] for r in rows}) > 1:
            problems.append(f"{name} row counts (product of leading dims) differ across ranks: "
                            f"{per_rank(f'{seg}_rows', int)}")
        fulls = {r[f"{seg}_full"] for r in rows}
        total = int(sum(r[f"{seg}_width"] for r in rows))
        widths = per_rank(f"{seg}_width", int)
        if len(fulls) > 1:
            problems.append(f"{name} full widths differ across ranks: {per_rank(f'{seg}_full', int)} "
                            f"(local widths {widths})")
        elif total != int(next(iter(fulls))):
            arg = "full_width" if names[1] is None else f"{name}_full_width"
            problems.append(f"{name} local widths per rank {widths} sum to {total}, but the full width "
                            f"is {int(next(iter(fulls)))} (for uneven shards pass {arg}={total})")
    for field, what in (("has_weight", "weight presence"), ("eps", "eps"), ("weight_offset", "weight_offset")):
        if len({r[field] for r in rows}) > 1:
            problems.append(f"{what} differs across ranks: {per_rank(field)}")
    if problems:
        msg = f"{op_name} check=True: ranks disagree (raised on every rank): " + "; ".join(problems)
        raise (TypeError if dtype_problem else ValueError)(msg)
