#!/usr/bin/env bash
# The README's main command: installs dependencies, builds, and quantizes the bundled stories260K
# model with MR-GPTQ to NVFP4 (compressed-tensors layout) into ./out/stories260K-nvfp4, then
# prints the perplexity of the original and the quantized model on the bundled WikiText-2 text.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/tools/build.sh" --target fp4q
fp4q="$root/build/fp4q"
out="${1:-$root/out/stories260K-nvfp4}"
"$fp4q" quantize "$root/data/models/stories260K" "$out" --format nvfp4 --report "$out.report.json" --force
"$fp4q" eval "$root/data/models/stories260K" --text "$root/data/text/wikitext2-test.txt" --seqlen 512
"$fp4q" eval "$out" --text "$root/data/text/wikitext2-test.txt" --seqlen 512
