#!/usr/bin/env bash
# Packs a Release fp4q binary and the shared libraries `ldd` lists (except the C runtime that every
# Linux has) into .device/run/fp4q-bin.tar.xz, for the GPU machine's CPU cores (it has no compiler
# and no OpenBLAS). There: tar -xJf .device/run/fp4q-bin.tar.xz -C /tmp/fp4q-bin;
# LD_LIBRARY_PATH=/tmp/fp4q-bin/lib /tmp/fp4q-bin/fp4q ...
#   tools/device_bundle.sh [FP4Q_BINARY]     default build/fp4q (build it with tools/build.sh)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$here/build/fp4q}"
dest="$here/.device/run"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"
cp "$bin" "$tmp/fp4q"
. "$here/tools/bundle_libs.sh"
bundle_libs "$tmp/lib" "$bin"
git -C "$here" rev-parse HEAD > "$tmp/COMMIT"
tar -cJf "$dest/fp4q-bin.tar.xz" -C "$tmp" .
ls -la "$dest/fp4q-bin.tar.xz"; tar -tJf "$dest/fp4q-bin.tar.xz"
