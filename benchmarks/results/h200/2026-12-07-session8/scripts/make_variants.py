"""make_variants.py: A/B builds for issue 11 (s8.sh ab2), from this tree's package:
  .baseline3/pbranch/qknorm: rows.row_normalized with tiles of several rows also behind one branch per
      program (the largest non-NaN row test, a cross-warp reduction, before the store) instead of the
      parallel scaled sum.
Run from the repository root: python benchmarks/results/h200/2026-12-07-session8/scripts/make_variants.py"""
import importlib.util

PBRANCH = '''@triton.jit
def row_normalized(x, eps, eps_tiny, D):
    """VARIANT pbranch: every tile behind one branch per program."""
    ss = tl.sum(x * x, axis=1)
    m = ss / D + eps
    y = x * tl.rsqrt(m)[:, None]
    bad = (m > OVERFLOW) | ((eps < TINY) & (m < TINY))
    if tl.max(bad.to(tl.int32), axis=0) > 0:
        xh = x * HI
        p, q = range_factors(ss, tl.sum(xh * xh, axis=1), lo_sum(x, eps, ss), D, eps, eps_tiny)
        y = tl.where(bad[:, None], normalized(x, p, q), y)
    return y, ss


'''


_spec = importlib.util.spec_from_file_location(
    "make_alt", "benchmarks/results/h200/2026-12-07-session6/scripts/make_alt.py")
make_alt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_alt)


if __name__ == "__main__":
    make_alt.make_variant("pbranch", PBRANCH, "row_normalized")
