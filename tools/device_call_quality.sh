#!/usr/bin/env bash
# One GPU-machine call that does all of the quality / consumer work at once (issues 9, 10, 12),
# so the short device budget pays for one machine start. Run from the repository root there:
#
#   bash tools/device_call_quality.sh "$OUT"
#
# carry: .device/run (fp4q-bin.tar.xz from `tools/device_bundle.sh`, tinyshakespeare.txt), .device/train-corpus.tar.xz,
#        .device/consumers (tools/make_consumer_exports.sh),
#        .ref/FP-Quant (tools/get_fpquant.sh), .ref/fp_quant-inference_lib (FP-Quant's inference_lib/),
#        .ref/compressed-tensors (its src/)
#
# What runs (background jobs share the GPU; each has its own time limit so the packing at the end
# always happens inside the call's 600 s):
#   1. MOE=1: tools/golden_models_moe.py               -> $OUT/tiny_models_moe.tar.gz     (issue 12)
#   2. fp_quant installed from source, tools/verify_consumers.py on .device/consumers (issue 10)
#   3. tools/train_eval_model.py (TRAIN_BUDGET s)      -> $OUT/fp4q-llama-23m.tar.partNN, train_log.json
#   4. tools/fpquant_side_by_side.sh prepare (EVAL_MAX_TOKENS, default 65536 per text) / fpquant
#      (GPU, JOBS cells at once, default 8) / fp4q (CPU: LANES processes x THREADS, default 2 x 7)
#      on that model, both tools on the same windows and ids
#
# Before the call, here: tools/build.sh && tools/device_bundle.sh (the OpenBLAS core fix-up makes
# the fp4q side 10x faster than the first attempt, which ran OpenBLAS's SSE3 kernels);
# tools/make_train_corpus.sh && (cd .device/train-corpus && tar -cJf ../train-corpus.tar.xz .);
# cp /work/shared/data/tinyshakespeare/input.txt .device/run/tinyshakespeare.txt;
# tools/get_fpquant.sh <FP-Quant git dir>; FP-Quant's inference_lib/ into .ref/fp_quant-inference_lib;
# compressed-tensors' src/ into .ref/compressed-tensors; tools/make_consumer_exports.sh.
# Training on the GPU is not bit-reproducible across machines: both tools always score the model
# trained in the same call (its tar comes back in $OUT; tools/reassemble_model.sh here).
#   5. everything small in $OUT/results.tar.gz (sbs/: calib.json, eval ids, fp4q.tsv, reports;
#      fpquant.jsonl/log, consumers.json/log, logs)
# Cells the fp4q side did not reach in time are finished here: the harness skips cells already in
# fp4q.tsv.
set -u
out="${1:?usage: tools/device_call_quality.sh OUT}"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*" >&2; }
log="$out/logs"; mkdir -p "$log"
. "$(dirname "$0")/device_gpu_jobs.sh"

mkdir -p /tmp/fp4q-bin && tar -xJf .device/run/fp4q-bin.tar.xz -C /tmp/fp4q-bin
export LD_LIBRARY_PATH=/tmp/fp4q-bin/lib FP4Q=/tmp/fp4q-bin/fp4q
"$FP4Q" --version >&2 || { el "fp4q bundle does not run"; ldd "$FP4Q" >&2; }

# 1. MoE goldens (MOE=1; committed under tests/data/tiny_models since 2026-12-03)
[ "${MOE:-0}" = 1 ] && device_moe_goldens "$log" "$out" 240 &

# 2. consumers (fp_quant from source: pip --no-deps --no-index --target; fall back to a plain copy)
device_verify_consumers "$log" 420 &

# 3. the evaluation model
mkdir -p .device/train-corpus && tar -xJf .device/train-corpus.tar.xz -C .device/train-corpus
timeout 260 python3 tools/train_eval_model.py --corpus .device/train-corpus --out "$out" \
  --time-budget "${TRAIN_BUDGET:-110}" > "$log/train.log" 2>&1
el "train rc=$?"
bash tools/reassemble_model.sh "$out" models > "$log/reassemble.log" 2>&1 || el "reassemble failed"

# 4. side by side
if [ -d models/fp4q-llama-23m ]; then
  CALIB_TEXT=.device/run/tinyshakespeare.txt EVAL_MAX_TOKENS="${EVAL_MAX_TOKENS:-65536}" \
    bash tools/fpquant_side_by_side.sh prepare models/fp4q-llama-23m .device/sbs > "$log/prepare.log" 2>&1
  el "prepare rc=$?"
  left=$(( ${CALL_SECONDS:-560} - ($(date +%s) - t0) - 25 ))
  # FP-Quant cells most important first (the time limit may cut the tail): MR-GPTQ of every
  # format/activation pair, then GPTQ, the fused-global-scale variants, RTN, no-rotation ablation.
  fpq_cells="${FPQ_CELLS:-nvfp4-w4a16-mrgptq nvfp4-w4a4-mrgptq mxfp4-w4a16-mrgptq mxfp4-w4a4-mrgptq nvfp4-w4a16-gptq nvfp4-w4a4-gptq mxfp4-w4a16-gptq mxfp4-w4a4-gptq nvfp4-w4a16-mrgptq-fused nvfp4-w4a4-mrgptq-fused nvfp4-w4a16-rtn nvfp4-w4a4-rtn mxfp4-w4a16-rtn mxfp4-w4a4-rtn nvfp4-w4a16-gptq-fused nvfp4-w4a4-gptq-fused nvfp4-w4a16-mrgptq0 nvfp4-w4a4-mrgptq0 mxfp4-w4a16-mrgptq0 mxfp4-w4a4-mrgptq0}"
  ( CELLS="$fpq_cells" JOBS="${JOBS:-8}" timeout "$left" bash tools/fpquant_side_by_side.sh fpquant models/fp4q-llama-23m .device/sbs \
      .ref/FP-Quant "$log" > "$log/fpquant.out" 2>&1; echo "rc=$?" >> "$log/fpquant.out" ) &
  fpq=$!
  # fp4q side on the CPU cores, in LANES parallel processes of THREADS threads (the first lane
  # also scores the unquantized model); cells alternate between lanes, most important first.
  cells="${FP4Q_CELLS:-nvfp4-w4a16-mrgptq nvfp4-w4a4-mrgptq mxfp4-w4a16-mrgptq mxfp4-w4a4-mrgptq nvfp4-w4a16-gptq nvfp4-w4a4-gptq mxfp4-w4a16-gptq mxfp4-w4a4-gptq nvfp4-w4a16-rtn nvfp4-w4a4-rtn mxfp4-w4a16-rtn mxfp4-w4a4-rtn nvfp4-w4a16-mrgptq0 nvfp4-w4a4-mrgptq0 mxfp4-w4a16-mrgptq0 mxfp4-w4a4-mrgptq0 nvfp4-w4a16-mrgptqh nvfp4-w4a4-mrgptqh}"
  lanes="${LANES:-2}"; lane_pids=()
  for ((lane = 0; lane < lanes; ++lane)); do
    mine=""; i=0
    for c in $cells; do [ $((i % lanes)) -eq "$lane" ] && mine="$mine $c"; i=$((i + 1)); done
    ( [ "$lane" -gt 0 ] && sleep 2
      CELLS="$mine" SKIP_UNQUANTIZED=$([ "$lane" -gt 0 ] && echo 1 || echo 0) THREADS="${THREADS:-7}" \
        timeout "$left" bash tools/fpquant_side_by_side.sh fp4q models/fp4q-llama-23m .device/sbs \
        > "$log/fp4q-lane$lane.out" 2>&1 ) &
    lane_pids+=($!)
  done
  wait "${lane_pids[@]}"
  el "fp4q side done"
  wait "$fpq"
  el "fpquant side done"
fi
wait
el "packing"
mkdir -p /tmp/pack/sbs && cp .device/sbs/*.json .device/sbs/*.tsv .device/sbs/plan.txt /tmp/pack/sbs/ 2>/dev/null
cp .device/sbs/fp4q/*.report.json /tmp/pack/sbs/ 2>/dev/null
cp -r "$log" /tmp/pack/
tar -czf "$out/results.tar.gz" -C /tmp/pack .
rm -rf "$log"
el "done"
ls -la "$out" >&2
