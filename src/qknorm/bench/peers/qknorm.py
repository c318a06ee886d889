"""qknorm itself, through its public API only: the dispatcher's pick (row ``qknorm``) and
each forced :class:`qknorm.KernelConfig` (rows ``qknorm[<config>]``), plus the dispatcher's
public questions the runner asks (the pick and its reason, the candidates, the tuned
table's ranking)."""
from __future__ import annotations

from ..cases import Case
from .base import Impl


class Qknorm(Impl):
    """qknorm's public API: the dispatcher's pick (``config=None``) or one forced config."""

    library = "qknorm"

    def __init__(self, config=None):
        self.config = config
        self.name = "qknorm" if config is None else f"qknorm[{config.name}]"
        self.family = "qknorm" if config is None else "qknorm-variant"

    def version(self):
        import qknorm
        return qknorm.__version__

    def check(self, case):
        if case.is_quant and self.config is not None:
            return False, "rms_norm_quant takes no config= (its tile is the rms_norm pick): no forced variants"
        if case.op == "prologue" and self.config is not None:
            return False, "qk_norm_rope_cache takes no config= (its kernel takes the qk_rms_norm pick): no variants"
        return True, ""

    def notes(self, case):
        if case.op == "prologue":
            return ("qk_norm_rope_cache: norm + " + ("mRoPE" if case.mrope_section else "RoPE") + " of Q in place, "
                    "K and V into the " + ("FP8 " if case.cache_fp8 else "") + "paged caches, one launch; the full "
                    "slot_mapping (padding skipped in-kernel)")
        if case.op == "rope":
            return "qk_rms_norm_rope: norm + RoPE of Q and K in one launch, in place on the packed buffer"
        if case.op == "qk":
            return "Q and K in one launch, in place on the packed buffer"
        if case.op == "qk_full":
            return "full-width Q and K in one launch, in place on strided slices"
        if case.is_quant:
            f = "fused_add_rms_norm_quant (residual in place)" if case.has_residual else "rms_norm_quant"
            return f"{f}, one launch; out=" + (", scales_out= preallocated" if case.n_groups else " preallocated")
        return "out= preallocated output" if case.op == "rms2d" else "in place"

    def build(self, case, inp):
        import qknorm

        cfg, eps, off = self.config, case.eps, case.weight_offset
        if case.is_quant:
            return _quant_call(case, inp)
        if case.op == "prologue":
            return _prologue_call(case, inp)
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


def _prologue_call(case: Case, inp):
    """``qk_norm_rope_cache`` with Q in place (``q_out`` None), the case's caches and full slot_mapping."""
    import qknorm

    f = qknorm.qk_norm_rope_cache
    args = (inp.q, inp.k, inp.v, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions, inp.k_cache, inp.v_cache,
            inp.slot_mapping, case.eps)
    kw = dict(is_neox=case.is_neox, rotary_dim=case.rotary_dim, weight_offset=case.weight_offset,
              mrope_section=tuple(case.mrope_section) or None, k_scale=inp.k_scale, v_scale=inp.v_scale)
    outs = (inp.q, inp.k_cache, inp.v_cache)

    def call():
        f(*args, **kw)
        return outs
    return call


class QknormRopeTorchCache(Impl):
    """A composition: qknorm's ``qk_rms_norm_rope`` (Q and K in place on the packed buffer, one
    launch), then the PyTorch cache write (:func:`~qknorm.bench.peers.pytorch.torch_cache_write`) of
    the real tokens' K and V. What an engine with qknorm's norm+RoPE but no fused cache write runs."""

    name = "qknorm_rope+torch_cache"
    library = "qknorm"
    ops = ("prologue",)

    def __init__(self):
        from ..cases import OPS
        self.not_ops = {op: "prologue cases only (norm + RoPE + KV-cache write)" for op in OPS if op != "prologue"}

    def version(self):
        import qknorm
        return qknorm.__version__

    def check(self, case):
        if case.mrope_section:
            return False, "qk_rms_norm_rope has no mRoPE (qk_norm_rope_cache has)"
        return True, ""

    def notes(self, case):
        return ("qk_rms_norm_rope in place (K rotated in its packed-buffer region), then torch index_copy_ of K and "
                "V" + (" quantised to FP8 in torch ops" if case.cache_fp8 else "") + " at the real tokens' slots")

    def build(self, case, inp):
        import qknorm

        from .pytorch import torch_cache_write
        f = qknorm.qk_rms_norm_rope
        q, k, v, n = inp.q, inp.k, inp.v, case.n_kept
        args = (q, k, inp.qw, inp.kw, inp.cos_sin_cache, inp.positions, case.eps)
        kw = dict(is_neox=case.is_neox, rotary_dim=case.rotary_dim, weight_offset=case.weight_offset, q_out=q,
                  k_out=k)
        kc, vc, slots, ks, vs = inp.k_cache, inp.v_cache, inp.slot_mapping[:n], inp.k_scale, inp.v_scale
        outs = (q, kc, vc)

        def call():
            f(*args, **kw)
            torch_cache_write(k[:n], v[:n], kc, vc, slots, ks, vs)
            return outs
        return call


def _quant_call(case: Case, inp):
    """``rms_norm_quant`` / ``fused_add_rms_norm_quant`` into the preallocated codes and scales
    (the public API takes no ``config``: the quantised kinds have no forced variants)."""
    import qknorm

    kw = dict(out_dtype=case.out_dtype, weight_offset=case.weight_offset, out=inp.out)
    if case.n_groups:
        kw.update(scales_out=inp.scales, column_major_scales=case.column_major_scales, scale_ue8m0=case.scale_ue8m0)
        if case.group_size:
            kw["group_size"] = case.group_size
    else:
        kw["scale"] = inp.scale
    x, w, eps = inp.x, inp.w, case.eps
    if case.has_residual:
        f, r = qknorm.fused_add_rms_norm_quant, inp.residual

        def call():
            y, s = f(x, r, w, eps, **kw)
            return y, s, r
        return call
    f = qknorm.rms_norm_quant
    return lambda: f(x, w, eps, **kw)


def qknorm_variants(case: Case, device) -> list[Qknorm]:
    """One adapter per admissible kernel config for this case (``candidate_configs``).

    ``rope``: the fused kernel keeps a whole head in registers and walks rows in segment
    order, so only unchunked, segment-order configs are distinct variants there. The quantised
    kinds have none (their public API takes no ``config``; the row ``qknorm`` is the pick)."""
    if case.is_quant or case.op == "prologue":
        return []
    from qknorm.dispatch import candidate_configs, choose_rope_config
    cands = candidate_configs(case.qknorm_op, case.dtype, case.width, case.n_rows, device)
    if case.op == "rope":
        cands = [c for c in cands if not c.chunked(case.width) and not c.token_order]
        pick = choose_rope_config(case.dtype, case.width, case.rotary_dim, case.n_rows, device)[0]
        cands = [pick] + [c for c in cands if c != pick]
    return [Qknorm(c) for c in cands]


def qknorm_pick(case: Case, device) -> tuple[str, str]:
    """The dispatcher's config name for this case, and its reason (the RoPE kernels' own decision
    for ``rope`` and ``prologue``)."""
    from qknorm.dispatch import choose_config, choose_rope_config
    if case.op in ("rope", "prologue"):
        cfg, why = choose_rope_config(case.dtype, case.width, case.rotary_dim, case.n_rows, device)
    else:
        cfg, why = choose_config(case.qknorm_op, case.dtype, case.width, case.n_rows, device)
    return cfg.name, why


def qknorm_ranked(case: Case, device) -> list[str]:
    """Config names the tuned table measured for this case's bucket, fastest first ([] if none)."""
    from qknorm.dispatch import measured_alternatives
    return measured_alternatives(case.qknorm_op, case.dtype, case.width, case.n_rows, device)
