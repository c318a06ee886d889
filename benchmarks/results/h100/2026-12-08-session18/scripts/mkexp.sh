#!/usr/bin/env bash
# .exp/nohi: this tree's src with row_normalized's plain (IN_RANGE) path forced: the kernels without range handling
set -e
rm -rf .exp && mkdir -p .exp/nohi && cp -r src/qknorm .exp/nohi/
sed -i 's/^    if IN_RANGE:$/    if True:  # experiment: no range handling/' .exp/nohi/qknorm/kernels/rows.py
grep -c "experiment: no range" .exp/nohi/qknorm/kernels/rows.py
