"""make_variants.py: A/B builds of this tree for the QK cost at T = 256-1024 (issue 11's last 1%), timing only.
Each .baseline3/<name>/qknorm is a copy of src/qknorm (its tuned tables included, so every build picks the same
configs) with one edit to kernels/rows.py:
  s11_this   no edit
  s11_wtile  whole-row blocks (norm_block / add_norm_block) load the weight in the row tile's layout (a stride-0
             [ROWS, BLOCK_D] load) instead of one vector converted into it through shared memory (sm_90 SASS of
             a 32x128 QK tile at 4 warps: no barrier, +72 instructions)
  s11_plain  tiles of several rows without the fp32-range rescue (the floor; wrong past ~1e19)
Run from the repository root."""
import shutil

W_OLD = """        if HAS_WEIGHT:
            w = tl.load(W + cols * ws, mask=col_ok, other=0.0).to(tl.float32) + w_offset
        mask = row_ok[:, None] & col_ok[None, :]"""
W_NEW = """        mask = row_ok[:, None] & col_ok[None, :]
        if HAS_WEIGHT:
            w = tl.load(W + (cols * ws)[None, :] + (rows * 0)[:, None], mask=col_ok[None, :] & (rows >= 0)[:, None],
                        other=0.0).to(tl.float32) + w_offset"""
Y_OLD = """        if HAS_WEIGHT:
            y = y * w[None, :]
        tl.store(y_ptr, y.to(Y.dtype.element_ty), mask=mask)"""
Y_NEW = """        if HAS_WEIGHT:
            y = y * w
        tl.store(y_ptr, y.to(Y.dtype.element_ty), mask=mask)"""
MULTI_OLD = """    else:
        xh = x * HI
        y = x * hi_folded(ss, tl.sum(xh * xh, axis=1), D, eps)[:, None]
    return y
"""
PLAIN = """    else:
        y = x * tl.rsqrt(ss / D + eps)[:, None]
    return y
"""


def build(name, edits):
    dst = f".baseline3/{name}/qknorm"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree("src/qknorm", dst, ignore=shutil.ignore_patterns("__pycache__"))
    p = f"{dst}/kernels/rows.py"
    s = open(p).read()
    for old, new in edits:
        assert s.count(old) == 1, (name, old)
        s = s.replace(old, new)
    open(p, "w").write(s)
    print("wrote", dst)


if __name__ == "__main__":
    build("s11_this", [])
    build("s11_wtile", [(W_OLD, W_NEW), (Y_OLD, Y_NEW)])
    build("s11_plain", [(MULTI_OLD, PLAIN)])
