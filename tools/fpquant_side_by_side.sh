#!/usr/bin/env bash
# fp4q vs FP-Quant (IST-DASLab/FP-Quant, model_quant.py) side by side on IDENTICAL calibration
# windows and IDENTICAL evaluation ids (issue 9). FP-Quant's code is never part of fp4q: pass the
# path of an unmodified checkout (e.g. .ref/FP-Quant, git-ignored); tools/fpquant_shim.py feeds it
# fp4q's windows and scores its in-memory pseudo-quantized model on fp4q's ids.
#
# Steps (run in this order; WORK is a directory, MODEL a Hugging Face Llama directory):
#   tools/fpquant_side_by_side.sh prepare MODEL WORK   here (fp4q): calib.json (--dump-calib) and
#        eval-<name>.json (fp4q tokenize) for WikiText-2 test and Frankenstein; with INDOMAIN_IDS or
#        INDOMAIN_CORPUS also eval-indomain.json, the model's in-domain held-out text (below)
#   tools/fpquant_side_by_side.sh fp4q MODEL WORK      here (CPU): every fp4q cell, quantized from
#        WORK/calib.json (--calib-windows), scored by `fp4q eval --ids` on every WORK/eval-*.json
#        -> WORK/fp4q.tsv (with KL=1 also `--kl-reference MODEL`: KL to the unquantized model)
#   tools/fpquant_side_by_side.sh fpquant MODEL WORK FPQUANT_DIR OUTDIR    on the GPU machine
#        (torch + transformers): the unquantized model and every FP-Quant cell, evaluated in fp32
#        and bf16 (EVAL_DTYPES) on every WORK/eval-*.json -> OUTDIR/fpquant.jsonl (+ OUTDIR/fpquant.log);
#        with KL=1 also KL to the unquantized model (tools/fpquant_shim.py --kl-reference)
#   tools/fpquant_side_by_side.sh table WORK FPQUANT_JSONL    Markdown table (perplexity change vs
#        each tool's own unquantized model, per cell, per evaluation text) on stdout
#
# Environment: FP4Q (binary, default build/fp4q), THREADS (fp4q -t), CALIB_TEXT (default
# tinyshakespeare), SAMPLES (128), SEQLEN (512), SEED (42), EVAL_SEQLEN (512), EVAL_MAX_TOKENS
# (0 = whole texts; else the id files are cut to this many tokens, for both tools), CELLS (space
# separated cell names, default all), JOBS (FP-Quant cells run concurrently on the GPU, default 4),
# FPQ_DTYPE (FP-Quant model dtype while quantizing: float32 (default) or bfloat16), PYTHON (python3).
# In-domain text (prepare): INDOMAIN_IDS = a ready ids file (.json or .json.gz, e.g. the committed
# tests/data/side_by_side/llama23m-kl-2026-12-03/eval-indomain.json.gz), or INDOMAIN_CORPUS = the
# model's training corpus directory: tools/make_indomain_eval.py rebuilds the validation split that
# tools/train_eval_model.py held out (INDOMAIN_EXPECT: its logged token count, checked; VAL_FRACTION:
# the training run's --val-fraction, default 0.01). Unset: only
# the two texts above, as before.
# KL (fp4q, fpquant): 1 = also KL(P_unquantized || P_cell) per token, top-1 agreement (extra
# fp4q.tsv columns kl, kl_se, kl_p99, top1, ref_ppl, ln_ppl_ratio, ln_ppl_ratio_se; "kl" objects in
# fpquant.jsonl). KL_CACHE (fpquant): where the shim caches the unquantized model's fp32 logits per
# text (default: a temporary directory, removed at the end; ~2 GB per text of 65,536 ids; "none":
# no cache, every cell recomputes the reference's logits, for texts whose logits would not fit).
# EVAL_DTYPES (fpquant): the shim's --eval-dtypes (default fp32,bf16). KEEP_OUTPUTS (fp4q): 1 = keep
# WORK/fp4q/<cell> after scoring, and score a kept output instead of quantizing again.
# DUMP_TOKENS (with KL=1): 1 = also the per-token scores of every cell and text, for
# tools/paired_compare.py: fp4q -> WORK/fp4q/tokens/<cell>-<text>-fp32.tsv, fpquant ->
# OUTDIR/tokens/<cell>-<text>-<dtype>.tsv.
#
# Cells: <fmt>-<w4a16|w4a4>-<method>, fmt nvfp4|mxfp4, method rtn|gptq|mrgptq|mrgptq0; FP-Quant NVFP4
# gptq/mrgptq cells also come as <...>-fused (--fuse_global_scale: one weight global scale for q/k/v and for gate/up,
# as fp4q always does). FP-Quant's flags per method (fp-quant-reference.md §2, paper §4.1/§5):
#   rtn    : (no --gptq), minmax scales, identity transform
#   gptq   : --gptq, minmax scales, natural order, identity transform
#   mrgptq : --gptq --w_observer mse --quantization_order activation --transform_class hadamard
#            --hadamard_group_size 16 (nvfp) / 32 (mxfp)
#   mrgptq0: mrgptq without the rotation (--transform_class identity), isolating the rotation
# FP-Quant cells also take the suffixes -fix (tools/fpquant_shim.py --fix-inplace-hessian: FP-Quant's
# GPTQ.update scales the layer input in place, which for a float32 model corrupts the Hessians of k, v,
# up and everything after them in the block; see docs/issue9-notes.md) and -bf16 (--dtype bfloat16,
# FP-Quant's own default for a bf16 checkpoint, where the bug does not occur); e.g. nvfp4-w4a4-mrgptq-fused-fix.
#   mrgptqh: fp4q only: mr-gptq --scales mse-hess (diag(H)-weighted MSE scales, the issue-9 candidate)
#   mrgptq16, mrgptqf, mrgptq16f: fp4q only, ablations toward FP-Quant's recipe: mr-gptq --hadamard 16,
#            --scales fpquant (FP-Quant's scale objective), both (not in the default cell list)
# fp4q: --method rtn | gptq | mr-gptq with its defaults (gptq: absmax, no rotation, static
# act-order; mr-gptq: rotation 16/32 (NVFP4 W4A4: none since 2ff3d96, so nvfp4-w4a4-mrgptq equals
# -mrgptq0 there), MSE scales, static act-order; mrgptq0: mr-gptq --hadamard 0).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
fp4q="${FP4Q:-$here/build/fp4q}"
threads="${THREADS:-0}"
py="${PYTHON:-python3}"
calib_text="${CALIB_TEXT:-/work/shared/data/tinyshakespeare/input.txt}"
[ -f "$calib_text" ] || calib_text="$here/data/text/calib-frankenstein.txt"
samples="${SAMPLES:-128}"
seqlen="${SEQLEN:-512}"
seed="${SEED:-42}"
eval_seqlen="${EVAL_SEQLEN:-512}"
eval_max="${EVAL_MAX_TOKENS:-0}"
fpq_dtype="${FPQ_DTYPE:-float32}"
jobs="${JOBS:-4}"
wt2_text="$here/data/text/wikitext2-test.txt"
frank_text="$here/data/text/calib-frankenstein.txt"   # = shared/data/frankenstein/frankenstein.txt

all_cells() {
  for fmt in nvfp4 mxfp4; do for a in w4a16 w4a4; do for m in rtn gptq mrgptq mrgptq0 mrgptqh; do
    [ "$m" = mrgptqh ] && [ "${1:-}" = fpquant ] && continue   # fp4q-only cell
    echo "$fmt-$a-$m"
    case "$fmt-$m-${1:-}" in nvfp4-gptq-fpquant|nvfp4-mrgptq-fpquant) echo "$fmt-$a-$m-fused" ;; esac
  done; done; done
}

usage() { sed -n '2,53p' "$0" >&2; exit 2; }
kl="${KL:-0}"

cut_ids() {  # $1 = ids file: keep the first EVAL_MAX_TOKENS ids (0 = all)
  [ "$eval_max" -gt 0 ] || return 0
  "$py" - "$1" "$eval_max" <<'PY'
import json, sys
p, n = sys.argv[1], int(sys.argv[2])
ids = json.load(open(p))[:n]
open(p, "w").write(json.dumps(ids, separators=(",", ":")) + "\n")
PY
}

cmd="${1:-}"; shift || true
case "$cmd" in
prepare)
  [ $# -eq 2 ] || usage
  model="$1"; work="$2"; mkdir -p "$work"
  "$fp4q" -q -t "$threads" quantize "$model" "$work/unused-out" --dry-run --calib "$calib_text" \
    --samples "$samples" --seqlen "$seqlen" --seed "$seed" --dump-calib "$work/calib.json" > "$work/plan.txt"
  for pair in "wikitext2=$wt2_text" "frankenstein=$frank_text"; do
    name="${pair%%=*}"; text="${pair#*=}"
    "$fp4q" -q tokenize "$model" "$text" -o "$work/eval-$name.json"
    cut_ids "$work/eval-$name.json"
  done
  if [ -n "${INDOMAIN_IDS:-}" ]; then
    case "$INDOMAIN_IDS" in *.gz) gzip -dc "$INDOMAIN_IDS" ;; *) cat "$INDOMAIN_IDS" ;; esac > "$work/eval-indomain.json"
    cut_ids "$work/eval-indomain.json"
  elif [ -n "${INDOMAIN_CORPUS:-}" ]; then
    "$py" "$here/tools/make_indomain_eval.py" --corpus "$INDOMAIN_CORPUS" --model "$model" --fp4q "$fp4q" \
      --out "$work/eval-indomain.json" --expect-tokens "${INDOMAIN_EXPECT:-0}" --val-fraction "${VAL_FRACTION:-0.01}"
    cut_ids "$work/eval-indomain.json"
  fi
  "$py" - "$work" <<'PY'
import json, sys, os
w = sys.argv[1]
c = json.load(open(os.path.join(w, "calib.json")))
print(f"{w}/calib.json: {c['n']} windows x {c['seqlen']} tokens (seed {c['seed']}, source {c['source']})")
for f in sorted(os.listdir(w)):
    if f.startswith("eval-"):
        print(f"{w}/{f}: {len(json.load(open(os.path.join(w, f))))} ids")
PY
  ;;
fp4q)
  [ $# -eq 2 ] || usage
  model="$1"; work="$2"; out="$work/fp4q"; mkdir -p "$out"
  tsv="$work/fp4q.tsv"
  [ -f "$tsv" ] || printf 'cell\teval\tppl\tnll\ttokens\tmean_h_err\tmean_w_err\tkl\tkl_se\tkl_p99\ttop1\tref_ppl\tln_ppl_ratio\tln_ppl_ratio_se\n' > "$tsv"
  kl_cols=0; head -1 "$tsv" | grep -q "	kl	" && kl_cols=1   # a tsv of an earlier run has 7 columns
  [ "$kl" = 1 ] && [ "$kl_cols" = 0 ] && echo "fp4q: $tsv has no KL columns; KL values are not recorded there" >&2
  evals_of_work() { for ev in "$work"/eval-*.json; do n="$(basename "$ev" .json)"; echo "${n#eval-}"; done; }
  have() { grep -q "^$1	$2	" "$tsv"; }   # $1 = cell, $2 = eval name: already scored
  score() {  # $1 = model or output dir, $2 = cell name; every text not yet in the tsv
    for ev in "$work"/eval-*.json; do
      name="$(basename "$ev" .json)"; name="${name#eval-}"
      have "$2" "$name" && continue
      klflag=(); [ "$kl" = 1 ] && klflag=(--kl-reference "$model")
      [ "$kl" = 1 ] && [ "${DUMP_TOKENS:-0}" = 1 ] && mkdir -p "$out/tokens" &&
        klflag+=(--dump-tokens "$out/tokens/$2-$name-fp32.tsv")
      line="$("$fp4q" -q -t "$threads" eval "$1" --ids "$ev" --seqlen "$eval_seqlen" "${klflag[@]}")"
      field() { sed -n "s/.*	$1=\([^	]*\).*/\1/p" <<<"	$line"; }
      ppl="$(field ppl)"; nll="$(field nll)"; tok="$(field tokens)"
      herr=""; werr=""
      if [ -f "$out/$2.report.json" ]; then
        read -r herr werr < <("$py" - "$out/$2.report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
q = [t for t in r["tensors"] if t.get("format") != "keep"]
h = [t["hessian_err"] for t in q if t.get("hessian_err") is not None]
w = [t["rel_weight_err"] for t in q if t.get("rel_weight_err") is not None]
print(f"{sum(h)/len(h):.6g}" if h else "-", f"{sum(w)/len(w):.6g}" if w else "-")
PY
)
      fi
      row="$2	$name	$ppl	$nll	$tok	${herr:--}	${werr:--}"
      if [ "$kl_cols" = 1 ]; then
        for k in kl kl_se kl_p99 top1 ref_perplexity ln_ppl_ratio ln_ppl_ratio_se; do v="$(field $k)"; row="$row	${v:--}"; done
      fi
      printf '%s\n' "$row" >> "$tsv"
      echo "fp4q $2 $name ppl $ppl${klflag:+ kl $(field kl)}" >&2
    done
  }
  all_scored() { for e in $(evals_of_work); do have "$1" "$e" || return 1; done; }
  [ "${SKIP_UNQUANTIZED:-0}" = 1 ] || score "$model" unquantized
  for cell in ${CELLS:-$(all_cells fp4q)}; do
    case "$cell" in *-fused) continue ;; esac
    all_scored "$cell" && continue
    IFS=- read -r fmt a m <<<"$cell"
    acts=$([ "$a" = w4a4 ] && echo fp4 || echo none)
    meth=$(case "$m" in mrgptq*) echo mr-gptq ;; *) echo "$m" ;; esac)
    extra=$(case "$m" in mrgptq0) echo "--hadamard 0" ;; mrgptqh) echo "--scales mse-hess" ;;
      mrgptq16) echo "--hadamard 16" ;; mrgptqf) echo "--scales fpquant" ;; mrgptq16f) echo "--hadamard 16 --scales fpquant" ;; esac)
    if [ "${KEEP_OUTPUTS:-0}" = 1 ] && [ -f "$out/$cell/config.json" ] && [ -f "$out/$cell.report.json" ]; then
      echo "fp4q $cell: scoring the kept output $out/$cell" >&2   # written atomically: complete
    else
      # shellcheck disable=SC2086
      "$fp4q" -q -t "$threads" quantize "$model" "$out/$cell" --force --format "$fmt" --method "$meth" $extra \
        --activations "$acts" --calib-windows "$work/calib.json" --report "$out/$cell.report.json"
    fi
    score "$out/$cell" "$cell"
    [ "${KEEP_OUTPUTS:-0}" = 1 ] || rm -rf "${out:?}/$cell"
  done
  ;;
fpquant)
  [ $# -eq 4 ] || usage
  model="$1"; work="$2"; fpq="$3"; outdir="$4"; mkdir -p "$outdir"
  : > "$outdir/fpquant.jsonl"; : > "$outdir/fpquant.log"
  [ -f "$fpq/model_quant.py" ] || { echo "no model_quant.py in $fpq (pass an FP-Quant checkout)" >&2; exit 2; }
  tmp="$(mktemp -d)"
  n="$("$py" -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c["n"] if isinstance(c,dict) else len(c))' "$work/calib.json")"
  t="$("$py" -c 'import json,sys; c=json.load(open(sys.argv[1])); s=c["samples"] if isinstance(c,dict) else c; print(len(s[0]))' "$work/calib.json")"
  evals=""
  for ev in "$work"/eval-*.json; do name="$(basename "$ev" .json)"; evals="$evals --eval ${name#eval-}=$ev"; done
  run_cell() {  # $1 = cell name (or "unquantized")
    local cell="$1" args shimflags="" dt="$fpq_dtype" base
    # suffixes: -fused (--fuse_global_scale), -fix (shim --fix-inplace-hessian), -bf16 (--dtype
    # bfloat16); -fix and -bf16 come last, in either order, and are stripped off to get the method
    case "$cell" in *-fix*) shimflags="--fix-inplace-hessian" ;; esac
    case "$cell" in *-bf16*) dt=bfloat16 ;; esac
    base="${cell%-fix}"; base="${base%-bf16}"; base="${base%-fix}"
    args="--model_name_or_path $model --dataset_name_or_path fp4q-windows --sequence_length $t --num_sequences $n --dtype $dt --seed 42 --eval_perplexity"
    if [ "$base" = unquantized ]; then
      args="$args --w_bits 16 --a_bits 16"
    else
      IFS=- read -r fmt a m fused <<<"$base"
      local f=$([ "$fmt" = nvfp4 ] && echo nvfp || echo mxfp) g=$([ "$fmt" = nvfp4 ] && echo 16 || echo 32)
      args="$args --format $f --w_bits 4 --a_bits $([ "$a" = w4a4 ] && echo 4 || echo 16)"
      case "$m" in
        rtn) ;;
        gptq) args="$args --gptq" ;;
        mrgptq) args="$args --gptq --w_observer mse --quantization_order activation --transform_class hadamard --hadamard_group_size $g" ;;
        mrgptq0) args="$args --gptq --w_observer mse --quantization_order activation" ;;
      esac
      [ "${fused:-}" = fused ] && args="$args --fuse_global_scale"
    fi
    # shellcheck disable=SC2086
    "$py" "$here/tools/fpquant_shim.py" --fpquant "$fpq" --calib-windows "$work/calib.json" $evals $shimflags $klflags \
      --eval-seqlen "$eval_seqlen" --eval-dtypes "$eval_dtypes" --results "$tmp/$cell.jsonl" --tag "$cell" -- $args > "$tmp/$cell.log" 2>&1 \
      && echo "fpquant $cell ok" >&2 || echo "fpquant $cell FAILED (see fpquant.log)" >&2
    # Each finished cell lands in OUTDIR at once (a time limit that cuts the run keeps the rest).
    { flock 9; cat "$tmp/$cell.jsonl" >> "$outdir/fpquant.jsonl" 2>/dev/null
      { echo "==== $cell"; tail -n 200 "$tmp/$cell.log"; } >> "$outdir/fpquant.log"; } 9> "$outdir/.lock"
  }
  eval_dtypes="${EVAL_DTYPES:-fp32,bf16}"
  klflags=""
  [ "$kl" = 1 ] && klflags="--kl-reference $model --kl-cache ${KL_CACHE:-$tmp/klcache}"
  [ "$kl" = 1 ] && [ "${KL_CACHE:-}" = none ] && klflags="--kl-reference $model"
  [ "$kl" = 1 ] && [ "${DUMP_TOKENS:-0}" = 1 ] && klflags="$klflags --dump-tokens $outdir/tokens"
  export -f run_cell; export here py fpq work model eval_seqlen fpq_dtype tmp n t evals outdir eval_dtypes klflags
  cells="${UNQUANTIZED_CELLS:-unquantized} ${CELLS:-$(all_cells fpquant)}"
  start=$(date +%s)
  printf '%s\n' $cells | xargs -P "$jobs" -I{} bash -c 'run_cell {}'
  rm -f "$outdir/.lock"
  echo "fpquant: $(wc -l < "$outdir/fpquant.jsonl") cells in $(( $(date +%s) - start )) s -> $outdir" >&2
  rm -rf "$tmp"
  ;;
table)
  [ $# -eq 2 ] || usage
  "$py" "$here/tools/side_by_side_table.py" --fp4q "$1/fp4q.tsv" --fpquant "$2"
  ;;
*) usage ;;
esac
