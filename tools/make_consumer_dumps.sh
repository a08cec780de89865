#!/usr/bin/env bash
# Issue 10 diagnostics, here (no PyTorch): adds to a folder made by tools/make_consumer_exports.sh
#   <case>/dump.fp-quant.<dtype>/   fp4q's input and output of every activation transform of one
#                                   forward over logits_ids (FP4Q_DUMP_ACT, src/pipeline/act_quant.cpp):
#                                   index.tsv + act_NNN.in.f32 / act_NNN.out.f32, in execution order
#                                   (per layer: q/k/v input, o input, gate/up input, down input if
#                                   quantized). tools/verify_consumers.py runs FP-Quant's kernel on
#                                   fp4q's inputs (fp4q's rule, chaos-free) and compares fp4q's
#                                   inputs/outputs with the library's, Linear by Linear (where the
#                                   two forwards part), and cuBLAS's GEMM with fp4q's order.
#   fp4q_order_floor.json           fp4q's own perplexity under other float32 summation orders
#                                   (OpenBLAS SGEMM kernels Haswell and Sandybridge instead of the
#                                   machine's: every order is as valid as cuBLAS's), per case,
#                                   runtime and f32: the floor below which no CPU emulation can
#                                   promise to match a GPU library's W4A4 perplexity.
#
#   tools/make_consumer_dumps.sh [ROOT]      ROOT default .device/consumers/stories260K
#   environment: FP4Q (binary, default build/fp4q), DTYPES ("f32 bf16"), CORES ("Haswell Sandybridge")
# About 1 MiB per case and dtype (stories260K, 128 logits tokens); a few seconds per case.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fp4q="${FP4Q:-$here/build/fp4q}"
root="${1:-$here/.device/consumers/stories260K}"
[[ -x "$fp4q" ]] || { echo "fp4q binary not found: $fp4q (set FP4Q=...)" >&2; exit 2; }
[[ -f "$root/manifest.json" ]] || { echo "no manifest.json in $root (run tools/make_consumer_exports.sh)" >&2; exit 2; }
mapfile -t cases < <(python3 -c 'import json,sys; [print(c["name"]) for c in json.load(open(sys.argv[1]))["cases"]]' "$root/manifest.json")
seqlen="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seqlen"])' "$root/manifest.json")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
floor="$tmp/floor.txt"
: > "$floor"
for c in "${cases[@]}"; do
  for dt in ${DTYPES:-f32 bf16}; do
    d="$root/$c/dump.fp-quant.$dt"
    rm -rf "$d"
    FP4Q_DUMP_ACT="$d" "$fp4q" -q eval "$root/$c/ct" --runtime fp-quant --dtype "$dt" \
      --dump-logits "$tmp/logits.f32" --logits-ids "$root/logits_ids.json"
    cmp -s "$tmp/logits.f32" "$root/$c/fp4q.fp-quant.$dt.logits.f32" \
      || echo "warning: $c $dt: the dump run's logits differ from the manifest's (binary or exports changed?)" >&2
    echo "$c $dt: $(($(wc -l < "$d/index.tsv"))) transforms dumped" >&2
  done
  for rt in fp-quant compressed-tensors; do
    for core in ${CORES:-Haswell Sandybridge}; do
      line="$(OPENBLAS_CORETYPE="$core" "$fp4q" -q eval "$root/$c/ct" --runtime "$rt" --dtype f32 \
               --ids "$root/ppl_ids.json" --seqlen "$seqlen" --dump-logits "$tmp/o.f32" \
               --logits-ids "$root/logits_ids.json")"
      cp "$tmp/o.f32" "$root/$c/fp4q.$rt.f32.logits.$core.f32"
      echo "$c $rt $core $line" >> "$floor"
    done
  done
done
python3 - "$root" "$floor" <<'PY'
import json, re, sys
root, floor = sys.argv[1], sys.argv[2]
out = {"what": "fp4q eval --dtype f32 with OPENBLAS_CORETYPE=<core> (another float32 SGEMM summation order)",
       "cases": {}}
for line in open(floor):
    c, rt, core, rest = line.split(" ", 3)
    m = dict(re.findall(r"(\w+)=([0-9.eE+-]+)", rest))
    out["cases"].setdefault(c, {}).setdefault(rt, {})[core] = {
        "ppl": float(m["ppl"]), "logits": f"{c}/fp4q.{rt}.f32.logits.{core}.f32"}
json.dump(out, open(f"{root}/fp4q_order_floor.json", "w"), indent=1)
PY
du -sh "$root"
echo "wrote dumps and $root/fp4q_order_floor.json"
