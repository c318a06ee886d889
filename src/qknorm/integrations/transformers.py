"""Put qknorm's RMSNorm into a loaded Hugging Face ``transformers`` model.

Usage::

    import torch
    from transformers import AutoModelForCausalLM
    from qknorm.integrations.transformers import apply_qknorm

    model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen3-8B", torch_dtype=torch.bfloat16).cuda()
    report = apply_qknorm(model)        # patches the model in place
    print(report)                       # what was replaced, what was left alone and why
    out = model.generate(**inputs, max_new_tokens=64)

``pip install "qknorm[transformers]"`` pulls a ``transformers`` recent enough for every
architecture below (4.51: the first release with Qwen3 and Qwen3-MoE). ``import qknorm``
never imports ``transformers``; :func:`apply_qknorm` does not need it either (it only reads
its version for the report).

What is replaced
----------------
Every norm module whose class is one of these (matched by class name *and* defining module,
so a look-alike class elsewhere is never taken for one of them):

==========================  =====================================================  =============
class (transformers)        the model's forward, ``n = x.float() * rsqrt(mean(x²) + eps)``   qknorm call
==========================  =====================================================  =============
``LlamaRMSNorm``,           ``weight * n.to(x.dtype)``                             ``rms_norm``
``MistralRMSNorm``,
``Qwen2RMSNorm``,
``Qwen3RMSNorm``,
``Qwen3MoeRMSNorm``
``Olmo2RMSNorm``            ``(weight * n).to(x.dtype)``                           ``rms_norm``
``Gemma2RMSNorm``,          ``(n * (1 + weight.float())).type_as(x)``              ``rms_norm(...,
``Gemma3RMSNorm``                                                                  weight_offset=1)``
``torch.nn.RMSNorm``        ``torch.rms_norm`` (1-D ``normalized_shape``)           ``rms_norm``
==========================  =====================================================  =============

Each one becomes a :class:`PatchedRMSNorm` holding *the same* ``weight`` Parameter object
(no copy; ``state_dict`` keys and ``load_state_dict`` are unchanged) and the same eps
(``variance_epsilon`` or ``eps``). Before a module is swapped, the original and the
replacement are run on two probe rows in the weight's dtype and must agree (fp32: 1e-4,
fp16/bf16: about two units in the last place, relative to the row's largest value); a
module that fails the probe is left alone with the measured difference in the report, so
a future ``transformers`` that changes a norm's formula is caught rather than followed
silently.

This covers the decoder-layer norms (``input_layernorm``, ``post_attention_layernorm``;
Gemma's ``pre_/post_feedforward_layernorm``), the final ``norm``, and the attention q/k
norms: per head (``[..., H, head_dim]``: Qwen3, Qwen3-MoE, Gemma 3) and full width
(``[..., H·head_dim]``: OLMo 2).

Numerics
--------
qknorm computes in fp32 throughout (weight and ``1 + w`` included) and rounds once, at the
end, to the input dtype.

* Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE round *twice* in half precision: ``n`` to the
  input dtype, then the product with the weight. For fp32 activations and weights the two
  agree to fp32 rounding (the tests hold them to 1e-5 relative); for bf16/fp16 they differ
  by about one unit in the last place on some elements (qknorm's single rounding is the
  more accurate). The output dtype follows the model's: ``promote(x.dtype, weight.dtype)``
  (a bf16 model with fp32 norm weights gets fp32 norm outputs, as unpatched).
* OLMo 2 and Gemma 2/3 multiply by the weight (``1 + w``) in fp32 and round once: the same
  recipe as qknorm; differences are fp32 summation order only.
* ``torch.nn.RMSNorm``: fp32 math, output in the input dtype, as qknorm.

Inputs in other dtypes (fp64) run the model's own formula in PyTorch (which computes them in fp32, as the models do).

One launch for Q and K
----------------------
In the attention blocks of Qwen3, Qwen3-MoE and Gemma 3 the per-head ``q_norm`` and
``k_norm`` run as *one* ``qk_rms_norm`` launch, on the views the model already has (no
copies, no rewritten attention forward): ``q_norm`` records its input and returns it,
``k_norm`` normalises both in place. Those forwards call ``q_norm`` then ``k_norm`` on the
fresh projection outputs and read neither before both returned; each block is run once
on probe tokens with and without the pairing before it is switched on, so a forward with
another order keeps two launches (the report says why). The pairing steps aside (two
calls, the same values) under autograd, while ``torch.compile`` traces, for inference
tensors outside inference mode and where the model's dtype rule makes the output dtype
differ from the input's. One model instance should not run forwards from two threads at
once (the deferred tensor is held per block).

Fused residual add (``fuse_residual=True``)
--------------------------------------------
In the decoder layers of Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE (pre-norm: ``residual + attn``
then ``post_attention_layernorm``) and Gemma 2/3 (sandwich norms: ``residual +
post_attention_layernorm(attn)`` then ``pre_feedforward_layernorm``), the add and the norm
after it run as one launch of the *out-of-place* fused add (``ops.fused_add.call_out``: the
norm of the fp32 sum, the sum rounded once into a new tensor). Nothing the caller holds is
written: the residual is the layer's input (the previous layer's output, the embeddings,
what ``output_hidden_states`` returns). The layer keeps its object, parameters, hooks and
``state_dict``; only its class becomes a subclass with this forward, checked per layer
against the layer's own forward on probe tokens (fp32: 1e-4; bf16/fp16: 3e-2 relative, the
norm of the unrounded sum propagated through the MLP). Numerics: the model normalises the
sum rounded to the activation dtype; qknorm the fp32 sum (identical in fp32). Under
autograd, and for dtypes the fused call would change, the layer runs the add and the norm
separately; under ``torch.compile`` it runs the model's add and norm for Inductor to fuse (with
``apply_qknorm(..., under_compile="kernels")``: the functional custom op). OLMo 2's layers are
post-norm (the add is not followed by a norm): nothing to fuse, reported. A model whose
layers were patched cannot be pickled whole (``torch.save(model)``); save its
``state_dict`` (``save_pretrained`` does).

Not done in this step
---------------------
* Under autograd the qknorm ops take their differentiable custom-op path (gradients match
  PyTorch's); nothing extra is done for training.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import torch
from torch import nn
from torch.nn.modules import module as _mm

from .. import functional as _ops
from ..ops.fused_add import call_out as _fused_out
from ..nn import default_eps
from ..validate import ACT_DTYPES as _KERNEL_DTYPES  # the kernels' activation dtypes

__all__ = ["apply_qknorm", "Report", "Replaced", "LeftAlone", "PatchedRMSNorm"]


# style names: how the model applies the weight
_CAST_THEN_WEIGHT = "cast_then_weight"      # weight * n.to(x.dtype)               (Llama family)
_WEIGHT_THEN_CAST = "weight_then_cast"      # (weight * n).to(x.dtype)             (OLMo 2)
_ONE_PLUS_WEIGHT = "one_plus_weight"        # (n * (1 + weight.float())).type_as(x) (Gemma 2/3)
_TORCH = "torch"                            # torch.nn.RMSNorm

_MODELS = "transformers.models."
# (defining module, class name) -> (style, eps attribute)
_KNOWN: dict[tuple[str, str], tuple[str, str]] = {
    (_MODELS + "llama.modeling_llama", "LlamaRMSNorm"): (_CAST_THEN_WEIGHT, "variance_epsilon"),
    (_MODELS + "mistral.modeling_mistral", "MistralRMSNorm"): (_CAST_THEN_WEIGHT, "variance_epsilon"),
    (_MODELS + "qwen2.modeling_qwen2", "Qwen2RMSNorm"): (_CAST_THEN_WEIGHT, "variance_epsilon"),
    (_MODELS + "qwen3.modeling_qwen3", "Qwen3RMSNorm"): (_CAST_THEN_WEIGHT, "variance_epsilon"),
    (_MODELS + "qwen3_moe.modeling_qwen3_moe", "Qwen3MoeRMSNorm"): (_CAST_THEN_WEIGHT, "variance_epsilon"),
    (_MODELS + "olmo2.modeling_olmo2", "Olmo2RMSNorm"): (_WEIGHT_THEN_CAST, "variance_epsilon"),
    (_MODELS + "gemma2.modeling_gemma2", "Gemma2RMSNorm"): (_ONE_PLUS_WEIGHT, "eps"),
    (_MODELS + "gemma3.modeling_gemma3", "Gemma3RMSNorm"): (_ONE_PLUS_WEIGHT, "eps"),
}

_NUMERICS = {
    _CAST_THEN_WEIGHT: "model rounds n to the input dtype, then multiplies by the weight (two roundings "
                       "in bf16/fp16); qknorm: fp32 throughout, one rounding",
    _WEIGHT_THEN_CAST: "same recipe as the model (weight in fp32, one rounding)",
    _ONE_PLUS_WEIGHT: "same recipe as the model ((1 + w) in fp32, one rounding)",
    _TORCH: "same recipe as torch.rms_norm (fp32, output in the input dtype)",
}


class PatchedRMSNorm(nn.Module):
    """A model's RMSNorm module running :func:`qknorm.rms_norm`.

    Holds the original module's ``weight`` Parameter itself (or None) and its eps; the
    ``style`` says how the model applies the weight (see the module docstring), which sets
    ``weight_offset`` and the output dtype. :func:`apply_qknorm` builds these (as
    per-style subclasses that also print as ``PatchedRMSNorm``); building one by hand gives
    a module whose ``torch.compile`` trace runs the model's formula.

    Parameters
    ----------
    weight : torch.nn.Parameter or None
        ``[D]``, registered as this module's ``weight`` (the same object: no copy).
    eps : float or None
        Added to the mean square (also readable as ``variance_epsilon``); None:
        :func:`qknorm.nn.default_eps` of the input's dtype.
    style : str
        How the model applies the weight: ``"cast_then_weight"`` (Llama family:
        ``weight * n.to(x.dtype)``), ``"weight_then_cast"`` (OLMo 2:
        ``(weight * n).to(x.dtype)``), ``"one_plus_weight"`` (Gemma 2/3, ``weight_offset``
        1.0) or ``"torch"`` (``torch.nn.RMSNorm``).
    original : str
        The replaced class's name, for ``repr`` and the report.

    Raises
    ------
    ValueError
        An unknown ``style``.
    """

    def __init__(self, weight: nn.Parameter | None, eps: float | None, style: str, original: str) -> None:
        super().__init__()
        if style not in _NUMERICS:
            raise ValueError(f"unknown style {style!r}")
        self.weight = weight  # the same Parameter object (registered as this module's parameter)
        self.eps = eps
        self.style = style
        self.weight_offset = 1.0 if style == _ONE_PLUS_WEIGHT else 0.0
        self.original = original
        # under torch.compile: False, the model's own formula; True, the custom ops (apply_qknorm's under_compile;
        # the modules apply_qknorm makes have it in their class instead: _traced_class)
        self.compile_kernels = False

    @property
    def variance_epsilon(self):
        """``eps``, under the attribute name the Llama family uses."""
        return self.eps

    _pair: "_QKPair | None" = None  # set on an attention block's q_norm and k_norm (see _QKPair)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's norm of ``x`` over its last dim, by qknorm's kernel.

        Parameters
        ----------
        x : torch.Tensor
            ``[..., D]``. bfloat16/float16/float32 run :func:`qknorm.rms_norm`; other dtypes
            the model's own formula in PyTorch (as while ``torch.compile`` traces, unless
            ``apply_qknorm(..., under_compile="kernels")``).

        Returns
        -------
        torch.Tensor
            A new tensor of dtype :meth:`out_dtype`. Exception: the ``q_norm`` of a paired
            attention block (see "One launch for Q and K" in this module's docstring)
            returns ``x`` itself, normalised in place by the ``k_norm`` call that follows.

        Raises
        ------
        TypeError, ValueError
            The errors of :func:`qknorm.rms_norm` (e.g. ``x`` not ending with ``D``).
        """
        if _is_compiling():
            return self._traced(x)
        pair = self._pair
        if pair is not None:
            if pair.q is self:
                if pair.defer(x):
                    return x  # normalised in place by k_norm's launch, before anything reads it
            else:
                y = pair.finish(x)
                if y is not None:
                    return y
        return self._own(x)

    def _traced(self, x: torch.Tensor) -> torch.Tensor:
        """This module while ``torch.compile`` traces: the model's own formula (Inductor fuses it with its
        neighbours), or with ``compile_kernels`` the custom op (the Q/K pairing is off while tracing: Dynamo
        sees two ``rms_norm`` calls)."""
        if self.compile_kernels:
            return self._own(x)
        return _model_formula(self.style, x, self.weight, _eps_of(self, x))

    def _own(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        eps = _eps_of(self, x)
        if x.dtype not in _KERNEL_DTYPES:
            return _model_formula(self.style, x, w, eps)
        y = _ops.rms_norm(x, w, eps, weight_offset=self.weight_offset)
        if self.style == _CAST_THEN_WEIGHT and w is not None and w.dtype != x.dtype:
            dt = torch.promote_types(x.dtype, w.dtype)  # `weight * n.to(x.dtype)` promotes
            if dt != y.dtype:
                y = y.to(dt)
        return y

    def out_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype of this module's output for input ``x`` (the model's promotion rule).

        Parameters
        ----------
        x : torch.Tensor
            The input (only its dtype is read).

        Returns
        -------
        torch.dtype
            ``promote_types(x.dtype, weight.dtype)`` for the ``"cast_then_weight"`` style with
            a weight and a kernel dtype, else ``x.dtype``.
        """
        w = self.weight
        if x.dtype in _KERNEL_DTYPES and self.style == _CAST_THEN_WEIGHT and w is not None:
            return torch.promote_types(x.dtype, w.dtype)
        return x.dtype

    def _own_in_place(self, x: torch.Tensor) -> None:
        """This module's result written over ``x`` (a deferred q whose pairing fell through)."""
        _ops.rms_norm(x, self.weight, _eps_of(self, x), weight_offset=self.weight_offset, out=x)

    def extra_repr(self) -> str:
        """Weight shape, eps, style and the replaced class, for ``repr``."""
        shape = tuple(self.weight.shape) if self.weight is not None else None
        return f"{shape}, eps={self.eps}, style={self.style}, replaces={self.original}"


_is_compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)


def _eps_of(m: PatchedRMSNorm, x: torch.Tensor) -> float:
    """``m``'s eps, or the library default for ``x``'s dtype when it has none (a function, not a method:
    while Dynamo traces, a method call costs a guard per module)."""
    return m.eps if m.eps is not None else default_eps(x.dtype)


def _model_formula(style: str, x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """A model's RMSNorm forward in PyTorch, by ``style`` (the module docstring's recipes)."""
    if style == _TORCH:
        return torch.rms_norm(x, (x.shape[-1],), w, eps)
    xf = x.float()  # fp64 too: the models' own norms compute in fp32 (hidden_states.to(torch.float32))
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if style == _CAST_THEN_WEIGHT:
        return w * n.to(x.dtype)
    if style == _WEIGHT_THEN_CAST:
        return (w * n).to(x.dtype)
    return (n * (1.0 + w.to(n.dtype))).type_as(x)


# The norms apply_qknorm makes: what runs while torch.compile traces is fixed by the class, so that the traced
# code reads no more of the module than the model's own norm does (Dynamo guards each attribute read, and checks
# the guards on every call of the compiled model; with per-module reads of its flags a Qwen3-8B-shaped model
# measured 0.4% slower per compiled decode step than unpatched on an H100). under_compile="inductor": one subclass per
# style, the model's formula from the weight and eps alone; "kernels": the custom op. The classes print as
# PatchedRMSNorm.
class _TracedTorch(PatchedRMSNorm):
    def _traced(self, x):
        return _model_formula(_TORCH, x, self.weight, _eps_of(self, x))


class _TracedCastThenWeight(PatchedRMSNorm):
    def _traced(self, x):
        return _model_formula(_CAST_THEN_WEIGHT, x, self.weight, _eps_of(self, x))


class _TracedWeightThenCast(PatchedRMSNorm):
    def _traced(self, x):
        return _model_formula(_WEIGHT_THEN_CAST, x, self.weight, _eps_of(self, x))


class _TracedOnePlusWeight(PatchedRMSNorm):
    def _traced(self, x):
        return _model_formula(_ONE_PLUS_WEIGHT, x, self.weight, _eps_of(self, x))


class _TracedKernels(PatchedRMSNorm):
    def _traced(self, x):
        return self._own(x)


_TRACED = {_TORCH: _TracedTorch, _CAST_THEN_WEIGHT: _TracedCastThenWeight, _WEIGHT_THEN_CAST: _TracedWeightThenCast,
           _ONE_PLUS_WEIGHT: _TracedOnePlusWeight}
for _c in (*_TRACED.values(), _TracedKernels):
    _c.__name__ = "PatchedRMSNorm"  # (as printed; pickle finds them by their own __qualname__)
del _c


def _traced_class(style: str, under_compile: str) -> type:
    """The class of a patched norm of ``style`` for ``apply_qknorm``'s ``under_compile``."""
    return _TracedKernels if under_compile == "kernels" else _TRACED[style]


def _watched(m: nn.Module) -> bool:
    """Whether a module's call is observed or changed by hooks (its own or global ones) or by a
    forward replaced on the instance (accelerate): then it must run as itself."""
    return bool(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__
                or getattr(m, "_hf_hook", None) is not None
                or _mm._global_forward_hooks or _mm._global_forward_pre_hooks)


_paired_classes: dict[type, type] = {}


def _paired_class(cls: type) -> type:
    """``cls`` whose forward arms its q/k pairing while it runs (one subclass per class)."""
    sub = _paired_classes.get(cls)
    if sub is None:
        def forward(self, *args, **kwargs):
            if _is_compiling():  # no pairing while tracing (first: nothing of the module read, no guard)
                return cls.forward(self, *args, **kwargs)
            pair = self.q_norm._pair
            if pair is None:
                return cls.forward(self, *args, **kwargs)
            pair.armed = True
            try:
                return cls.forward(self, *args, **kwargs)
            finally:
                pair.disarm()
        sub = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                          "__qualname__": cls.__qualname__, "_qknorm_paired_class": True,
                                          "__reduce_ex__": _reduce_by(_paired_class, cls)})
        _paired_classes[cls] = sub
    return sub


def _reduce_by(factory, *args):
    """A ``__reduce_ex__`` for instances of a class made at run time (:func:`_paired_class`,
    :func:`_fused_class`): pickled as ``factory(*args)``'s class and the module's state, so that
    ``torch.save(model)`` of a patched model works (the class carries its base's name, which
    pickle would otherwise look up and find to be another class)."""
    def __reduce_ex__(self, protocol):
        return _rebuild, (factory, args), self.__getstate__()  # (nn.Module's: without a compile()d forward)
    return __reduce_ex__


def _rebuild(factory, args):
    """An empty instance of ``factory(*args)`` (its state follows: ``nn.Module.__setstate__``)."""
    cls = factory(*args)
    return cls.__new__(cls)


class _QKPair:
    """One attention block's q_norm and k_norm run as one ``qk_rms_norm`` launch.

    The attention forwards this is used for (:data:`_PAIRED_ATTENTION`) call
    ``q_norm(q)`` and then ``k_norm(k)`` on the fresh outputs of ``q_proj``/``k_proj``
    and read neither result before both calls returned. So q_norm *defers*: it records
    ``q`` and returns it as it is; k_norm then normalises both in place with one launch
    (``qk_rms_norm(q, k, q_weight, k_weight, q_out=q, k_out=k)``) and the query tensor the
    forward holds (``q`` or a view of it) has its normalised values before its first read.
    That order is checked per block before the pairing is switched on (:func:`_probe_pair`:
    the block's output with and without the pairing must be equal and nothing left
    pending).

    Deferral only happens where the in-place call gives what the two modules would:
    a kernel dtype, output dtype equal to the input's (the model's promotion rule), no
    autograd on the tensors and not while ``torch.compile`` traces (Dynamo sees two plain
    ``rms_norm`` calls). Otherwise each module runs on its own, as without the pairing.
    A q recorded and never consumed is normalised at the next call of the block's q_norm
    and the pairing is switched off with a warning (the forward did not have the
    expected order); ``_probe_pair`` makes this unreachable for the probed classes.
    """

    def __init__(self, q: PatchedRMSNorm, k: PatchedRMSNorm) -> None:
        self.q, self.k = q, k
        self.pending: torch.Tensor | None = None
        self.enabled = True
        self.armed = False  # True only while the block's own forward runs (_paired_class)

    def _eligible(self, m: PatchedRMSNorm, x: torch.Tensor) -> bool:
        w = m.weight
        return (type(x) is torch.Tensor and x.dtype in _KERNEL_DTYPES and m.out_dtype(x) == x.dtype
                and not (torch.is_grad_enabled() and (x.requires_grad or (w is not None and w.requires_grad)))
                and (not x.is_inference() or torch.is_inference_mode_enabled()))  # in place must be allowed

    def defer(self, q: torch.Tensor) -> bool:
        """Whether q_norm's call on ``q`` is left to k_norm's launch: only inside the block's own
        forward, and not where someone watches q_norm's output (its hooks, global hooks)."""
        if not self.armed:  # (armed only by the block's eager forward: never while torch.compile traces)
            return False
        if self.pending is not None:  # the forward called q_norm twice before k_norm: finish it, stop pairing
            self._abandon()
        if not self.enabled or _watched(self.q) or not self._eligible(self.q, q):
            return False
        self.pending = q
        return True

    def disarm(self) -> None:
        """End of the block's forward: a Q still pending (a forward that raised between the two
        norms, or another call order) is normalised in place; then nothing is pending."""
        self.armed = False
        if self.pending is not None:
            q, self.pending = self.pending, None
            self.q._own_in_place(q)

    def finish(self, k: torch.Tensor) -> torch.Tensor | None:
        """The paired launch for ``k`` and the pending q; None: k_norm runs on its own."""
        q = self.pending
        if q is None:
            return None
        self.pending = None
        if not (self._eligible(self.k, k) and k.dtype == q.dtype and k.device == q.device
                and k.shape[-1] == q.shape[-1]):
            self.q._own_in_place(q)
            return None
        qm, km = self.q, self.k
        _ops.qk_rms_norm(q, k, qm.weight, km.weight, _eps_of(qm, q), weight_offset=qm.weight_offset, q_out=q, k_out=k)
        return k

    def _abandon(self) -> None:
        q, self.pending, self.enabled = self.pending, None, False
        self.q._own_in_place(q)
        warnings.warn("qknorm: an attention block's q_norm was called twice without k_norm in between; "
                      "the one-launch Q/K pairing is switched off for it", RuntimeWarning, stacklevel=3)


@dataclasses.dataclass
class Replaced:
    """One module swapped: its path in the model, its class, what it became, and notes.

    Parameters
    ----------
    name : str
        The module's path in the model (``model.layers.0.input_layernorm``).
    original : str
        Its class, ``module.QualName``.
    replacement : str
        What it became, e.g. ``PatchedRMSNorm(qknorm.rms_norm, weight_offset=1.0)``.
    note : str
        For an attention block's q/k norm, its role and how it runs (e.g. ``per-head q
        norm: one qk_rms_norm launch with k_norm``); empty for the other norms.
    """
    name: str
    original: str
    replacement: str
    note: str = ""


@dataclasses.dataclass
class LeftAlone:
    """One norm-like module not touched, and why.

    Parameters
    ----------
    name : str
        The module's path in the model.
    cls : str
        Its class, ``module.QualName``.
    reason : str
        Why it was left alone (unknown class, a failed probe with the measured difference,
        already patched, ...).
    """
    name: str
    cls: str
    reason: str


@dataclasses.dataclass
class Report:
    """What :func:`apply_qknorm` did to a model; ``print(report)`` gives a summary.

    Parameters
    ----------
    model : str
        The model's class name.
    transformers_version : str or None
        ``transformers.__version__``, or None when it is not importable.
    replaced : list[Replaced]
        Every module swapped, in ``named_modules`` order.
    left_alone : list[LeftAlone]
        Every norm-like module (class name containing "norm") not touched, with the reason.
    not_done : list[str]
        What was not done and why (e.g. attention blocks kept at two launches, layers
        whose residual add was not fused).
    numerics : dict[str, str]
        Original class name to a note on how qknorm's numerics compare with the model's.
    fused_layers : list[str]
        Paths of the decoder layers given the fused residual add + norm.
    """
    model: str
    transformers_version: str | None
    replaced: list[Replaced] = dataclasses.field(default_factory=list)
    left_alone: list[LeftAlone] = dataclasses.field(default_factory=list)
    not_done: list[str] = dataclasses.field(default_factory=list)
    numerics: dict[str, str] = dataclasses.field(default_factory=dict)  # original class -> note
    fused_layers: list[str] = dataclasses.field(default_factory=list)  # decoder layers with the fused add + norm

    @property
    def replaced_names(self) -> list[str]:
        """The paths of the replaced modules."""
        return [r.name for r in self.replaced]

    @property
    def left_alone_names(self) -> list[str]:
        """The paths of the modules left alone."""
        return [r.name for r in self.left_alone]

    def __str__(self) -> str:
        tv = self.transformers_version or "not importable"
        lines = [f"apply_qknorm({self.model}) [transformers {tv}]: "
                 f"{len(self.replaced)} module(s) replaced, {len(self.left_alone)} left alone"]
        if self.replaced:
            lines.append("replaced:")
            for r in self.replaced:
                lines.append(f"  {r.name}: {r.original} -> {r.replacement}" + (f"  ({r.note})" if r.note else ""))
        if self.left_alone:
            lines.append("left alone:")
            for r in self.left_alone:
                lines.append(f"  {r.name}: {r.cls} -- {r.reason}")
        if self.fused_layers:
            n = self.fused_layers
            lines.append(f"fused residual add + norm (one fused_add_rms_norm launch, out of place) in {len(n)} decoder "
                         f"layer(s): {n[0]}" + (f" ... {n[-1]}" if len(n) > 1 else ""))
        if self.numerics:
            lines.append("numerics vs the model's own forward:")
            for cls, note in self.numerics.items():
                lines.append(f"  {cls}: {note}")
        if self.not_done:
            lines.append("not done in this version:")
            for s in self.not_done:
                lines.append(f"  - {s}")
        return "\n".join(lines)


def _cls_name(m: nn.Module) -> str:
    t = type(m)
    return f"{t.__module__}.{t.__qualname__}"


def _recognise(m: nn.Module) -> tuple[str, float | None] | str:
    """``(style, eps)`` for a module we know, else the reason we leave it alone."""
    t = type(m)
    if t is nn.RMSNorm:
        if len(m.normalized_shape) != 1:
            return f"torch.nn.RMSNorm over {len(m.normalized_shape)} trailing dims (only one is handled)"
        return _TORCH, m.eps
    known = _KNOWN.get((t.__module__, t.__qualname__))
    if known is None:
        return "unknown norm class: its formula is not known to qknorm, so it is not changed"
    style, eps_attr = known
    eps = getattr(m, eps_attr, None)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps < 0:
        return f"expected a number >= 0 in .{eps_attr}, found {eps!r}"
    w = getattr(m, "weight", None)
    if not isinstance(w, nn.Parameter) or w.dim() != 1:
        return "expected a 1-D Parameter `weight`"
    return style, float(eps)


def _hooked(m: nn.Module) -> str | None:
    if "forward" in m.__dict__:
        return "its forward was replaced on the instance (by another patch?)"
    if m._forward_hooks or m._forward_pre_hooks or getattr(m, "_hf_hook", None) is not None:
        return "it has forward hooks (accelerate offloading, another patch?) that qknorm cannot carry over"
    return None


def _probe(orig: nn.Module, new: PatchedRMSNorm) -> str | None:
    """Run both on two probe rows in the weight's dtype; the reason they disagree, or None."""
    w = new.weight
    if w is not None and w.device.type == "meta":
        return "weight on the meta device: the replacement cannot be checked against the original"
    if w is None:  # torch.nn.RMSNorm(elementwise_affine=False)
        dtype, device, width = torch.float32, "cpu", orig.normalized_shape[0]
    else:
        dtype = w.dtype if w.dtype in _KERNEL_DTYPES else torch.float32
        device, width = w.device, w.shape[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, width, generator=g)
    x[1] *= 1e-3  # a row whose mean square is near eps: catches a wrong eps
    x = x.to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            a = orig(x)
            b = new(x)
    except Exception as e:  # noqa: BLE001 - reported, module left alone
        return f"probe call failed: {type(e).__name__}: {e}"
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"probe: original gives {a.dtype}{tuple(a.shape)}, qknorm {b.dtype}{tuple(b.shape)}"
    a, b = a.double(), b.double()
    scale = a.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    err = ((a - b).abs() / scale).max().item()
    tol = 1e-4 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps
    if not err <= tol:
        return f"probe: qknorm differs from the original by {err:.3g} (relative; allowed {tol:.3g})"
    return None


def _role(name: str, m: nn.Module, parents: dict[str, nn.Module]) -> str:
    parent_name, _, attr = name.rpartition(".")
    if attr in ("q_norm", "k_norm"):
        parent = parents.get(parent_name)
        head_dim = getattr(parent, "head_dim", None)
        if head_dim is not None and m.weight is not None and m.weight.shape[0] == head_dim:
            return f"per-head {attr[0]} norm"
        return f"full-width {attr[0]} norm over heads*head_dim: its own rms_norm launch (Q and K widths differ)"
    return ""


# Attention blocks whose forward calls q_norm(q) then k_norm(k) on fresh projections and reads
# neither result before both returned (transformers 4.51 ... 5.x); checked per block by _probe_pair.
_PAIRED_ATTENTION = {
    (_MODELS + "qwen3.modeling_qwen3", "Qwen3Attention"),
    (_MODELS + "qwen3_moe.modeling_qwen3_moe", "Qwen3MoeAttention"),
    (_MODELS + "gemma3.modeling_gemma3", "Gemma3Attention"),
}


def _pairable(attn: nn.Module) -> str | None:
    """Why this attention block's q/k norms cannot share a launch, or None."""
    t = type(attn)
    if getattr(t, "_qknorm_paired_class", False):
        return "already paired"
    if (t.__module__, t.__qualname__) not in _PAIRED_ATTENTION:
        return f"attention class {t.__qualname__} is not one whose q_norm/k_norm call order qknorm knows"
    q, k = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    if not (isinstance(q, PatchedRMSNorm) and isinstance(k, PatchedRMSNorm)) or q is k:
        return "q_norm and k_norm are not both patched"
    if q._pair is not None or k._pair is not None:
        return "already paired"
    if q.eps != k.eps or q.weight_offset != k.weight_offset or q.style != k.style:
        return "q_norm and k_norm differ in eps or formula"
    if (q.weight is None) != (k.weight is None) or (q.weight is not None and q.weight.shape != k.weight.shape):
        return "q_norm and k_norm weights differ in shape"
    if "forward" in attn.__dict__ or "forward" in q.__dict__ or "forward" in k.__dict__:
        return "a forward was replaced on the instance (another patch?)"
    return None


def _probe_inputs(attn: nn.Module):
    """``(hidden_states [1, 3, hidden], (cos, sin) [1, 3, head_dim])`` of random probe tokens in the
    attention block's weight dtype and device, or None when the block has nothing to size them by."""
    w = getattr(getattr(attn, "q_proj", None), "weight", None)
    head_dim = getattr(attn, "head_dim", None)
    if not isinstance(w, torch.Tensor) or not isinstance(head_dim, int) or w.device.type == "meta":
        return None
    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, 3, w.shape[1], generator=g).to(device=w.device, dtype=w.dtype)
    ang = torch.rand(1, 3, head_dim, generator=g) * 6.0
    return h, (ang.cos().to(device=w.device, dtype=w.dtype), ang.sin().to(device=w.device, dtype=w.dtype))


def _probe_compare(run, what: str, tol_half: float) -> str | None:
    """``run(False)`` (the model's own way) against ``run(True)`` (qknorm's) without grad: the reason
    they differ (a failed call, another type or shape, a relative difference over the tolerance:
    1e-4 for fp32 outputs, ``tol_half`` for bf16/fp16), or None."""
    try:
        with torch.no_grad():
            a, b = run(False), run(True)
    except Exception as e:  # noqa: BLE001 - reported, the change is left off
        return f"probe call failed: {type(e).__name__}: {e}"
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
        return f"probe: {what} returns {type(a).__name__}, qknorm's {type(b).__name__}"
    tol = 1e-4 if a.dtype == torch.float32 else tol_half
    err = ((a.double() - b.double()).abs().max() / a.double().abs().max().clamp_min(1e-30)).item()
    if not err <= tol:
        return f"probe: qknorm's change differs from {what} by {err:.3g} (relative; allowed {tol:.3g})"
    return None


def _probe_pair(attn: nn.Module, pair: _QKPair) -> str | None:
    """Run the attention block on three probe tokens with each norm on its own and with the
    pairing; the reason they disagree (or something is left pending), or None."""
    inputs = _probe_inputs(attn)
    if inputs is None:
        return "no q_proj weight / head_dim to probe the attention block with"
    h, pe = inputs

    def run(paired):
        pair.q._pair = pair.k._pair = pair if paired else None
        try:
            return attn(hidden_states=h, position_embeddings=pe, attention_mask=None)[0]
        finally:
            pair.q._pair = pair.k._pair = None

    why = _probe_compare(run, "the block's own norms", 4 * torch.finfo(h.dtype).eps)
    if why is None and (pair.pending is not None or not pair.enabled):
        why = "probe: q_norm's deferred Q was not consumed by k_norm (unexpected call order)"
    pair.pending = None
    return why


def _pair_attention(model: nn.Module, report: "Report") -> None:
    """One ``qk_rms_norm`` launch for each probed attention block's q_norm and k_norm."""
    notes = {r.name: r for r in report.replaced}
    unpaired = []
    for name, attn in model.named_modules():
        if not (isinstance(getattr(attn, "q_norm", None), PatchedRMSNorm)
                and isinstance(getattr(attn, "k_norm", None), PatchedRMSNorm)):
            continue
        if attn.q_norm.weight is None or attn.q_norm.weight.shape[0] != getattr(attn, "head_dim", None):
            continue  # full width (OLMo 2): Q and K widths differ, no shared launch
        why = _pairable(attn)
        if why is None:
            pair = _QKPair(attn.q_norm, attn.k_norm)
            original = type(attn)
            attn.__class__ = _paired_class(original)
            why = _probe_pair(attn, pair)
            if why is None:
                attn.q_norm._pair = attn.k_norm._pair = pair
            else:
                attn.__class__ = original
        prefix = f"{name}." if name else ""
        for attr in ("q_norm", "k_norm"):
            r = notes.get(prefix + attr)
            if r is not None:
                r.note = (f"{r.note}: one qk_rms_norm launch with {'k' if attr == 'q_norm' else 'q'}_norm"
                          if why is None else f"{r.note}: its own rms_norm launch ({why})")
        if why is not None and why != "already paired":
            unpaired.append(f"{name or type(attn).__name__}: {why}")
    if unpaired:
        report.not_done.append("one qk_rms_norm launch for Q and K in " + "; ".join(unpaired))


# --------------------------------------------------------------------------- fused residual add

# Decoder layers whose forward is ``residual = h; h = input_layernorm(h); h, _ = self_attn(hidden_states=h,
# **kwargs); [h = post_attention_layernorm(h)]; h = residual + h; residual = h; h = <norm>(h); h = mlp(h);
# [h = post_feedforward_layernorm(h)]; return residual + h`` (transformers 5.x): class -> (the norm after
# the add, the norm on the attention output before the add or None, the norm on the MLP output or None).
_PRE_NORM = ("post_attention_layernorm", None, None)
_SANDWICH = ("pre_feedforward_layernorm", "post_attention_layernorm", "post_feedforward_layernorm")
_FUSED_LAYERS: dict[tuple[str, str], tuple] = {
    (_MODELS + "llama.modeling_llama", "LlamaDecoderLayer"): _PRE_NORM,
    (_MODELS + "mistral.modeling_mistral", "MistralDecoderLayer"): _PRE_NORM,
    (_MODELS + "qwen2.modeling_qwen2", "Qwen2DecoderLayer"): _PRE_NORM,
    (_MODELS + "qwen3.modeling_qwen3", "Qwen3DecoderLayer"): _PRE_NORM,
    (_MODELS + "qwen3_moe.modeling_qwen3_moe", "Qwen3MoeDecoderLayer"): _PRE_NORM,
    (_MODELS + "gemma2.modeling_gemma2", "Gemma2DecoderLayer"): _SANDWICH,
    (_MODELS + "gemma3.modeling_gemma3", "Gemma3DecoderLayer"): _SANDWICH,
}


def _fused_add_norm(norm: PatchedRMSNorm, h: torch.Tensor, residual: torch.Tensor, compiling: bool):
    """``(norm(residual + h), residual + h)`` as one launch into two new tensors (neither input is
    written: the residual is the layer's input, which the caller may keep), or None where the
    fused call would not give what the model's add then norm give: another dtype or shape, the
    model's promotion rule, autograd (the unfused path is differentiable). ``compiling``: while
    torch.compile traces (``under_compile="kernels"`` only: the other mode traces the layer's own
    forward), the functional custom op."""
    if not (type(h) is torch.Tensor and type(residual) is torch.Tensor and h.dtype == residual.dtype
            and h.shape == residual.shape and h.dtype in _KERNEL_DTYPES and norm.out_dtype(h) == h.dtype
            and norm._pair is None) or _watched(norm):
        return None  # (a hooked norm must be called: the fused launch would bypass its hooks)
    w = norm.weight
    if torch.is_grad_enabled() and (h.requires_grad or residual.requires_grad or (w is not None and w.requires_grad)):
        return None
    eps = _eps_of(norm, h)
    if compiling:
        return torch.ops.qknorm.fused_add_rms_norm_functional(h, residual, w, float(eps), norm.weight_offset)
    return _fused_out(h, residual, w, float(eps), norm.weight_offset)


def _fused_layer_forward(self, hidden_states, compiling: bool, **kwargs):
    """The decoder layer's forward with the residual add and the next norm as one launch
    (:data:`_FUSED_LAYERS`; ``compiling``: see :func:`_fused_add_norm`)."""
    after, attn_post, mlp_post = self._qknorm_fused
    residual = hidden_states
    h = self.input_layernorm(hidden_states)
    h, _ = self.self_attn(hidden_states=h, **kwargs)
    if attn_post is not None:
        h = getattr(self, attn_post)(h)
    norm = getattr(self, after)
    fused = _fused_add_norm(norm, h, residual, compiling)
    if fused is None:
        residual = residual + h
        h = norm(residual)
    else:
        h, residual = fused
    h = self.mlp(h)
    if isinstance(h, tuple):  # MoE blocks of some releases return (hidden, router_logits)
        h = h[0]
    if mlp_post is not None:
        h = getattr(self, mlp_post)(h)
    return residual + h


_fused_classes: dict[tuple[type, bool], type] = {}


def _fused_class(cls: type, traced_kernels: bool) -> type:
    """``cls`` with :func:`_fused_layer_forward` (one subclass per class and mode, made once). While
    torch.compile traces: with ``traced_kernels`` (``under_compile="kernels"``) the fused custom op,
    else the layer's own forward, before anything of the layer is read (each read is a guard checked on
    every call of the compiled model)."""
    sub = _fused_classes.get((cls, traced_kernels))
    if sub is None:
        if traced_kernels:
            def forward(self, hidden_states=None, *args, **kwargs):
                if args or hidden_states is None or not self._qknorm_fused_on:
                    return cls.forward(self, hidden_states, *args, **kwargs)
                return _fused_layer_forward(self, hidden_states, _is_compiling(), **kwargs)
        else:
            def forward(self, hidden_states=None, *args, **kwargs):
                if _is_compiling() or args or hidden_states is None or not self._qknorm_fused_on:
                    return cls.forward(self, hidden_states, *args, **kwargs)
                return _fused_layer_forward(self, hidden_states, False, **kwargs)  # (one compiling test per call)
        sub = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                          "__qualname__": cls.__qualname__, "_qknorm_fused_class": True,
                                          "__reduce_ex__": _reduce_by(_fused_class, cls, traced_kernels)})
        _fused_classes[(cls, traced_kernels)] = sub
    return sub


def _fusable(layer: nn.Module) -> tuple | str:
    t = type(layer)
    names = _FUSED_LAYERS.get((t.__module__, t.__qualname__))
    if getattr(t, "_qknorm_fused_class", False):
        return "already fused"
    if names is None:
        if (t.__module__, t.__qualname__) == (_MODELS + "olmo2.modeling_olmo2", "Olmo2DecoderLayer"):
            return "post-norm layers (the residual add is not followed by a norm): nothing to fuse"
        return f"decoder layer class {t.__qualname__} is not one whose forward qknorm knows"
    if "forward" in layer.__dict__:  # (hooks stay: the layer keeps its object and __call__)
        return "its forward was replaced on the instance (another patch?)"
    if not isinstance(getattr(layer, names[0], None), PatchedRMSNorm):
        return f"its {names[0]} was not replaced by qknorm"
    if not all(hasattr(layer, n) for n in ("input_layernorm", "self_attn", "mlp")):
        return "no input_layernorm / self_attn / mlp"
    return names


def _probe_layer(layer: nn.Module) -> str | None:
    """The layer's own forward and the fused one on three probe tokens; why they differ, or None
    (bf16/fp16 allowed 3e-2 relative: the norm of the unrounded sum, through the MLP)."""
    inputs = _probe_inputs(layer.self_attn)
    if inputs is None:
        return "no q_proj weight / head_dim to probe the layer with"
    h, pe = inputs

    def run(fused):
        layer._qknorm_fused_on = fused
        return layer(h, attention_mask=None, position_embeddings=pe)

    return _probe_compare(run, "the layer's own forward", 3e-2)


def _fuse_residuals(model: nn.Module, report: "Report") -> None:
    fused, why_not = [], {}
    for name, layer in model.named_modules():
        if not name or "DecoderLayer" not in type(layer).__name__:
            continue
        r = _fusable(layer)
        if isinstance(r, str):
            why_not.setdefault(r, []).append(name)
            continue
        original = type(layer)
        layer._qknorm_fused = r
        after = getattr(layer, r[0])
        layer.__class__ = _fused_class(original, after.compile_kernels)
        why = _probe_layer(layer)
        if why is None:
            layer._qknorm_fused_on = True
            fused.append(name)
        else:
            layer.__class__ = original
            del layer._qknorm_fused, layer._qknorm_fused_on
            why_not.setdefault(why, []).append(name)
    report.fused_layers.extend(fused)
    for why, names in why_not.items():
        if why != "already fused":
            more = " ..." if len(names) > 1 else ""
            report.not_done.append(f"fuse_residual in {len(names)} layer(s) ({names[0]}{more}): {why}")


def apply_qknorm(model: nn.Module, *, fuse_residual: bool = True, under_compile: str = "inductor") -> Report:
    """Replace the RMSNorm modules of a loaded ``transformers`` model with qknorm's, in place.

    Parameters
    ----------
    model : torch.nn.Module
        A loaded model (``LlamaForCausalLM``, ``Qwen3ForCausalLM``, ... or any module
        tree holding the norm classes listed in this module's docstring).
    fuse_residual : bool
        Run each recognised decoder layer's residual add and the norm after it as one
        out-of-place fused launch (see "Fused residual add" in this module's docstring);
        layers not recognised, or failing their probe, are listed in the report's
        ``not_done``.
    under_compile : str
        What the patched modules do while ``torch.compile`` traces them: ``"inductor"`` (default)
        traces the model's own norm formula (and its plain residual add), so Inductor fuses each
        norm into its neighbours (the RoPE after the q/k norms, the add before a layer norm) and
        a compiled patched model is the compiled unpatched one; ``"kernels"`` calls qknorm's
        custom ops (``torch.ops.qknorm.*``), which Inductor cannot fuse with anything (measured:
        Qwen3-8B shape, H100, batch 1, ``mode="reduce-overhead"``: 7.80 ms per decode step with
        the custom ops against 7.70 ms unpatched). Eager calls take qknorm's kernels either way.

    Returns
    -------
    Report
        Every module replaced (path, class, replacement, role), every norm-like module left
        alone with the reason, the decoder layers given the fused residual add
        (``fused_layers``), the numerics notes per class and what is not done and why.
        ``print(report)`` gives a readable summary.

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``.
    ValueError
        ``under_compile`` is not ``"inductor"`` or ``"kernels"``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if under_compile not in ("inductor", "kernels"):
        raise ValueError(f"under_compile must be 'inductor' or 'kernels', got {under_compile!r}")
    try:
        import transformers  # noqa: PLC0415 - lazily: `import qknorm` must not import it
        tv = getattr(transformers, "__version__", None)
    except ImportError:
        tv = None
    report = Report(model=type(model).__name__, transformers_version=tv)
    modules = dict(model.named_modules(remove_duplicate=False))
    done: dict[int, PatchedRMSNorm] = {}
    skipped: dict[int, str] = {}
    for name, m in list(modules.items()):
        if not name or "norm" not in type(m).__name__.lower():
            continue
        if isinstance(m, PatchedRMSNorm):
            report.left_alone.append(LeftAlone(name, _cls_name(m), "already patched by qknorm"))
            continue
        new = done.get(id(m))
        if new is None:
            if id(m) in skipped:
                report.left_alone.append(LeftAlone(name, _cls_name(m), skipped[id(m)]))
                continue
            r = _recognise(m)
            if isinstance(r, tuple):
                r = _hooked(m) or r
            if isinstance(r, tuple):
                style, eps = r
                new = _traced_class(style, under_compile)(m.weight, eps, style, type(m).__qualname__)
                new.compile_kernels = under_compile == "kernels"
                new.train(m.training)
                r = _probe(m, new) or r
            if isinstance(r, str):
                skipped[id(m)] = r
                report.left_alone.append(LeftAlone(name, _cls_name(m), r))
                continue
            done[id(m)] = new
            report.numerics.setdefault(type(m).__qualname__, _NUMERICS[new.style])
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, new)
        role = _role(name, m, modules)
        call = "qknorm.rms_norm" + (", weight_offset=1.0" if new.weight_offset else "")
        report.replaced.append(Replaced(name, _cls_name(m), f"PatchedRMSNorm({call})", role))
    _pair_attention(model, report)
    if fuse_residual:
        _fuse_residuals(model, report)
    return report
