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
mkdir -p "$tmp/lib" "$dest"
cp "$bin" "$tmp/fp4q"
ldd "$bin" | awk '/=> \//{print $3}' | while read -r lib; do
  case "$(basename "$lib")" in libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) continue ;; esac
  cp -L "$lib" "$tmp/lib/"
done
# OpenBLAS picks its kernel at run time (DYNAMIC_ARCH); the pthread/openmp variant is what
# libblas.so.3 / liblapack.so.3 resolve to through Debian's alternatives: copy the real files.
git -C "$here" rev-parse HEAD > "$tmp/COMMIT"
tar -cJf "$dest/fp4q-bin.tar.xz" -C "$tmp" .
ls -la "$dest/fp4q-bin.tar.xz"; tar -tJf "$dest/fp4q-bin.tar.xz"
