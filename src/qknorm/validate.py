"""Argument checks shared by the ops. Each raises TypeError/ValueError naming the argument
and the offending values; none of them writes anything."""
from __future__ import annotations

import numbers

import torch

from . import layout

_is_compiling = getattr(torch.compiler, "is_compiling", None) or (lambda: False)
ACT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
WEIGHT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def dtype_name(d) -> str:
    return str(d).replace("torch.", "")


def dense(name: str, t) -> None:
    """A strided (dense) tensor whose memory holds its values as they read: not sparse, not a
    negated view (``torch._neg_view``, ``z.conj().imag``), whose sign lives in a flag the
    kernels cannot see, not an efficient zero tensor (no memory at all)."""
    if t.layout is not torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if not _is_compiling() and t.is_neg():  # traced: the custom op's eager body checks the real tensor
        raise ValueError(f"{name} is a negated view (its memory holds -{name}); pass {name}.resolve_neg()")
    if not _is_compiling() and t._is_zerotensor():
        raise ValueError(f"{name} is an efficient zero tensor (torch._efficientzerotensor: no memory behind it); "
                         f"pass a materialised tensor, e.g. torch.zeros_like({name})")


def tensor(name: str, t, what: str = "a torch.Tensor") -> None:
    """A dense torch.Tensor (:func:`dense`); ``what`` says what the argument must be (e.g. ``"a torch.Tensor
    or None"`` for an optional one, whose None the caller skips)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be {what}, got {type(t).__name__}")
    dense(name, t)


def index_tensor(name: str, t) -> None:
    """A dense int32/int64 tensor of indices (positions, slot_mapping); its shape is the caller's rule."""
    tensor(name, t)
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32 or int64, got {dtype_name(t.dtype)}")


def scale_tensor(name: str, t, ref_name: str, ref) -> None:
    """A scale given as a tensor: dense, 1 element, float32, on ``ref``'s device (None is the caller's)."""
    tensor(name, t, "a 1-element float32 torch.Tensor or None")
    if t.dtype != torch.float32 or t.numel() != 1:  # a wrong dtype is a TypeError, a wrong size a ValueError
        raise (TypeError if t.dtype != torch.float32 else ValueError)(
            f"{name} must be a 1-element float32 tensor, got {dtype_name(t.dtype)} with {t.numel()} elements")
    same_device(name, t, ref_name, ref)


def python_bool(name: str, v) -> None:
    """A Python bool (not an int, not ``numpy.bool``)."""
    if type(v) is not bool:
        raise TypeError(f"{name} must be a Python bool, got {type_name(v)} {v!r}")


def activation(name: str, t, *, float64: bool = False) -> None:
    """A dense tensor of at least one dim in the kernels' dtypes; with ``float64`` that dtype too (the
    ``qknorm.nn`` modules run PyTorch's op for it)."""
    tensor(name, t)
    if t.dtype not in ACT_DTYPES and not (float64 and t.dtype == torch.float64):
        allowed = "bfloat16, float16, float32 or float64" if float64 else "bfloat16, float16 or float32"
        raise TypeError(f"{name} must be {allowed}, got {dtype_name(t.dtype)}")
    if t.dim() < 1:
        raise ValueError(f"{name} must have at least 1 dimension (the normalised one), got a 0-d tensor")


def weight(name: str, w, d: int, ref_name: str, ref) -> None:
    if w is None:
        return
    tensor(name, w, "a torch.Tensor or None")
    if w.dtype not in WEIGHT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (bf16/fp16/fp32/fp64), got {dtype_name(w.dtype)}")
    if w.dim() != 1 or w.shape[0] != d:
        raise ValueError(f"{name} must have shape ({d},) to match the last dim of {ref_name}, "
                         f"got {tuple(w.shape)}")
    same_device(name, w, ref_name, ref)


def module_offset(weight_offset, elementwise_affine: bool) -> float:
    """A norm module's ``weight_offset`` (``qknorm.nn``): a finite real number, and 0 unless the module
    has a weight to offset. Returns it as a float."""
    v = real("weight_offset", weight_offset)
    if not -FP32_MAX <= v <= FP32_MAX:
        raise ValueError(f"weight_offset must be a finite number within fp32's range (|weight_offset| <= "
                         f"{FP32_MAX:.8g}: the weight is offset in fp32), got {weight_offset!r}")
    if v != 0.0 and not elementwise_affine:
        raise ValueError("weight_offset needs elementwise_affine=True (there is no weight to offset)")
    return v


def real(name: str, v, *, allow_none: bool = False):
    """A real number (Python or NumPy scalar, not bool) as a Python float; None if allowed."""
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        want = "a real number or None" if allow_none else "a real number"
        raise TypeError(f"{name} must be {want}, got {type(v).__name__} {v!r}")
    try:
        return float(v)
    except OverflowError:  # an int past float's range (10**400)
        raise ValueError(f"{name} must be a finite number, got an int of {len(str(abs(int(v))))} digits") from None


FP32_MAX = 3.4028234663852886e38


def eps_value(eps, *, allow_none: bool = False):
    """eps as a float: >= 0 and at most fp32's largest value, where the norms compute (TypeError
    for non-numbers, ValueError for the range)."""
    e = real("eps", eps, allow_none=allow_none)
    # comparisons, not math.isfinite: under torch.compile(dynamic=True) a float may be symbolic
    if e is not None and not 0.0 <= e <= FP32_MAX:  # NaN and inf fail too
        raise ValueError(f"eps must be a finite number >= 0 and <= {FP32_MAX:.8g} (fp32's largest value: the "
                         f"norm is computed in fp32), got {eps!r}")
    return e


def scalars(eps, weight_offset, has_weight: bool) -> None:
    eps_value(eps)
    wo = real("weight_offset", weight_offset)
    if not -FP32_MAX <= wo <= FP32_MAX:  # NaN fails too (a comparison: symbolic floats under compile)
        raise ValueError(f"weight_offset must be a finite number within fp32's range (|weight_offset| <= "
                         f"{FP32_MAX:.8g}: the weight is offset in fp32), got {weight_offset!r}")
    if wo != 0 and not has_weight:
        raise ValueError(f"weight_offset={weight_offset} needs a weight (weight is None)")


def config(cfg) -> None:
    """``config`` must be None or a :class:`qknorm.KernelConfig`."""
    if cfg is None:
        return
    from .config import KernelConfig
    if not isinstance(cfg, KernelConfig):
        raise TypeError(f"config must be a qknorm.KernelConfig or None, got {type(cfg).__name__} {cfg!r}")


def type_name(v) -> str:
    """``v``'s type for a message: qualified outside builtins (``numpy.bool`` is not ``bool``)."""
    t = type(v)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def integer(name: str, v, *, minimum: int | None = None) -> int:
    """An int (Python or NumPy integer, not bool) within range. Traced with dynamic shapes, a size
    such as ``q.shape[-1]`` arrives as a ``torch.SymInt`` and stays one (the range test guards on it)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        if not isinstance(v, torch.SymInt):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {v}")
        return v
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def residual(x, res) -> None:
    """``residual`` of a fused add: an activation of x's dtype, shape and device."""
    activation("residual", res)
    same_dtype("residual", res, "x", x)
    same_shape("residual", res, "x", x)
    same_device("residual", res, "x", x)


def written(name: str, t) -> None:
    """A tensor the op writes must not address one element twice (``expand``, stride 0,
    overlapping ``as_strided``): the rows would race and the result would depend on the order."""
    if _is_compiling():
        # Traced: sizes may be symbolic while they look like ints (Dynamo), and the search below
        # cannot run on them; the op's eager body (or copy_ into the target) checks the real tensor.
        return
    shape, stride = tuple(t.shape), tuple(t.stride())
    if not all(type(v) is int for v in shape + stride):
        return  # symbolic sizes (fake tensors): the eager implementation checks the real tensor
    _refuse_overlap(layout.self_overlap(shape, stride),
                    f"cannot prove that {name} (shape {shape}, stride {stride}) does not overlap itself; pass a "
                    f"tensor without internal overlap (e.g. .contiguous())",
                    f"{name} overlaps itself in memory (shape {shape}, stride {stride}): a written tensor must "
                    f"address each element once; pass e.g. a .contiguous() tensor")


def _refuse_overlap(overlap, undecided: str, overlapping: str) -> None:
    """ValueError ``overlapping`` when ``overlap`` is True, ``undecided`` when it is None (unknown)."""
    if overlap is None:
        raise ValueError(undecided)
    if overlap:
        raise ValueError(overlapping)


def unaliased(t, written_tensors):
    """``t`` (a tensor the op only reads, e.g. a weight) or, when it shares memory with a
    tensor the op writes, a private copy of it: the op then reads the values on entry."""
    if t is None:
        return t
    for w in written_tensors:
        if w is not None and layout.overlap(t, w) is not False:
            return t.clone()
    return t


def grad_needed(*ts) -> bool:
    """Whether autograd must record this call: grad mode on and a tensor argument requires grad."""
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in ts) and torch.is_grad_enabled()


def not_differentiable(what: str, *named) -> None:
    """For ops that are not differentiable (the quantised forms, the KV-cache prologue): under grad mode
    no tensor argument may require grad, or its gradient would silently stop here. ``named``: ``(name,
    tensor or None)`` pairs, every tensor argument of the op (scales included).

    Raises
    ------
    ValueError
        Naming the first argument that requires grad."""
    if torch.is_grad_enabled():
        for name, t in named:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise ValueError(f"{name} requires grad, but {what} is not differentiable; call under "
                                 "torch.no_grad() / torch.inference_mode(), or detach it")


def same_device(name: str, t, ref_name: str, ref) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def same_shape(name: str, t, ref_name: str, ref) -> None:
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")


def same_dtype(name: str, t, ref_name: str, ref) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({dtype_name(ref.dtype)}), got {dtype_name(t.dtype)}")


def output(name: str, out, ref_name: str, ref) -> None:
    if out is None:
        return
    tensor(name, out, "a torch.Tensor or None")
    same_shape(name, out, ref_name, ref)
    same_dtype(name, out, ref_name, ref)
    same_device(name, out, ref_name, ref)


def disjoint(name_a: str, a, name_b: str, b) -> None:
    """Raise unless ``a`` and ``b`` share no element (undecidable counts as sharing)."""
    _refuse_overlap(layout.overlap(a, b),
                    f"cannot prove that {name_a} and {name_b} do not overlap in memory; pass non-overlapping tensors",
                    f"{name_a} and {name_b} overlap in memory")


def in_place_or_disjoint(out_name: str, out, in_name: str, inp) -> bool:
    """True when ``out`` is exactly ``inp`` (in place). Raises on partial overlap.

    Returns False when they are disjoint."""
    if layout.same_view(out, inp):
        return True
    _refuse_overlap(layout.overlap(out, inp),
                    f"cannot prove that {out_name} does not partially overlap {in_name}; pass "
                    f"{out_name}={in_name} (same view) for in place, or a separate tensor",
                    f"{out_name} partially overlaps {in_name}: pass the same view for in place, "
                    f"or a non-overlapping tensor")
    return False


def qk_activations(q, k, *, three_d: bool = False, float64: bool = False) -> None:
    """Q and K of one call: activations of one dtype and device (with ``three_d``: ``[T, H, head_dim]``
    each; ``float64``: as :func:`activation`). Their widths are the caller's rule (one head_dim:
    :func:`qk_pair`; shards: their own)."""
    activation("q", q, float64=float64)
    activation("k", k, float64=float64)
    if three_d:
        if q.dim() != 3:
            raise ValueError(f"q must be [T, Hq, head_dim] (3 dims), got shape {tuple(q.shape)}")
        if k.dim() != 3:
            raise ValueError(f"k must be [T, Hkv, head_dim] (3 dims), got shape {tuple(k.shape)}")
    if k.dtype != q.dtype:
        raise TypeError(f"q and k must have the same dtype, got q {dtype_name(q.dtype)} and k {dtype_name(k.dtype)}")
    same_device("k", k, "q", q)


def qk_pair(q, k, q_weight, k_weight, *, three_d: bool = False) -> int:
    """Q and K of one call (:func:`qk_activations`) with one head_dim, and weights both None or
    both ``[head_dim]``. Returns head_dim."""
    qk_activations(q, k, three_d=three_d)
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"q and k must have the same head_dim (last dim): q has {d}, k has {k.shape[-1]} (flat "
                         f"[T, heads * head_dim] projections: pass per-head views, q.view(T, -1, head_dim) and "
                         f"k.view(T, -1, head_dim))")
    paired_weights(q_weight, k_weight)
    weight("q_weight", q_weight, d, "q", q)
    weight("k_weight", k_weight, d, "k", k)
    return d


def rope_pair(op: str, q, k, q_weight, k_weight, max_head_dim: int) -> int:
    """Q ``[T, Hq, head_dim]`` and K ``[T, Hkv, head_dim]`` of a RoPE op (:func:`qk_pair`, three_d):
    one token count, and head_dim at most ``max_head_dim`` (the kernels keep a whole head in
    registers). Returns head_dim."""
    d = qk_pair(q, k, q_weight, k_weight, three_d=True)
    t = q.shape[0]
    if k.shape[0] != t:
        raise ValueError(f"q and k must have the same number of tokens (dim 0): q has {t}, k has {k.shape[0]}")
    if d > max_head_dim:
        raise ValueError(f"head_dim {d} is not supported by {op} (at most {max_head_dim}: the whole head is kept "
                         f"in registers)")
    return d


def paired_weights(q_weight, k_weight) -> None:
    """Q's and K's weights: both tensors or both None."""
    if (q_weight is None) != (k_weight is None):
        raise ValueError("q_weight and k_weight must both be tensors or both be None, got "
                         f"q_weight={'None' if q_weight is None else 'tensor'}, "
                         f"k_weight={'None' if k_weight is None else 'tensor'}")


def rotary(q, cos_sin_cache, positions, rotary_dim, is_neox) -> int:
    """RoPE arguments for Q ``[T, H, D]``: ``is_neox`` a bool; ``rotary_dim`` None (= D) or an
    even int in [2, D]; ``cos_sin_cache`` ``[max_position >= 1, rotary_dim]``, fp32 or q's
    dtype, on q's device; ``positions`` ``[T]`` int32/int64 on q's device. Returns rotary_dim."""
    d, t = q.shape[-1], q.shape[0]
    python_bool("is_neox", is_neox)
    r = d if rotary_dim is None else integer("rotary_dim", rotary_dim)  # NumPy integers too, as every int argument
    if r < 2 or r % 2 or r > d:
        raise ValueError(f"rotary_dim must be even and in [2, head_dim={d}], got {r}")
    cs = cos_sin_cache
    tensor("cos_sin_cache", cs)
    if cs.dtype not in (torch.float32, q.dtype):
        raise TypeError(f"cos_sin_cache must be float32 or q's dtype ({dtype_name(q.dtype)}), "
                        f"got {dtype_name(cs.dtype)}")
    if cs.dim() != 2 or cs.shape[1] != r or cs.shape[0] < 1:
        hint = "" if rotary_dim is not None else " (rotary_dim defaults to head_dim; pass rotary_dim for partial rotary)"
        raise ValueError(f"cos_sin_cache must have shape [max_position >= 1, rotary_dim={r}] (cos half, then sin "
                         f"half){hint}, got {tuple(cs.shape)}")
    same_device("cos_sin_cache", cs, "q", q)
    index_tensor("positions", positions)
    if positions.dim() != 1 or positions.shape[0] != t:
        raise ValueError(f"positions must have shape ({t},) (one position per token of q and k), "
                         f"got {tuple(positions.shape)}")
    same_device("positions", positions, "q", q)
    return r


def positions_in_range(positions, max_position: int) -> None:
    """CPU positions (free to read) must index the cache; CUDA ones (no sync) and meta ones are not read."""
    if positions.numel() == 0 or positions.device.type in ("cuda", "meta"):
        return
    lo, hi = int(positions.min()), int(positions.max())
    if lo < 0 or hi >= max_position:
        raise ValueError(f"positions must be in [0, {max_position - 1}] (cos_sin_cache has {max_position} rows), "
                         f"got values in [{lo}, {hi}]")


def qk_outputs(q, k, q_out, k_out, *, memory: bool = True) -> None:
    """``q_out``/``k_out``: None, or tensors of q's/k's shape, dtype and device without
    internal overlap; with ``memory``, each is its input exactly (in place) or shares no
    memory with it, and neither meets the other output or the other input."""
    output("q_out", q_out, "q", q)
    output("k_out", k_out, "k", k)
    if q_out is not None:
        written("q_out", q_out)
    if k_out is not None:
        written("k_out", k_out)
    if not memory:
        return
    q_in_place = q_out is not None and in_place_or_disjoint("q_out", q_out, "q", q)
    k_in_place = k_out is not None and in_place_or_disjoint("k_out", k_out, "k", k)
    if q_out is not None and k_out is not None:
        disjoint("q_out", q_out, "k_out", k_out)
    if q_out is not None and not k_in_place:
        disjoint("q_out", q_out, "k", k)
    if k_out is not None and not q_in_place:
        disjoint("k_out", k_out, "q", q)


def mrope(q, cos_sin_cache, positions, rotary_dim, is_neox, mrope_section) -> tuple[int, tuple[int, int, int]]:
    """Multimodal RoPE arguments (Qwen2-VL): ``mrope_section`` three ints ``(t, h, w)`` >= 0 summing
    to ``rotary_dim / 2``; ``positions`` ``[3, T]`` int32/int64 on q's device; the rest as
    :func:`rotary`. Returns ``(rotary_dim, (t, h, w))``."""
    t = q.shape[0]
    if not isinstance(mrope_section, (tuple, list)) or len(mrope_section) != 3 or \
            not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in mrope_section):
        raise TypeError(f"mrope_section must be None or three ints (t, h, w), got {mrope_section!r}")
    sections = tuple(int(s) for s in mrope_section)
    index_tensor("positions", positions)
    if positions.dim() != 2 or positions.shape[0] != 3 or positions.shape[1] != t:
        raise ValueError(f"positions must have shape (3, {t}) with mrope_section (rows: temporal, height, width "
                         f"positions of each token), got {tuple(positions.shape)}")
    r = rotary(q, cos_sin_cache, positions[0], rotary_dim, is_neox)
    if min(sections) < 0 or sum(sections) != r // 2:
        raise ValueError(f"mrope_section must be three ints >= 0 summing to rotary_dim / 2 = {r // 2}, got "
                         f"{sections}")
    return r, sections
