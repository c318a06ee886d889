"""Correctness gate: an implementation is timed only after its output matched the fp32
reference on fresh inputs.

The gate poisons what it can before the call: a caller-provided output buffer is
filled with NaN, and for implementations that allocate their outputs the caching
allocator is handed a NaN-filled block of the same size just before (best effort: an
unwritten element then reads NaN, which never passes). In-place outputs cannot be
poisoned; an unwritten element there keeps its input value, which differs from the
normalised one. For QK cases the V slice of the packed buffer must come back
bit-identical (no writes outside Q and K).

Quantised cases (:func:`gate_quant`) are compared with the fp64 reference of the same semantics
(:func:`~qknorm.bench.cases.quant_reference`), code by code:

- scales: static, the given scale exactly; dynamic, within ``window`` (relative) of the
  reference's, in the case's shape and layout (row-major, or column-major for ``group_ue8m0``);
  UE8M0 scales must be powers of two, the reference's, or its neighbour where the unrounded
  scale lies within ``window`` of a power of two (a scale tie, counted);
- codes: each must be the code the fp64 value ``clamp(n / s, +-qmax)`` rounds to (``s``: the
  implementation's own scale, checked above), or the adjacent code where that value lies within
  ``window`` of the midpoint between the two (a rounding tie: the two are an ulp apart in any
  fp32 arithmetic; with bf16 inputs exact ties are common, the rms cancels in ``n / amax``).
  Ties are counted and reported in the row's notes; any other difference fails the gate;
- residual (``addq``): the relative L2 error of the stored sum under the dtype's tolerance.

Prologue cases (:func:`gate_prologue`, ``qk_norm_rope_cache``): the implementation returns
``(q_out, k_cache, v_cache)``, the case's own caches written in place. Q: relative L2 error against
the fp64 reference under the dtype's tolerance. Cache slots named by ``slot_mapping`` (the
caches come poisoned with NaN, so an unwritten named slot fails): K, relative L2 error under the
tolerance (cache of the activation dtype); V, bit-identical to the input (it is a copy). FP8
caches: every code within one FP8 step of the code the fp64 value ``clamp(x / scale, +-qmax)``
rounds to (V: a rounding tie at most; K: compositions round K to the activation dtype first), or,
near zero where codes are dense, its dequantised value within ``ROUNDED_UNITS`` unit roundoffs of
the activation dtype times the head row's largest magnitude; no NaN; ``rel_err`` is then the dequantised values' error. Every slot
not named (spare slots, the slot a padding token would hit at index -1) must be bit-identical
to before the call, and the packed buffer's V region unchanged. K's region of the packed buffer
is scratch (compositions rotate K there in place before the cache write): not checked.

``window`` is :data:`QUANT_RTOL` (2**-18: fp32 roundings of the row's reduction, with margin;
the codes' own spacing is 2**-4 .. 2**-3 for e4m3) for implementations that quantise the fp32
``n``, plus :data:`ROUNDED_UNITS` units of the activation dtype's rounding for those that round
``n`` (or the residual sum) to it first: compositions through a bf16 norm output, vLLM's
kernels (``Impl.norm_rounded``). The row's ``rel_err`` is the relative L2 error of the
dequantised codes (``code * scale``) against the fp64 ``n``: the quantisation noise itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cases import Case, Inputs, expected, quant_reference, quant_values, round_to_codes
from .common import TOL, rel_l2

__all__ = ["QUANT_RTOL", "ROUNDED_UNITS", "TOL", "Verdict", "code_table", "compare_codes", "gate", "gate_prologue",
           "gate_quant",
           "poison_allocator", "quant_window", "rel_l2", "verdict", "worst_error"]

QUANT_RTOL = 2.0 ** -18   # quantised gate window for implementations quantising the fp32 n (relative)
ROUNDED_UNITS = 3         # ... plus this many unit roundoffs of the activation dtype where n is rounded first
_CHUNK = 1 << 22          # elements compared at a time (fp64 temporaries of 16384 x 8192 stay small)


@dataclass
class Verdict:
    ok: bool
    error: float          # worst relative L2 error over the outputs (inf for NaN)
    reason: str = ""
    notes: str = ""       # what a passing row should say too (quantised: the ties counted)


def poison_allocator(like: tuple[torch.Tensor, ...], dtype: torch.dtype) -> None:
    """Fill and free blocks of the outputs' sizes so that an implementation allocating
    its output is likely handed NaN memory (CUDA caching allocator; no effect on the
    CPU, whose allocator does not cache)."""
    blocks = [torch.full(t.shape, math.nan, dtype=dtype, device=t.device) for t in like]
    del blocks


def gate(case: Case, inp: Inputs, fn, poison_out: bool = True, norm_rounded: bool = False) -> Verdict:
    """Run ``fn`` once on ``inp`` (fresh inputs, mutated in place by in-place
    implementations) and compare its outputs with the fp32 reference (quantised cases:
    :func:`gate_quant`, with ``norm_rounded`` widening its window)."""
    if case.is_quant:
        return gate_quant(case, inp, fn, quant_window(case.dtype, norm_rounded), poison_out)
    if case.op == "prologue":
        return gate_prologue(case, inp, fn)
    ref = expected(case, inp)
    v_before = inp.v.clone() if case.is_qk else None
    if case.op == "rms2d" and poison_out:
        inp.out.fill_(math.nan)
    poison_allocator(ref, case.dtype)
    outs = fn()
    if ref[0].is_cuda:
        torch.cuda.synchronize()
    err, why = worst_error(outs, ref)
    if why:
        return Verdict(False, err, why)
    if v_before is not None and not torch.equal(inp.v, v_before):
        return Verdict(False, err, "wrote outside Q/K: the V slice of the packed buffer changed")
    return verdict(err, case.dtype)


def worst_error(outs, ref) -> tuple[float, str]:
    """The worst relative L2 error of ``outs`` (a tuple of tensors) against the reference
    outputs ``ref``, with "" for the reason; or (inf, why) where their count or shapes differ."""
    if not isinstance(outs, (tuple, list)) or len(outs) != len(ref):
        return math.inf, (f"returned {type(outs).__name__} of "
                          f"{len(outs) if isinstance(outs, (tuple, list)) else 1} outputs, expected {len(ref)}")
    errs = []
    for i, (o, r) in enumerate(zip(outs, ref)):
        if tuple(o.shape) != tuple(r.shape):
            return math.inf, f"output {i} has shape {tuple(o.shape)}, expected {tuple(r.shape)}"
        errs.append(rel_l2(o, r))
    return max(errs), ""


def verdict(err: float, dtype: torch.dtype) -> Verdict:
    """The gate's answer for a worst relative L2 error ``err`` of a ``dtype`` output."""
    tol = TOL[dtype]
    if not err < tol:
        what = "NaN/inf in output (unwritten or overflow)" if math.isinf(err) else f"rel L2 error {err:.2e} >= {tol:.0e}"
        return Verdict(False, err, what)
    return Verdict(True, err)


# --------------------------------------------------------------------------- quantised cases

def quant_window(dtype: torch.dtype, norm_rounded: bool = False) -> float:
    """The gate's relative window for a quantised case of ``dtype`` inputs (see the module
    docstring): :data:`QUANT_RTOL`, plus ``ROUNDED_UNITS`` unit roundoffs of ``dtype`` where the
    implementation rounds ``n`` to it before quantising."""
    return QUANT_RTOL + (ROUNDED_UNITS * torch.finfo(dtype).eps / 2 if norm_rounded else 0.0)


_TABLES: dict = {}


def code_table(out_dtype: torch.dtype, device) -> torch.Tensor:
    """Every finite value of ``out_dtype`` once, ascending, in fp64 (+0 and -0 as one)."""
    key = (out_dtype, str(device))
    if key not in _TABLES:
        if out_dtype == torch.int8:
            t = torch.arange(-128, 128, dtype=torch.float64)
        else:
            t = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(out_dtype).to(torch.float64)
            t = t[torch.isfinite(t)].unique()  # sorted
        _TABLES[key] = t.to(device)
    return _TABLES[key]


def compare_codes(codes: torch.Tensor, v: torch.Tensor, window: float, table: torch.Tensor):
    """``(ties, bad, worst_steps)`` of ``codes`` against the fp64 values ``v`` they quantise
    (already clamped): ``ties`` codes are one step off where ``v`` lies within ``window``
    (relative) of the midpoint between the two codes; ``bad`` differ otherwise (NaN codes
    included); ``worst_steps`` is the largest distance in codes (inf for NaN)."""
    got = codes.to(torch.float64)
    want = round_to_codes(v, codes.dtype).to(torch.float64)
    diff = got != want
    if not bool(diff.any()):
        return 0, 0, 0.0
    g, w, vv = got[diff], want[diff], v[diff]
    steps = (torch.searchsorted(table, g) - torch.searchsorted(table, w)).abs().to(torch.float64)
    steps = torch.where(torch.isfinite(g), steps, torch.full_like(steps, math.inf))
    mid = (g + w) / 2
    tie = (steps == 1) & ((vv - mid).abs() <= window * mid.abs())
    n_tie = int(tie.sum())
    return n_tie, int(diff.sum()) - n_tie, float(steps.max())


def _scale_layout(case: Case, s: torch.Tensor) -> str:
    """Why the returned dynamic scales are not in the case's shape and layout ("" if they are)."""
    want = (case.tokens, case.n_groups)
    if tuple(s.shape) != want:
        return f"scales have shape {tuple(s.shape)}, expected {want}"
    if s.dtype != torch.float32:
        return f"scales are {s.dtype}, expected torch.float32"
    if case.column_major_scales and case.tokens > 1 and s.stride(0) != 1:
        return f"scales are not column-major (strides {tuple(s.stride())}): the case asks for DeepGEMM's layout"
    if not case.column_major_scales and case.n_groups > 1 and s.stride(1) != 1:
        return f"scales are not row-major (strides {tuple(s.stride())})"
    return ""


def _check_scales(case: Case, ref, s: torch.Tensor, window: float):
    """``(fp64 scales the codes are checked with, scale ties, max rel error, why not)``."""
    if not case.n_groups:
        if s.numel() != 1:
            return None, 0, 0.0, f"static: returned scales of shape {tuple(s.shape)}, expected the 1-element scale"
        if float(s.reshape(())) != float(ref.scales.reshape(())):
            return None, 0, 0.0, (f"static: returned scale {float(s.reshape(())):g} is not the given "
                                  f"{float(ref.scales):g}")
        return ref.scales, 0, 0.0, ""
    why = _scale_layout(case, s)
    if why:
        return None, 0, 0.0, why
    got = s.to(torch.float64)
    if not bool(torch.isfinite(got).all()) or not bool((got > 0).all()):
        return None, 0, 0.0, "scales: NaN, inf or <= 0 (unwritten?)"
    rel = ((got - ref.scales).abs() / ref.scales)
    if case.scale_ue8m0:
        from .cases import pow2_ceil
        lo, hi = pow2_ceil(ref.raw * (1 - window)), pow2_ceil(ref.raw * (1 + window))
        ok = (got == ref.scales) | (got == lo) | (got == hi)
        ties = int((ok & (got != ref.scales)).sum())
        bad = int((~ok).sum())
        if bad:
            return None, ties, float(rel.max()), (f"scales: {bad} of {got.numel()} are not the reference's power of "
                                                  f"two (UE8M0) nor its neighbour at a tie within {window:.1e}")
        return got, ties, 0.0, ""
    worst = float(rel.max())
    if not worst <= window:
        bad = int((rel > window).sum())
        return None, 0, worst, (f"scales: {bad} of {got.numel()} differ from the fp64 reference by more than "
                                f"{window:.1e} relative (worst {worst:.2e})")
    return got, 0, worst, ""


def gate_quant(case: Case, inp: Inputs, fn, window: float, poison_out: bool = True) -> Verdict:
    """The gate of a quantised case (see the module docstring): run ``fn`` once on fresh
    ``inp``, then compare scales, codes and (``addq``) the residual with the fp64 reference."""
    ref = quant_reference(case, inp)  # before fn: in-place implementations change residual (and x)
    # poison as raw bytes (no fp8 arithmetic needed on any device): 0x7F is NaN in e4m3fn and e5m2,
    # 0x80 is int8's -128 (symmetric codes are in [-127, 127])
    poison = 0x80 if case.out_dtype == torch.int8 else 0x7F
    if poison_out:
        inp.out.view(torch.uint8).fill_(poison)
        if case.n_groups:
            inp.scales.fill_(math.nan)
    blocks = [torch.full(inp.out.shape, poison, dtype=torch.uint8, device=inp.x.device)]
    if case.n_groups:
        blocks.append(torch.full((case.tokens, case.n_groups), math.nan, device=inp.x.device))
    del blocks  # freed into the caching allocator (CUDA): an implementation allocating may get them
    outs = fn()
    if inp.x.is_cuda:
        torch.cuda.synchronize()
    n_out = 3 if case.has_residual else 2
    if not isinstance(outs, (tuple, list)) or len(outs) != n_out:
        got = len(outs) if isinstance(outs, (tuple, list)) else 1
        return Verdict(False, math.inf, f"returned {type(outs).__name__} of {got} outputs, expected {n_out}")
    codes, s = outs[0], outs[1]
    if tuple(codes.shape) != tuple(ref.n.shape) or codes.dtype != case.out_dtype:
        return Verdict(False, math.inf, f"codes: {tuple(codes.shape)} {codes.dtype}, expected {tuple(ref.n.shape)} "
                                        f"{case.out_dtype}")
    scales, s_ties, s_err, why = _check_scales(case, ref, s, window)
    if why:
        return Verdict(False, math.inf if "NaN" in why else s_err, why)
    table = code_table(case.out_dtype, codes.device)
    ties = bad = 0
    worst = num = den = 0.0
    rows = max(1, _CHUNK // max(1, case.hidden))
    for i in range(0, case.tokens, rows):
        n = ref.n[i:i + rows]
        sc = scales if not case.n_groups else scales[i:i + rows]
        v = quant_values(n, sc, ref.qmax)
        c = codes[i:i + rows]
        t, b, w = compare_codes(c, v, window, table)
        ties, bad, worst = ties + t, bad + b, max(worst, w)
        if math.isfinite(worst):
            num += float((_dequant(c.to(torch.float64), sc) - n).square().sum())
            den += float(n.square().sum())
    err = math.sqrt(num / den) if den > 0 and math.isfinite(worst) else (0.0 if math.isfinite(worst) else math.inf)
    total = codes.numel()
    notes = f"gate: {ties} of {total} codes one step off at rounding ties ({ties / max(total, 1):.1e})"
    if case.scale_ue8m0:
        notes += f", {s_ties} UE8M0 scales at power-of-two ties"
    elif case.n_groups:
        notes += f", scales max rel err {s_err:.1e}"
    notes += f" (window {window:.1e})"
    if bad:
        what = "NaN (unwritten?)" if not math.isfinite(worst) else f"up to {worst:g} steps"
        return Verdict(False, err, f"codes: {bad} of {total} differ from the fp64 reference other than by one step "
                                   f"at a rounding tie ({what})", notes)
    if case.has_residual:
        r_err, r_why = worst_error((outs[2],), (ref.residual,))
        if r_why or not r_err < TOL[case.dtype]:
            return Verdict(False, err, "residual: " + (r_why or f"rel L2 error {r_err:.2e} >= {TOL[case.dtype]:.0e}"),
                           notes)
    return Verdict(True, err, "", notes)


# --------------------------------------------------------------------------- prologue cases

def _fp8_steps(codes: torch.Tensor, want: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Distance in FP8 codes between ``codes`` and ``want`` (same dtype), per element (inf for NaN)."""
    g, w = codes.to(torch.float64), want.to(torch.float64)
    steps = (torch.searchsorted(table, g.contiguous()) - torch.searchsorted(table, w.contiguous())).abs()
    return torch.where(torch.isfinite(g), steps.to(torch.float64), torch.full_like(g, math.inf))


def _check_fp8_slots(got: torch.Tensor, ref64: torch.Tensor, scale: torch.Tensor, what: str, act_dtype):
    """``(error, off_by_one, why)`` of FP8 cache entries ``got`` ``[n, H, D]`` against fp64 values
    ``ref64``: each code within one step of the reference's, or (values near zero, where FP8 codes
    are dense) its dequantised value within :data:`ROUNDED_UNITS` unit roundoffs of the activation
    dtype times the head row's largest magnitude (what rounding K to the activation dtype before
    quantising moves it by: compositions through a bf16 K)."""
    from .common import QMAX
    dt = got.dtype
    s = scale.double().reshape(())
    want = round_to_codes(torch.clamp(ref64 / s, -QMAX[dt], QMAX[dt]), dt)
    steps = _fp8_steps(got, want, code_table(dt, got.device))
    deq = got.to(torch.float64) * s
    near = (deq - ref64).abs() <= ROUNDED_UNITS * torch.finfo(act_dtype).eps / 2 * ref64.abs().amax(-1, keepdim=True)
    n_off = int((steps == 1).sum())
    bad = int(((steps > 1) & ~near).sum())
    err = rel_l2(deq, ref64)  # inf where a code is NaN
    if bad:
        worst = float(steps.max())
        return err, n_off, (f"{what}: {bad} of {got.numel()} FP8 codes more than one step from the fp64 reference's "
                            f"({'NaN: unwritten?' if math.isinf(worst) else f'up to {worst:g} steps'})")
    return err, n_off, ""


def gate_prologue(case: Case, inp: Inputs, fn) -> Verdict:
    """The gate of a prologue case (see the module docstring)."""
    from .cases import cache_rows, kept_slots
    ref_q, ref_k, ref_v = expected(case, inp)  # before fn: Q (and K's region) change in place
    tok, slots = kept_slots(case, inp)
    hkv, d = case.hkv, case.head_dim
    kc, vc = inp.k_cache, inp.v_cache
    k_before, v_before = kc.clone(), vc.clone()
    vbuf_before = inp.v.clone()
    outs = fn()
    if inp.q.is_cuda:
        torch.cuda.synchronize()
    if not isinstance(outs, (tuple, list)) or len(outs) != 3:
        got = len(outs) if isinstance(outs, (tuple, list)) else 1
        return Verdict(False, math.inf, f"returned {type(outs).__name__} of {got} outputs, expected 3 "
                                        "(q_out, k_cache, v_cache)")
    q_out, k_ret, v_ret = outs
    for name, r, c in (("k_cache", k_ret, kc), ("v_cache", v_ret, vc)):
        if not isinstance(r, torch.Tensor) or r.data_ptr() != c.data_ptr() or r.numel() != c.numel():
            return Verdict(False, math.inf, f"returned {name} is not the case's cache (the cache must be written in place)")
    err, why = worst_error((q_out,), (ref_q,))
    if why:
        return Verdict(False, err, "q_out: " + why)
    if not err < TOL[case.dtype]:
        v = verdict(err, case.dtype)
        return Verdict(False, err, "q_out: " + v.reason)
    # unnamed slots: bit-identical to before
    named = torch.zeros(case.num_slots, dtype=torch.bool, device=kc.device)
    named[slots] = True
    raw = (lambda t: cache_rows(t, hkv, d).view(torch.uint8).reshape(case.num_slots, -1))
    for name, after, before in (("k_cache", kc, k_before), ("v_cache", vc, v_before)):
        diff = (raw(after) != raw(before)).any(dim=1) & ~named
        if bool(diff.any()):
            n = int(diff.sum())
            first = int(diff.nonzero()[0])
            return Verdict(False, err, f"{name}: {n} slot(s) not named by slot_mapping were written (first: slot "
                                       f"{first}; a padding token's slot -1 is the last slot)")
    if not torch.equal(inp.v, vbuf_before):
        return Verdict(False, err, "wrote outside Q/K: the V region of the packed buffer changed")
    kg, vg = cache_rows(kc, hkv, d)[slots], cache_rows(vc, hkv, d)[slots]
    notes = ""
    if case.cache_fp8:
        ek, nk, why = _check_fp8_slots(kg, ref_k, inp.k_scale, "k_cache", case.dtype)
        if why:
            return Verdict(False, ek, why)
        ev, nv, why = _check_fp8_slots(vg, ref_v, inp.v_scale, "v_cache", case.dtype)
        if why:
            return Verdict(False, ev, why)
        notes = (f"gate: FP8 caches within one step: K {nk} of {kg.numel()}, V {nv} of {vg.numel()} codes one step "
                 f"off the fp64 rounding")
        return Verdict(True, max(err, ek, ev), "", notes)
    ek, why = worst_error((kg,), (ref_k,))
    if why or not ek < TOL[case.dtype]:
        return Verdict(False, ek, "k_cache slots: " + (why or verdict(ek, case.dtype).reason))
    vin = inp.v[tok]
    if vg.dtype != vin.dtype or not torch.equal(vg.view(torch.uint8), vin.view(torch.uint8)):
        bad = int((vg.view(torch.uint8) != vin.view(torch.uint8)).flatten(1).any(1).sum()) \
            if vg.dtype == vin.dtype else case.n_kept
        return Verdict(False, rel_l2(vg, vin.double()), f"v_cache slots: {bad} of {case.n_kept} token(s) not a "
                                                        "bit-exact copy of V")
    return Verdict(True, max(err, ek), "", notes)


def _dequant(codes64: torch.Tensor, sc: torch.Tensor) -> torch.Tensor:
    """``code * scale`` per element (scales ``[1]`` or ``[T, G]``)."""
    if sc.numel() == 1 and sc.dim() == 1:
        return codes64 * sc
    t, h = codes64.shape
    g = sc.shape[-1]
    return (codes64.reshape(t, g, h // g) * sc.reshape(t, g, 1)).reshape(t, h)
