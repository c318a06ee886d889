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
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .common import DTYPE_NAMES, DTYPES, EPS, dtype_name, packed_qkv_views

DEFAULT_TOKENS = (1, 4, 16, 64, 256, 512, 1024, 4096, 16384)
OPS = ("qk", "qk_full", "rms2d", "add", "rope")
QKNORM_OP = {"qk": "qk_rms_norm", "qk_full": "qk_rms_norm", "rms2d": "rms_norm", "add": "fused_add_rms_norm",
             "rope": "qk_rms_norm"}  # rope: the fused kernel takes the dispatcher's qk_rms_norm pick
__all__ = ["DTYPES", "DTYPE_NAMES", "EPS", "Case", "Inputs", "build_inputs", "expected", "layout", "preset_cases",
           "qk_views_contiguous", "quick_cases", "rope_cache"]

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

PRESETS = ("seed",) + tuple(MODELS) + ("rope", "norm2d")


@dataclass(frozen=True)
class Case:
    """One benchmark problem. ``tokens`` is T (the seed grid's batch).

    For ``qk``/``qk_full``: ``hq``, ``hkv``, ``head_dim`` describe the packed QKV buffer.
    For ``rms2d``/``add``: ``hidden`` is the normalised width. For ``rope``: ``rotary_dim``
    (0: the whole head) and ``is_neox`` (rotate halves; False: GPT-J pairs)."""

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

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"Case.op must be one of {OPS}, got {self.op!r}")
        if self.tokens < 1:
            raise ValueError(f"Case.tokens must be >= 1, got {self.tokens}")
        if self.op == "qk_full" and self.hq != self.hkv:
            # qk_rms_norm normalises Q and K rows of one width; OLMo 2 has Hq == Hkv.
            raise ValueError("qk_full needs hq == hkv (equal Q and K widths)")
        if self.op == "rope":
            if self.rotary_dim == 0:
                object.__setattr__(self, "rotary_dim", self.head_dim)
            if self.rotary_dim < 2 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
                raise ValueError(f"Case.rotary_dim must be even and in [2, head_dim={self.head_dim}], "
                                 f"got {self.rotary_dim}")
        elif self.rotary_dim:
            raise ValueError(f"Case.rotary_dim is for op 'rope' only, got {self.rotary_dim} for {self.op!r}")

    @property
    def is_qk(self) -> bool:
        return self.op in ("qk", "qk_full", "rope")  # Q and K views of one packed QKV buffer

    @property
    def qknorm_op(self) -> str:
        """The op name the dispatcher knows this problem by."""
        return QKNORM_OP[self.op]

    @property
    def width(self) -> int:
        """The normalised width D (head_dim, full Q width, or hidden)."""
        if self.op in ("qk", "rope"):
            return self.head_dim
        if self.op == "qk_full":
            return self.hq * self.head_dim
        return self.hidden

    @property
    def n_rows(self) -> int:
        """Normalised rows in one call (Q rows + K rows for QK norm)."""
        if self.op in ("qk", "rope"):
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
        if self.op == "rope":
            elems = self.tokens * (self.hq + self.hkv) * self.head_dim
            return 2 * elems * es + 2 * self.head_dim * es + self.tokens * (8 + 4 * self.rotary_dim)
        if self.is_qk:
            elems = self.tokens * (self.hq + self.hkv) * self.head_dim
            n_weights = 2 * self.width
            return 2 * elems * es + n_weights * es
        elems = self.tokens * self.hidden
        streams = 2 if self.op == "rms2d" else 4  # rms: x in, y out; add: x, r in; x, r out
        return streams * elems * es + self.hidden * es

    @property
    def shape(self) -> str:
        """Human-readable shape, e.g. ``T=512 Hq=32 Hkv=8 D=128`` or ``[512, 4096]``."""
        if self.op == "qk":
            return f"T={self.tokens} Hq={self.hq} Hkv={self.hkv} D={self.head_dim}"
        if self.op == "rope":
            return f"T={self.tokens} Hq={self.hq} Hkv={self.hkv} D={self.head_dim} rotary={self.rotary_dim}"
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
        elif self.op == "qk_full":
            g = f"qk_full D={self.width}"
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


def preset_cases(name: str, tokens=None, dtype: torch.dtype = torch.bfloat16) -> list[Case]:
    """All cases of preset ``name``; ``tokens`` overrides its token list (the seed's
    default is its batch list, the models' is :data:`DEFAULT_TOKENS`)."""
    if name == "seed":
        return _seed_cases(tuple(tokens) if tokens else SEED_BATCH, dtype)
    if name == "rope":
        return _rope_cases(tuple(tokens) if tokens else DEFAULT_TOKENS, dtype)
    if name == "norm2d":
        return _norm2d_cases(tuple(tokens) if tokens else NORM2D_TOKENS, dtype)
    if name not in MODELS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return _model_cases(name, tuple(tokens) if tokens else DEFAULT_TOKENS, dtype)


def quick_cases(presets=None, dtype: torch.dtype = torch.bfloat16, tokens=None) -> list[Case]:
    """A handful of small cases (seconds on a CPU): per preset asked for, its QK/2D/add
    shapes at small token counts; with no preset, one of each op kind."""
    small = tuple(t for t in (tokens or (1, 16)) if t <= 64) or (1, 16)
    if not presets:
        return [
            Case("qwen3-8b", "qk", small[0], dtype, 32, 8, 128),
            Case("qwen3-8b", "qk", small[-1], dtype, 32, 8, 128),
            Case("gemma3-27b", "qk", small[-1], dtype, 32, 16, 128, weight_offset=1.0),
            Case("olmo2-7b", "qk_full", small[-1], dtype, 32, 32, 128),
            Case("qwen3-8b", "rms2d", small[-1], dtype, hidden=4096),
            Case("llama3-70b", "add", small[-1], dtype, hidden=8192),
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
        else:
            out += _model_cases(name, small, dtype)
    return out


# --------------------------------------------------------------------------- inputs

@dataclass
class Inputs:
    """The tensors of one case. ``qk``/``qk_full``: ``qkv`` with views ``q``, ``k``, ``v``
    and weights ``qw``, ``kw``; ``rope`` adds ``cos_sin_cache`` and ``positions``. ``rms2d``: ``x``, ``w`` and a preallocated ``out``.
    ``add``: ``x``, ``residual``, ``w``."""

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
            if self.case.op == "rope":  # read-only: shared
                out.t.update(cos_sin_cache=self.cos_sin_cache, positions=self.positions)
            return out
        return Inputs(self.case, {k: v.clone() for k, v in self.t.items()})


def _qk_views(case: Case, qkv, qw, kw) -> Inputs:
    T, D, hq, hkv = case.tokens, case.head_dim, case.hq, case.hkv
    q2, k2, v2 = packed_qkv_views(qkv, hq * D, hkv * D)
    if case.op in ("qk", "rope"):
        q, k = q2.view(T, hq, D), k2.view(T, hkv, D)
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
        if case.op == "rope":
            # random positions (a decode batch: each sequence at its own place), unsorted
            pos = torch.randint(0, ROPE_MAX_POSITION, (T,), generator=g, device=device, dtype=torch.int64)
            inp.t.update(cos_sin_cache=rope_cache(case.rotary_dim, device=device), positions=pos)
        return inp
    x = _activations((case.tokens, case.hidden), None, dt, device, g)
    w = _weight(case.hidden, case.weight_offset, dt, device, g)
    if case.op == "rms2d":
        return Inputs(case, dict(x=x, w=w, out=torch.empty_like(x)))
    r = _activations((case.tokens, case.hidden), None, dt, device, g)
    return Inputs(case, dict(x=x, residual=r, w=w))


def expected(case: Case, inp: Inputs) -> tuple[torch.Tensor, ...]:
    """fp32 reference outputs in the order implementations return them:
    ``qk`` -> (q, k); ``rms2d`` -> (y,); ``add`` -> (x, residual); ``rope`` -> (q, k)."""
    from qknorm.reference import fused_add_rms_norm_ref, rms_norm_ref

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
    ts = [inp.q, inp.k] if case.is_qk else [inp.x] + ([inp.residual] if case.op == "add" else [])
    names = ["q", "k"] if case.is_qk else ["x", "residual"]
    es = ts[0].element_size()

    def aligned(t):
        return t.data_ptr() % 16 == 0 and all((s * es) % 16 == 0 for s in t.stride()[:-1]) \
            and t.stride(-1) == 1 and (t.shape[-1] * es) % 16 == 0

    return dict(strides=" ".join(f"{n}:{tuple(t.stride())}" for n, t in zip(names, ts)),
                contiguous=all(t.is_contiguous() for t in ts),
                aligned16=all(aligned(t) for t in ts))
