#!/usr/bin/env bash
# The README's test command: installs dependencies, builds, runs the whole ctest suite.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/tools/build.sh"
cd "$root/build"
ctest --output-on-failure -j"$(nproc)" "$@"
