#!/usr/bin/env bash
# FP-Quant's side of the side-by-side comparison with KL divergence (issue 9, docs/issue9-notes.md
# §7.3) for the 23M model, on the GPU machine. From the repository root there:
#
#   bash tools/device_call_kl.sh "$OUT"
#
# carry (3 paths, ~34 MB): .device/model23.tar.xz (tar -cf - -C models fp4q-llama-23m | xz >
#        .device/model23.tar.xz), .device/sbs-kl (calib.json, eval-{frankenstein,wikitext2,indomain}.json,
#        plan.txt: the windows and ids fp4q used; made here by
#          d=tests/data/side_by_side/llama23m-2026-12-03; w=.device/sbs-kl; mkdir -p $w
#          zcat $d/calib.json.gz > $w/calib.json; cp $d/plan.txt $w/
#          zcat $d/eval-frankenstein.json.gz > $w/eval-frankenstein.json
#          zcat $d/eval-wikitext2.json.gz > $w/eval-wikitext2.json
#          zcat tests/data/side_by_side/llama23m-kl-2026-12-03/eval-indomain.json.gz > $w/eval-indomain.json),
#        .ref/FP-Quant (tools/get_fpquant.sh). No fuzzers beside it: every core goes to the cells.
#
# Runs the unquantized model (fp32 and bf16 load) and FPQ_CELLS (default: {nvfp4,mxfp4}-{w4a16,w4a4}-
# {mrgptq,gptq}-{fix,bf16}, 16 cells) all at once (JOBS, default 18; torch on one CPU thread each),
# evaluated in fp32 on the three texts with KL(P_unquantized || P_cell) and top-1 agreement
# (tools/fpquant_side_by_side.sh fpquant with KL=1 EVAL_DTYPES=fp32; the unquantized model's fp32
# logits per text are cached in /tmp/klcache, ~6 GB, not returned). Each finished cell is appended to
# $OUT/fpq/fpquant.jsonl at once, so a cut run keeps what finished; the call ends when the last cell
# does, at the latest after CALL_SECONDS (default 560, inside the 600 s command limit).
# $OUT: fpq/fpquant.jsonl (one record per cell; eval.<text>.fp32.{ppl,kl}), fpq/fpquant.log (each cell's
# log tail), fpquant.out (console, timings), gpu.txt.
# SBS (default .device/sbs-kl) and SBS_EVALS (default "eval-frankenstein eval-wikitext2 eval-indomain"):
# the work directory and the eval files it must hold. DUMP_TOKENS=1: also every cell's per-token
# scores, returned as their per-window sums (tools/paired_compare.py --to-windows) in
# $OUT/fpq/windows.tar.gz. The model this script checks (llama23m-2026-12-03/model.sha256) was not
# kept; tools/device_call_model2.sh trains a model and runs both tools on it in one call.
# Here, after: cp <files_at>/fpq/fpquant.jsonl tests/data/side_by_side/llama23m-kl-2026-12-03/fpquant-kl.jsonl
#   python3 tools/side_by_side_summary.py tests/data/side_by_side/llama23m-kl-2026-12-03
set -u
out="${1:?usage: tools/device_call_kl.sh OUT}"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
t0=$(date +%s)
mkdir -p models "$out/fpq"
[ -f models/fp4q-llama-23m/model.safetensors ] || tar -xJf .device/model23.tar.xz -C models
want=cb301bffc33ac0f3c687ecbf8b7517f72d6ad35e5d7c484cfdda08c2e966aaa2   # llama23m-2026-12-03/model.sha256
have="$(sha256sum models/fp4q-llama-23m/model.safetensors | cut -d' ' -f1)"
[ "$have" = "$want" ] || { echo "model.safetensors sha256 $have, expected $want" | tee "$out/fpquant.out"; exit 3; }
sbs="${SBS:-.device/sbs-kl}"   # SBS: another work directory (e.g. only calib.json + eval-indomain.json)
for f in calib ${SBS_EVALS:-eval-frankenstein eval-wikitext2 eval-indomain}; do
  [ -s "$sbs/$f.json" ] || { echo "missing $sbs/$f.json" | tee "$out/fpquant.out"; exit 3; }
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 tools/fpquant_shim.py --self-test >> "$out/gpu.txt" 2>&1 || { cat "$out/gpu.txt"; exit 1; }
cells="${FPQ_CELLS:-nvfp4-w4a4-mrgptq-fix mxfp4-w4a4-mrgptq-fix nvfp4-w4a16-mrgptq-fix mxfp4-w4a16-mrgptq-fix
  nvfp4-w4a4-mrgptq-bf16 mxfp4-w4a4-mrgptq-bf16 nvfp4-w4a16-mrgptq-bf16 mxfp4-w4a16-mrgptq-bf16
  nvfp4-w4a4-gptq-fix mxfp4-w4a4-gptq-fix nvfp4-w4a16-gptq-fix mxfp4-w4a16-gptq-fix
  nvfp4-w4a4-gptq-bf16 mxfp4-w4a4-gptq-bf16 nvfp4-w4a16-gptq-bf16 mxfp4-w4a16-gptq-bf16}"
left=$(( ${CALL_SECONDS:-560} - ($(date +%s) - t0) - 10 ))
CELLS="$cells" UNQUANTIZED_CELLS="${UNQUANTIZED_CELLS:-unquantized unquantized-bf16}" \
  JOBS="${JOBS:-18}" KL=1 EVAL_DTYPES="${EVAL_DTYPES:-fp32}" KL_CACHE="${KL_CACHE:-/tmp/klcache}" \
  timeout "$left" bash tools/fpquant_side_by_side.sh fpquant models/fp4q-llama-23m "$sbs" \
  .ref/FP-Quant "$out/fpq" > "$out/fpquant.out" 2>&1
echo "fpquant rc=$? after $(( $(date +%s) - t0 )) s; $(wc -l < "$out/fpq/fpquant.jsonl") records" >> "$out/fpquant.out"
rm -rf "${KL_CACHE:-/tmp/klcache}"
if [ -d "$out/fpq/tokens" ]; then   # DUMP_TOKENS=1: per-window sums of the per-token scores travel back,
  mkdir -p "$out/fpq/windows"        # a few KB each instead of MB; one archive (the return takes few files)
  for f in "$out"/fpq/tokens/*.tsv; do
    [ -f "$f" ] && python3 tools/paired_compare.py --to-windows "$f" "$out/fpq/windows/fpq-$(basename "$f")"
  done
  tar -czf "$out/fpq/windows.tar.gz" -C "$out/fpq" windows && rm -rf "$out/fpq/tokens" "$out/fpq/windows"
fi
tail -25 "$out/fpquant.out"
ls -la "$out" "$out/fpq"
