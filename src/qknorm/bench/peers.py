"""Implementations compared by the benchmark, one adapter each.

Every adapter builds, for a :class:`~qknorm.bench.cases.Case` and its inputs, a
zero-argument callable that performs the case's function on those very tensors and
returns the outputs in the case's order (``qk`` -> (q, k); ``rms2d`` -> (y,);
``add`` -> (x, residual); ``rope`` -> (q, k)). Like with like: per-head norm against per-head norm, Q and
K both normalised by every implementation (in one launch or Q then K), in place where
the implementation can be. All host-side set-up (weight copies, module look-ups)
happens in ``build``, outside the timed region. Where an implementation needs a copy
to accept a strided input, the copy is inside the callable (so it is timed) and the
row's ``notes`` say so.

Families: ``qknorm`` (the dispatcher's pick), ``qknorm-variant`` (one forced
:class:`~qknorm.dispatch.KernelConfig`), ``peer`` (other implementations; the best of
them is what qknorm is compared with; for ``rope`` the compositions of a norm and a
RoPE pass, and vLLM's fused op), ``copy`` (the ``.contiguous()`` copy alone:
not a norm, not checked) and ``trap`` (flattening heads into hidden: a different
function, shown failing the gate).
"""
from __future__ import annotations

import contextlib
import fnmatch
import importlib
from typing import Callable

import torch

from .cases import Case, Inputs

Fn = Callable[[], tuple]


class Impl:
    """Base adapter. ``needs_cuda``: skipped (with the reason) on a CPU-only run."""

    name = "?"
    family = "peer"
    needs_cuda = False

    def available(self) -> tuple[bool, str]:
        return True, ""

    def supports(self, case: Case) -> tuple[bool, str]:
        return True, ""

    def notes(self, case: Case) -> str:
        return ""

    def build(self, case: Case, inp: Inputs) -> Fn:
        raise NotImplementedError

    def scope(self):
        """Context entered around this implementation's check and timing."""
        return contextlib.nullcontext()


def _no_rope(case: Case, what: str = "norm only") -> tuple[bool, str]:
    """``supports()`` answer of a norm-only implementation for ``case``: rope cases are not
    its function (the compositions below pair a norm with a RoPE pass)."""
    if case.op == "rope":
        return False, f"{what}: no RoPE"
    return True, ""


def _import(name: str):
    """Import ``name``; returns (module, "") or (None, reason)."""
    try:
        return importlib.import_module(name), ""
    except Exception as e:  # ImportError, or a peer failing inside its own import
        return None, f"import {name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


# --------------------------------------------------------------------------- qknorm

class Qknorm(Impl):
    """qknorm's public API: the dispatcher's pick (``config=None``) or one forced config."""

    def __init__(self, config=None):
        self.config = config
        self.name = "qknorm" if config is None else f"qknorm[{config.name}]"
        self.family = "qknorm" if config is None else "qknorm-variant"

    def notes(self, case):
        if case.op == "rope":
            return "qk_rms_norm_rope: norm + RoPE of Q and K in one launch, in place on the packed buffer"
        if case.op == "qk":
            return "Q and K in one launch, in place on the packed buffer"
        if case.op == "qk_full":
            return "full-width Q and K in one launch, in place on strided slices"
        return "out= preallocated output" if case.op == "rms2d" else "in place"

    def build(self, case, inp):
        import qknorm

        cfg, eps, off = self.config, case.eps, case.weight_offset
        if case.op == "rope":
            q, k, qw, kw, cs, pos = inp.q, inp.k, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions
            fr, outs, neox, rd = qknorm.qk_rms_norm_rope, (q, k), case.is_neox, case.rotary_dim

            def call():
                fr(q, k, qw, kw, cs, pos, eps, is_neox=neox, rotary_dim=rd, weight_offset=off, q_out=q, k_out=k,
                   config=cfg)
                return outs
        elif case.is_qk:
            q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
            f, outs = qknorm.qk_rms_norm, (q, k)

            def call():
                f(q, k, qw, kw, eps, weight_offset=off, q_out=q, k_out=k, config=cfg)
                return outs
        elif case.op == "rms2d":
            x, w, out = inp.x, inp.w, inp.out
            f, outs = qknorm.rms_norm, (out,)

            def call():
                f(x, w, eps, weight_offset=off, out=out, config=cfg)
                return outs
        else:
            x, r, w = inp.x, inp.residual, inp.w
            f, outs = qknorm.fused_add_rms_norm, (x, r)

            def call():
                f(x, r, w, eps, weight_offset=off, config=cfg)
                return outs
        return call


def qknorm_variants(case: Case, device) -> list[Qknorm]:
    """One adapter per admissible kernel config for this case (``candidate_configs``).

    ``rope``: the fused kernel keeps a whole head in registers and walks rows in segment
    order, so only unchunked, segment-order configs are distinct variants there."""
    from qknorm.dispatch import candidate_configs
    cands = candidate_configs(case.qknorm_op, case.dtype, case.width, case.n_rows, device)
    if case.op == "rope":
        cands = [c for c in cands if not c.chunked(case.width) and not c.token_order]
    return [Qknorm(c) for c in cands]


def qknorm_pick(case: Case, device) -> tuple[str, str]:
    """The dispatcher's config name for this case, and its reason."""
    from qknorm.dispatch import choose_config
    cfg, why = choose_config(case.qknorm_op, case.dtype, case.width, case.n_rows, device)
    return cfg.name, why


# --------------------------------------------------------------------------- PyTorch

def torch_norm(x: torch.Tensor, w: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
    """RMSNorm over the last dim by the fp32 upcast formula, rounded once to x's dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (w.float() + offset)).to(x.dtype)


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
    half = rotary_dim // 2
    cs = cos_sin_cache.index_select(0, positions).float()
    cos, sin = cs[:, None, :half], cs[:, None, half:rotary_dim]
    xr = x[..., :rotary_dim].float()
    if is_neox:
        x1, x2 = xr[..., :half], xr[..., half:]
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    rot = torch.cat((o1, o2), dim=-1) if is_neox else torch.stack((o1, o2), dim=-1).flatten(-2)
    return torch.cat((rot.to(x.dtype), x[..., rotary_dim:]), dim=-1)


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


class TorchEager(Impl):
    name = "torch"

    def supports(self, case):
        return _no_rope(case, "torch norm only (torch_norm+rope is the composition)")

    def notes(self, case):
        base = "fp32 upcast formula, several kernels"
        return base + ("; Q then K, in place" if case.is_qk else "; in place" if case.op == "add" else "")

    def build(self, case, inp):
        return _torch_fns(case, inp, _torch_qk_inplace, _torch_rms, _torch_add_inplace)


class TorchRope(Impl):
    """The PyTorch composition for ``rope``: torch norm of Q and K, then torch RoPE, in place."""

    name = "torch_norm+rope"

    def supports(self, case):
        return (True, "") if case.op == "rope" else (False, "rope cases only (norm + RoPE)")

    def notes(self, case):
        return "torch formula norm then torch RoPE (vLLM forward_native style), many kernels; Q then K, in place"

    def build(self, case, inp):
        return _torch_rope_fn(case, inp, _torch_rope_inplace)


class TorchCompile(Impl):
    """torch.compile of the same formula, static shapes (compiled once per case, in the
    check; compile time is not timed)."""

    name = "torch.compile"
    needs_cuda = True  # Inductor's CPU compile time would dominate a CPU run

    def notes(self, case):
        if case.op == "rope":
            return "torch.compile(fullgraph, dynamic=False) of torch norm then torch RoPE (torch_norm+rope), in place"
        return "torch.compile(fullgraph, dynamic=False) of the torch formula" + (", in place" if case.op != "rms2d" else "")

    def __init__(self):
        self._case = self._fns = None

    def build(self, case, inp):
        if case != self._case:
            import torch._dynamo as dynamo
            # A fresh cache per case keeps the guard list (eager host cost) at one entry;
            # further input sets of the same case (cold L2) reuse the compiled code.
            dynamo.reset()
            opts = dict(fullgraph=True, dynamic=False)
            self._case = case
            self._fns = (torch.compile(_torch_qk_inplace, **opts), torch.compile(_torch_rms, **opts),
                         torch.compile(_torch_add_inplace, **opts), torch.compile(_torch_rope_inplace, **opts))
        if case.op == "rope":
            return _torch_rope_fn(case, inp, self._fns[3])
        return _torch_fns(case, inp, *self._fns[:3])


class TorchFRmsNorm(Impl):
    """``torch.nn.functional.rms_norm`` (a fused kernel on CUDA in recent PyTorch)."""

    name = "torch_rms_norm"

    def available(self):
        ok = hasattr(torch.nn.functional, "rms_norm")
        return ok, "" if ok else f"torch {torch.__version__} has no torch.nn.functional.rms_norm"

    def supports(self, case):
        if case.weight_offset:
            return False, "no weight_offset argument"
        if case.op == "add":
            return False, "no fused add form"
        return _no_rope(case, "F.rms_norm only")

    def notes(self, case):
        return "F.rms_norm" + ("; Q then K, copied back in place" if case.is_qk else "")

    def build(self, case, inp):
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


class TorchCopy2D(Impl):
    """The copy path: ``.contiguous()`` of Q and K, then a 2D norm over [T*H, D] rows."""

    name = "torch_copy2d"

    def supports(self, case):
        return _no_rope(case) if case.is_qk else (False, "QK cases only")

    def notes(self, case):
        return "copies Q and K to contiguous (timed), then the torch formula as a 2D norm; result in the copies"

    def build(self, case, inp):
        q, k, qw, kw, D = inp.q, inp.k, inp.qw, inp.kw, case.width
        eps, off = case.eps, case.weight_offset

        def call():
            qc, kc = q.contiguous(), k.contiguous()
            return (torch_norm(qc.view(-1, D), qw, eps, off).view(q.shape),
                    torch_norm(kc.view(-1, D), kw, eps, off).view(k.shape))
        return call


class ContiguousCopy(Impl):
    """The ``.contiguous()`` copy of Q and K alone: the price of the copy path."""

    name = "contiguous_copy"
    family = "copy"

    def supports(self, case):
        return _no_rope(case, "a copy baseline, shown on the qk cases") if case.is_qk else (False, "QK cases only")

    def notes(self, case):
        return "the copy alone (not a norm, not checked): Q.contiguous(), K.contiguous()"

    def build(self, case, inp):
        q, k = inp.q, inp.k
        return lambda: (q.contiguous(), k.contiguous())


class FlattenedTrap(Impl):
    """Flattening [T, H, D] to [T, H*D] and norming over H*D: one RMS per token instead
    of one per head. A different function; the gate is expected to reject it."""

    name = "torch_flat2d"
    family = "trap"

    def supports(self, case):
        return (True, "") if case.op == "qk" else (False, "per-head QK cases only")

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


# --------------------------------------------------------------------------- FlashInfer / sgl-kernel

class FlashInferLike(Impl):
    """FlashInfer's norm API (``rmsnorm(input, weight, eps, out=None, enable_pdl=None)``,
    ``fused_add_rmsnorm(input, residual, weight, eps, enable_pdl=None)`` and the
    ``gemma_`` forms for weight offset 1), also spoken by sgl-kernel.

    FlashInfer >= 0.6 runs its CuTe DSL kernels when ``nvidia-cutlass-dsl`` imports and
    its CUDA JIT kernels otherwise or with ``FLASHINFER_USE_CUDA_NORM=1``; the choice is
    the module global ``flashinfer.norm._USE_CUDA_NORM``, read at every call by
    ``_use_cuda_norm(device)``. ``cuda_path=True`` sets that global for the duration
    of this implementation (same public entry points, other kernels).
    """

    needs_cuda = True

    def __init__(self, name: str, module: str, cuda_path: bool = False, dist: str = ""):
        self.name, self.module, self.cuda_path, self.dist = name, module, cuda_path, dist
        self._mod = None

    def _load(self):
        if self._mod is None:
            self._mod, self._why = _import(self.module)
        return self._mod

    def available(self):
        m = self._load()
        if m is None:
            return False, self._why
        if self.cuda_path:
            if not hasattr(m, "_USE_CUDA_NORM") or not hasattr(m, "get_norm_module"):
                return False, "this FlashInfer chooses its CUDA path only at import (FLASHINFER_USE_CUDA_NORM=1)"
            if m._USE_CUDA_NORM:
                return False, "the default FlashInfer path is already the CUDA one (CuTe DSL unavailable or env set)"
        return True, ""

    def supports(self, case):
        if case.weight_offset not in (0.0, 1.0):
            return False, f"weight_offset={case.weight_offset:g}: only 0 and Gemma's 1 (gemma_ forms)"
        return _no_rope(case, "rmsnorm only (flashinfer_rms+rope is the composition)")

    def _path(self) -> str:
        m = self._load()
        if not hasattr(m, "_USE_CUDA_NORM"):
            return ""
        return "CUDA path" if (self.cuda_path or m._USE_CUDA_NORM) else "CuTe DSL path"

    def notes(self, case):
        v = _version(self.dist) if self.dist else ""
        head = ", ".join(s for s in (f"{self.dist} {v}" if self.dist else "", self._path()) if s)
        if case.is_qk:
            how = "3D strided [T,H,D]" if case.op == "qk" else "2D strided rows"
            body = f"{how}, Q then K (2 launches), in place"
        else:
            body = "out= preallocated output" if case.op == "rms2d" else "in place"
        return f"{head}; {body}" if head else body

    def scope(self):
        if not self.cuda_path:
            return contextlib.nullcontext()
        return _module_flag(self._load(), "_USE_CUDA_NORM", True)

    def build(self, case, inp):
        m, eps = self._load(), case.eps
        gemma = case.weight_offset == 1.0
        rms = m.gemma_rmsnorm if gemma else m.rmsnorm
        add = m.gemma_fused_add_rmsnorm if gemma else m.fused_add_rmsnorm
        if case.is_qk:
            q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
            outs = (q, k)

            def call():
                rms(q, qw, eps, out=q)
                rms(k, kw, eps, out=k)
                return outs
        elif case.op == "rms2d":
            x, w, out = inp.x, inp.w, inp.out
            outs = (out,)

            def call():
                rms(x, w, eps, out=out)
                return outs
        else:
            x, r, w = inp.x, inp.residual, inp.w
            outs = (x, r)

            def call():
                add(x, r, w, eps)
                return outs
        return call


@contextlib.contextmanager
def _module_flag(mod, attr: str, value):
    prev = getattr(mod, attr)
    setattr(mod, attr, value)
    try:
        yield
    finally:
        setattr(mod, attr, prev)


class FlashInferCopy2D(FlashInferLike):
    """The copy path with FlashInfer's 2D kernel: ``.contiguous()`` then ``rmsnorm`` on
    [T*H, D] rows in place on the copy."""

    def __init__(self):
        super().__init__("flashinfer_copy2d", "flashinfer.norm", dist="flashinfer-python")

    def supports(self, case):
        if not case.is_qk:
            return False, "QK cases only"
        return super().supports(case)  # rope: norm only (FlashInferLike.supports)

    def notes(self, case):
        return f"flashinfer-python {_version(self.dist)}, {self._path()}; copies Q and K to contiguous (timed), " \
               "then the 2D rmsnorm in place on the copies"

    def build(self, case, inp):
        m, eps, D = self._load(), case.eps, case.width
        rms = m.gemma_rmsnorm if case.weight_offset == 1.0 else m.rmsnorm
        q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw

        def call():
            qc, kc = q.contiguous(), k.contiguous()
            q2, k2 = qc.view(-1, D), kc.view(-1, D)
            rms(q2, qw, eps, out=q2)
            rms(k2, kw, eps, out=k2)
            return qc, kc
        return call


# --------------------------------------------------------------------------- Quack

class Quack(Impl):
    """Quack (``quack.rmsnorm.rmsnorm(x, weight=None, bias=None, residual=None,
    out_dtype=None, residual_dtype=None, eps=1e-6, prenorm=False, weight_offset=0.0)``,
    quack-kernels 0.6.x). Out of place: returns new tensors (same bytes as in place).

    ``per_head=True`` passes the weight as [H, D] (repeated once at build time): Quack's
    per-head form keeps the strided [T, H, D] view as it is. ``per_head=False`` (the
    1D weight) makes Quack ``reshape`` the view to [T*H, D], which copies a strided
    view inside the call."""

    needs_cuda = True

    def __init__(self, per_head: bool = True):
        self.per_head = per_head
        self.name = "quack" if per_head else "quack_flat"
        self._mod = None

    def _load(self):
        if self._mod is None:
            self._mod, self._why = _import("quack.rmsnorm")
        return self._mod

    def available(self):
        return (True, "") if self._load() is not None else (False, self._why)

    def supports(self, case):
        if case.op == "rope":
            return _no_rope(case, "quack rmsnorm only")
        if not self.per_head and case.op != "qk":
            return False, "the 1D-weight (copying) form is shown for per-head QK only; see 'quack'"
        return True, ""

    def notes(self, case):
        v = f"quack-kernels {_version('quack-kernels')}"
        if case.op == "qk":
            how = ("per-head weight [H,D] (built once), strided view read as is" if self.per_head
                   else "1D weight: reshape to [T*H,D] copies the strided view inside the call")
            return f"{v}; {how}; Q then K, out of place"
        if case.op == "qk_full":
            return f"{v}; 2D strided rows; Q then K, out of place"
        return f"{v}; " + ("out of place" if case.op == "rms2d" else "residual + prenorm=True, out of place")

    def build(self, case, inp):
        f, eps, off = self._load().rmsnorm, case.eps, case.weight_offset
        if case.is_qk:
            q, k = inp.q, inp.k
            qw, kw = inp.qw, inp.kw
            if case.op == "qk" and self.per_head:
                qw = qw.expand(case.hq, case.head_dim).contiguous()
                kw = kw.expand(case.hkv, case.head_dim).contiguous()
            return lambda: (f(q, qw, eps=eps, weight_offset=off), f(k, kw, eps=eps, weight_offset=off))
        if case.op == "rms2d":
            x, w = inp.x, inp.w
            return lambda: (f(x, w, eps=eps, weight_offset=off),)
        x, r, w = inp.x, inp.residual, inp.w
        return lambda: tuple(f(x, w, residual=r, eps=eps, prenorm=True, weight_offset=off))


# --------------------------------------------------------------------------- Liger

class Liger(Impl):
    """Liger-Kernel's autograd functions: ``LigerRMSNormFunction.apply(X, W, eps,
    offset, casting_mode, in_place, row_mode)`` and ``LigerFusedAddRMSNormFunction
    .apply(X, R, W, eps, offset, casting_mode, in_place)``. ``casting_mode="gemma"``:
    fp32 math and one rounding, the same numerics as the reference. Their forward is
    wrapped in ``ensure_contiguous``, so a strided view is copied inside the call."""

    name = "liger"
    needs_cuda = True

    def __init__(self):
        self._rms = self._add = None

    def available(self):
        m, why = _import("liger_kernel.ops.rms_norm")
        if m is None:
            return False, why
        self._rms = m.LigerRMSNormFunction
        a, _ = _import("liger_kernel.ops.fused_add_rms_norm")
        self._add = getattr(a, "LigerFusedAddRMSNormFunction", None) if a is not None else None
        return True, ""

    def supports(self, case):
        if case.op == "rope":
            return _no_rope(case, "liger rms_norm only")
        if case.op == "add" and self._add is None:
            return False, "this Liger has no LigerFusedAddRMSNormFunction"
        return True, ""

    def notes(self, case):
        v = f"liger-kernel {_version('liger-kernel')}; casting_mode=gemma"
        if case.is_qk:
            return f"{v}; .contiguous() copy of the strided view inside the call (timed); Q then K, out of place"
        return f"{v}; out of place"

    def build(self, case, inp):
        eps, off = case.eps, case.weight_offset
        if case.is_qk:
            rms = self._rms.apply
            q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
            return lambda: (rms(q, qw, eps, off, "gemma", True, None), rms(k, kw, eps, off, "gemma", True, None))
        if case.op == "rms2d":
            rms = self._rms.apply
            x, w = inp.x, inp.w
            return lambda: (rms(x, w, eps, off, "gemma", True, None),)
        add = self._add.apply
        x, r, w = inp.x, inp.residual, inp.w
        return lambda: tuple(add(x, r, w, eps, off, "gemma", False))


# --------------------------------------------------------------------------- vLLM

class VLLM(Impl):
    """vLLM's custom ops: ``rms_norm(out, input, weight, epsilon)`` and
    ``fused_add_rms_norm(input, residual, weight, epsilon)`` (in place)."""

    name = "vllm"
    needs_cuda = True

    def __init__(self):
        self._ops = None

    def available(self):
        self._ops, why = _import("vllm._custom_ops")
        return (self._ops is not None), why

    def supports(self, case):
        if case.op == "rope":
            return _no_rope(case, "vllm rms_norm only (vllm_fused_qk_norm_rope is its fused op)")
        return (False, "no weight_offset") if case.weight_offset else (True, "")

    def notes(self, case):
        return f"vllm {_version('vllm')}; " + ("Q then K, in place (out=input)" if case.is_qk else "")

    def build(self, case, inp):
        ops, eps = self._ops, case.eps
        if case.is_qk:
            q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
            outs = (q, k)

            def call():
                ops.rms_norm(q, q, qw, eps)
                ops.rms_norm(k, k, kw, eps)
                return outs
        elif case.op == "rms2d":
            x, w, out = inp.x, inp.w, inp.out
            outs = (out,)

            def call():
                ops.rms_norm(out, x, w, eps)
                return outs
        else:
            x, r, w = inp.x, inp.residual, inp.w
            outs = (x, r)

            def call():
                ops.fused_add_rms_norm(x, r, w, eps)
                return outs
        return call


# --------------------------------------------------------------------------- QK norm + RoPE peers

class _FlashInferRope(Impl):
    """Base of the compositions ending in FlashInfer's
    ``flashinfer.rope.apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size,
    cos_sin_cache, is_neox=True)``: query/key ``[T, H*D]``, cos_sin_cache fp32
    ``[max_pos, rotary_dim]`` (the rotary dim is its width), positions int32/int64. Its CUDA
    kernel reads the token and head strides and needs only a unit last-dim stride, so the
    strided ``[T, H*D]`` column slices of the packed QKV buffer are passed as they are (no
    copy)."""

    needs_cuda = True
    norm_module = ""

    def __init__(self):
        self._rope = self._norm = None
        self._why = ""

    def available(self):
        m, why = _import("flashinfer.rope")
        if m is None:
            return False, why
        self._rope = getattr(m, "apply_rope_with_cos_sin_cache_inplace", None)
        if self._rope is None:
            return False, "this flashinfer.rope has no apply_rope_with_cos_sin_cache_inplace"
        if self.norm_module:
            self._norm, why = _import(self.norm_module)
            if self._norm is None:
                return False, why
        return True, ""

    def supports(self, case):
        if case.op != "rope":
            return False, "rope cases only (norm + RoPE)"
        if case.dtype not in (torch.float16, torch.bfloat16):
            return False, "FlashInfer RoPE: fp16/bf16 only"
        return True, ""

    def _rope_call(self, case, inp):
        """``rope()`` applying FlashInfer's RoPE in place to the packed buffer's Q and K."""
        T, D, hq, hkv = case.tokens, case.head_dim, case.hq, case.hkv
        q2, k2 = inp.qkv[:, :hq * D], inp.qkv[:, hq * D:(hq + hkv) * D]  # strided [T, H*D] views
        f, cs, pos, neox = self._rope, inp.cos_sin_cache, inp.positions, case.is_neox
        assert q2.stride(-1) == 1 and k2.stride(-1) == 1 and cs.dtype == torch.float32

        def rope():
            f(pos, q2, k2, D, cs, neox)
        return rope


class QknormQkFlashInferRope(_FlashInferRope):
    """qknorm's ``qk_rms_norm`` (Q and K in one launch, in place) + FlashInfer's RoPE: the
    best two-pass composition qknorm itself offers without the fused kernel."""

    name = "qknorm_qk+flashinfer_rope"

    def notes(self, case):
        return (f"2 launches: qknorm.qk_rms_norm in place, then flashinfer-python {_version('flashinfer-python')} "
                "apply_rope_with_cos_sin_cache_inplace on the strided [T, H*D] views (no copy)")

    def build(self, case, inp):
        import qknorm
        q, k, qw, kw = inp.q, inp.k, inp.qw, inp.kw
        eps, off, outs, norm = case.eps, case.weight_offset, (q, k), qknorm.qk_rms_norm
        rope = self._rope_call(case, inp)

        def call():
            norm(q, k, qw, kw, eps, weight_offset=off, q_out=q, k_out=k)
            rope()
            return outs
        return call


class FlashInferRmsRope(_FlashInferRope):
    """FlashInfer only: ``rmsnorm`` (``gemma_rmsnorm`` for offset 1) of Q, of K (3D strided
    views, in place), then FlashInfer's RoPE: what an engine built on FlashInfer runs."""

    name = "flashinfer_rms+rope"
    norm_module = "flashinfer.norm"

    def supports(self, case):
        if case.weight_offset not in (0.0, 1.0):
            return False, f"weight_offset={case.weight_offset:g}: only 0 and Gemma's 1 (gemma_ forms)"
        return super().supports(case)

    def notes(self, case):
        return (f"3 launches: flashinfer-python {_version('flashinfer-python')} rmsnorm(Q), rmsnorm(K) on the "
                "strided [T, H, D] views in place, then apply_rope_with_cos_sin_cache_inplace (no copy)")

    def build(self, case, inp):
        m = self._norm
        rms = m.gemma_rmsnorm if case.weight_offset == 1.0 else m.rmsnorm
        q, k, qw, kw, eps, outs = inp.q, inp.k, inp.qw, inp.kw, case.eps, (inp.q, inp.k)
        rope = self._rope_call(case, inp)

        def call():
            rms(q, qw, eps, out=q)
            rms(k, kw, eps, out=k)
            rope()
            return outs
        return call


class VLLMFusedQkNormRope(Impl):
    """vLLM's fused op ``torch.ops._C.fused_qk_norm_rope(qkv, num_heads_q, num_heads_k,
    num_heads_v, head_dim, eps, q_weight, k_weight, cos_sin_cache, is_neox, position_ids)``
    (through ``vllm._custom_ops.fused_qk_norm_rope`` when that wrapper exists): in place on a
    contiguous 2D packed QKV buffer; fp16/bf16 activations with weights of the same dtype,
    int64 positions, head_dim 64/128/256; ``rotary_dim`` is the cache width (partial rotary
    needs a recent vLLM; an older one fails the gate or raises, and the row says so)."""

    name = "vllm_fused_qk_norm_rope"
    needs_cuda = True

    def __init__(self):
        self._fn = None

    def available(self):
        ops, why = _import("vllm._custom_ops")
        if ops is None:
            return False, why
        fn = getattr(ops, "fused_qk_norm_rope", None)
        if fn is None:
            c = getattr(torch.ops, "_C", None)
            try:
                fn = getattr(c, "fused_qk_norm_rope") if c is not None else None
            except (AttributeError, RuntimeError):
                fn = None
        if fn is None:
            return False, "this vLLM has no fused_qk_norm_rope op"
        self._fn = fn
        return True, ""

    def supports(self, case):
        if case.op != "rope":
            return False, "rope cases only (norm + RoPE)"
        if case.weight_offset:
            return False, "no weight_offset (Gemma's 1 + w would need a pre-added weight)"
        if case.dtype not in (torch.float16, torch.bfloat16):
            return False, "fp16/bf16 only"
        if case.head_dim not in (64, 128, 256):
            return False, f"head_dim {case.head_dim}: vLLM's kernel takes 64, 128, 256"
        return True, ""

    def notes(self, case):
        return f"vllm {_version('vllm')}; one launch, in place on the contiguous packed QKV buffer"

    def build(self, case, inp):
        f, qkv = self._fn, inp.qkv
        assert qkv.is_contiguous() and inp.positions.dtype == torch.int64
        args = (qkv, case.hq, case.hkv, case.hkv, case.head_dim, case.eps, inp.qw, inp.kw, inp.cos_sin_cache,
                case.is_neox, inp.positions)
        outs = (inp.q, inp.k)

        def call():
            f(*args)
            return outs
        return call


# --------------------------------------------------------------------------- registry

def static_impls() -> list[Impl]:
    """Every implementation other than the qknorm variants, in report order."""
    return [
        Qknorm(),
        TorchEager(),
        TorchCompile(),
        TorchFRmsNorm(),
        TorchCopy2D(),
        ContiguousCopy(),
        FlattenedTrap(),
        FlashInferLike("flashinfer", "flashinfer.norm", dist="flashinfer-python"),
        FlashInferLike("flashinfer_cuda", "flashinfer.norm", cuda_path=True, dist="flashinfer-python"),
        FlashInferCopy2D(),
        Quack(per_head=True),
        Quack(per_head=False),
        Liger(),
        VLLM(),
        FlashInferLike("sgl_kernel", "sgl_kernel", dist="sgl-kernel"),
        TorchRope(),
        QknormQkFlashInferRope(),
        FlashInferRmsRope(),
        VLLMFusedQkNormRope(),
    ]


STATIC_NAMES = ("qknorm", "torch", "torch.compile", "torch_rms_norm", "torch_copy2d", "contiguous_copy",
                "torch_flat2d", "flashinfer", "flashinfer_cuda", "flashinfer_copy2d", "quack", "quack_flat",
                "liger", "vllm", "sgl_kernel", "torch_norm+rope", "qknorm_qk+flashinfer_rope", "flashinfer_rms+rope",
                "vllm_fused_qk_norm_rope")
VARIANT_PATTERN = "qknorm[*]"


def matches(name: str, patterns) -> bool:
    """Whether ``name`` is selected by ``patterns`` (shell globs; ``[`` and ``]`` are
    literal, so ``qknorm[*]`` means every qknorm variant). No patterns: everything."""
    if not patterns:
        return True
    return any(p == name or fnmatch.fnmatchcase(name, _literal_brackets(p)) for p in patterns)


def _literal_brackets(pattern: str) -> str:
    return "".join({"[": "[[]", "]": "[]]"}.get(c, c) for c in pattern)
