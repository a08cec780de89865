#!/usr/bin/env bash
# Configures and builds fp4q (Release) into build/ after making sure dependencies are installed.
# Extra arguments are passed to `cmake --build` (e.g. --target fp4q).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/tools/install_deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release -DFP4Q_BUILD_BENCH=ON >&2
cmake --build "$root/build" -j"$(nproc)" "$@" >&2   # progress is a log: stderr
