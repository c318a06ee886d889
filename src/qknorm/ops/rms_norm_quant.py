"""Host side of ``rms_norm_quant`` and ``fused_add_rms_norm_quant`` (kernel:
``kernels/rms_norm_quant.py``): argument checks, the PyTorch path, plans and launch.

Public functions and documentation: ``functional.py``. CUDA tensors (and CPU tensors with
``QKNORM_BACKEND=triton`` under ``TRITON_INTERPRET=1``) run the fused one-pass kernel through
the shared plans of ``_plan`` (a cached fast call, else the general call); other calls the
PyTorch path (:func:`torch_path`), which defines the numerics: the kernel gives its codes and
scales for the same fp32 ``n``.

The tile: the dispatcher's pick for ``rms_norm`` (``fused_add_rms_norm`` for the fused form)
of the same dtype, width and rows, so ``n`` is summed in the canonical row layout of that
width (the bits ``rms_norm`` computes before its rounding, batch-invariant).
"""
from __future__ import annotations

import torch

from .. import backend, launch, layout
from .. import native as fastcall  # not the 'native' FP8 cast below
from .. import validate
from ..layout import INT32_MAX
from ..reference import FLT_MAX, FLT_MIN, rms_norm_ref, writing
from . import _express
from . import _plan as plans
from ._plan import PLANS, Pair

OP = "rms_norm_quant"
_grad_on = torch.is_grad_enabled
_is_compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)

#: Largest finite value of each output format (saturation bound; the quantisation's ``qmax``).
QMAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0, torch.int8: 127.0}
AMAX_FLOOR = 1e-10  #: dynamic scales are ``max(amax, AMAX_FLOOR) / qmax``


def scales_shape(x_shape, n_groups: int) -> tuple:
    """Shape of the dynamic scales: x's leading dims and one scale per group (1: per token)."""
    return tuple(x_shape[:-1]) + (n_groups,)


# The smallest float that rounds to inf in fp32 (FLT_MAX + half an ulp): below it a bound is a finite fp32 number
# (3.4028235e38, FLT_MAX as usually printed, rounds to FLT_MAX).
_FP32_INF_FROM = FLT_MAX + 2.0 ** 103


def check_args(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
               column_major_scales, scale_ue8m0, out, scales_out, *, memory: bool = True):
    """Every rule, in the order users see the errors; nothing is written. Returns
    ``(eps, weight_offset, n_groups)`` (``n_groups`` 0 for a static scale)."""
    validate.activation("x", x)
    if residual is not None:
        validate.residual(x, residual)
    validate.weight("weight", weight, x.shape[-1], "x", x)
    validate.scalars(eps, weight_offset, weight is not None)
    if out_dtype not in QMAX:
        raise TypeError(f"out_dtype must be torch.float8_e4m3fn, torch.float8_e5m2 or torch.int8, got {out_dtype!r}")
    validate.python_bool("column_major_scales", column_major_scales)
    validate.python_bool("scale_ue8m0", scale_ue8m0)
    d = x.shape[-1]
    if scale is not None:
        validate.scale_tensor("scale", scale, "x", x)
        for name, v in (("group_size", group_size), ("scale_ub", scale_ub), ("scales_out", scales_out)):
            if v is not None:
                raise ValueError(f"{name} is for dynamic scales; with a static scale pass {name}=None")
        if scale_ue8m0 or column_major_scales:
            raise ValueError("scale_ue8m0 and column_major_scales are for dynamic scales; with a static scale "
                             "leave them False")
        n_groups = 0
    else:
        n_groups = 1
        if group_size is not None:
            g = validate.integer("group_size", group_size, minimum=1)
            if d % g:
                raise ValueError(f"group_size {g} must divide the last dim of x ({d})")
            n_groups = d // g
        if scale_ub is not None:
            if isinstance(scale_ub, torch.Tensor):
                validate.scale_tensor("scale_ub", scale_ub, "x", x)
            else:
                ub = validate.real("scale_ub", scale_ub)
                if not FLT_MIN <= ub < _FP32_INF_FROM:  # the kernels take it as fp32: 1e-50 would be 0, 1e39 inf
                    raise ValueError(f"scale_ub must be a positive number in fp32's normal range "
                                     f"[{FLT_MIN:.4g}, {FLT_MAX:.4g}], got {scale_ub!r}")
    if out is not None:
        validate.tensor("out", out, "a torch.Tensor or None")
        if out.dtype != out_dtype:
            raise TypeError(f"out must have dtype {out_dtype} (out_dtype), got {validate.dtype_name(out.dtype)}")
        validate.same_shape("out", out, "x", x)
        validate.same_device("out", out, "x", x)
        validate.written("out", out)
    if scales_out is not None:
        validate.tensor("scales_out", scales_out, "a torch.Tensor or None")
        want = scales_shape(x.shape, n_groups)
        if scales_out.dtype != torch.float32:
            raise TypeError(f"scales_out must be float32, got {validate.dtype_name(scales_out.dtype)}")
        if tuple(scales_out.shape) != want:
            raise ValueError(f"scales_out must have shape {want} (x's leading dims, {n_groups} scale"
                             f"{'s' if n_groups > 1 else ''} per row), got {tuple(scales_out.shape)}")
        validate.same_device("scales_out", scales_out, "x", x)
        validate.written("scales_out", scales_out)
    if residual is not None:
        validate.written("residual", residual)
    if memory:
        written = [("out", out), ("scales_out", scales_out), ("residual", residual)]
        written = [(n, t) for n, t in written if t is not None]
        for i, (na, a) in enumerate(written):
            for nb, b in written[i + 1:]:
                validate.disjoint(na, a, nb, b)
            if na != "residual":
                validate.disjoint(na, a, "x", x)
        if residual is not None:
            validate.disjoint("x", x, "residual", residual)
    return float(eps), float(weight_offset), n_groups


def refuse_grad(*named) -> None:
    """The op is not differentiable: :func:`validate.not_differentiable` of its named tensor arguments."""
    validate.not_differentiable("the quantised output", *named)


def pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """``2**ceil(log2(s))`` exactly for positive finite ``s`` (UE8M0 scales; subnormal ``s`` too);
    other values (<= 0, inf, NaN) unchanged, as the kernel's ``pow2_ceil``."""
    m, e = torch.frexp(s)  # s = m * 2**e, m in [0.5, 1)
    p = torch.ldexp(torch.ones_like(s), e - (m == 0.5).to(e.dtype))
    return torch.where((s > 0) & torch.isfinite(s), p, s)


def new_scales(x_shape, device, n_groups: int, column_major: bool) -> torch.Tensor:
    """The dynamic scales a call allocates: ``x_shape[:-1] + (n_groups,)``, fp32, row-major or
    column-major (stride 1 along the tokens, x's leading dims flattened: the layout DeepGEMM's
    and TMA's grouped GEMMs read)."""
    shape = scales_shape(x_shape, n_groups)
    if not column_major:
        return torch.empty(shape, dtype=torch.float32, device=device)
    return torch.empty((n_groups,) + shape[:-1], dtype=torch.float32, device=device).movedim(0, -1)


def torch_path(x, residual, weight, eps: float, scale, n_groups: int, out_dtype, weight_offset: float, scale_ub,
               scale_ue8m0: bool):
    """The numerics, in PyTorch ops: ``(codes, scales or None, fp32 sum or None)``, nothing written.
    ``n`` as ``rms_norm`` computes it (of the fp32 sum ``x + residual`` for the fused form), then
    :func:`quantise`."""
    s = None
    if residual is not None:
        s = x.to(torch.float32) + residual.to(torch.float32)
        n = rms_norm_ref(s, weight, eps, weight_offset)
    else:
        n = rms_norm_ref(x, weight, eps, weight_offset)
    y, sc = quantise(n, scale, n_groups, out_dtype, scale_ub, scale_ue8m0)
    return y, sc, s


def quantise(n: torch.Tensor, scale, n_groups: int, out_dtype, scale_ub, scale_ue8m0: bool):
    """``(codes, scales)`` of the fp32 values ``n`` (scales None for a static ``scale``).

    Scales ``max(amax, 1e-10) / qmax`` per group (NaN when the group holds a NaN) with IEEE
    division (a device tensor divisor: on CUDA, PyTorch divides by a Python number as a
    multiplication by its reciprocal), then ``scale_ub``, then UE8M0; codes ``saturate(n /
    scale)`` (division, not a reciprocal's product: the codes at rounding ties depend on it),
    round half to even for int8 (NaN -> 0), to nearest even for fp8 (NaN kept)."""
    qmax = QMAX[out_dtype]
    if scale is not None:
        q = n / scale.reshape(())
        sc = None
    else:
        d = n.shape[-1]
        lead = tuple(n.shape[:-1])
        if n_groups == 0:  # zero-width rows in groups: no groups
            return torch.empty(n.shape, dtype=out_dtype, device=n.device), n.new_empty(lead + (0,))
        ng = n.reshape(lead + (n_groups, d // n_groups))
        amax = ng.abs().amax(dim=-1) if d else n.new_zeros(lead + (n_groups,))  # an empty row's amax: 0
        sc = torch.clamp(amax, min=AMAX_FLOOR) / torch.full((), qmax, dtype=torch.float32, device=n.device)
        if scale_ub is not None:
            # a number is checked below fp32's inf; one above FLT_MAX rounds to it in fp32, as the kernels take it
            ub = scale_ub.reshape(()).to(torch.float32) if isinstance(scale_ub, torch.Tensor) else min(scale_ub, FLT_MAX)
            sc = torch.where(sc > ub, ub, sc)  # as the kernels: a NaN bound bounds nothing, a NaN scale stays NaN
        if scale_ue8m0:
            sc = pow2_ceil(sc)
        q = (ng / sc.unsqueeze(-1)).reshape(n.shape)
    q = torch.clamp(q, -qmax, qmax)  # NaN stays NaN
    if out_dtype == torch.int8:
        q = torch.nan_to_num(torch.round(q), nan=0.0)  # round half to even; int8 has no NaN
    return q.to(out_dtype), sc


def run(x, residual, weight, eps: float, scale, n_groups: int, out_dtype, weight_offset: float, scale_ub,
        column_major_scales: bool, scale_ue8m0: bool, out, scales_out, config=None, debug=None):
    """The general call, after :func:`check_args`: ``(y, scales)``. Reads weight, scale and
    scale_ub from private copies when they share memory with a written tensor; then the kernel
    (:func:`use_kernel`) or the PyTorch path, which writes ``residual`` (fused form), ``out`` and
    ``scales_out`` last. ``config``/``debug`` (kernel only, tests): a forced ``KernelConfig``, and
    an fp32 tensor of x's shape that receives ``n``."""
    with torch.no_grad():
        written = (residual, out, scales_out)
        weight = validate.unaliased(weight, written)
        if isinstance(scale_ub, torch.Tensor):
            scale_ub = validate.unaliased(scale_ub, written)
        kscale = validate.unaliased(scale, written)
        if use_kernel(x):
            y = out if out is not None else torch.empty(x.shape, dtype=out_dtype, device=x.device)
            sc = None
            if scale is None:
                sc = scales_out if scales_out is not None else \
                    new_scales(x.shape, x.device, n_groups, column_major_scales)
            _launch_general(x, residual, weight, eps, kscale, n_groups, out_dtype, weight_offset, scale_ub,
                            scale_ue8m0, y, sc, config, debug)
            launch.bump_versions(tuple(t for t in (residual, out, scales_out) if t is not None))
            return y, (scale if scale is not None else sc)
        y, sc, s = torch_path(x, residual, weight, eps, kscale, n_groups, out_dtype, weight_offset, scale_ub,
                              scale_ue8m0)
        if out is None and not y.is_contiguous():  # as the kernel path: a new output is contiguous
            y = y.contiguous()
        if scale is None and scales_out is None:
            scales_out = new_scales(x.shape, x.device, n_groups, column_major_scales)
        with writing(residual, out, scales_out):  # only writes inside (a tensor made there would be an inference one)
            if residual is not None:
                residual.copy_(s)
            if out is not None:
                out.copy_(y)
            if scale is None:
                scales_out.copy_(sc)
        if out is not None:
            y = out
        if scale is not None:
            return y, scale
    return y, scales_out


# --------------------------------------------------------------------------- the kernel

#: How the kernel casts to FP8: ``"auto"`` (Triton's cast on sm_89+ GPUs, the kernel's exact
#: bit path elsewhere: the interpreter, older GPUs), ``"bits"`` or ``"native"`` (tests).
FP8_CAST = "auto"
_OUT_CODE = {torch.int8: 0, torch.float8_e4m3fn: 1, torch.float8_e5m2: 2}
_native_cache: dict = {}


def use_kernel(x) -> bool:
    """Whether a call on ``x`` runs the kernel (the backend's choice; not for empty or
    zero-width tensors, which the PyTorch path answers)."""
    return x.numel() > 0 and backend.use_triton(x)


def native_cast(device) -> bool:
    """Whether the kernel casts to FP8 with Triton's cast on ``device`` (see :data:`FP8_CAST`)."""
    mode = FP8_CAST
    if mode != "auto":
        return mode == "native"
    idx = device.index if device.type == "cuda" else None
    hit = _native_cache.get(idx)
    if hit is None:
        hit = False
        if device.type == "cuda" and not backend.interpreter_on():
            try:
                hit = torch.cuda.get_device_capability(device) >= (8, 9)
            except Exception:  # noqa: BLE001 - no CUDA: the bit path
                hit = False
        _native_cache[idx] = hit
    return hit


def launcher() -> launch.KernelLauncher:
    """The kernel's launcher (imports triton on first use)."""
    return plans.kernel_launcher("rms_norm_quant", "rms_norm_quant_kernel", ("X", "R", "Y", "W", "SC", "SIN", "DBG"),
                                 ("X", "R", "Y", "W", "SC", "SIN", "DBG", "eps", "eps_tiny", "w_offset"))


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def build_plan(x, residual, weight, y_strides, sc_strides, static: bool, n_groups: int, out_dtype, ub_kind: int,
               ub: float, scale_ue8m0: bool, config, debug: bool, sin_dtype, sc_dtype):
    """Plan of one call's metadata (after the checks), or None when the kernel cannot address
    the tensors directly (more than three unmergeable leading dims, column offsets past int32,
    too many rows). ``ub_kind``: 0 no bound, 1 the float ``ub``, 2 a tensor."""
    d = x.shape[-1]
    shape = tuple(x.shape)
    rs = tuple(residual.stride()) if residual is not None else tuple(x.stride())
    ss = tuple(sc_strides) if sc_strides is not None else (0,) * len(shape)
    lay = layout.row_layout(shape, tuple(x.stride()), rs, tuple(y_strides), ss)
    if lay is None or lay.n_rows > layout.ROW_LIMIT or any(abs(s[3]) * d > INT32_MAX for s in lay.strides[:3]) \
            or not plans.weight_ok(weight, d):
        return None
    op = "fused_add_rms_norm" if residual is not None else "rms_norm"
    cfg = plans.choose(op, x.dtype, d, lay.n_rows, x.device, config)
    chunked = cfg.chunked(d)
    group = 0 if static or n_groups == 1 else d // n_groups
    gp = 1 << (group - 1).bit_length() if group else 0
    (_, n1, n2), (xs, rs_, ys, ss_) = lay.sizes, lay.strides
    return plans.make_plan(
        launcher(), cfg, plans.blocks(lay.n_rows, cfg), x.device,
        (x.dtype, residual.dtype if residual is not None else x.dtype, out_dtype,
         weight.dtype if weight is not None else x.dtype, sc_dtype, sin_dtype, torch.float32 if debug else x.dtype),
        ub=float(ub), n_rows=lay.n_rows, D=d, N1=n1, N2=n2, **plans.strides_named("x", xs),
        **plans.strides_named("r", rs_), **plans.strides_named("y", ys),
        ws=weight.stride(0) if weight is not None else 0, ss0=ss_[0], ss1=ss_[1], ss2=ss_[2], ssg=ss_[3],
        n_groups=n_groups, HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None, STATIC=static,
        GROUP=group, GP=gp, UB=ub_kind, UE8M0=scale_ue8m0, OUT=_OUT_CODE[out_dtype], QMAX=QMAX[out_dtype],
        NATIVE_CAST=out_dtype != torch.int8 and native_cast(x.device), ROWS=cfg.rows, BLOCK_D=cfg.block_d,
        CHUNKED=chunked, ONE_PASS=not chunked and (static or group == 0 or _pow2(group)), DEBUG=debug)


def _ub_parts(scale_ub):
    """``(ub_kind, float ub, tensor or None)`` of a checked ``scale_ub``."""
    if scale_ub is None:
        return 0, 0.0, None
    if isinstance(scale_ub, torch.Tensor):
        return 2, 0.0, scale_ub
    return 1, float(scale_ub), None


def _launch_general(x, residual, weight, eps, scale, n_groups, out_dtype, weight_offset, scale_ub, scale_ue8m0,
                    y, sc, config, debug, copied: bool = False):
    """Launch the kernel over checked arguments (outputs ``y``, ``sc`` given): calls past
    ``ROW_LIMIT`` rows in pieces, views the kernel cannot address once on contiguous copies."""
    assert debug is None or (debug.dtype == torch.float32 and debug.stride() == y.stride()), \
        "debug: fp32 with the strides of the codes"
    weight = plans.addressable_weight(weight, x.shape[-1])
    ts = [x, y] + [t for t in (residual, sc, debug) if t is not None]
    if plans.n_rows(x) > layout.ROW_LIMIT:
        for piece in plans.row_chunks(ts):
            it = iter(piece[2:])
            xc, yc = piece[0], piece[1]
            rc = next(it) if residual is not None else None
            scc = next(it) if sc is not None else None
            dc = next(it) if debug is not None else None
            _launch_general(xc, rc, weight, eps, scale, n_groups, out_dtype, weight_offset, scale_ub, scale_ue8m0,
                            yc, scc, config, dc)
        return
    ub_kind, ub, ub_t = _ub_parts(scale_ub)
    sin = scale if scale is not None else ub_t
    if sin is not None and sin.is_neg():
        sin = sin.resolve_neg()
    key = (OP, "general", x.shape, x.stride(), x.dtype, x.get_device(),
           None if residual is None else residual.stride(), y.stride(), out_dtype,
           None if sc is None else sc.stride(), None if weight is None else (weight.stride(), weight.dtype),
           scale is not None, n_groups, ub_kind, ub, scale_ue8m0, debug is not None,
           FP8_CAST, config)
    plan = plans.cached(key, lambda: build_plan(
        x, residual, weight, y.stride(), None if sc is None else sc.stride(), scale is not None, n_groups, out_dtype,
        ub_kind, ub, scale_ue8m0, config, debug is not None, torch.float32 if sin is not None else x.dtype,
        torch.float32 if sc is not None else x.dtype))
    if plan is None:
        assert not copied, "a contiguous copy must be addressable"
        xc = x.contiguous()
        rc = residual.contiguous() if residual is not None else None
        yc = torch.empty(y.shape, dtype=y.dtype, device=y.device)
        scc = torch.empty(sc.shape, dtype=sc.dtype, device=sc.device) if sc is not None else None
        dc = torch.empty(debug.shape, dtype=debug.dtype, device=debug.device) if debug is not None else None
        _launch_general(xc, rc, weight, eps, scale, n_groups, out_dtype, weight_offset, scale_ub, scale_ue8m0,
                        yc, scc, config, dc, copied=True)
        with writing(residual, y, sc, debug):
            for dst, src in ((residual, rc), (y, yc), (sc, scc), (debug, dc)):
                if dst is not None:
                    dst.copy_(src)
        return
    r = residual if residual is not None else x
    w = weight if weight is not None else x
    s = sc if sc is not None else x
    sin = sin if sin is not None else x
    dbg = debug if debug is not None else x
    ts = (x, r, y, w, s, sin, dbg)
    ptrs = tuple(t.data_ptr() for t in ts)
    plans.launch_general(plan, ptrs, eps, weight_offset, ts)


# --------------------------------------------------------------------------- the fast call

def _apart(pa: int, sa, pb: int, sb) -> bool:
    return pa + sa[1] <= pb + sb[0] or pb + sb[1] <= pa + sa[0]


def _given_apart(t, span, others):
    """The data pointer of a given output ``t`` (byte span ``span``), or None where it meets one of
    ``others`` (``(pointer, span)`` pairs): the general call then reads from private copies."""
    p = t.data_ptr()
    for q, s in others:
        if not _apart(p, span, q, s):
            return None
    return p


def fast(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, column_major_scales,
         scale_ue8m0, out, scales_out, config=None):
    """The common kernel call on a cached plan: ``(y, scales)``, or None to take the general
    call (which checks everything again and raises where an argument is wrong).

    The key holds all the metadata the checks read, the scalars included; per call only the
    flags a key cannot hold (negated views, grad) and the overlaps of the actual buffers are
    checked: every written tensor (residual, a given ``out`` / ``scales_out``) must share no
    byte with another tensor of the call (x and residual by the exact test), else the general
    call copies or raises."""
    if type(eps) is not float or type(weight_offset) is not float or backend.active == "torch" \
            or not (group_size is None or type(group_size) is int) or type(column_major_scales) is not bool \
            or type(scale_ue8m0) is not bool:  # (32.0 == 32 and 1 == True as keys: the general call checks types)
        return None
    if scale_ub is None or type(scale_ub) is float:
        ubk, ub_t = scale_ub, None
    else:
        ubk, ub_t = True, scale_ub  # a tensor (described below) or another type (refused there)
    sin = scale if scale is not None else ub_t
    d = fastcall.describe(_grad_on(), x, residual, weight, sin, out, scales_out)
    if d is None or (d[1] < 0 and not plans.FAST_ON_CPU):
        return None
    hit = PLANS.fetch((OP, d[0], scale is not None, eps, weight_offset, group_size, out_dtype, ubk, column_major_scales,
                       scale_ue8m0, FP8_CAST, config), _fast_plan, x, residual, weight, eps, scale, group_size, out_dtype,
                      weight_offset, scale_ub, column_major_scales, scale_ue8m0, out, scales_out, config)
    if hit is None:
        return None
    plan, sc_shape, sc_strides = hit
    sp = plan.spans  # byte spans: x, residual, weight, scale or scale_ub, out, scales_out
    px = d[2]
    pr = d[3] if residual is not None else px
    pw = d[4] if weight is not None else px
    ps = d[5] if sin is not None else px
    reads = [(px, sp[0])]
    if weight is not None:
        reads.append((pw, sp[2]))
    if sin is not None:
        reads.append((ps, sp[3]))
    if residual is not None:
        if not (_apart(px, sp[0], pr, sp[1]) or plans.apart(plan, Pair.X_OUT, px, sp[0], pr, sp[1])):
            return None
        for p, s in reads[1:]:
            if not _apart(p, s, pr, sp[1]):
                return None
        reads.append((pr, sp[1]))  # the written tensors below must not meet it either
    if out is None:
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        py = y.data_ptr()
    else:
        y, py = out, _given_apart(out, sp[4], reads)
        if py is None:
            return None
        reads.append((py, sp[4]))
    if scale is not None:
        sc, psc = x, px
    elif scales_out is None:
        sc = torch.empty_strided(sc_shape, sc_strides, dtype=torch.float32, device=x.device)
        psc = sc.data_ptr()
    else:
        sc, psc = scales_out, _given_apart(scales_out, sp[5], reads)
        if psc is None:
            return None
    ptrs = (px, pr, py, pw, psc, ps, px)
    launch.launch_plan(plan, ptrs, (x, residual if residual is not None else x, y, weight if weight is not None else x,
                                    sc, sin if sin is not None else x, x))
    if residual is not None or out is not None or scales_out is not None:
        launch.bump_versions(tuple(t for t in (residual, out, scales_out) if t is not None))
    if plan.records is not None and _express.wants(plan) and config is None and FP8_CAST == "auto":
        _express_entry(plan, sp, (x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub,
                                  column_major_scales, scale_ue8m0, out, scales_out, True), d, py, psc, sc_shape,
                       sc_strides)
    return y, (scale if scale is not None else sc)


def _express_entry(plan, sp, args, d, py, psc, sc_shape, sc_strides):
    """This call for the express call (``ops/_express.py``): the public arguments ``(x, residual, weight,
    eps, scale, group_size, out_dtype, weight_offset, scale_ub, column_major_scales, scale_ue8m0, out,
    scales_out)`` and ``FP8_CAST == "auto"`` (registered only then: the flag keeps another setting's calls
    off these entries); the same overlap rules as :func:`fast`."""
    x, residual, weight, scale, out_dtype, out, scales_out = (args[i] for i in (0, 1, 2, 4, 6, 11, 12))
    si = 4 if scale is not None else 8 if d[5] is not None else None  # the scale (or scale_ub) tensor read
    ptrs = [None] * len(args)
    ptrs[0], ptrs[1], ptrs[2], ptrs[11] = d[2], d[3], d[4], py
    if si is not None:
        ptrs[si] = d[5]
    if scale is None:
        ptrs[12] = psc
    reads = [(0, sp[0])] + [(2, sp[2])] * (weight is not None) + [(si, sp[3])] * (si is not None)
    pairs = []
    if residual is not None:
        pairs += [(0, sp[0], 1, sp[1])] + [(i, s, 1, sp[1]) for i, s in reads[1:]]
        reads.append((1, sp[1]))
    if out is not None:
        pairs += [(11, sp[4], i, s) for i, s in reads]
        reads.append((11, sp[4]))
    if scale is None and scales_out is not None:
        pairs += [(12, sp[5], i, s) for i, s in reads]
    allocs = []
    if out is None:
        allocs.append((11, torch.empty_like, 0, {"dtype": out_dtype, "memory_format": torch.contiguous_format}))
    if scale is None and scales_out is None:
        allocs.append((12, torch.empty_strided, -1, {"size": sc_shape, "stride": sc_strides, "dtype": torch.float32,
                                                     "device": x.device}))
    head = (0, 0 if residual is None else 1, 11, 0 if weight is None else 2, 0 if scale is not None else 12,
            0 if si is None else si, 0)
    bumps = tuple(i for i, t in ((1, residual), (11, out), (12, scales_out)) if t is not None)
    _express.register(_express.QUANT, args, plan, tuple(ptrs), head, pairs, bumps=bumps, allocs=allocs,
                      ret=(11, 4 if scale is not None else 12))


def _fast_plan(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, column_major_scales,
               scale_ue8m0, out, scales_out, config):
    """``(plan, scales shape, scales strides)`` of a fast call's key (PLANS holds this triple
    for the quantised ops), or None: the key takes the general call."""
    if not plans.checked(lambda: validate.config(config)):
        return None
    try:
        eps, weight_offset, n_groups = check_args(x, residual, weight, eps, scale, group_size, out_dtype,
                                                  weight_offset, scale_ub, column_major_scales, scale_ue8m0, out,
                                                  scales_out, memory=False)
    except (TypeError, ValueError):
        return None
    if x.numel() == 0 or (not x.is_cuda and not plans.FAST_ON_CPU):
        return None
    y_strides = plans.contig_strides(x.shape) if out is None else tuple(out.stride())
    sc_shape = sc_strides = None
    if n_groups:
        sc_shape = scales_shape(x.shape, n_groups)
        sc_strides = tuple(scales_out.stride()) if scales_out is not None else \
            tuple(new_scales(x.shape, "meta", n_groups, column_major_scales).stride())
    ub_kind, ub, ub_t = _ub_parts(scale_ub)
    sin = scale if scale is not None else ub_t
    plan = build_plan(x, residual, weight, y_strides, sc_strides, scale is not None, n_groups, out_dtype, ub_kind, ub,
                      scale_ue8m0, config, False, torch.float32 if sin is not None else x.dtype,
                      torch.float32 if n_groups else x.dtype)
    if plan is None:
        return None
    plan.spans = tuple((0, 0) if t is None else plans.span(t.shape, t.stride(), t.element_size())
                       for t in (x, residual, weight, sin, out, scales_out))
    if residual is not None:
        plans.set_pair(plan, Pair.X_OUT, x.shape, x.stride(), residual.shape, residual.stride(), x.element_size())
    plan = plans.bind_scalars(plan, eps, weight_offset)
    return plan, sc_shape, sc_strides  # the new scales' layout (dynamic scales without scales_out)


def call(x, residual=None, weight=None, eps=1e-6, scale=None, group_size=None, out_dtype=torch.float8_e4m3fn,
         weight_offset=0.0, scale_ub=None, column_major_scales=False, scale_ue8m0=False, out=None, scales_out=None,
         config=None, debug=None):
    """Eager ``rms_norm_quant`` / ``fused_add_rms_norm_quant`` (``residual`` given) without the
    compile routing (the custom ops' body): the fast call, else every check and the general call."""
    if debug is None:
        r = fast(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset, scale_ub, column_major_scales,
                 scale_ue8m0, out, scales_out, config)
        if r is not None:
            return r
    refuse_grad(("x", x), ("residual", residual), ("weight", weight))
    validate.config(config)
    eps, weight_offset, n_groups = check_args(x, residual, weight, eps, scale, group_size, out_dtype, weight_offset,
                                              scale_ub, column_major_scales, scale_ue8m0, out, scales_out)
    return run(x, residual, weight, eps, scale, n_groups, out_dtype, weight_offset, scale_ub, column_major_scales,
               scale_ue8m0, out, scales_out, config, debug)
