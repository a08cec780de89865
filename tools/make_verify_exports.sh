#!/usr/bin/env bash
# Produces the fp4q outputs that tools/verify_export.py checks on a machine with PyTorch and
# transformers: for the bundled stories260K and each tiny golden model (Llama-3 rope, Mistral,
# Qwen2, Qwen3), several formats × layouts, plus fp4q's own logits for fixed token ids.
#
#   tools/make_verify_exports.sh ROOT        (default ROOT: .device/exports)
# then, where torch + transformers are installed:
#   for m in ROOT/*/; do python3 tools/verify_export.py --root $m --ids $m/ids.json; done
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fp4q="${FP4Q:-$here/build/fp4q}"
root="${1:-$here/.device/exports}"
rm -rf "$root"
mkdir -p "$root"
calib_ids="$root/calib_ids.json"
# Calibration / logits ids valid for every model (vocab >= 256): the golden WikiText ids mod 256.
python3 - "$here/tests/data/tiny_models/ppl_ids.json" "$calib_ids" "$root/ids256.json" <<'PY'
import json, sys
ids = json.load(open(sys.argv[1]))["ids"]
json.dump([i % 256 for i in ids], open(sys.argv[2], "w"))
json.dump([i % 256 for i in ids[:48]], open(sys.argv[3], "w"))
PY
models=("stories260K:$here/data/models/stories260K")
for t in llama3_tiny mistral_tiny qwen2_tiny qwen3_tiny; do models+=("$t:$here/tests/data/tiny_models/$t"); done
for entry in "${models[@]}"; do
  name="${entry%%:*}"; src="${entry#*:}"
  out="$root/$name"; mkdir -p "$out"
  cp "$root/ids256.json" "$out/ids.json"
  calib=(--calib-ids "$calib_ids" --samples 16 --seqlen 128)
  q() { "$fp4q" -q quantize "$src" "$out/$1" "${@:2}" "${calib[@]}"; }
  q nvfp4_w4a4_ct      --format nvfp4 --activations fp4
  q nvfp4_w4a4_fpq     --format nvfp4 --activations fp4 --export fp-quant
  q nvfp4_w4a4_pseudo  --format nvfp4 --activations fp4 --export fp-quant-pseudo --dtype f32
  q nvfp4_w4a4_dq      --format nvfp4 --activations fp4 --export dequant --dtype f32
  q nvfp4_w4a4_dqsrc   --format nvfp4 --activations fp4 --export dequant
  q mxfp4_w4a16_ct     --format mxfp4
  q mxfp4_w4a16_dq     --format mxfp4 --export dequant --dtype f32
  q mxfp4_w4a4_fpq     --format mxfp4 --activations fp4 --export fp-quant
  q int4_rtn_ct        --format int4 --method rtn
  for d in "$out"/*_ct "$out"/*_fpq; do
    "$fp4q" -q eval "$d" --dump-logits "$d.logits.f32" --logits-ids "$out/ids.json"
  done
  # The float32 dequant export (a plain model transformers loads with from_pretrained) must
  # reproduce fp4q's weight-only evaluation of the quantized compressed-tensors output of the same
  # run; the float32 pseudo-quant export (dqweight, W4A4) fp4q's W4A4 evaluation of the fp-quant
  # output. The dequant export in the source dtype (bf16/f16 for the tiny models) is compared with
  # fp4q evaluating that same plain model.
  "$fp4q" -q eval "$out/nvfp4_w4a4_dqsrc" --dump-logits "$out/nvfp4_w4a4_dqsrc.logits.f32" --logits-ids "$out/ids.json"
  for p in nvfp4_w4a4 mxfp4_w4a16; do
    "$fp4q" -q eval "$out/${p}_ct" --activations none --dump-logits "$out/${p}_dq.logits.f32" --logits-ids "$out/ids.json"
  done
  cp "$out/nvfp4_w4a4_fpq.logits.f32" "$out/nvfp4_w4a4_pseudo.logits.f32"
done
echo "wrote $root"
