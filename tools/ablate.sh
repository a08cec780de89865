#!/usr/bin/env bash
# One-change-at-a-time ablation of fp4q's MR-GPTQ (issue 9): every row changes ONE setting of the
# MR-GPTQ default (rotation 16/32, MSE scales, static act-order, damp 0.01) and reports perplexity
# on two held-out texts (same ids for every row) plus the mean proxy loss of the quantized Linears
# (h_err = tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) from --report), as TSV on stdout.
#   tools/ablate.sh MODEL [WORK]           (WORK default out/ablate/<model name>)
# Environment:
#   FORMATS="nvfp4 mxfp4" (also mxfp4-fit: weight-only, dequant export)  ACTS="none fp4"
#   ROWS="..." (default: all rows below)
#   CALIB_WINDOWS=FILE (exact windows, e.g. from tools/fpquant_side_by_side.sh prepare) or
#   CALIB_TEXT (default shared tinyshakespeare; the eval texts are never used for calibration),
#   SAMPLES=128 SEQLEN=512 SEED=42, EVAL_SEQLEN=512, EVAL_MAX_WINDOWS=0 (0 = whole texts),
#   THREADS=0, FP4Q=build/fp4q, NICE=19 (niceness of every fp4q run),
#   EXTRA_ARGS="..." (appended to every row, e.g. "--scales mse-hess" with ROWS="base seed-1 seed-2"),
#   TAG_SUFFIX (appended to the row's file names in WORK).
# Rows (name: the one change; "ref-*" rows are reference methods, not ablations):
#   base            MR-GPTQ defaults
#   had0 had16 had32 had64   rotation block (the default one is skipped)
#   absmax          --scales absmax
#   mse-absgs       --scales mse-absgs  (NVFP4: per-group MSE, absmax global scale, no gs search)
#   fpquant-scales  --scales fpquant    (FP-Quant's observer: L2.4, 100 shrink steps, then rounded)
#   mse-hess        --scales mse-hess   (per-group MSE weighted by diag(H), GPTQ-aware; needs the
#                   solve_group column weights)
#   order-none      --act-order none
#   seed-N          --seed N (another calibration sample: the noise floor; ignored with CALIB_WINDOWS)
#   damp-0.001 damp-0.1      --damp
#   ref-gptq        --method gptq (absmax, no rotation, static act-order)
#   ref-gptq-mse    --method gptq --scales mse (no rotation)
#   ref-rtn         --method rtn
# Columns: format, acts, row, args, mean_h_err, mean_w_err, then per eval text: ppl and its change
# vs the unquantized model in percent (the first line after the header is the unquantized model).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fp4q="${FP4Q:-$here/build/fp4q}"
model="${1:?usage: tools/ablate.sh MODEL [WORK]}"
work="${2:-$here/out/ablate/$(basename "$model")}"
threads="${THREADS:-0}"
nice_="${NICE:-19}"
formats="${FORMATS:-nvfp4 mxfp4}"
acts_list="${ACTS:-none fp4}"
all_rows="base seed-1 seed-2 had0 had16 had32 had64 absmax mse-absgs fpquant-scales mse-hess order-none damp-0.001 damp-0.1 ref-gptq ref-gptq-mse ref-rtn"
rows="${ROWS:-$all_rows}"
calib_text="${CALIB_TEXT:-/work/shared/data/tinyshakespeare/input.txt}"
eval_seqlen="${EVAL_SEQLEN:-512}"
max_windows="${EVAL_MAX_WINDOWS:-0}"
mkdir -p "$work"
run() { nice -n "$nice_" "$fp4q" -q -t "$threads" "$@"; }

if [ -n "${CALIB_WINDOWS:-}" ]; then
  calib=(--calib-windows "$CALIB_WINDOWS")
else
  calib=(--calib "$calib_text" --samples "${SAMPLES:-128}" --seqlen "${SEQLEN:-512}" --seed "${SEED:-42}")
fi
# evaluation ids (identical for every row)
evals=()
for pair in "wikitext2=$here/data/text/wikitext2-test.txt" "frankenstein=$here/data/text/calib-frankenstein.txt"; do
  name="${pair%%=*}"
  [ -f "$work/eval-$name.json" ] || run tokenize "$model" "${pair#*=}" -o "$work/eval-$name.json"
  evals+=("$name")
done

score() {  # $1 = model dir -> "ppl<TAB>ppl..." for each eval
  local out=()
  for name in "${evals[@]}"; do
    out+=("$(run eval "$1" --ids "$work/eval-$name.json" --seqlen "$eval_seqlen" --max-windows "$max_windows" \
             | sed -n 's/.*ppl=\([0-9.eE+-]*\).*/\1/p')")
  done
  (IFS=$'\t'; echo "${out[*]}")
}
mean_err() {  # report.json -> "mean_h_err<TAB>mean_w_err"
  python3 - "$1" <<'PY'
import json, sys
t = [x for x in json.load(open(sys.argv[1]))["tensors"] if x.get("format") != "keep"]
h = [x["hessian_err"] for x in t if x.get("hessian_err") is not None]
w = [x["rel_weight_err"] for x in t if x.get("rel_weight_err") is not None]
print(f"{sum(h)/len(h):.5e}" if h else "-", f"{sum(w)/len(w):.5e}" if w else "-", sep="\t")
PY
}
pct() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{100*(a/b-1):+.3f}')" "$1" "$2"; }

header="format\tacts\trow\targs\tmean_h_err\tmean_w_err"
for name in "${evals[@]}"; do header="$header\tppl_$name\tdelta_${name}_pct"; done
echo -e "$header"
base_ppl=($(score "$model"))
line="-\t-\tunquantized\t-\t-\t-"
for i in "${!evals[@]}"; do line="$line\t${base_ppl[$i]}\t+0.000"; done
echo -e "$line"

for fmt in $formats; do
  def_h=$([ "$fmt" = nvfp4 ] && echo 16 || echo 32)
  [ "$fmt" = mxfp4-fit ] && [ "$acts_list" = fp4 ] && continue
  for acts in $acts_list; do
    for row in $rows; do
      args=(--format "$fmt" --activations "$acts")
      case "$row" in
        base) ;;
        had*) h="${row#had}"; [ "$h" = "$def_h" ] && continue; args+=(--hadamard "$h") ;;
        absmax) args+=(--scales absmax) ;;
        mse-absgs) [ "$fmt" = nvfp4 ] || continue; args+=(--scales mse-absgs) ;;
        fpquant-scales) args+=(--scales fpquant) ;;
        mse-hess) args+=(--scales mse-hess) ;;
        seed-*) [ -z "${CALIB_WINDOWS:-}" ] || continue ;;
        order-none) args+=(--act-order none) ;;
        damp-*) args+=(--damp "${row#damp-}") ;;
        ref-gptq) args+=(--method gptq) ;;
        ref-gptq-mse) args+=(--method gptq --scales mse) ;;
        ref-rtn) args+=(--method rtn) ;;
        *) echo "unknown row $row" >&2; exit 2 ;;
      esac
      [ -n "${EXTRA_ARGS:-}" ] && read -r -a extra <<<"$EXTRA_ARGS" && args+=("${extra[@]}")
      tag="$fmt-$acts-$row${TAG_SUFFIX:-}"
      out="$work/$tag"
      [ "$fmt" = mxfp4-fit ] && { [ "$acts" = none ] || continue; args+=(--export dequant); }
      c=("${calib[@]}")
      case "$row" in seed-*) c=(--calib "$calib_text" --samples "${SAMPLES:-128}" --seqlen "${SEQLEN:-512}" --seed "${row#seed-}") ;; esac
      if ! run quantize "$model" "$out" --force "${args[@]}" "${c[@]}" --report "$work/$tag.report.json" 2> "$work/$tag.log"; then
        echo -e "$fmt\t$acts\t$row\t${args[*]}\tFAILED (see $work/$tag.log)"
        continue
      fi
      ppl=($(score "$out"))
      line="$fmt\t$acts\t$row\t${args[*]}\t$(mean_err "$work/$tag.report.json")"
      for i in "${!evals[@]}"; do line="$line\t${ppl[$i]}\t$(pct "${ppl[$i]}" "${base_ppl[$i]}")"; done
      echo -e "$line"
      rm -rf "$out"
    done
  done
done
