#!/usr/bin/env bash
# Experimental builds of this tree's src under .exp/ (ignored), for attrib.sh:
#   nohi    row_normalized's plain (IN_RANGE) path forced: the kernels without range handling (a floor)
#   branch  RANGE_BRANCH's one test per program for every tile (multi-warp tiles: a cross-warp max)
#   f64     the plain path with the sum of squares in fp64 (no fp32 overflow/underflow; other bits)
set -e
rm -rf .exp && for v in nohi branch f64; do mkdir -p .exp/$v && cp -r src/qknorm .exp/$v/; done
R=qknorm/kernels/rows.py
sed -i 's/^    if IN_RANGE:$/    if True:  # experiment: no range handling/' .exp/nohi/$R
sed -i 's/^    elif x.shape\[0\] == 1 or RANGE_BRANCH:$/    elif True:  # experiment: branch everywhere/' .exp/branch/$R
python3 - .exp/f64/$R <<'PY'
import sys
p = sys.argv[1]; s = open(p).read()
old = "    if IN_RANGE:\n        y = x * tl.rsqrt(ss / D + eps)[:, None]\n"
new = ("    if True:  # experiment: fp64 sum of squares\n        xd = x.to(tl.float64)\n"
       "        y = x * tl.rsqrt(tl.sum(xd * xd, axis=1) / D + eps).to(tl.float32)[:, None]\n")
assert old in s; open(p, "w").write(s.replace(old, new))
PY
grep -c "experiment:" .exp/*/$R
