#!/usr/bin/env bash
# Reproduces the README's perplexity table for the bundled stories260K: quantizes with RTN, GPTQ
# and MR-GPTQ to NVFP4 and MXFP4, weight-only (W4A16) and W4A4, with the default calibration
# (bundled text, 128 samples, seqlen clipped to the model's 512 positions, seed 42), and evaluates
# each on the bundled WikiText-2 test text (non-overlapping 512-token windows).
#   tools/ppl_table.sh [WORK_DIR]      prints a Markdown table on stdout
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fp4q="${FP4Q:-$here/build/fp4q}"
threads="${THREADS:-0}"   # 0 = all cores
model="$here/data/models/stories260K"
text="$here/data/text/wikitext2-test.txt"
work="${1:-$here/out/ppl_table}"
mkdir -p "$work"
ppl() { "$fp4q" -q -t "$threads" eval "$1" --text "$text" --seqlen 512 | awk -F'ppl=' '{print $2}'; }
echo "| model | weights | activations | method | WikiText-2 ppl (seqlen 512) |"
echo "| --- | --- | --- | --- | --- |"
echo "| stories260K | fp32 (original) | fp32 | - | $(ppl "$model") |"
for fmt in nvfp4 mxfp4; do
  for acts in none fp4; do
    for method in rtn gptq mr-gptq; do
      out="$work/$fmt-$method-$acts"
      "$fp4q" -q -t "$threads" quantize "$model" "$out" --format "$fmt" --method "$method" --activations "$acts" --force
      a=$([ "$acts" = fp4 ] && echo "$fmt" || echo fp32)
      echo "| stories260K | $fmt | $a | $method | $(ppl "$out") |"
    done
  done
done
