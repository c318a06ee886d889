"""Benchmark cases: which problem, at which size, on which inputs.

A :class:`Case` names one problem (op kind, shape, dtype) and knows the fewest bytes
an ideal implementation moves. :func:`build_inputs` draws fresh random inputs for it
(never zeros: they hide unwritten outputs), laid out the way an inference engine
holds them, and :func:`expected` is the fp32 reference every implementation is
checked against.

Op kinds
  ``qk``       per-head RMSNorm of Q and K, strided ``[T, H, D]`` views of one packed
               QKV buffer ``[T, (Hq + 2*Hkv) * D]``, in place (Qwen3, Gemma 3, ...).
  ``qk_full``  OLMo 2: RMSNorm over the full Q width ``Hq*D`` and full K width ``Hkv*D``,
               i.e. 2D norms on strided column slices of the packed buffer, in place.
  ``rms2d``    RMSNorm over the hidden size of a contiguous ``[T, hidden]``, new output.
  ``add``      fused ``residual += x; x = norm(residual)``, in place on both.
  ``rope``     per-head RMSNorm of Q and K then rotary embedding (NeoX by default,
               ``rotary_dim`` of each head, partial for Qwen3-Next), in place on the
               packed QKV buffer; an fp32 ``cos_sin_cache`` ``[ROPE_MAX_POSITION,
               rotary_dim]`` and random int64 ``positions`` ``[T]`` come with the inputs
               (``qknorm.qk_rms_norm_rope``; preset ``rope``).

``prologue`` the attention prologue (``qknorm.qk_norm_rope_cache``; preset ``prologue``): QK norm, RoPE
             (or mRoPE with ``mrope_section`` and ``positions [3, T]``) of Q in place on the packed QKV
             buffer and of K into a paged KV cache, V copied into the V cache; caches of the
             activation dtype (``cache_dtype`` None) or FP8 e4m3 with 1-element fp32 ``k_scale``/
             ``v_scale`` (dequantisation scales: stored = value / scale). Inputs: the packed buffer's
             q/k/v views, weights, ``cos_sin_cache``, int64 ``positions``, NHD caches
             ``[num_blocks, block_size, Hkv, D]`` (a flat pool ``[num_slots, Hkv, D]`` for
             ``block_size=1``) poisoned with NaN (FP8: code 0x7F, NaN in e4m3fn), with room for T
             tokens plus spare slots, and an int64 ``slot_mapping``: a random permutation of the slots
             (the last slot never named, so a negative index written Python-style shows) with the last
             :attr:`Case.n_pad` tokens negative (padding at the tail, as CUDA-graph padding puts it).
             Implementations return ``(q_out, k_cache, v_cache)``; the gate compares Q and the named
             slots with the reference and checks every unnamed slot is bit-identical.

Quantised kinds (``qknorm.rms_norm_quant`` / ``fused_add_rms_norm_quant``; preset ``quant``):
``rmsq_<mode>`` is RMSNorm of a contiguous ``[T, hidden]`` with an 8-bit output (``Case.out_dtype``,
fp8 e4m3 by default; ``--dtype`` is the input's) and its scales; ``addq_<mode>`` is the fused form
(``residual += x`` in place, ``x`` unchanged, the norm of the fp32 sum quantised). Modes:
  ``static``       a given per-tensor scale (1-element fp32 ``scale`` in the inputs)
  ``token``        dynamic, one scale per token: scales ``[T, 1]``
  ``group``        dynamic, one per group of ``group_size`` (128) elements: scales ``[T, hidden/128]``
                   row-major
  ``group_ue8m0``  the same, column-major scales (stride 1 along the tokens: DeepGEMM's layout)
                   rounded up to powers of two (UE8M0)
Implementations return ``(codes, scales)`` (``addq``: ``(codes, scales, residual)``);
:func:`quant_reference` is the fp64 reference the gate compares them with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .common import (AMAX_FLOOR, DTYPE_NAMES, DTYPES, EPS, QMAX, QUANT_DTYPE_NAMES, dtype_name,
                     packed_qkv_views)

DEFAULT_TOKENS = (1, 4, 16, 64, 256, 512, 1024, 4096, 16384)
NORM_OPS = ("qk", "qk_full", "rms2d", "add", "rope")
QUANT_MODES = ("static", "token", "group", "group_ue8m0")
QUANT_OPS = tuple(f"{form}_{mode}" for form in ("rmsq", "addq") for mode in QUANT_MODES)
PROLOGUE_OPS = ("prologue",)
OPS = NORM_OPS + QUANT_OPS + PROLOGUE_OPS
QKNORM_OP = {"qk": "qk_rms_norm", "qk_full": "qk_rms_norm", "rms2d": "rms_norm", "add": "fused_add_rms_norm",
             "rope": "qk_rms_norm",  # rope: its config is dispatch.choose_rope_config's (qk_rms_norm pick based)
             # the quantised kernels take the rms_norm / fused_add_rms_norm pick of the same width and rows
             **{op: "rms_norm" if op.startswith("rmsq") else "fused_add_rms_norm" for op in QUANT_OPS},
             "prologue": "qk_rms_norm"}  # as rope: dispatch.choose_rope_config
QUANT_GROUP = 128  # the group kinds' group size (DeepSeek-V3 / DeepGEMM 1 x 128)
__all__ = ["DTYPES", "DTYPE_NAMES", "EPS", "OPS", "NORM_OPS", "QUANT_OPS", "QUANT_MODES", "PROLOGUE_OPS", "Case",
           "Inputs", "QuantRef", "build_inputs", "expected", "kept_slots", "layout", "preset_cases",
           "qk_views_contiguous", "quant_reference", "quick_cases", "rope_cache", "prologue_reference"]

SEED_BATCH = (1, 8, 64, 256, 1024, 4096)
SEED_HEADS = (4, 8, 16, 32)
SEED_HEAD_DIM = (16, 32, 64, 128, 256, 512, 1024)
SEED_HIDDEN = (256, 1024, 4096, 8192)

# Preset "norm2d": RMSNorm and fused add over the hidden sizes of current models (Llama/Qwen3 4096 and
# 8192, Qwen3-32B 5120, Gemma 3 5376, DeepSeek-V3 7168, Qwen3-Next 2048) and small widths, prefill and decode.
NORM2D_HIDDEN = (256, 1024, 2048, 4096, 5120, 5376, 7168, 8192)
NORM2D_TOKENS = (1, 16, 128, 512, 1024, 2048, 4096, 16384)


@dataclass(frozen=True)
class Model:
    """Norm shapes of one model: Q/KV heads, head_dim, hidden size, Gemma offset."""

    hq: int
    hkv: int
    head_dim: int
    hidden: int
    weight_offset: float = 0.0
    qk_op: str | None = "qk"   # None: the model has no QK norm (Llama 3)


MODELS = {
    "qwen3-8b": Model(32, 8, 128, 4096),
    "qwen3-32b": Model(64, 8, 128, 5120),
    "qwen3-235b": Model(64, 4, 128, 4096),
    "qwen3-next": Model(16, 2, 256, 2048),
    "gemma3-27b": Model(32, 16, 128, 5376, weight_offset=1.0),
    "olmo2-7b": Model(32, 32, 128, 4096, qk_op="qk_full"),
    "llama3-70b": Model(64, 8, 128, 8192, qk_op=None),
}

# QK norm + RoPE (preset "rope"): (model, Q heads, KV heads, head_dim, rotary_dim, weight offset)
ROPE_MODELS = (
    ("qwen3-8b", 32, 8, 128, 128, 0.0),
    ("qwen3-235b", 64, 4, 128, 128, 0.0),
    ("qwen3-next", 16, 2, 256, 64, 0.0),      # partial rotary: 64 of 256
    ("gemma3-27b", 32, 16, 128, 128, 1.0),    # Gemma's (1 + w)
)
ROPE_MAX_POSITION = 40960  # cos/sin cache rows (Qwen3's max_position_embeddings)
ROPE_THETA = 1e6

# Preset "quant" (issue 15): (model, hidden, modes), each mode as the norm and the fused add form.
QUANT_MODELS = (
    ("llama3-70b", 8192, ("static", "token", "group")),
    ("qwen3-235b", 4096, ("static", "token", "group")),
    ("deepseek-v3", 7168, ("group_ue8m0",)),   # 1 x 128 groups, UE8M0 scales in DeepGEMM's layout
)

# Preset "prologue" (issue 16): (model, Q heads, KV heads, head_dim, rotary_dim, weight offset, mrope_section)
PROLOGUE_MODELS = (
    ("qwen3-8b", 32, 8, 128, 128, 0.0, ()),
    ("qwen3-235b", 64, 4, 128, 128, 0.0, ()),
    ("qwen3-next", 16, 2, 256, 64, 0.0, ()),          # partial rotary: 64 of 256
    ("gemma3-27b", 32, 16, 128, 128, 1.0, ()),        # Gemma's (1 + w)
    ("qwen2.5-vl-7b", 28, 4, 128, 128, 0.0, (16, 24, 24)),  # mRoPE: t/h/w sections of the 64 frequencies
)
PROLOGUE_CACHE_DTYPES = (None, torch.float8_e4m3fn)  # None: the activation dtype (bf16)
PROLOGUE_BLOCK = 16
PROLOGUE_FLAT = "qwen3-8b"  # the one flat-pool (block_size 1) model, both cache dtypes
PROLOGUE_SPARE = 64  # spare slots past 2 T (never all named: unnamed slots must stay untouched)

PRESETS = ("seed",) + tuple(MODELS) + ("rope", "norm2d", "quant", "prologue")


@dataclass(frozen=True)
class Case:
    """One benchmark problem. ``tokens`` is T (the seed grid's batch).

    For ``qk``/``qk_full``: ``hq``, ``hkv``, ``head_dim`` describe the packed QKV buffer.
    For ``rms2d``/``add`` and the quantised kinds: ``hidden`` is the normalised width. For
    ``rope``: ``rotary_dim`` (0: the whole head) and ``is_neox`` (rotate halves; False: GPT-J
    pairs). Quantised kinds: ``out_dtype`` (the codes' format) and ``group_size`` (the group
    kinds' group, :data:`QUANT_GROUP` unless given; 0 for the others)."""

    preset: str
    op: str
    tokens: int
    dtype: torch.dtype = torch.bfloat16
    hq: int = 0
    hkv: int = 0
    head_dim: int = 0
    hidden: int = 0
    weight_offset: float = 0.0
    eps: float = EPS
    rotary_dim: int = 0
    is_neox: bool = True
    out_dtype: torch.dtype = torch.float8_e4m3fn
    group_size: int = 0
    cache_dtype: torch.dtype | None = None   # prologue: None = the activation dtype, or an FP8 format
    block_size: int = 0                      # prologue: 0 = PROLOGUE_BLOCK; 1 = a flat token pool
    mrope_section: tuple = ()                # prologue: (t, h, w) summing to rotary_dim / 2 (mRoPE)

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"Case.op must be one of {OPS}, got {self.op!r}")
        if self.tokens < 1:
            raise ValueError(f"Case.tokens must be >= 1, got {self.tokens}")
        if self.op == "qk_full" and self.hq != self.hkv:
            # qk_rms_norm normalises Q and K rows of one width; OLMo 2 has Hq == Hkv.
            raise ValueError("qk_full needs hq == hkv (equal Q and K widths)")
        if self.op in ("rope", "prologue"):
            if self.rotary_dim == 0:
                object.__setattr__(self, "rotary_dim", self.head_dim)
            if self.rotary_dim < 2 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
                raise ValueError(f"Case.rotary_dim must be even and in [2, head_dim={self.head_dim}], "
                                 f"got {self.rotary_dim}")
        elif self.rotary_dim:
            raise ValueError(f"Case.rotary_dim is for op 'rope' only, got {self.rotary_dim} for {self.op!r}")
        if self.op == "prologue":
            if self.block_size == 0:
                object.__setattr__(self, "block_size", PROLOGUE_BLOCK)
            if self.block_size < 1:
                raise ValueError(f"Case.block_size must be >= 1, got {self.block_size}")
            if self.cache_dtype is not None and self.cache_dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
                raise ValueError(f"Case.cache_dtype must be None (the activation dtype) or an FP8 format, "
                                 f"got {self.cache_dtype}")
            ms = tuple(self.mrope_section)
            object.__setattr__(self, "mrope_section", ms)
            if ms and (len(ms) != 3 or sum(ms) != self.rotary_dim // 2 or min(ms) < 0):
                raise ValueError(f"Case.mrope_section must be three ints >= 0 summing to rotary_dim/2 = "
                                 f"{self.rotary_dim // 2}, got {ms}")
        elif self.cache_dtype is not None or self.block_size or self.mrope_section:
            raise ValueError(f"Case.cache_dtype/block_size/mrope_section are for op 'prologue' only, not {self.op!r}")
        if self.is_quant:
            if self.out_dtype not in QMAX:
                raise ValueError(f"Case.out_dtype must be one of {', '.join(map(str, QMAX))}, got {self.out_dtype}")
            if self.quant_mode.startswith("group"):
                if self.group_size == 0:
                    object.__setattr__(self, "group_size", QUANT_GROUP)
                if self.group_size < 1 or self.hidden % self.group_size:
                    raise ValueError(f"Case.group_size {self.group_size} must divide hidden {self.hidden}")
            elif self.group_size:
                raise ValueError(f"Case.group_size is for the group kinds only, got {self.group_size} for {self.op!r}")
        elif self.group_size or self.out_dtype != torch.float8_e4m3fn:
            raise ValueError(f"Case.group_size/out_dtype are for the quantised kinds only, not {self.op!r}")

    @property
    def is_qk(self) -> bool:
        return self.op in ("qk", "qk_full", "rope", "prologue")  # Q and K views of one packed QKV buffer

    @property
    def is_prologue(self) -> bool:
        return self.op == "prologue"

    @property
    def cache_fp8(self) -> bool:
        """A prologue case with an FP8 cache (``k_scale``/``v_scale`` in the inputs)."""
        return self.cache_dtype is not None

    @property
    def cache_elem(self) -> torch.dtype:
        """The cache's element dtype (prologue)."""
        return self.cache_dtype if self.cache_dtype is not None else self.dtype

    @property
    def n_pad(self) -> int:
        """Padding tokens (negative slots) at the tail of a prologue case: none at T=1, else
        ``max(1, T // 32)`` (a CUDA-graph batch padded to its captured size)."""
        return 0 if self.tokens == 1 else max(1, self.tokens // 32)

    @property
    def n_kept(self) -> int:
        """Tokens written to the caches (prologue)."""
        return self.tokens - self.n_pad

    @property
    def num_slots(self) -> int:
        """Cache slots (prologue): room for 2 T tokens plus :data:`PROLOGUE_SPARE`, whole blocks."""
        want = 2 * self.tokens + PROLOGUE_SPARE
        return -(-want // self.block_size) * self.block_size

    @property
    def is_quant(self) -> bool:
        """A quantised kind (``rmsq_*`` / ``addq_*``)."""
        return self.op in QUANT_OPS

    @property
    def has_residual(self) -> bool:
        """The fused residual-add forms (``add``, ``addq_*``)."""
        return self.op == "add" or self.op.startswith("addq_")

    @property
    def quant_mode(self) -> str:
        """``static`` / ``token`` / ``group`` / ``group_ue8m0`` ("" for the unquantised kinds)."""
        return self.op.split("_", 1)[1] if self.is_quant else ""

    @property
    def n_groups(self) -> int:
        """Scales per row: 0 (static: one given scale), 1 (per token) or hidden / group_size."""
        mode = self.quant_mode
        if mode == "static" or not mode:
            return 0
        return 1 if mode == "token" else self.hidden // self.group_size

    @property
    def column_major_scales(self) -> bool:
        return self.quant_mode == "group_ue8m0"

    @property
    def scale_ue8m0(self) -> bool:
        return self.quant_mode == "group_ue8m0"

    @property
    def qknorm_op(self) -> str:
        """The op name the dispatcher knows this problem by."""
        return QKNORM_OP[self.op]

    @property
    def width(self) -> int:
        """The normalised width D (head_dim, full Q width, or hidden)."""
        if self.op in ("qk", "rope", "prologue"):
            return self.head_dim
        if self.op == "qk_full":
            return self.hq * self.head_dim
        return self.hidden

    @property
    def n_rows(self) -> int:
        """Normalised rows in one call (Q rows + K rows for QK norm)."""
        if self.op in ("qk", "rope", "prologue"):
            return self.tokens * (self.hq + self.hkv)
        if self.op == "qk_full":
            return 2 * self.tokens
        return self.tokens

    @property
    def packed_width(self) -> int:
        return (self.hq + 2 * self.hkv) * self.head_dim

    @property
    def ideal_bytes(self) -> int:
        """Bytes an ideal kernel moves: each input element read once, each output written
        once, each weight read once. ``rope`` adds the positions (int64) and one fp32
        cos/sin cache row per token."""
        es = torch.empty((), dtype=self.dtype).element_size()
        if self.op == "prologue":
            # Q, K, V read once and Q written once (activation dtype); the kept tokens' K and V cache
            # entries written once (cache element size); weights; per token its positions (int64, 3 rows
            # for mRoPE), its int64 slot and one fp32 cos/sin row's worth; FP8: the two scales
            hd = self.hq * self.head_dim
            kvd = self.hkv * self.head_dim
            ces = torch.empty((), dtype=self.cache_elem).element_size()
            act = self.tokens * (2 * hd + 2 * kvd) * es
            cache = self.n_kept * 2 * kvd * ces
            meta = self.tokens * (8 * (3 if self.mrope_section else 1) + 8 + 4 * self.rotary_dim)
            return act + cache + 2 * self.head_dim * es + meta + (8 if self.cache_fp8 else 0)
        if self.op == "rope":
            elems = self.tokens * (self.hq + self.hkv) * self.head_dim
            return 2 * elems * es + 2 * self.head_dim * es + self.tokens * (8 + 4 * self.rotary_dim)
        if self.is_qk:
            elems = self.tokens * (self.hq + self.hkv) * self.head_dim
            n_weights = 2 * self.width
            return 2 * elems * es + n_weights * es
        elems = self.tokens * self.hidden
        if self.is_quant:
            # x in, the 8-bit codes and the scales out (static: the scale read), the weight once;
            # fused: the residual read and written too
            qs = torch.empty((), dtype=self.out_dtype).element_size()
            scales = 4 * self.tokens * self.n_groups if self.n_groups else 4
            return elems * es * (3 if self.has_residual else 1) + elems * qs + scales + self.hidden * es
        streams = 2 if self.op == "rms2d" else 4  # rms: x in, y out; add: x, r in; x, r out
        return streams * elems * es + self.hidden * es

    @property
    def shape(self) -> str:
        """Human-readable shape, e.g. ``T=512 Hq=32 Hkv=8 D=128`` or ``[512, 4096]``."""
        if self.op == "qk":
            return f"T={self.tokens} Hq={self.hq} Hkv={self.hkv} D={self.head_dim}"
        if self.op == "rope":
            return f"T={self.tokens} Hq={self.hq} Hkv={self.hkv} D={self.head_dim} rotary={self.rotary_dim}"
        if self.op == "prologue":
            return (f"T={self.tokens} Hq={self.hq} Hkv={self.hkv} D={self.head_dim} rotary={self.rotary_dim} "
                    f"cache=[{self.num_slots // self.block_size}, {self.block_size}, {self.hkv}, {self.head_dim}] "
                    f"pad={self.n_pad}")
        if self.op == "qk_full":
            return f"T={self.tokens} Q,K=[{self.tokens}, {self.width}] of qkv[{self.tokens}, {self.packed_width}]"
        return f"[{self.tokens}, {self.hidden}]"

    @property
    def group(self) -> str:
        """The case without its token count: the x-axis of plots and threshold tables."""
        if self.op == "qk":
            g = f"qk Hq={self.hq} Hkv={self.hkv} D={self.head_dim}"
        elif self.op == "rope":
            g = (f"rope Hq={self.hq} Hkv={self.hkv} D={self.head_dim} rotary={self.rotary_dim} "
                 f"{'neox' if self.is_neox else 'gptj'}")
        elif self.op == "prologue":
            g = (f"prologue Hq={self.hq} Hkv={self.hkv} D={self.head_dim} rotary={self.rotary_dim} "
                 f"{'neox' if self.is_neox else 'gptj'}")
            if self.mrope_section:
                g += " mrope=" + "/".join(map(str, self.mrope_section))
            cd = "auto" if self.cache_dtype is None else QUANT_DTYPE_NAMES.get(self.cache_dtype, str(self.cache_dtype))
            g += f" cache={cd} bs={self.block_size}"
        elif self.op == "qk_full":
            g = f"qk_full D={self.width}"
        elif self.is_quant:
            g = f"{self.op} hidden={self.hidden}" + (f" g={self.group_size}" if self.group_size else "")
            g += f" {QUANT_DTYPE_NAMES[self.out_dtype]}"
        else:
            g = f"{self.op} hidden={self.hidden}"
        if self.weight_offset:
            g += f" offset={self.weight_offset:g}"
        return f"{g} {dtype_name(self.dtype)}"

    @property
    def key(self) -> str:
        return f"{self.preset}|{self.group}|T={self.tokens}"


# --------------------------------------------------------------------------- presets

def _model_cases(name: str, tokens, dtype) -> list[Case]:
    m = MODELS[name]
    out = []
    for t in tokens:
        if m.qk_op:
            out.append(Case(name, m.qk_op, t, dtype, m.hq, m.hkv, m.head_dim, weight_offset=m.weight_offset))
        out.append(Case(name, "rms2d", t, dtype, hidden=m.hidden, weight_offset=m.weight_offset))
        out.append(Case(name, "add", t, dtype, hidden=m.hidden, weight_offset=m.weight_offset))
    return out


def _seed_cases(tokens, dtype) -> list[Case]:
    # The seed's per-head grid: Q and K both with `heads` heads in one packed buffer.
    out = []
    for heads in SEED_HEADS:
        for d in SEED_HEAD_DIM:
            for t in tokens:
                out.append(Case("seed", "qk", t, dtype, heads, heads, d))
    for hidden in SEED_HIDDEN:
        for t in tokens:
            out.append(Case("seed", "rms2d", t, dtype, hidden=hidden))
    return out


def _norm2d_cases(tokens, dtype) -> list[Case]:
    return [Case("norm2d", op, t, dtype, hidden=h)
            for h in NORM2D_HIDDEN for t in tokens for op in ("rms2d", "add")]


def _rope_cases(tokens, dtype) -> list[Case]:
    return [Case("rope", "rope", t, dtype, hq, hkv, d, weight_offset=off, rotary_dim=r)
            for _, hq, hkv, d, r, off in ROPE_MODELS for t in tokens]


def _prologue_cases(tokens, dtype) -> list[Case]:
    out = [Case("prologue", "prologue", t, dtype, hq, hkv, d, weight_offset=off, rotary_dim=r, cache_dtype=cd,
                mrope_section=ms)
           for _, hq, hkv, d, r, off, ms in PROLOGUE_MODELS for cd in PROLOGUE_CACHE_DTYPES for t in tokens]
    _, hq, hkv, d, r, off, ms = next(m for m in PROLOGUE_MODELS if m[0] == PROLOGUE_FLAT)
    out += [Case("prologue", "prologue", t, dtype, hq, hkv, d, weight_offset=off, rotary_dim=r, cache_dtype=cd,
                 block_size=1) for cd in PROLOGUE_CACHE_DTYPES for t in tokens]
    return out


def _quant_cases(tokens, dtype, out_dtype: torch.dtype = torch.float8_e4m3fn) -> list[Case]:
    return [Case("quant", f"{form}_{mode}", t, dtype, hidden=h, out_dtype=out_dtype)
            for _, h, modes in QUANT_MODELS for mode in modes for form in ("rmsq", "addq") for t in tokens]


# --quick --preset quant: each mode once, the norm and the fused form in turn, at one small T
QUICK_QUANT = (("rmsq_static", 8192), ("addq_token", 4096), ("addq_group", 4096), ("rmsq_group_ue8m0", 7168))


def preset_cases(name: str, tokens=None, dtype: torch.dtype = torch.bfloat16) -> list[Case]:
    """All cases of preset ``name``; ``tokens`` overrides its token list (the seed's
    default is its batch list, the models' is :data:`DEFAULT_TOKENS`)."""
    if name == "seed":
        return _seed_cases(tuple(tokens) if tokens else SEED_BATCH, dtype)
    if name == "rope":
        return _rope_cases(tuple(tokens) if tokens else DEFAULT_TOKENS, dtype)
    if name == "norm2d":
        return _norm2d_cases(tuple(tokens) if tokens else NORM2D_TOKENS, dtype)
    if name == "quant":
        return _quant_cases(tuple(tokens) if tokens else DEFAULT_TOKENS, dtype)
    if name == "prologue":
        return _prologue_cases(tuple(tokens) if tokens else DEFAULT_TOKENS, dtype)
    if name not in MODELS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return _model_cases(name, tuple(tokens) if tokens else DEFAULT_TOKENS, dtype)


def quick_cases(presets=None, dtype: torch.dtype = torch.bfloat16, tokens=None) -> list[Case]:
    """A handful of small cases (seconds on a CPU): per preset asked for, its QK/2D/add
    shapes at small token counts (``quant``: each quantisation mode once, :data:`QUICK_QUANT`,
    at the largest small T); with no preset, one small case of each op kind."""
    small = tuple(t for t in (tokens or (1, 16)) if t <= 64) or (1, 16)
    if not presets:
        t = max(small)
        return [Case("qwen3-8b", "qk", min(small), dtype, 32, 8, 128)] * (min(small) != t) + [
            Case("qwen3-8b", "qk", t, dtype, 32, 8, 128),
            Case("gemma3-27b", "qk", t, dtype, 32, 16, 128, weight_offset=1.0),
            Case("olmo2-7b", "qk_full", t, dtype, 32, 32, 128),
            Case("qwen3-8b", "rms2d", t, dtype, hidden=4096),
            Case("llama3-70b", "add", t, dtype, hidden=8192),
            Case("rope", "rope", t, dtype, 16, 2, 256, rotary_dim=64),  # Qwen3-Next: partial rotary
            Case("quant", "addq_token", t, dtype, hidden=4096),
            Case("prologue", "prologue", t, dtype, 32, 8, 128, rotary_dim=128, cache_dtype=torch.float8_e4m3fn),
        ]
    out: list[Case] = []
    for name in presets:
        if name == "seed":
            for heads, d in ((8, 64), (32, 128)):
                out += [Case("seed", "qk", t, dtype, heads, heads, d) for t in small]
            out += [Case("seed", "rms2d", t, dtype, hidden=1024) for t in small]
        elif name == "rope":
            out += _rope_cases(small, dtype)
        elif name == "norm2d":
            out += [Case("norm2d", op, t, dtype, hidden=h) for h in (1024, 5120) for t in small
                    for op in ("rms2d", "add")]
        elif name == "quant":
            out += [Case("quant", op, small[-1], dtype, hidden=h) for op, h in QUICK_QUANT]
        elif name == "prologue":
            out += _prologue_cases(small[-1:], dtype)  # every shape, cache dtype and block size once
        else:
            out += _model_cases(name, small, dtype)
    return out


# --------------------------------------------------------------------------- inputs

@dataclass
class Inputs:
    """The tensors of one case. ``qk``/``qk_full``: ``qkv`` with views ``q``, ``k``, ``v``
    and weights ``qw``, ``kw``; ``rope`` adds ``cos_sin_cache`` and ``positions``. ``rms2d``:
    ``x``, ``w`` and a preallocated ``out``. ``add``: ``x``, ``residual``, ``w``. Quantised
    kinds: ``x``, ``w`` (``addq``: ``residual``), preallocated codes ``out`` (``out_dtype``) and
    either the static ``scale`` (1-element fp32) or preallocated fp32 ``scales`` ``[T, G]``
    (column-major for ``group_ue8m0``)."""

    case: Case
    t: dict = field(default_factory=dict)

    def __getattr__(self, name):
        try:
            return self.__dict__["t"][name]
        except KeyError:
            raise AttributeError(name) from None

    def clone(self) -> "Inputs":
        """A deep copy with the same views into a copied packed buffer."""
        if self.case.is_qk:
            out = _qk_views(self.case, self.qkv.clone(), self.qw.clone(), self.kw.clone())
            if self.case.op in ("rope", "prologue"):  # read-only: shared
                out.t.update(cos_sin_cache=self.cos_sin_cache, positions=self.positions)
            if self.case.op == "prologue":  # the caches are written: copied; the rest read-only
                out.t.update(k_cache=self.k_cache.clone(), v_cache=self.v_cache.clone(),
                             slot_mapping=self.slot_mapping, k_scale=self.k_scale, v_scale=self.v_scale)
            return out
        return Inputs(self.case, {k: v.clone() for k, v in self.t.items()})


def _qk_views(case: Case, qkv, qw, kw) -> Inputs:
    T, D, hq, hkv = case.tokens, case.head_dim, case.hq, case.hkv
    q2, k2, v2 = packed_qkv_views(qkv, hq * D, hkv * D)
    if case.op in ("qk", "rope", "prologue"):
        q, k = q2.view(T, hq, D), k2.view(T, hkv, D)
        if case.op == "prologue":
            v2 = v2.view(T, hkv, D)
    else:
        q, k = q2, k2
    return Inputs(case, dict(qkv=qkv, q=q, k=k, v=v2, qw=qw, kw=kw))


def _activations(shape, heads_dim: int | None, dtype, device, g) -> torch.Tensor:
    """Random normal activations with a random scale per token and per head (heads
    along dim ``heads_dim``): real heads differ in magnitude, which is why a per-token
    norm over flattened heads is a different function."""
    x = torch.randn(shape, device=device, dtype=torch.float32, generator=g)
    tok = torch.empty(shape[0], device=device).uniform_(-1.0, 1.0, generator=g).exp2()
    x *= tok.view(-1, *([1] * (len(shape) - 1)))
    if heads_dim is not None:
        hs = torch.empty(shape[heads_dim], device=device).uniform_(-1.0, 1.0, generator=g).exp2()
        view = [1] * len(shape)
        view[heads_dim] = -1
        x *= hs.view(view)
    return x.to(dtype)


def _weight(n: int, offset: float, dtype, device, g) -> torch.Tensor:
    # Weights near 1 (near 0 with Gemma's offset 1, its zero-initialised form), not all equal.
    w = 0.1 * torch.randn(n, device=device, generator=g) + (0.0 if offset else 1.0)
    return w.to(dtype)


def rope_cache(rotary_dim: int, max_position: int = ROPE_MAX_POSITION, theta: float = ROPE_THETA,
               device="cpu") -> torch.Tensor:
    """fp32 ``[max_position, rotary_dim]`` cos half then sin half (vLLM's ``RotaryEmbedding``
    layout, the one FlashInfer and vLLM's fused op read)."""
    inv = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim)
    ang = torch.arange(max_position, dtype=torch.float64, device=device)[:, None] * inv[None, :]
    return torch.cat((ang.cos(), ang.sin()), dim=-1).float().contiguous()


def build_inputs(case: Case, device="cpu", seed: int = 0) -> Inputs:
    """Fresh inputs for ``case``: the same ``seed`` gives the same values on a device."""
    g = torch.Generator(device=device).manual_seed(seed)
    dt = case.dtype
    if case.is_qk:
        T, D = case.tokens, case.head_dim
        H = case.hq + 2 * case.hkv
        qkv = _activations((T, H, D), 1, dt, device, g).view(T, H * D)
        qw = _weight(case.width, case.weight_offset, dt, device, g)
        kw = _weight(case.width, case.weight_offset, dt, device, g)
        inp = _qk_views(case, qkv, qw, kw)
        if case.op in ("rope", "prologue"):
            # random positions (a decode batch: each sequence at its own place), unsorted; mRoPE: three rows
            shape = (3, T) if case.mrope_section else (T,)
            pos = torch.randint(0, ROPE_MAX_POSITION, shape, generator=g, device=device, dtype=torch.int64)
            inp.t.update(cos_sin_cache=rope_cache(case.rotary_dim, device=device), positions=pos)
        if case.op == "prologue":
            _prologue_inputs(case, inp, g, device)
        return inp
    x = _activations((case.tokens, case.hidden), None, dt, device, g)
    w = _weight(case.hidden, case.weight_offset, dt, device, g)
    if case.op == "rms2d":
        return Inputs(case, dict(x=x, w=w, out=torch.empty_like(x)))
    if not case.is_quant:
        r = _activations((case.tokens, case.hidden), None, dt, device, g)
        return Inputs(case, dict(x=x, residual=r, w=w))
    t = dict(x=x, w=w)
    if case.has_residual:
        t["residual"] = _activations((case.tokens, case.hidden), None, dt, device, g)
    t["out"] = torch.empty((case.tokens, case.hidden), dtype=case.out_dtype, device=device)
    if case.n_groups:
        t["scales"] = quant_scales(case.tokens, case.n_groups, case.column_major_scales, device)
    else:
        t["scale"] = static_scale(case, x, w, t.get("residual"))
    return Inputs(case, t)


def _poisoned_cache(case: Case, device) -> torch.Tensor:
    """An NHD cache ``[num_blocks, block_size, Hkv, D]`` (flat ``[num_slots, Hkv, D]`` for block_size 1)
    of the case's cache dtype, every element NaN (FP8: byte 0x7F, NaN in e4m3fn and e5m2)."""
    shape = ((case.num_slots,) if case.block_size == 1 else (case.num_slots // case.block_size, case.block_size))
    c = torch.empty(shape + (case.hkv, case.head_dim), dtype=case.cache_elem, device=device)
    if case.cache_fp8:
        c.view(torch.uint8).fill_(0x7F)
    else:
        c.fill_(math.nan)
    return c


def _prologue_inputs(case: Case, inp: Inputs, g, device) -> None:
    """Caches, slot_mapping and (FP8) scales of a prologue case, into ``inp``."""
    T = case.tokens
    # a random permutation of every slot but the last (kept spare: a padding token written to index -1,
    # Python-style, lands there and shows); the tail tokens are padding (-1)
    perm = torch.randperm(case.num_slots - 1, generator=g, device=device)[:T]
    slots = perm.to(torch.int64)
    if case.n_pad:
        slots[case.n_kept:] = -1
    inp.t.update(k_cache=_poisoned_cache(case, device), v_cache=_poisoned_cache(case, device), slot_mapping=slots,
                 k_scale=None, v_scale=None)
    if case.cache_fp8:
        # static per-tensor dequantisation scales as a calibration would set them: |K| after the norm and
        # rotation is at most sqrt(2) x the normalised amax (a rotated pair keeps its length); no saturation
        from .common import torch_norm_f32
        qmax = QMAX[case.cache_dtype]
        kn = torch_norm_f32(inp.k, inp.kw, case.eps, case.weight_offset)
        inp.t["k_scale"] = (kn.abs().amax() * math.sqrt(2.0) / qmax).float().reshape(1)
        inp.t["v_scale"] = (inp.v.float().abs().amax() / qmax).float().reshape(1)


def kept_slots(case: Case, inp: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, slots)`` (int64) of a prologue case's tokens that are written to the caches."""
    s = inp.slot_mapping
    keep = (s >= 0).nonzero().flatten()
    return keep, s[keep]


def cache_rows(cache: torch.Tensor, hkv: int, d: int) -> torch.Tensor:
    """The cache as ``[num_slots, Hkv, D]`` (a view of the contiguous NHD or flat cache)."""
    return cache.view(-1, hkv, d)


def prologue_reference(case: Case, inp: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp64 ``(q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D])`` of a prologue case: Q and K normalised
    (fp64) and rotated (RoPE, or mRoPE: frequency ``j`` takes the position row of its section), V as
    given. From unmutated inputs."""
    from qknorm.reference import rms_norm_ref
    from qknorm.reference_rope import rope_ref
    f64 = torch.float64
    qn = rms_norm_ref(inp.q, inp.qw, case.eps, case.weight_offset, compute_dtype=f64)
    kn = rms_norm_ref(inp.k, inp.kw, case.eps, case.weight_offset, compute_dtype=f64)
    r = case.rotary_dim
    cs, pos = inp.cos_sin_cache.double(), inp.positions
    if case.mrope_section:
        half = r // 2
        sec = torch.repeat_interleave(torch.arange(3, device=pos.device),
                                      torch.tensor(case.mrope_section, device=pos.device))  # [half]
        p = pos.long()[sec]  # [half, T]
        cols = torch.arange(half, device=pos.device)[:, None]
        cs = torch.cat((cs[p, cols].t(), cs[p, half + cols].t()), dim=1)  # [T, R]: each token's own row
        pos = torch.arange(case.tokens, device=pos.device)
    qr = rope_ref(qn, cs, pos, r, case.is_neox, compute_dtype=f64)
    kr = rope_ref(kn, cs, pos, r, case.is_neox, compute_dtype=f64)
    return qr, kr, inp.v.double()


def quant_scales(tokens: int, n_groups: int, column_major: bool, device="cpu") -> torch.Tensor:
    """An fp32 ``[tokens, n_groups]`` scales buffer, row-major or column-major (stride 1 along
    the tokens)."""
    if column_major:
        return torch.empty((n_groups, tokens), dtype=torch.float32, device=device).t()
    return torch.empty((tokens, n_groups), dtype=torch.float32, device=device)


def static_scale(case: Case, x: torch.Tensor, w: torch.Tensor, residual=None) -> torch.Tensor:
    """The static per-tensor scale of a case: ``amax / qmax`` of the first token's normalised row
    (a calibration on one typical row: other rows may saturate a little, which the static
    recipe does), as a 1-element fp32 tensor on x's device."""
    from qknorm.reference import rms_norm_ref
    row = x[:1].double() + (residual[:1].double() if residual is not None else 0.0)
    n = rms_norm_ref(row, w, case.eps, case.weight_offset, compute_dtype=torch.float64)
    return (n.abs().amax().clamp(min=AMAX_FLOOR) / QMAX[case.out_dtype]).float().reshape(1)


@dataclass
class QuantRef:
    """The fp64 reference of a quantised case. ``n``: ``[T, hidden]`` normalised values (of the
    exact sum ``x + residual`` for ``addq``); ``scales``: the expected dequantisation scales
    (``[T, G]``, after UE8M0; static: the given scale, ``[1]``); ``raw``: the UE8M0 kinds' scales
    before the rounding up (where a power-of-two tie is decided), else None; ``residual``: the
    fp32 sum stored in residual's dtype (``addq``), else None; ``qmax`` of the output format."""

    n: torch.Tensor
    scales: torch.Tensor
    raw: torch.Tensor | None
    residual: torch.Tensor | None
    qmax: float


def pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """``2**ceil(log2(s))`` of positive normal fp64 ``s``, exactly on any device: the bits
    themselves (a zero mantissa is a power of two already; else clear it and add one to the
    exponent), no log2 or pow (CUDA's fp64 ones are not correctly rounded)."""
    b = s.to(torch.float64).view(torch.int64)
    mant = b & ((1 << 52) - 1)
    up = (b & (0x7FF << 52)) + (1 << 52)
    return torch.where(mant == 0, b, up).view(torch.float64)


def quant_reference(case: Case, inp: Inputs) -> QuantRef:
    """The fp64 reference of a quantised case, from its (unmutated) inputs: ``n`` as
    ``rms_norm`` defines it, computed in fp64, and the scales of ``qknorm.rms_norm_quant``'s
    semantics (``max(amax, 1e-10) / qmax`` per token or group, UE8M0 rounded up)."""
    from qknorm.reference import rms_norm_ref
    res = None
    s = inp.x
    if case.has_residual:
        s = inp.x.double() + inp.residual.double()
        res = (inp.x.float() + inp.residual.float()).to(inp.residual.dtype)
    n = rms_norm_ref(s, inp.w, case.eps, case.weight_offset, compute_dtype=torch.float64)
    qmax = QMAX[case.out_dtype]
    if not case.n_groups:
        return QuantRef(n, inp.scale.double().reshape(1), None, res, qmax)
    t, h = n.shape
    amax = n.abs().reshape(t, case.n_groups, h // case.n_groups).amax(-1)
    raw = amax.clamp(min=AMAX_FLOOR) / qmax
    if case.scale_ue8m0:
        return QuantRef(n, pow2_ceil(raw), raw, res, qmax)
    return QuantRef(n, raw, None, res, qmax)


def quant_values(n: torch.Tensor, scales: torch.Tensor, qmax: float) -> torch.Tensor:
    """``clamp(n / scale, -qmax, qmax)`` in n's dtype: the value each code rounds, scales ``[1]``
    (static) or ``[T, G]`` (per token or group)."""
    if scales.numel() == 1 and scales.dim() == 1:
        v = n / scales
    else:
        t, h = n.shape
        g = scales.shape[-1]
        v = (n.reshape(t, g, h // g) / scales.reshape(t, g, 1)).reshape(t, h)
    return v.clamp(-qmax, qmax)


def round_to_codes(v: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Round values (already clamped to +-qmax) to the nearest code, ties to even. fp8 via fp32
    (a double rounding only within an fp32 ulp of a tie, inside the gate's tie window)."""
    if out_dtype == torch.int8:
        return torch.round(v).to(torch.int8)
    return v.to(torch.float32).to(out_dtype)


def expected(case: Case, inp: Inputs) -> tuple[torch.Tensor, ...]:
    """fp32 reference outputs in the order implementations return them:
    ``qk`` -> (q, k); ``rms2d`` -> (y,); ``add`` -> (x, residual); ``rope`` -> (q, k);
    ``rmsq_*`` -> (codes, scales); ``addq_*`` -> (codes, scales, residual) (codes and fp32 scales
    from the fp64 :func:`quant_reference`; scales in the case's layout); ``prologue`` -> (q fp32,
    k fp64, v fp64): Q of every token, K and V of the kept tokens (:func:`kept_slots` order), values
    before any cache quantisation (:func:`prologue_reference`)."""
    from qknorm.reference import fused_add_rms_norm_ref, rms_norm_ref

    if case.is_quant:
        ref = quant_reference(case, inp)
        codes = round_to_codes(quant_values(ref.n, ref.scales, ref.qmax), case.out_dtype)
        if case.n_groups:
            scales = quant_scales(case.tokens, case.n_groups, case.column_major_scales, inp.x.device)
            scales.copy_(ref.scales)
        else:
            scales = inp.scale
        return (codes, scales) + ((ref.residual,) if case.has_residual else ())

    if case.op == "prologue":
        q, k, v = prologue_reference(case, inp)
        tok, _ = kept_slots(case, inp)
        return q.float(), k[tok], v[tok]
    if case.op == "rope":
        from qknorm.reference_rope import qk_rms_norm_rope_ref
        return qk_rms_norm_rope_ref(inp.q, inp.k, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions, case.eps,
                                    is_neox=case.is_neox, rotary_dim=case.rotary_dim,
                                    weight_offset=case.weight_offset)
    if case.is_qk:
        return (rms_norm_ref(inp.q, inp.qw, case.eps, case.weight_offset),
                rms_norm_ref(inp.k, inp.kw, case.eps, case.weight_offset))
    if case.op == "rms2d":
        return (rms_norm_ref(inp.x, inp.w, case.eps, case.weight_offset),)
    y, s = fused_add_rms_norm_ref(inp.x, inp.residual, inp.w, case.eps, case.weight_offset)
    return (y, s)


def qk_views_contiguous(case: Case) -> bool:
    """Whether the Q and K views of the packed QKV buffer are already contiguous for ``case``
    (T=1: a single row's view is): then ``.contiguous()`` returns the view itself and a copy
    baseline would time nothing. Worked out on the meta device (no memory)."""
    if not case.is_qk:
        return False
    inp = _qk_views(case, torch.empty(case.tokens, case.packed_width, dtype=case.dtype, device="meta"), None, None)
    return inp.q.is_contiguous() and inp.k.is_contiguous()


def layout(case: Case, inp: Inputs) -> dict:
    """Strides, contiguity and 16-byte vector alignment of the normalised inputs."""
    ts = [inp.q, inp.k] if case.is_qk else [inp.x] + ([inp.residual] if case.has_residual else [])
    names = ["q", "k"] if case.is_qk else ["x", "residual"]
    es = ts[0].element_size()

    def aligned(t):
        return t.data_ptr() % 16 == 0 and all((s * es) % 16 == 0 for s in t.stride()[:-1]) \
            and t.stride(-1) == 1 and (t.shape[-1] * es) % 16 == 0

    return dict(strides=" ".join(f"{n}:{tuple(t.stride())}" for n, t in zip(names, ts)),
                contiguous=all(t.is_contiguous() for t in ts),
                aligned16=all(aligned(t) for t in ts))
