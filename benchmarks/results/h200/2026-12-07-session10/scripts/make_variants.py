"""make_variants.py: A/B builds for issue 11's last cost (tiles of several rows), timing only.
Each .baseline3/<name>/qknorm is a package copy with edits; every build's candidate space also offers one and
two warps for tiles of several rows (dispatch.candidate_configs), so `--variants all` times tiles of several rows
in one warp, where a test over the program's rows needs no shared memory.
  start_w   the session-6 start tree (.baseline3/start, bdefcae: rows out of fp32's range left wrong)
  this_w    this tree (src/qknorm)
  branch_w  this tree, tiles of several rows: y = x * rsqrt(ss / D + eps) after the plain sum, and the 2**-72
            sum and folded factor only behind one branch on the program's largest mean square
  plain_w   this tree, tiles of several rows without the rescue (the floor)
Run from the repository root: python benchmarks/results/h200/2026-12-07-session10/scripts/make_variants.py"""
import shutil

WARPS_OLD = "for warps in sorted({max(1, base // 2), base, min(16, base * 2)}):"
WARPS_NEW = "for warps in sorted({1, 2, max(1, base // 2), base, min(16, base * 2)}):"

MULTI_OLD = """    else:
        xh = x * HI
        y = x * hi_folded(ss, tl.sum(xh * xh, axis=1), D, eps)[:, None]
    return y
"""
BRANCH = """    else:
        m = ss / D + eps
        y = x * tl.rsqrt(m)[:, None]
        if tl.max(m, axis=0) > OVERFLOW:
            xh = x * HI
            y = x * hi_folded(ss, tl.sum(xh * xh, axis=1), D, eps)[:, None]
    return y
"""
PLAIN = """    else:
        y = x * tl.rsqrt(ss / D + eps)[:, None]
    return y
"""


def build(name, src, rows_edits):
    dst = f".baseline3/{name}/qknorm"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for path, edits in (("dispatch.py", [(WARPS_OLD, WARPS_NEW)]), ("kernels/rows.py", rows_edits)):
        p = f"{dst}/{path}"
        s = open(p).read()
        for old, new in edits:
            assert s.count(old) == 1, (name, path, old)
            s = s.replace(old, new)
        open(p, "w").write(s)
    print("wrote", dst)


if __name__ == "__main__":
    build("start_w", ".baseline3/start/qknorm", [])
    build("this_w", "src/qknorm", [])
    build("branch_w", "src/qknorm", [(MULTI_OLD, BRANCH)])
    build("plain_w", "src/qknorm", [(MULTI_OLD, PLAIN)])
