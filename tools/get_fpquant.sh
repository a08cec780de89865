#!/usr/bin/env bash
# Exports an UNMODIFIED FP-Quant checkout (public IST-DASLab/FP-Quant; only model_quant.py, src/ and
# README.md are needed) from a git directory into .ref/FP-Quant, which git ignores (.ref/.gitignore):
# FP-Quant's code is never committed to fp4q. Records the commit in .ref/FP-Quant/SNAPSHOT.txt.
#   tools/get_fpquant.sh GIT_DIR [COMMIT]     e.g. the bare mirror of a snapshot, COMMIT default HEAD
# The harness was written against d2e3092 (2025-11-16).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
gd="${1:?usage: tools/get_fpquant.sh GIT_DIR [COMMIT]}"
rev="${2:-HEAD}"
dest="$here/.ref/FP-Quant"
mkdir -p "$here/.ref"
[ -f "$here/.ref/.gitignore" ] || echo '*' > "$here/.ref/.gitignore"
rm -rf "$dest" && mkdir -p "$dest"
git --git-dir="$gd" archive "$rev" model_quant.py src README.md | tar -x -C "$dest"
echo "IST-DASLab/FP-Quant $(git --git-dir="$gd" rev-parse "$rev") (model_quant.py, src/, README.md only; not part of fp4q)" > "$dest/SNAPSHOT.txt"
cat "$dest/SNAPSHOT.txt"
