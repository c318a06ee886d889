"""make_variants.py: A/B builds for issue 11 (s8.sh ab2), from this tree's package:
  .baseline3/pbranch/qknorm: rows.row_normalized with tiles of several rows also behind one branch per
      program (the largest non-NaN row test, a cross-warp reduction, before the store) instead of the
      parallel scaled sum.
Run from the repository root: python benchmarks/results/h200/2026-12-07-session8/scripts/make_variants.py"""
import shutil

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


def make(name, src):
    dst = f".baseline3/{name}/qknorm"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree("src/qknorm", dst, ignore=shutil.ignore_patterns("__pycache__"))
    p = f"{dst}/kernels/rows.py"
    s = open(p).read()
    a, b = s.index("@triton.jit\ndef row_normalized("), s.index("@triton.jit\ndef load_sum")
    open(p, "w").write(s[:a] + src + s[b:])
    print("wrote", p)


if __name__ == "__main__":
    make("pbranch", PBRANCH)
