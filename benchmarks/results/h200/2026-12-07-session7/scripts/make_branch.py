"""make_branch.py: .baseline3/branch/qknorm = this tree's package with rows.row_factors taking the scaled sums
behind one branch per program for every tile, multi-row ones included (the tree does so only for one-row
programs): the branch tests the largest non-NaN plain mean square + eps of the program's rows, a cross-row
reduction (cross-warp where rows span warps) in place of the parallel sum's shuffles. For the A/B only
(s7.sh branch). Run from the repository root:
    python benchmarks/results/h200/2026-12-07-session7/scripts/make_branch.py"""
import importlib.util

BRANCH = '''@triton.jit
def row_factors(x, eps, eps_tiny, D):
    """BRANCH (experiment): the scaled sums behind one branch per program, whatever its row count."""
    ss = tl.sum(x * x, axis=1)
    m = tl.max(tl.where(ss == ss, ss, 0.0), axis=0) / D + eps  # NaN rows left out (numpy's max keeps NaN)
    ssh = ss * 0.0
    if m > OVERFLOW:
        xh = x * HI
        ssh = tl.sum(xh * xh, axis=1)
    ssl = lo_sum(x, eps, ss)
    p, q = range_factors(ss, ssh, ssl, D, eps, eps_tiny)
    return p, q, ss


'''

_spec = importlib.util.spec_from_file_location(
    "make_alt", "benchmarks/results/h200/2026-12-07-session6/scripts/make_alt.py")
make_alt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_alt)
make_alt.make_variant("branch", BRANCH)
