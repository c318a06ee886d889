"""PyTorch: the fp32 formula in eager ops (``torch``), the same under ``torch.compile``,
``torch.nn.functional.rms_norm`` (``torch_rms_norm``), the ``.contiguous()`` copy path
(``torch_copy2d``), the copy alone (``contiguous_copy``, family ``copy``), the flattening
trap (``torch_flat2d``, family ``trap``), the norm-then-RoPE composition
(``torch_norm+rope``) and, for the attention prologue, the composition ``torch_norm+rope+cache``
(:func:`torch_prologue`: fp32 norm and RoPE/mRoPE, then index writes into the caches, FP8 quantised
in PyTorch ops; ``torch.compile`` compiles the same function). For the quantised kinds ``torch`` and ``torch.compile`` run the
composition :func:`torch_norm_quant`: the fp32 norm, then :func:`torch_quant` (amax, scale,
divide, clamp, cast), the reference's semantics in plain ops; under ``torch.compile`` Inductor
fuses norm and quantisation itself (the baseline vLLM uses under compile).

Which kernel ``F.rms_norm`` runs depends on the build: on CUDA it calls
``aten::_fused_rms_norm``, and from torch 2.13 ``torch._native`` may override that op on
Hopper/Blackwell (compute capability 9.x/10.x) with a vendored Quack CuTe DSL kernel
(``torch/_native/ops/norm/rmsnorm_impl.py``, registered only when ``nvidia-cutlass-dsl``
of a version torch lists as known good and ``apache-tvm-ffi`` import; its condition also
checks dtype, weight dtype/contiguity and the width; a strided input is copied by
``reshape(M, N).contiguous()`` inside). The override's router dispatches to an op named
``_native::<node id>``; :func:`rms_norm_path` runs the call once under the profiler and
reports which of the two ran (the row's ``ran`` column), and why the override did not.
"""
from __future__ import annotations

import torch

from ..cases import QUANT_OPS, Case, Inputs, qk_views_contiguous
from ..common import AMAX_FLOOR, QMAX, torch_norm, torch_norm_f32
from .base import Fn, Impl

__all__ = ["torch_norm", "torch_rope", "torch_mrope_cos_sin", "torch_cache_write", "torch_prologue", "prologue_fn",
           "TorchPrologue", "torch_quant", "torch_norm_quant", "quant_fn", "rms_norm_path", "TorchEager",
           "TorchRope", "TorchCompile", "TorchFRmsNorm", "TorchCopy2D", "ContiguousCopy", "FlattenedTrap"]


class _Torch(Impl):
    library = "torch"

    def version(self):
        return torch.__version__


def _torch_qk_inplace(q, k, qw, kw, eps: float, offset: float):
    q.copy_(torch_norm(q, qw, eps, offset))
    k.copy_(torch_norm(k, kw, eps, offset))


def _torch_rms(x, w, eps: float, offset: float):
    return torch_norm(x, w, eps, offset)


def _torch_add_inplace(x, r, w, eps: float, offset: float):
    s = x.float() + r.float()
    r.copy_(s)
    xf = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    x.copy_(xf * (w.float() + offset))


def _torch_fns(case: Case, inp: Inputs, qk, rms, add) -> Fn:
    eps, off = case.eps, case.weight_offset
    if case.is_qk:
        q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
        outs = (q, k)

        def call():
            qk(q, k, qw, kw, eps, off)
            return outs
    elif case.op == "rms2d":
        x, w = inp.x, inp.w

        def call():
            return (rms(x, w, eps, off),)
    else:
        x, r, w = inp.x, inp.residual, inp.w
        outs = (x, r)

        def call():
            add(x, r, w, eps, off)
            return outs
    return call


def torch_rope(x: torch.Tensor, cos_sin_cache: torch.Tensor, positions: torch.Tensor, rotary_dim: int,
               is_neox: bool) -> torch.Tensor:
    """RoPE of ``x`` ``[T, H, D]`` the way vLLM's ``RotaryEmbedding.forward_native`` does it:
    gather the cache rows, rotate the first ``rotary_dim`` elements in fp32, round to x's dtype."""
    rot = _rotate(x[..., :rotary_dim].float(), cos_sin_cache.index_select(0, positions).float(), rotary_dim, is_neox)
    return torch.cat((rot.to(x.dtype), x[..., rotary_dim:]), dim=-1)


def _rotate(xr: torch.Tensor, cs: torch.Tensor, rotary_dim: int, is_neox: bool) -> torch.Tensor:
    """The rotated rotary part ``xr [T, H, rotary_dim]`` (fp32) by each token's cos/sin row ``cs [T, R]``."""
    half = rotary_dim // 2
    cos, sin = cs[:, None, :half].float(), cs[:, None, half:rotary_dim].float()
    if is_neox:
        x1, x2 = xr[..., :half], xr[..., half:]
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    return torch.cat((o1, o2), dim=-1) if is_neox else torch.stack((o1, o2), dim=-1).flatten(-2)


def torch_mrope_cos_sin(cos_sin_cache: torch.Tensor, positions: torch.Tensor, section, rotary_dim: int):
    """``[T, rotary_dim]`` cos/sin rows of mRoPE the way vLLM's ``MRotaryEmbedding.forward_native``
    builds them: gather the rows of the three position rows ``[3, T]``, split cos and sin into the
    ``section`` chunks and take chunk ``i`` from row ``i``."""
    half = rotary_dim // 2
    cs = cos_sin_cache[positions]  # [3, T, R]
    cos, sin = cs[..., :half], cs[..., half:rotary_dim]
    cos = torch.cat([m[i] for i, m in enumerate(cos.split(list(section), dim=-1))], dim=-1)
    sin = torch.cat([m[i] for i, m in enumerate(sin.split(list(section), dim=-1))], dim=-1)
    return torch.cat((cos, sin), dim=-1)


def _rope_rows_f32(x: torch.Tensor, cs: torch.Tensor, rotary_dim: int, is_neox: bool) -> torch.Tensor:
    """RoPE of fp32 ``x [T, H, D]`` with each token's cos/sin row ``cs [T, R]``, left in fp32."""
    return torch.cat((_rotate(x[..., :rotary_dim], cs, rotary_dim, is_neox), x[..., rotary_dim:]), dim=-1)


_RAW = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def torch_cache_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      slots: torch.Tensor, k_scale=None, v_scale=None) -> None:
    """Index writes of ``k``/``v`` ``[n, Hkv, D]`` into the caches at ``slots`` ``[n]`` (all >= 0): the
    caches viewed as ``[num_slots, Hkv, D]`` (contiguous NHD or flat), FP8 caches quantised first as
    ``clamp(x / scale, +-qmax)`` cast (the dequantisation-scale convention), the bits copied with
    ``index_copy_`` on an integer view (any cache dtype)."""
    from ..common import QMAX
    for x, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        rows = cache.view(-1, x.shape[1], x.shape[2])
        if cache.dtype != x.dtype:
            qmax = QMAX[cache.dtype]
            x = torch.clamp(x.float() / scale, -qmax, qmax).to(cache.dtype)
        raw = _RAW[cache.element_size()]
        rows.view(raw).index_copy_(0, slots, x.view(raw))


def torch_prologue(q, k, v, qw, kw, cs, positions, k_cache, v_cache, slots, k_scale, v_scale, eps: float,
                   offset: float, rotary_dim: int, is_neox: bool, section: tuple, n_kept: int):
    """The PyTorch composition of the attention prologue: fp32 norm of Q and K, fp32 RoPE (mRoPE with
    ``section``), Q rounded once and copied back in place, K rounded to the activation dtype (or
    quantised) and V written to the caches at the first ``n_kept`` tokens' slots (the padding is at the
    tail and the host knows the real token count, as an engine does)."""
    if section:
        rows = torch_mrope_cos_sin(cs, positions, section, rotary_dim)
    else:
        rows = cs.index_select(0, positions)
    qr = _rope_rows_f32(torch_norm_f32(q, qw, eps, offset), rows, rotary_dim, is_neox)
    kr = _rope_rows_f32(torch_norm_f32(k, kw, eps, offset), rows, rotary_dim, is_neox)
    q.copy_(qr)
    kk = kr[:n_kept] if k_cache.dtype != k.dtype else kr[:n_kept].to(k.dtype)
    torch_cache_write(kk, v[:n_kept], k_cache, v_cache, slots[:n_kept], k_scale, v_scale)


def prologue_fn(case: Case, inp: Inputs, fn=torch_prologue) -> Fn:
    """The zero-argument call of ``fn`` (:func:`torch_prologue` or its compiled form) on ``inp``."""
    args = (inp.q, inp.k, inp.v, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions, inp.k_cache, inp.v_cache,
            inp.slot_mapping, inp.k_scale, inp.v_scale, case.eps, case.weight_offset, case.rotary_dim, case.is_neox,
            tuple(case.mrope_section), case.n_kept)
    outs = (inp.q, inp.k_cache, inp.v_cache)

    def call():
        fn(*args)
        return outs
    return call


def _torch_rope_inplace(q, k, qw, kw, cs, pos, eps: float, offset: float, rotary_dim: int, is_neox: bool):
    """The composition: torch norm (rounded to the activation dtype, as separate ops do),
    then torch RoPE, each result copied back in place."""
    q.copy_(torch_rope(torch_norm(q, qw, eps, offset), cs, pos, rotary_dim, is_neox))
    k.copy_(torch_rope(torch_norm(k, kw, eps, offset), cs, pos, rotary_dim, is_neox))


def _torch_rope_fn(case: Case, inp: Inputs, fn) -> Fn:
    q, k, qw, kw, cs, pos = inp.q, inp.k, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions
    eps, off, rd, neox = case.eps, case.weight_offset, case.rotary_dim, case.is_neox
    outs = (q, k)

    def call():
        fn(q, k, qw, kw, cs, pos, eps, off, rd, neox)
        return outs
    return call


# --------------------------------------------------------------------------- quantised kinds

def torch_quant(n: torch.Tensor, mode: str, out_dtype: torch.dtype, group_size: int = 0, scale=None,
                column_major: bool = False, ue8m0: bool = False):
    """``(codes, scales)`` of ``n [T, D]`` (any float dtype, upcast to fp32) in PyTorch ops, the way
    engines write it: static (``mode="static"``) ``n / scale``; dynamic ``max(amax, 1e-10) / qmax``
    per token (``"token"``) or per ``group_size`` group (any other mode), UE8M0 as
    ``exp2(ceil(log2(s)))``; then clamp to +-qmax and cast (int8: round half to even first).
    Column-major scales are transposed copies."""
    qmax = QMAX[out_dtype]
    nf = n.float()
    if mode == "static":
        q, sc = nf / scale, scale
    else:
        t, d = nf.shape
        g = d if mode == "token" else group_size
        ng = nf.view(t, d // g, g)
        sc = ng.abs().amax(dim=-1).clamp(min=AMAX_FLOOR) / qmax
        if ue8m0:
            sc = torch.exp2(torch.ceil(torch.log2(sc)))
        q = (ng / sc.unsqueeze(-1)).view(t, d)
        if column_major:
            sc = sc.t().contiguous().t()
    q = q.clamp(-qmax, qmax)
    if out_dtype == torch.int8:
        q = torch.round(q)
    return q.to(out_dtype), sc


def torch_norm_quant(x, residual, w, scale, eps: float, offset: float, mode: str, out_dtype, group_size: int,
                     column_major: bool, ue8m0: bool):
    """The PyTorch composition of a quantised kind: ``residual += x`` (stored in its dtype) when
    given, the fp32 norm of the fp32 sum (of x alone otherwise), then :func:`torch_quant`.
    Returns the case's outputs."""
    if residual is not None:
        s = x.float() + residual.float()
        residual.copy_(s)
        n = torch_norm_f32(s, w, eps, offset)
    else:
        n = torch_norm_f32(x, w, eps, offset)
    y, sc = torch_quant(n, mode, out_dtype, group_size, scale, column_major, ue8m0)
    return (y, sc) if residual is None else (y, sc, residual)


def quant_fn(case: Case, inp: Inputs, fn=torch_norm_quant) -> Fn:
    """The zero-argument call of ``fn`` (:func:`torch_norm_quant` or its compiled form) on
    ``inp`` for a quantised ``case``."""
    x, w, r = inp.x, inp.w, inp.t.get("residual")
    scale = inp.t.get("scale")
    args = (case.eps, case.weight_offset, case.quant_mode, case.out_dtype, case.group_size, case.column_major_scales,
            case.scale_ue8m0)
    return lambda: fn(x, r, w, scale, *args)


def _quant_notes(case: Case) -> str:
    what = ("residual add in place, " if case.has_residual else "") + "fp32 norm then quantise"
    return f"{what} (amax, scale, divide, clamp, cast{', UE8M0, column-major copy' if case.scale_ue8m0 else ''})"


class TorchEager(_Torch):
    name = "torch"
    ops = ("qk", "qk_full", "rms2d", "add") + QUANT_OPS
    not_ops = {"rope": "torch norm only (torch_norm+rope is the composition): no RoPE"}

    def notes(self, case):
        if case.is_quant:
            return _quant_notes(case) + ", several kernels"
        base = "fp32 upcast formula, several kernels"
        return base + ("; Q then K, in place" if case.is_qk else "; in place" if case.op == "add" else "")

    def build(self, case, inp):
        if case.is_quant:
            return quant_fn(case, inp)
        return _torch_fns(case, inp, _torch_qk_inplace, _torch_rms, _torch_add_inplace)


class TorchRope(_Torch):
    """The PyTorch composition for ``rope``: torch norm of Q and K, then torch RoPE, in place."""

    name = "torch_norm+rope"
    ops = ("rope",)
    not_ops = dict.fromkeys(("qk", "qk_full", "rms2d", "add"), "rope cases only (norm + RoPE)")

    def notes(self, case):
        return "torch formula norm then torch RoPE (vLLM forward_native style), many kernels; Q then K, in place"

    def build(self, case, inp):
        return _torch_rope_fn(case, inp, _torch_rope_inplace)


class TorchPrologue(_Torch):
    """The PyTorch composition of the attention prologue (:func:`torch_prologue`)."""

    name = "torch_norm+rope+cache"
    ops = ("prologue",)
    not_ops = dict.fromkeys(("qk", "qk_full", "rms2d", "add", "rope") + QUANT_OPS,
                            "prologue cases only (norm + RoPE + KV-cache write)")

    def notes(self, case):
        return prologue_notes(case)

    def build(self, case, inp):
        return prologue_fn(case, inp)


def prologue_notes(case: Case) -> str:
    rope = "mRoPE (vLLM forward_native gather)" if case.mrope_section else "RoPE"
    cache = "FP8 quantised (x / scale, clamp, cast) and " if case.cache_fp8 else ""
    return (f"fp32 norm + {rope}, Q copied back in place; K and V {cache}index_copy_ into the caches at the "
            f"real tokens' slots (padding at the tail, n_kept known on the host); many kernels")


class TorchCompile(_Torch):
    """torch.compile of the same formula, static shapes (compiled once per case, in the
    check; compile time is not timed)."""

    name = "torch.compile"
    needs_cuda = True
    cpu_skip = "Inductor's compile time (minutes per case on a CPU) would be most of a CPU run"

    def __init__(self):
        self._case = self._fns = None

    def notes(self, case):
        if case.op == "rope":
            return "torch.compile(fullgraph, dynamic=False) of torch norm then torch RoPE (torch_norm+rope), in place"
        if case.op == "prologue":
            return "torch.compile(fullgraph, dynamic=False) of torch_norm+rope+cache: " + prologue_notes(case)
        if case.is_quant:
            return f"torch.compile(fullgraph, dynamic=False) of the torch composition: {_quant_notes(case)}"
        return "torch.compile(fullgraph, dynamic=False) of the torch formula" + (", in place" if case.op != "rms2d" else "")

    def ran(self, case):
        return "Inductor (generated Triton)"

    def build(self, case, inp):
        if case != self._case:
            import torch._dynamo as dynamo
            # A fresh cache per case keeps the guard list (eager host cost) at one entry;
            # further input sets of the same case (cold L2) reuse the compiled code.
            dynamo.reset()
            opts = dict(fullgraph=True, dynamic=False)
            self._case = case
            self._fns = (torch.compile(_torch_qk_inplace, **opts), torch.compile(_torch_rms, **opts),
                         torch.compile(_torch_add_inplace, **opts), torch.compile(_torch_rope_inplace, **opts),
                         torch.compile(torch_norm_quant, **opts), torch.compile(torch_prologue, **opts))
        if case.op == "prologue":
            return prologue_fn(case, inp, self._fns[5])
        if case.is_quant:
            return quant_fn(case, inp, self._fns[4])
        if case.op == "rope":
            return _torch_rope_fn(case, inp, self._fns[3])
        return _torch_fns(case, inp, *self._fns[:3])


# --------------------------------------------------------------------------- F.rms_norm

_FUSED_OP = ("_fused_rms_norm", "CUDA")


def _override_nodes() -> tuple[list, str]:
    """The ``torch._native`` override nodes registered for ``aten::_fused_rms_norm`` on CUDA,
    or ([], why there are none)."""
    try:
        from torch._native import registry
    except Exception:  # noqa: BLE001 - torch < 2.13: no override registry
        return [], f"torch {torch.__version__} has no torch._native override registry"
    nodes = list(getattr(registry, "_graphs", {}).get(_FUSED_OP, []))
    if nodes:
        return nodes, ""
    try:
        from torch._native import cutedsl_utils as cu
        ok, ver = cu._check_runtime_available()
        if not ok:
            return [], "no CuTe DSL override registered (nvidia-cutlass-dsl / apache-tvm-ffi not importable)"
        if not cu._version_is_ok():
            return [], (f"no CuTe DSL override registered: nvidia-cutlass-dsl {ver} is not in torch's known-good "
                        f"list (TORCH_NATIVE_SKIP_VERSION_CHECK=1 overrides)")
        return [], "no CuTe DSL override registered (native JIT disabled?)"
    except Exception as e:  # noqa: BLE001
        return [], f"no override registered ({type(e).__name__}: {e})"


def rms_norm_path(call) -> str:
    """Run ``call`` (a ``F.rms_norm`` call) once under the profiler and name the implementation
    that ran: ``torch._native`` override (vendored Quack CuTe DSL kernel), ATen's
    ``_fused_rms_norm`` kernel (with why no override ran), or the composite decomposition."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        names = {e.name for e in prof.events()}
    except Exception as e:  # noqa: BLE001 - a profiler that cannot start: say so, do not fail the row
        return f"unknown (profiler: {type(e).__name__}: {e})"
    native = sorted(n for n in names if n.startswith("_native::"))
    nodes, why = _override_nodes()
    if native:
        ids = {n.split("::", 1)[1] for n in native}
        hit = [nd for nd in nodes if getattr(nd, "node_id", None) in ids]
        dsl = hit[0].dsl_name if hit else "?"
        impl = getattr(hit[0].impl_fn, "__module__", "") if hit else ""
        what = "vendored Quack CuTe DSL kernel" if dsl == "cutedsl" or "quack" in impl.lower() else "native override"
        return f"torch._native {dsl} override of aten::_fused_rms_norm ({what}; {', '.join(native)})"
    if "aten::_fused_rms_norm" in names:
        if nodes:
            why = "the registered override declined these inputs (its condition)"
        return f"ATen _fused_rms_norm kernel ({why})" if why else "ATen _fused_rms_norm kernel"
    return "aten::rms_norm decomposed into elementwise ops"


class TorchFRmsNorm(_Torch):
    """``torch.nn.functional.rms_norm`` (a fused kernel on CUDA in recent PyTorch; see the
    module docstring for which one, recorded per row in ``ran``)."""

    name = "torch_rms_norm"
    ops = ("qk", "qk_full", "rms2d")
    not_ops = {"add": "no fused add form", "rope": "F.rms_norm only: no RoPE"}

    def __init__(self):
        self._ran: dict = {}

    def available(self):
        ok = hasattr(torch.nn.functional, "rms_norm")
        return ok, "" if ok else f"torch {torch.__version__} has no torch.nn.functional.rms_norm"

    def check(self, case):
        return (False, "no weight_offset argument") if case.weight_offset else (True, "")

    def notes(self, case):
        return "F.rms_norm" + ("; Q then K, copied back in place" if case.is_qk else "")

    def ran(self, case):
        return self._ran.get(case, "")

    def _call(self, case, inp) -> Fn:
        F, eps = torch.nn.functional, case.eps
        if case.is_qk:
            q, k, qw, kw, D = inp.q, inp.k, inp.qw, inp.kw, case.width
            outs = (q, k)

            def call():
                q.copy_(F.rms_norm(q, (D,), qw, eps))
                k.copy_(F.rms_norm(k, (D,), kw, eps))
                return outs
            return call
        x, w, D = inp.x, inp.w, case.width
        return lambda: (F.rms_norm(x, (D,), w, eps),)

    def build(self, case, inp):
        if case not in self._ran:  # once per case, on a copy of the inputs (outside the timed region)
            x = inp.q if case.is_qk else inp.x
            self._ran[case] = (rms_norm_path(self._call(case, inp.clone())) if x.is_cuda else
                               "ATen CPU kernel (torch._native overrides are CUDA-only)")
        return self._call(case, inp)


class TorchCopy2D(_Torch):
    """The copy path: ``.contiguous()`` of Q and K, then a 2D norm over [T*H, D] rows."""

    name = "torch_copy2d"
    ops = ("qk", "qk_full")
    not_ops = {"rms2d": "QK cases only", "add": "QK cases only", "rope": "norm only: no RoPE"}

    def notes(self, case):
        if qk_views_contiguous(case):
            return "Q and K views already contiguous (T=1): no copy, the torch formula as a 2D norm alone"
        return "copies Q and K to contiguous (timed), then the torch formula as a 2D norm; result in the copies"

    def build(self, case, inp):
        q, k, qw, kw, D = inp.q, inp.k, inp.qw, inp.kw, case.width
        eps, off = case.eps, case.weight_offset

        def call():
            qc, kc = q.contiguous(), k.contiguous()
            return (torch_norm(qc.view(-1, D), qw, eps, off).view(q.shape),
                    torch_norm(kc.view(-1, D), kw, eps, off).view(k.shape))
        return call


NOOP_COPY = ("no-op here: the Q and K views are already contiguous (T=1), .contiguous() copies nothing; "
             "not timed")


class ContiguousCopy(_Torch):
    """The ``.contiguous()`` copy of Q and K alone: the price of the copy path."""

    name = "contiguous_copy"
    family = "copy"
    ops = ("qk", "qk_full")
    not_ops = {"rms2d": "QK cases only", "add": "QK cases only",
               "rope": "a copy baseline, shown on the qk cases: no RoPE"}

    def check(self, case):
        if qk_views_contiguous(case):
            return False, NOOP_COPY
        return True, ""

    def notes(self, case):
        return "the copy alone (not a norm, not checked): Q.contiguous(), K.contiguous()"

    def build(self, case, inp):
        q, k = inp.q, inp.k
        return lambda: (q.contiguous(), k.contiguous())


class FlattenedTrap(_Torch):
    """Flattening [T, H, D] to [T, H*D] and norming over H*D: one RMS per token instead
    of one per head. A different function; the gate is expected to reject it."""

    name = "torch_flat2d"
    family = "trap"
    ops = ("qk",)
    not_ops = dict.fromkeys(("qk_full", "rms2d", "add", "rope"), "per-head QK cases only")

    def notes(self, case):
        return "flattens heads into hidden: one RMS per token, not per head (a different function)"

    def build(self, case, inp):
        q, k, T = inp.q, inp.k, case.tokens
        qw = inp.qw.repeat(case.hq)
        kw = inp.kw.repeat(case.hkv)
        eps, off = case.eps, case.weight_offset

        def call():
            return (torch_norm(q.reshape(T, -1), qw, eps, off).view(q.shape),
                    torch_norm(k.reshape(T, -1), kw, eps, off).view(k.shape))
        return call
