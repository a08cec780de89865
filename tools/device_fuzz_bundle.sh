#!/usr/bin/env bash
# Packs what tools/device_call_fuzz.sh runs on the GPU machine (which has no compiler) into
# .device/fuzz/fuzz-bin.tar.xz: the nine libFuzzer targets of build-fuzz/ (ASan + UBSan, built by
# `tools/fuzz.sh TARGET 0` or `cmake --build build-fuzz --target <t>_fuzz`), linalg_test,
# bench_bf16_gemm and fp4q of the Release build/ (tools/build.sh), and the shared libraries ldd
# lists for them (except the C runtime). Corpora grown here (build-fuzz/corpus/) go along in
# .device/fuzz/corpus.tar.xz so the device run continues them.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fb="${FUZZ_BUILD:-$here/build-fuzz}"
dest="$here/.device/fuzz"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"
. "$here/tools/fuzz_common.sh"
bins=()
for t in "${FUZZ_TARGETS[@]}"; do bins+=("$fb/${t}_fuzz"); done
bins+=("$here/build/linalg_test" "$here/build/fp4q")
bb="$(find "$here/build" -maxdepth 2 -name bench_bf16_gemm -type f | head -1)"
[ -n "$bb" ] && bins+=("$bb")
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "device_fuzz_bundle: missing $b" >&2; exit 1; }
  cp "$b" "$tmp/"
done
. "$here/tools/bundle_libs.sh"
bundle_libs "$tmp/lib" "${bins[@]}"
git -C "$here" rev-parse HEAD > "$tmp/COMMIT"
strip --strip-debug "$tmp"/*_fuzz 2>/dev/null || true
tar -cJf "$dest/fuzz-bin.tar.xz" -C "$tmp" .
if [ -d "$fb/corpus" ]; then tar -cJf "$dest/corpus.tar.xz" -C "$fb/corpus" .; fi
ls -la "$dest"; tar -tJf "$dest/fuzz-bin.tar.xz"; du -sh "$dest"
