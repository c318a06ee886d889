#!/usr/bin/env bash
# make_copy.sh SRC_PKG DEST_DIR NAME [safe_off]: a copy of the qknorm package importable as NAME
# beside qknorm (own torch.library namespace); "safe_off" pins SAFE_RANGE to False in the copy.
set -euo pipefail
SRC=$1; DEST=$2; NAME=$3
mkdir -p "$DEST" && rm -rf "$DEST/$NAME" && cp -r "$SRC" "$DEST/$NAME"
grep -rl "qknorm" "$DEST/$NAME" --include=*.py | xargs sed -i \
  "s/\bfrom qknorm\b/from $NAME/g; s/\bimport qknorm\b/import $NAME/g; s/\"qknorm::/\"$NAME::/g; s/torch\.ops\.qknorm\./torch.ops.$NAME./g"
if [ "${4:-}" = safe_off ]; then
  sed -i 's/^SAFE_RANGE = .*/SAFE_RANGE = tl.constexpr(False)/' "$DEST/$NAME/kernels/rows.py"
fi
