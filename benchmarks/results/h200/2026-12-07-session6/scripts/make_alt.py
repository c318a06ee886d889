"""make_alt.py: .baseline3/alt/qknorm = this tree's package with rows.row_factors replaced by the one-sum
alternative (the plain sum of squares taken of x * 2**-k, k from eps so that eps * 4**-k >= 2**-120: no second
reduction; overflow moves from |x| ~ 2**64 / sqrt(D) to 2**(64+k) / sqrt(D)). For the A/B only (s6.sh ab).
Run from the repository root: python benchmarks/results/h200/2026-12-07-session6/scripts/make_alt.py"""
import shutil

ALT = '@triton.jit\ndef row_factors(x, eps, eps_tiny, D):\n    """ALT (experiment): one sum of squares of x * 2**-k, k from eps (eps * 4**-k >= 2**-120)."""\n    e = ((eps.to(tl.int32, bitcast=True) >> 23) & 255) - 127\n    k = tl.minimum(tl.maximum((120 + e) >> 1, 0), 52)\n    S = pow2(-k)\n    xs = x * S\n    ss = tl.sum(xs * xs, axis=1)\n    q = tl.rsqrt(ss / D + eps * S * S) * S\n    p = q * 0.0 + 1.0\n    if eps < TINY:\n        xl = x * LO\n        ssl = tl.sum(xl * xl, axis=1)\n        lo = ss / D + eps * S * S < TINY * S * S\n        pl, ql = scaled_factors(ssl, D, eps, eps_tiny, tl.full(ss.shape, LO_K, tl.int32))\n        ql = tl.where((ssl == 0.0) & (eps > 0.0), 1.0, ql)\n        p = tl.where(lo, pl, p)\n        q = tl.where(lo, ql, q)\n    return p, q, ss\n\n\n'

def make_variant(name: str, row_factors_src: str, func: str = "row_factors") -> None:
    """.baseline3/<name>/qknorm = src/qknorm with the jit function rows.<func> replaced by ``row_factors_src``
    (up to the next function, which must follow it)."""
    dst = f".baseline3/{name}/qknorm"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree("src/qknorm", dst, ignore=shutil.ignore_patterns("__pycache__"))
    p = f"{dst}/kernels/rows.py"
    s = open(p).read()
    a = s.index(f"@triton.jit\ndef {func}(")
    b = s.index("@triton.jit\ndef ", a + 1)
    open(p, "w").write(s[:a] + row_factors_src + s[b:])
    print("wrote", p)


if __name__ == "__main__":
    make_variant("alt", ALT)
