#!/usr/bin/env bash
# Builds (if needed) and runs one libFuzzer target of tests/fuzz/ with ASan + UBSan.
#
#   tools/fuzz.sh TARGET SECONDS [extra libFuzzer flags...]
#   tools/fuzz.sh list                      # the targets
#
# TARGET: safetensors index config tokenizer ids hessian importer model_dir tokenize.
# Build: clang, -DFP4Q_FUZZ=ON, into $FUZZ_BUILD (default build-fuzz/ in the repository).
# Corpus: $FUZZ_BUILD/corpus/TARGET (grows across runs), seeded from tests/fuzz/seeds/TARGET.
# Findings: crash/leak/timeout/oom inputs go to $FUZZ_BUILD/artifacts/TARGET/. To keep one as a
# regression fixture, copy it to tests/data/fuzz_regressions/TARGET/ (replayed by
# tests/robustness/fuzz_replay_test.cpp in the normal suite) and fix the bug.
# The run is niced (19), single process (no -jobs/-workers): the machine is shared.
# Environment: RUNS=N stops after N executions (-runs), MAX_LEN overrides -max_len.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
. "$root/tools/fuzz_common.sh"
targets=("${FUZZ_TARGETS[@]}")
if [ "${1:-}" = "list" ]; then printf '%s\n' "${targets[@]}"; exit 0; fi
if [ $# -lt 2 ]; then
  echo "usage: tools/fuzz.sh TARGET SECONDS [libFuzzer flags...]   (targets: ${targets[*]})" >&2
  exit 2
fi
target="$1"; seconds="$2"; shift 2
ok=0; for t in "${targets[@]}"; do [ "$t" = "$target" ] && ok=1; done
if [ "$ok" != 1 ]; then echo "fuzz.sh: unknown target '$target' (${targets[*]})" >&2; exit 2; fi

# Debian packages: clang 14 with its libFuzzer/sanitizer runtimes and OpenMP (libomp).
bash "$root/tools/install_deps.sh"
need=()
for p in clang libclang-rt-14-dev libomp-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

build="${FUZZ_BUILD:-$root/build-fuzz}"
if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFP4Q_FUZZ=ON -DFP4Q_BUILD_TESTS=OFF >&2
fi
nice -n 19 cmake --build "$build" -j2 --target "${target}_fuzz" >&2

max_len="${MAX_LEN:-$(fuzz_max_len "$target")}"

corpus="$build/corpus/$target"
artifacts="$build/artifacts/$target"
mkdir -p "$corpus" "$artifacts"
seeds="$root/tests/fuzz/seeds/$target"
runs=()
[ -n "${RUNS:-}" ] && runs=(-runs="$RUNS")

fuzz_env
mapfile -t flags < <(fuzz_flags "$target" "$root" "$max_len")
exec nice -n 19 "$build/${target}_fuzz" "$corpus" "$seeds" -max_total_time="$seconds" \
  -artifact_prefix="$artifacts/" "${flags[@]}" "${runs[@]}" "$@"
