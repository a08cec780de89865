#!/usr/bin/env bash
# Produces, here (no PyTorch needed), what tools/verify_consumers.py compares on the GPU machine
# with the real runtime libraries (transformers + FP-Quant's fp_quant; compressed-tensors):
# for one model, every combination of
#   format   nvfp4, mxfp4          method  rtn, mr-gptq          rotation  none, the format's block
# quantized W4A4 (--activations fp4) and written twice from the same settings (quantization is
# deterministic, so both carry the same Ŵ): the compressed-tensors layout (ct/) and the
# fp-quant-pseudo layout with float32 dqweight (fpq/); plus fp4q's own predictions: logits of
# fixed ids and the perplexity of fixed windows, for each emulated runtime (--runtime
# compressed-tensors | fp-quant) and compute dtype (--dtype f32 | bf16), in manifest.json.
#
#   tools/make_consumer_exports.sh [MODEL_DIR] [ROOT]
#     MODEL_DIR  default data/models/stories260K
#     ROOT       default .device/consumers/<model name> (git-ignored; carry it to the device)
#   environment: FP4Q (binary, default build/fp4q), SEQLEN (256), PPL_WINDOWS (16),
#                LOGITS_TOKENS (128), SAMPLES (16 calibration windows of SEQLEN tokens),
#                TEXT (evaluation text, default the bundled WikiText-2 test text), DTYPES ("f32 bf16"),
#                CASES (space-separated subset of the case names, e.g. "nvfp4_rtn_h16 mxfp4_rtn_h32")
# Keep the folder small enough to carry (the device takes 64 MiB in all): for stories260K it is
# about 25 MiB; for a larger model lower LOGITS_TOKENS (logits are T x vocab float32 files) and
# pick CASES (each case holds the model twice).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fp4q="${FP4Q:-$here/build/fp4q}"
model="${1:-$here/data/models/stories260K}"
name="$(basename "$model")"
root="${2:-$here/.device/consumers/$name}"
seqlen="${SEQLEN:-256}"
windows="${PPL_WINDOWS:-16}"
ntok="${LOGITS_TOKENS:-128}"
samples="${SAMPLES:-16}"
text="${TEXT:-$here/data/text/wikitext2-test.txt}"
[[ -x "$fp4q" ]] || { echo "fp4q binary not found: $fp4q (set FP4Q=...)" >&2; exit 2; }

rm -rf "$root"
mkdir -p "$root"
# Evaluation ids exactly as fp4q eval --text scores them (BOS first); perplexity over the first
# `windows` non-overlapping windows; logits over the first `ntok` ids.
"$fp4q" -q tokenize "$model" "$text" -o "$root/all_ids.json"
python3 - "$root" "$seqlen" "$windows" "$ntok" <<'PY'
import json, sys
root, seqlen, windows, ntok = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ids = json.load(open(f"{root}/all_ids.json"))
need = seqlen * windows
if len(ids) < need:
    sys.exit(f"text has {len(ids)} tokens, fewer than {windows} windows of {seqlen}")
json.dump(ids[:need], open(f"{root}/ppl_ids.json", "w"))
json.dump(ids[:ntok], open(f"{root}/logits_ids.json", "w"))
PY
rm "$root/all_ids.json"

# The original model (no quantization): isolates the bf16 model emulation from the quantizers.
mkdir -p "$root/original"
for f in "$model"/*; do
  case "$(basename "$f")" in *.json|*.safetensors|*.model|*.txt) cp "$f" "$root/original/";; esac
done
for dt in ${DTYPES:-f32 bf16}; do
  line="$("$fp4q" -q eval "$root/original" --dtype "$dt" --ids "$root/ppl_ids.json" --seqlen "$seqlen" \
           --dump-logits "$root/original/fp4q.$dt.logits.f32" --logits-ids "$root/logits_ids.json")"
  echo "original - $dt $line" >> "$root/fp4q_eval.txt"
  echo "original - $dt $line" >&2
done

cases=()
for fmt in nvfp4 mxfp4; do
  block=16; [[ $fmt == mxfp4 ]] && block=32
  for method in rtn mr-gptq; do
    for had in 0 "$block"; do
      c="${fmt}_${method}_h${had}"
      if [[ -n "${CASES:-}" && " $CASES " != *" $c "* ]]; then continue; fi
      cases+=("$c")
      common=(--format "$fmt" --method "$method" --hadamard "$had" --activations fp4
              --samples "$samples" --seqlen "$seqlen" --force)
      "$fp4q" -q quantize "$model" "$root/$c/ct" "${common[@]}" --export compressed-tensors
      "$fp4q" -q quantize "$model" "$root/$c/fpq" "${common[@]}" --export fp-quant-pseudo --dtype f32
      for rt in compressed-tensors fp-quant; do
        for dt in ${DTYPES:-f32 bf16}; do
          line="$("$fp4q" -q eval "$root/$c/ct" --runtime "$rt" --dtype "$dt" --ids "$root/ppl_ids.json" \
                   --seqlen "$seqlen" --dump-logits "$root/$c/fp4q.$rt.$dt.logits.f32" \
                   --logits-ids "$root/logits_ids.json")"
          echo "$c $rt $dt $line" >> "$root/fp4q_eval.txt"
          echo "$c $rt $dt $line" >&2
        done
      done
    done
  done
done

# manifest.json: everything verify_consumers.py needs, paths relative to ROOT.
python3 - "$root" "$name" "$seqlen" "$("$fp4q" --version 2>&1 | head -1)" "${cases[@]}" <<'PY'
import json, re, sys
root, name, seqlen, version, cases = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
ev, orig = {}, {}
for line in open(f"{root}/fp4q_eval.txt"):
    c, rt, dt, rest = line.split(" ", 3)
    m = {k: v for k, v in re.findall(r"(\w+)=([0-9.eE+-]+)", rest)}
    e = {"ppl": float(m["ppl"]), "nll": float(m["nll"]), "tokens": int(m["tokens"]), "windows": int(m["windows"])}
    if c == "original":
        orig[dt] = dict(e, logits=f"original/fp4q.{dt}.logits.f32")
    else:
        ev.setdefault(c, {}).setdefault(rt, {})[dt] = dict(e, logits=f"{c}/fp4q.{rt}.{dt}.logits.f32")
out = {"model": name, "fp4q_version": version, "seqlen": seqlen, "ppl_ids": "ppl_ids.json",
       "logits_ids": "logits_ids.json", "original": {"dir": "original", "fp4q": orig}, "cases": []}
for c in cases:
    fmt, method, h = c.split("_")
    out["cases"].append({"name": c, "format": fmt, "method": method, "hadamard": int(h[1:]),
                         "ct": f"{c}/ct", "fpq": f"{c}/fpq", "fp4q": ev[c]})
json.dump(out, open(f"{root}/manifest.json", "w"), indent=1)
PY
du -sh "$root"
echo "wrote $root (manifest.json)"
