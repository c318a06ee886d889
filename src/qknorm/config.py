"""Launch configuration of the norm kernels, as one frozen value.

A :class:`KernelConfig` is what the dispatcher returns, what a tuned table stores and
what ``explain`` prints. Every kernel variant is a config: multi-row blocks
(``rows``, ``num_warps``), the chunked form for wide rows (``block_d < D``), and the
persistent grid-stride form (``persistent``).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

MAX_TILE = 65536  # elements of one program's [rows, block_d] tile
#: A row wider than the tile is kept in registers (read once) when it is at most this many
#: exact tiles and each thread holds at most REG_VALUES_PER_THREAD fp32 values of it.
REG_CHUNKS_MAX = 8
REG_VALUES_PER_THREAD = 64


def _pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


@dataclass(frozen=True)
class KernelConfig:
    """How to launch one norm: ``rows`` rows of ``block_d`` columns per program.

    ``block_d >= D`` keeps a whole row in registers (one read, one write); a smaller
    ``block_d`` selects the chunked two-pass form. ``persistent`` launches
    ``programs_per_sm * SMs`` programs (at most one per block) that loop over blocks.
    ``token_order`` (QK norm only) walks the rows token by token, Q and K heads of a
    token together, instead of all Q rows then all K rows: sequential DRAM access on a
    packed QKV buffer at large token counts. Needs Q ``[T, Hq, D]`` and K ``[T, Hkv, D]``
    with unit last-dim strides and unchunked rows; otherwise the segment order runs.
    ``pdl`` launches with programmatic dependent launch (Hopper and later, Triton >= 3.4):
    the kernel may start while the previous one drains, and waits for its writes.

    Pass one as ``config=`` to an op to force it (see :func:`qknorm.explain` for the
    dispatcher's own pick). Frozen and hashable.

    Parameters
    ----------
    rows : int
        Rows per program (per block of the persistent form); a power of two.
    block_d : int
        Columns of one tile, in elements; a power of two. ``block_d >= D``: whole rows;
        smaller: the chunked form.
    num_warps : int
        Warps per program: 1, 2, 4, 8, 16 or 32.
    persistent : bool
        Launch the persistent grid-stride form.
    programs_per_sm : int
        Programs per SM of the persistent form (>= 1; unused otherwise).
    token_order : bool
        QK norm only: walk Q and K rows token by token (see above).
    pdl : bool
        Launch with programmatic dependent launch (see above).

    Raises
    ------
    ValueError
        ``rows`` or ``block_d`` not a power of two, ``num_warps`` not one of the listed
        values, ``rows * block_d`` above 65536 elements, ``programs_per_sm < 1``.
        (The fields are not type-checked: pass ints and bools.)
    """

    rows: int = 1
    block_d: int = 128
    num_warps: int = 4
    persistent: bool = False
    programs_per_sm: int = 4
    token_order: bool = False
    pdl: bool = False

    def __post_init__(self):
        if not _pow2(self.rows):
            raise ValueError(f"KernelConfig.rows must be a power of two, got {self.rows}")
        if not _pow2(self.block_d):
            raise ValueError(f"KernelConfig.block_d must be a power of two, got {self.block_d}")
        if self.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"KernelConfig.num_warps must be 1, 2, 4, 8, 16 or 32, got {self.num_warps}")
        if self.rows * self.block_d > MAX_TILE:
            raise ValueError(f"KernelConfig tile rows*block_d = {self.rows * self.block_d} exceeds {MAX_TILE}")
        if self.programs_per_sm < 1:
            raise ValueError(f"KernelConfig.programs_per_sm must be >= 1, got {self.programs_per_sm}")

    def chunked(self, d: int) -> bool:
        """Whether rows of width ``d`` are wider than this config's tile (a chunked form).

        Parameters
        ----------
        d : int
            Row width in elements.

        Returns
        -------
        bool
            ``block_d < d``.
        """
        return self.block_d < d

    def chunk_mode(self, d: int) -> int:
        """The kernels' ``CHUNKED`` constexpr for rows of width ``d`` (``kernels/rows.norm_block``):
        0 the row fits one tile; ``n >= 2`` the row is ``n`` exact tiles kept in registers (read
        once), when ``n <= REG_CHUNKS_MAX`` and each thread holds at most ``REG_VALUES_PER_THREAD``
        fp32 values; 1 otherwise (two passes: the row read twice). Both chunked forms give the
        same bits.

        Parameters
        ----------
        d : int
            Row width in elements.

        Returns
        -------
        int
            0, 1, or the number of register-held tiles ``n`` (2 ... ``REG_CHUNKS_MAX``).
        """
        if not self.chunked(d):
            return 0
        n = d // self.block_d
        if d % self.block_d == 0 and 2 <= n <= REG_CHUNKS_MAX \
                and d * self.rows <= REG_VALUES_PER_THREAD * 32 * self.num_warps:
            return n
        return 1

    @property
    def name(self) -> str:
        """Short stable label, e.g. ``r16.b128.w4`` or ``r1.b4096.w8.p4`` (persistent, 4 programs/SM)."""
        s = f"r{self.rows}.b{self.block_d}.w{self.num_warps}"
        s += f".p{self.programs_per_sm}" if self.persistent else ""
        s += ".tok" if self.token_order else ""
        return s + (".pdl" if self.pdl else "")

    def to_dict(self) -> dict:
        """The fields as a plain dict (the form :meth:`from_dict` reads back).

        Returns
        -------
        dict
            ``{"rows": ..., "block_d": ..., "num_warps": ..., "persistent": ...,
            "programs_per_sm": ..., "token_order": ..., "pdl": ...}``.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "KernelConfig":
        """A config from a dict of its fields (a subset: missing fields take their defaults).

        Parameters
        ----------
        d : dict
            Field name to value, as :meth:`to_dict` writes.

        Returns
        -------
        KernelConfig

        Raises
        ------
        ValueError
            A key that is not a field, or values the constructor refuses.
        """
        fields = {"rows", "block_d", "num_warps", "persistent", "programs_per_sm", "token_order", "pdl"}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown KernelConfig fields: {sorted(unknown)}")
        return cls(**d)


_CONFIG_NAME = re.compile(r"r(\d+)\.b(\d+)\.w(\d+)(?:\.p(\d+))?(\.tok)?(\.pdl)?")


def config_from_name(name: str) -> KernelConfig | None:
    """The :class:`KernelConfig` whose ``name`` is ``name`` (a bare config name or a bench
    variant row's ``qknorm[<name>]``), or None where ``name`` is not one: results and tuned
    tables store names, and a variant's kind is read from the config's fields, never from
    substrings of its name."""
    if name.startswith("qknorm[") and name.endswith("]"):
        name = name[len("qknorm["):-1]
    m = _CONFIG_NAME.fullmatch(name)
    if m is None:
        return None
    rows, block_d, warps, pps, tok, pdl = m.groups()
    try:
        cfg = KernelConfig(rows=int(rows), block_d=int(block_d), num_warps=int(warps), persistent=pps is not None,
                           programs_per_sm=int(pps) if pps is not None else KernelConfig.programs_per_sm,
                           token_order=tok is not None, pdl=pdl is not None)
    except ValueError:
        return None
    return cfg if cfg.name == name else None
