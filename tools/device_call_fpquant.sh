#!/usr/bin/env bash
# FP-Quant's side of the side-by-side comparison (issue 9) for a model trained earlier, on the GPU,
# while the CPU cores fuzz (tools/device_call_fuzz.sh, FUZZ=1). From the repository root there:
#
#   bash tools/device_call_fpquant.sh "$OUT"
#
# carry: .device/model23.tar.xz (tar -cf - -C models fp4q-llama-23m | xz > .device/model23.tar.xz),
#        .device/sbs/calib.json, .device/sbs/eval-*.json, .device/sbs/plan.txt (the windows and ids
#        fp4q used: tools/fpquant_side_by_side.sh prepare), .ref/FP-Quant (tools/get_fpquant.sh);
#        with FUZZ=1 also what tools/device_call_fuzz.sh carries.
# FPQ_CELLS: FP-Quant cells (names as in tools/fpquant_side_by_side.sh, with the suffixes -fix and
# -bf16); UNQUANTIZED_CELLS: the unquantized references to score (default "unquantized unquantized-bf16").
# Writes $OUT/fpquant.tar.gz (fpquant.jsonl, fpquant.log, console).
set -u
out="${1:?usage: tools/device_call_fpquant.sh OUT}"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
mkdir -p models /tmp/fpq
tar -xJf .device/model23.tar.xz -C models
if [ "${FUZZ:-0}" = 1 ]; then
  ( CORES="${CORES:-ids:1 hessian:1 safetensors:1 config:1 index:1 tokenize:1 tokenizer:2 model_dir:2 importer:2}" \
      bash tools/device_call_fuzz.sh "$out" > /tmp/fpq/fuzz.console 2>&1 ) &
fi
left=$(( ${CALL_SECONDS:-560} - ($(date +%s) - t0) - 20 ))
CELLS="${FPQ_CELLS:?FPQ_CELLS}" UNQUANTIZED_CELLS="${UNQUANTIZED_CELLS:-unquantized unquantized-bf16}" \
  JOBS="${JOBS:-8}" timeout "$left" bash tools/fpquant_side_by_side.sh fpquant models/fp4q-llama-23m .device/sbs \
  .ref/FP-Quant /tmp/fpq > /tmp/fpq/fpquant.out 2>&1
echo "fpquant rc=$? after $(( $(date +%s) - t0 )) s" >> /tmp/fpq/fpquant.out
tar -czf "$out/fpquant.tar.gz" -C /tmp/fpq --exclude fuzz.console .
wait
cp /tmp/fpq/fuzz.console "$out/" 2>/dev/null
tail -5 /tmp/fpq/fpquant.out; tail -15 /tmp/fpq/fuzz.console 2>/dev/null
ls -la "$out"
