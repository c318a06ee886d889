"""``torch.nn`` modules on top of the qknorm ops.

* :class:`RMSNorm` -- a drop-in for ``torch.nn.RMSNorm`` (same constructor arguments,
  parameter ``weight``, the same ``state_dict``), plus ``weight_offset`` for Gemma's
  ``(1 + w)`` weights.
* :class:`QKNorm` -- the per-head Q and K norms of an attention block in one launch.

Both run the fused kernels on CUDA (the PyTorch path on CPU) and route to
``torch.ops.qknorm.*`` under ``torch.compile``. The kernels have no backward: when
autograd would record the call (grad mode on and an input or weight requiring grad), the
modules compute the same function with differentiable PyTorch ops instead, so training
code gets correct gradients. Use ``torch.inference_mode()`` / ``torch.no_grad()`` (or
``requires_grad_(False)``) to run the kernels.

Numerics differ from ``torch.nn.RMSNorm`` by design in one place: qknorm multiplies by the
weight in fp32 and rounds once; torch rounds the normalised value to the input dtype and
then multiplies by the weight. For fp32 inputs the two agree to rounding; for bf16/fp16
they differ by at most about one unit in the last place.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as ops
from . import validate
from .reference import rms_norm_ref, writing

__all__ = ["RMSNorm", "QKNorm", "default_eps"]

_KERNEL_DTYPES = validate.ACT_DTYPES  # the kernels' activation dtypes
_default_eps: dict = {}


def default_eps(dtype: torch.dtype) -> float:
    """The eps ``torch.nn.RMSNorm(eps=None)`` uses for inputs of ``dtype`` in this PyTorch.

    PyTorch 2.7+ takes the machine epsilon of the computation type (fp32 for bf16/fp16/fp32
    inputs, fp64 for fp64); older versions took ``torch.finfo(dtype).eps``. Asked once per
    dtype by normalising one tiny value whose result tells the two apart (computed at import
    for bfloat16, float16, float32 and float64; cached).

    Parameters
    ----------
    dtype : torch.dtype
        A floating dtype.

    Returns
    -------
    float
        The eps, e.g. ``torch.finfo(torch.float32).eps`` for bfloat16 on PyTorch 2.7+.

    Raises
    ------
    TypeError
        ``dtype`` is not a floating dtype (from ``torch.finfo``).
    """
    eps = _default_eps.get(dtype)
    if eps is None:
        candidates = {torch.finfo(dtype).eps, torch.finfo(torch.float32 if dtype != torch.float64
                                                          else torch.float64).eps}
        if len(candidates) == 1:
            eps = candidates.pop()
        else:
            x = torch.full((1, 1), 1e-3, dtype=dtype)
            y = F.rms_norm(x, (1,), None, None).double().item()
            eps = min(candidates, key=lambda e: abs(y - 1e-3 / math.sqrt(1e-6 + e)))
        _default_eps[dtype] = eps
    return eps


for _dt in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
    default_eps(_dt)  # at import, so torch.compile never traces the probe


def _needs_autograd(*ts) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in ts)


def _rms_norm_autograd(x: Tensor, weight: Tensor | None, eps: float, weight_offset: float) -> Tensor:
    """The same function with differentiable PyTorch ops (``reference.rms_norm_ref``: fp32 math, weight in
    fp32, one rounding; rows past fp32's range in fp64, as the kernels handle them): for calls that record
    autograd, so that forward-mode AD, ``torch.func`` and inputs made under inference mode work as with
    ``torch.nn.RMSNorm`` (the custom ops define a backward only, and save their inputs)."""
    return rms_norm_ref(x, weight, eps, weight_offset).to(x.dtype)


def _weights(module: nn.Module, names, shape, affine: bool, device, dtype) -> None:
    """Register the module's weights ``names`` of ``shape`` (None each without ``affine``), then reset them."""
    for n in names:
        module.register_parameter(n, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)) if affine else None)
    module.reset_parameters()


def _reset(module: nn.Module, names) -> None:
    """Each weight to ``1 - weight_offset`` (the identity norm), as ``torch.nn.RMSNorm`` sets its weight to 1."""
    with torch.no_grad():
        for n in names:
            w = getattr(module, n)
            if w is not None:
                w.fill_(1.0 - module.weight_offset)


class RMSNorm(nn.Module):
    """Drop-in for ``torch.nn.RMSNorm`` running the qknorm kernel (:func:`qknorm.rms_norm`).

    ``y = x / sqrt(mean(x**2) + eps) * (weight + weight_offset)`` over the trailing
    ``normalized_shape`` dims (Zhang & Sennrich 2019, arXiv:1910.07467).

    Parameters
    ----------
    normalized_shape : int or sequence of int
        As ``torch.nn.RMSNorm``: the size of the last dim, or the sizes (each >= 1) of the
        trailing dims normalised together. More than one dim: those dims of the input are
        flattened into one (they must be viewable as one, i.e. laid out contiguously among
        themselves), normalised, and the output keeps the input's shape.
    eps : float or None
        Added to the mean square, >= 0 and at most fp32's largest value; None means what
        ``torch.nn.RMSNorm`` does with None in the installed PyTorch (:func:`default_eps` of
        the input's dtype).
    elementwise_affine : bool
        A learnable ``weight`` of shape ``normalized_shape`` (else ``weight`` is None).
    device, dtype
        Of the weight (``torch.empty``'s defaults when None).
    weight_offset : float
        (qknorm) The norm multiplies by ``weight + weight_offset``, in fp32. Gemma stores
        ``w`` and multiplies by ``1 + w``: use ``weight_offset=1.0`` and load its weights
        unchanged. The weight is initialised to ``1 - weight_offset`` so a fresh module
        scales by one. Finite; must be 0 without ``elementwise_affine``.

    Raises
    ------
    TypeError
        ``normalized_shape`` not an int or a sequence of ints; ``eps`` or ``weight_offset``
        not a real number.
    ValueError
        An empty ``normalized_shape`` or a size < 1; ``eps`` out of range;
        ``weight_offset`` not finite, or nonzero with ``elementwise_affine=False``.

    Notes
    -----
    ``state_dict`` is ``{"weight": ...}`` exactly like ``torch.nn.RMSNorm``'s, both ways
    (``weight_offset`` is a constructor argument, not state).
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine", "weight_offset"]

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True,
                 device=None, dtype=None, *, weight_offset: float = 0.0) -> None:
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        if isinstance(normalized_shape, (str, bytes)) or not isinstance(normalized_shape, (tuple, list, torch.Size)):
            raise TypeError(f"normalized_shape must be an int or a sequence of ints, got "
                            f"{type(normalized_shape).__name__} {normalized_shape!r}")
        self.normalized_shape = tuple(validate.integer("normalized_shape", n, minimum=1) for n in normalized_shape)
        if not self.normalized_shape:
            raise ValueError(f"normalized_shape must be one or more positive sizes, got {normalized_shape!r}")
        self.eps = validate.eps_value(eps, allow_none=True)
        self.elementwise_affine = elementwise_affine
        self.weight_offset = validate.module_offset(weight_offset, elementwise_affine)
        self._numel = math.prod(self.normalized_shape)
        _weights(self, ("weight",), self.normalized_shape, elementwise_affine, device, dtype)

    def reset_parameters(self) -> None:
        """Set the weight (if any) to ``1 - weight_offset``: the module scales by one."""
        _reset(self, ("weight",))

    def _eps(self, x: Tensor) -> float:
        return self.eps if self.eps is not None else default_eps(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` over its trailing ``normalized_shape`` dims.

        bfloat16/float16/float32 run :func:`qknorm.rms_norm` (or, when autograd would record
        the call, the same function in differentiable PyTorch ops); other dtypes (float64)
        run ``torch.nn.functional.rms_norm`` in x's dtype.

        Parameters
        ----------
        x : torch.Tensor
            ``[..., *normalized_shape]``, any strides (one trailing dim) or trailing dims
            viewable as one.

        Returns
        -------
        torch.Tensor
            A new tensor of x's shape and dtype (x is not modified).

        Raises
        ------
        ValueError
            ``x`` does not end with ``normalized_shape``, or its trailing dims cannot be
            flattened without a copy; otherwise the errors of :func:`qknorm.rms_norm`
            (e.g. the weight on another device).
        """
        if not isinstance(x, Tensor) or x.dtype not in _KERNEL_DTYPES or not x.dim():
            validate.activation("x", x, float64=True)
        k = len(self.normalized_shape)
        if (x.shape[-1] != self._numel) if k == 1 else (x.dim() < k or tuple(x.shape[x.dim() - k:]) != self.normalized_shape):
            raise ValueError(f"RMSNorm{self.normalized_shape}: input of shape {tuple(x.shape)} does not end "
                             f"with normalized_shape {self.normalized_shape}")
        eps = self._eps(x)
        w = self.weight
        if k > 1:
            try:
                xf = x.view(*x.shape[:x.dim() - k], self._numel)
            except RuntimeError as e:
                raise ValueError(f"RMSNorm{self.normalized_shape}: the trailing {k} dims of an input with shape "
                                 f"{tuple(x.shape)} and strides {x.stride()} cannot be flattened without a "
                                 f"copy; pass x.contiguous()") from e
            w = w.reshape(self._numel) if w is not None else None
            return self._norm(xf, w, eps).view(x.shape)
        return self._norm(x, w, eps)

    def _norm(self, x: Tensor, w: Tensor | None, eps: float) -> Tensor:
        if x.dtype not in _KERNEL_DTYPES:  # e.g. float64: PyTorch's own op, same semantics
            # the offset added in x's dtype, not the weight's (bf16: 1 + 1e-3 rounds to 1), as QKNorm does
            ww = None if w is None else w.to(x.dtype) + self.weight_offset  # (F.rms_norm warns on mixed dtypes)
            return F.rms_norm(x, (x.shape[-1],), ww, eps)
        if _needs_autograd(x, w):
            return _rms_norm_autograd(x, w, eps, self.weight_offset)
        return ops.rms_norm(x, w, eps, weight_offset=self.weight_offset)

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        s = f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        return s + (f", weight_offset={self.weight_offset}" if self.weight_offset else "")


class QKNorm(nn.Module):
    """Per-head RMSNorm of Q and K (Qwen3, Gemma 3 ...) in one kernel launch (:func:`qknorm.qk_rms_norm`).

    Each head (last dim) of Q and of K is normalised on its own (Dehghani et al. 2023,
    arXiv:2302.05442). ``forward(q, k, in_place=False)`` takes ``q [..., Hq, head_dim]`` and
    ``k [..., Hkv, head_dim]`` (typically strided views of the packed QKV projection); see
    :meth:`forward`.

    Parameters
    ----------
    head_dim : int
        The width of one head, >= 1.
    eps : float or None
        Added to the mean square, >= 0 and at most fp32's largest value (default 1e-6); None: what
        ``torch.nn.RMSNorm`` does with None (:func:`default_eps` of the input's dtype).
    weight_offset : float
        The norm multiplies by ``weight + weight_offset`` in fp32 (Gemma's ``1 + w``: 1.0);
        the weights start at ``1 - weight_offset``. Finite; 0 without ``elementwise_affine``.
    elementwise_affine : bool
        Learnable ``q_weight`` and ``k_weight`` of shape ``[head_dim]`` (else both None).
    device, dtype
        Of the weights.

    Raises
    ------
    TypeError
        ``head_dim`` not an int; ``eps`` or ``weight_offset`` not a real number.
    ValueError
        ``head_dim < 1``; ``eps`` out of range; ``weight_offset`` not finite, or
        nonzero with ``elementwise_affine=False``.

    Notes
    -----
    The module's weights ``q_weight`` and ``k_weight`` (``[head_dim]``) are those that
    Hugging Face models keep as ``self_attn.q_norm.weight`` and ``self_attn.k_norm.weight``.
    Mapping a checkpoint onto a module stored at ``self_attn.qk_norm``::

        {prefix}q_norm.weight -> {prefix}qk_norm.q_weight
        {prefix}k_norm.weight -> {prefix}qk_norm.k_weight

    :meth:`remap_state_dict` does that renaming on a whole state dict, and
    :meth:`from_norms` builds the module from two existing norm modules.
    """

    def __init__(self, head_dim: int, eps: float | None = 1e-6, weight_offset: float = 0.0,
                 elementwise_affine: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.head_dim = validate.integer("head_dim", head_dim, minimum=1)
        self.eps = validate.eps_value(eps, allow_none=True)  # None: what torch.nn.RMSNorm does with None
        self.weight_offset = validate.module_offset(weight_offset, elementwise_affine)
        self.elementwise_affine = elementwise_affine
        _weights(self, ("q_weight", "k_weight"), (self.head_dim,), elementwise_affine, device, dtype)

    def reset_parameters(self) -> None:
        """Set both weights (if any) to ``1 - weight_offset``: the module scales by one."""
        _reset(self, ("q_weight", "k_weight"))

    def forward(self, q: Tensor, k: Tensor, in_place: bool = False) -> tuple[Tensor, Tensor]:
        """Normalise each head of ``q`` and of ``k``.

        bfloat16/float16/float32 run :func:`qknorm.qk_rms_norm` (one launch; when autograd
        would record the call, the same function in differentiable PyTorch ops); other
        dtypes (float64) run ``torch.nn.functional.rms_norm`` in their dtype.

        Parameters
        ----------
        q : torch.Tensor
            ``[..., Hq, head_dim]``, any strides.
        k : torch.Tensor
            ``[..., Hkv, head_dim]``, q's dtype and device, any strides.
        in_place : bool
            Write the results into ``q`` and ``k`` (which then must not share memory with
            each other) and return them; default False: new tensors.

        Returns
        -------
        tuple[torch.Tensor, torch.Tensor]
            ``(q_normed, k_normed)``: ``(q, k)`` themselves with ``in_place=True``, else
            new tensors (q and k unmodified).

        Raises
        ------
        ValueError
            ``q`` or ``k`` does not end with ``head_dim``; otherwise the
            errors of :func:`qknorm.qk_rms_norm`.
        RuntimeError
            ``in_place=True`` while autograd would record the call (grad mode on and an
            input or weight requiring grad).
        """
        qw, kw = self.q_weight, self.k_weight
        kernel = isinstance(q, Tensor) and q.dtype in _KERNEL_DTYPES
        if qw is None or not kernel:  # with weights, a wrong width fails below and is named there
            self._check_head_dim(q, k)
        if not kernel:  # float64 (PyTorch's op): the rules the kernel path's op would apply
            validate.qk_activations(q, k, float64=True)
            if in_place:
                validate.qk_outputs(q, k, q, k)
        try:
            eps = self.eps if self.eps is not None else default_eps(q.dtype)
            grad = _needs_autograd(q, k, qw, kw)
            if in_place and grad:
                raise RuntimeError("QKNorm(in_place=True) cannot record autograd; run it under "
                                   "torch.no_grad()/inference_mode() or use in_place=False")
            if not kernel:  # e.g. float64: PyTorch's own op, as RMSNorm (differentiable)
                qn, kn = self._torch_norm(q, qw, eps), self._torch_norm(k, kw, eps)
                if not in_place:
                    return qn, kn
                with writing(q, k):
                    return q.copy_(qn), k.copy_(kn)
            if grad:  # the op's rules, then differentiable PyTorch ops
                validate.qk_pair(q, k, qw, kw)
                return (_rms_norm_autograd(q, qw, eps, self.weight_offset),
                        _rms_norm_autograd(k, kw, eps, self.weight_offset))
            if in_place:
                return ops.qk_rms_norm(q, k, qw, kw, eps, weight_offset=self.weight_offset, q_out=q, k_out=k)
            return ops.qk_rms_norm(q, k, qw, kw, eps, weight_offset=self.weight_offset)
        except (ValueError, RuntimeError):  # (the autograd path's PyTorch ops raise RuntimeError on a wrong width)
            self._check_head_dim(q, k)  # the module's own message when the width is what is wrong (error path only)
            raise

    def _check_head_dim(self, q, k) -> None:
        """``ValueError`` naming q or k when it does not end with ``head_dim``."""
        for name, t in (("q", q), ("k", k)):
            if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[-1] != self.head_dim:
                raise ValueError(f"QKNorm({self.head_dim}): {name} must end with head_dim {self.head_dim}, got "
                                 f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")

    def _torch_norm(self, x: Tensor, w: Tensor | None, eps: float) -> Tensor:
        """Dtypes the kernels do not take (float64): ``torch.nn.functional.rms_norm`` in x's dtype."""
        ww = None if w is None else (w.to(x.dtype) + self.weight_offset if self.weight_offset else w.to(x.dtype))
        return F.rms_norm(x, (x.shape[-1],), ww, eps)

    @classmethod
    def from_norms(cls, q_norm: nn.Module, k_norm: nn.Module, *, eps: float | None = None,
                   weight_offset: float = 0.0) -> "QKNorm":
        """A QKNorm holding copies of the weights of two per-head norm modules (anything with a
        ``weight`` of shape ``[head_dim]``: ``torch.nn.RMSNorm``, Hugging Face ``Qwen3RMSNorm`` ...).

        Parameters
        ----------
        q_norm, k_norm : torch.nn.Module
            The Q and K norms; their weights are copied, not shared.
        eps : float or None
            None: the modules' own (``eps``, else ``variance_epsilon``), which must agree.
        weight_offset : float
            As the constructor's; the weights are copied unchanged (Gemma's ``1 + w`` norms:
            pass 1.0).

        Returns
        -------
        QKNorm
            ``head_dim`` the weights' length, on the weights' device and dtype.

        Raises
        ------
        ValueError
            A ``weight`` that is None, weights not 1-D or of different shapes; ``eps``
            None and the modules' eps missing or different; the constructor's errors.
        """
        qw, kw = q_norm.weight, k_norm.weight
        if qw is None or kw is None or qw.dim() != 1 or qw.shape != kw.shape:
            raise ValueError("from_norms needs two norms with weights of one shape [head_dim]")
        if eps is None:
            found = [getattr(m, "eps", None) if getattr(m, "eps", None) is not None
                     else getattr(m, "variance_epsilon", None) for m in (q_norm, k_norm)]
            if found[0] is None or found[0] != found[1]:
                raise ValueError(f"pass eps=: the norms' eps are {found[0]!r} and {found[1]!r}")
            eps = float(found[0])
        m = cls(qw.shape[0], eps=eps, weight_offset=weight_offset, device=qw.device, dtype=qw.dtype)
        with torch.no_grad():
            m.q_weight.copy_(qw)
            m.k_weight.copy_(kw)
        return m

    @staticmethod
    def remap_state_dict(state_dict: dict, q_norm: str = "q_norm", k_norm: str = "k_norm",
                         qk_norm: str = "qk_norm") -> dict:
        """A copy of ``state_dict`` with ``*.{q_norm}.weight`` / ``*.{k_norm}.weight`` renamed to
        ``*.{qk_norm}.q_weight`` / ``*.{qk_norm}.k_weight`` (other keys unchanged).

        Parameters
        ----------
        state_dict : dict
            Keys ``str``; values are passed through (not copied).
        q_norm, k_norm : str
            The attribute names of the model's Q and K norm modules.
        qk_norm : str
            The attribute name of the :class:`QKNorm` module in the new model.

        Returns
        -------
        dict
            A new dict in the input's key order; the input is not modified.
        """
        out = {}
        for key, value in state_dict.items():
            head, _, tail = key.rpartition(".")
            parent, _, name = head.rpartition(".")
            pre = parent + "." if parent else ""
            if tail == "weight" and name == q_norm:
                out[f"{pre}{qk_norm}.q_weight"] = value
            elif tail == "weight" and name == k_norm:
                out[f"{pre}{qk_norm}.k_weight"] = value
            else:
                out[key] = value
        return out

    def extra_repr(self) -> str:
        """The constructor arguments, for ``repr``."""
        s = f"head_dim={self.head_dim}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        return s + (f", weight_offset={self.weight_offset}" if self.weight_offset else "")
