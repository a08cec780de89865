#!/usr/bin/env bash
# Issue 9, second evaluation model: one GPU-machine call that trains another Llama of different
# shape on the same corpus (tools/train_eval_model.py), prepares fp4q's calibration windows and the
# model's own held-out validation split (tools/fpquant_side_by_side.sh prepare, in-domain text only),
# and runs FP-Quant's MR-GPTQ cells on the GPU and fp4q's MR-GPTQ cells on the CPU cores at the same
# time, both with KL to the unquantized model and per-token scores (DUMP_TOKENS). From the
# repository root there:
#
#   bash tools/device_call_model2.sh "$OUT"
#
# carry: .device/run (fp4q-bin.tar.xz from tools/device_bundle.sh, tinyshakespeare.txt),
#        .device/train-corpus.tar.xz (tools/make_train_corpus.sh), .ref/FP-Quant (tools/get_fpquant.sh)
# $OUT: <NAME>.tar.partNN + train_log.json (the model: tools/reassemble_model.sh "$OUT" models here),
#       results.tar.gz (sbs/: calib.json, eval-indomain.json, plan.txt, fp4q.tsv, fp4q reports,
#       fpquant.jsonl, windows/ (per-window sums of both tools' per-token scores); logs/).
# Shape (env): NAME (fp4q-llama-27m), HIDDEN 512, LAYERS 6, HEADS 8, KV_HEADS 4, INTERMEDIATE 1536,
# TRAIN_BUDGET (60 s of training), TRAIN_SEED (4321; the calibration windows use fp4q's sampler with
# seed 42), VAL_FRACTION (0.01: the held-out share of every corpus file, which is the evaluation
# text; 0.1 gives ten times the text and about a third of the paired standard errors; pass
# KL_CACHE=none then: the reference logits of that text would take ~20 GB).
# Replication over calibration samples: CALIB_SEEDS="1 2" also prepares fp4q's windows with
# those seeds (same text, same held-out ids) and runs SEED_FPQ_CELLS (default: NVFP4 W4A4 MR-GPTQ
# fix, bf16, fused-fix and GPTQ fix) and SEED_FP4Q_CELLS (NVFP4 W4A4 MR-GPTQ and GPTQ) on each, in a
# second fp4q lane; their per-window sums come back in windows-s<seed>/. FPQ_CELLS, FP4Q_CELLS:
# the cells of the seed-42 windows (FP4Q_CELLS2: a second fp4q lane of them, run at the same time;
# FP4Q_CELLS=" " and SEED_FP4Q_CELLS=" ": no fp4q cells there, only
# fp4q's unquantized score; the fp4q cells then run here); THREADS: fp4q threads per lane. The call returns at most 64 MiB: the model tar
# (~55 MB for these defaults) plus results; per-token files travel as per-window sums
# (tools/paired_compare.py --to-windows), a few KB each.
# Here, afterwards: the other fp4q cells (GPTQ, RTN) with
#   KL=1 DUMP_TOKENS=1 CELLS="..." tools/fpquant_side_by_side.sh fp4q models/$NAME WORK
# on the returned WORK (= sbs/), and tools/paired_compare.py on the token files.
set -u
out="${1:?usage: tools/device_call_model2.sh OUT}"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*" >&2; }
name="${NAME:-fp4q-llama-27m}"
log="$out/logs"; mkdir -p "$log"
work=/tmp/sbs2; mkdir -p "$work"
mkdir -p /tmp/fp4q-bin && tar -xJf .device/run/fp4q-bin.tar.xz -C /tmp/fp4q-bin
export LD_LIBRARY_PATH=/tmp/fp4q-bin/lib FP4Q=/tmp/fp4q-bin/fp4q
"$FP4Q" --version >&2 || { el "fp4q bundle does not run"; ldd "$FP4Q" >&2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$log/gpu.txt" 2>&1

mkdir -p .device/train-corpus && tar -xJf .device/train-corpus.tar.xz -C .device/train-corpus
timeout 200 python3 tools/train_eval_model.py --corpus .device/train-corpus --out "$out" --name "$name" \
  --hidden "${HIDDEN:-512}" --layers "${LAYERS:-6}" --heads "${HEADS:-8}" --kv-heads "${KV_HEADS:-4}" \
  --intermediate "${INTERMEDIATE:-1536}" --seed "${TRAIN_SEED:-4321}" --time-budget "${TRAIN_BUDGET:-60}" \
  --val-fraction "${VAL_FRACTION:-0.01}" \
  > "$log/train.log" 2>&1
el "train rc=$?"
bash tools/reassemble_model.sh "$out" models > "$log/reassemble.log" 2>&1 || el "reassemble failed"

if [ -d "models/$name" ]; then
  SEED=42 CALIB_TEXT=.device/run/tinyshakespeare.txt INDOMAIN_CORPUS=.device/train-corpus \
    bash tools/fpquant_side_by_side.sh prepare "models/$name" "$work" > "$log/prepare.log" 2>&1
  el "prepare rc=$?"
  rm -f "$work/eval-frankenstein.json" "$work/eval-wikitext2.json"   # in-domain text only
  for s in ${CALIB_SEEDS:-}; do   # the same held-out ids, calibration windows of another seed
    SEED="$s" CALIB_TEXT=.device/run/tinyshakespeare.txt INDOMAIN_IDS="$work/eval-indomain.json" \
      bash tools/fpquant_side_by_side.sh prepare "models/$name" "$work-s$s" >> "$log/prepare.log" 2>&1
    rm -f "$work-s$s/eval-frankenstein.json" "$work-s$s/eval-wikitext2.json"
  done
  left=$(( ${CALL_SECONDS:-320} - ($(date +%s) - t0) - 20 ))
  pids=()
  fpq_cells="${FPQ_CELLS:-nvfp4-w4a4-mrgptq-fix nvfp4-w4a16-mrgptq-fix mxfp4-w4a4-mrgptq-fix mxfp4-w4a16-mrgptq-fix
    nvfp4-w4a4-mrgptq-bf16 nvfp4-w4a16-mrgptq-bf16}"
  ( CELLS="$fpq_cells" UNQUANTIZED_CELLS=unquantized JOBS="${JOBS:-7}" KL=1 DUMP_TOKENS=1 EVAL_DTYPES=fp32 \
      KL_CACHE="${KL_CACHE:-/tmp/klcache}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
      timeout "$left" bash tools/fpquant_side_by_side.sh fpquant "models/$name" "$work" .ref/FP-Quant "$work/fpq" \
      > "$log/fpquant.out" 2>&1; echo "rc=$?" >> "$log/fpquant.out" ) &
  fpq=$!
  ( CELLS="${FP4Q_CELLS:-nvfp4-w4a4-mrgptq nvfp4-w4a16-mrgptq mxfp4-w4a4-mrgptq mxfp4-w4a16-mrgptq}" \
      THREADS="${THREADS:-7}" KL=1 DUMP_TOKENS=1 \
      timeout "$left" bash tools/fpquant_side_by_side.sh fp4q "models/$name" "$work" > "$log/fp4q.out" 2>&1
    echo "rc=$?" >> "$log/fp4q.out" ) &
  fp4=$!
  if [ -n "${FP4Q_CELLS2:-}" ]; then  # a second fp4q lane on the same windows, at the same time
    ( sleep 5; CELLS="$FP4Q_CELLS2" SKIP_UNQUANTIZED=1 THREADS="${THREADS:-7}" KL=1 DUMP_TOKENS=1 \
        timeout "$left" bash tools/fpquant_side_by_side.sh fp4q "models/$name" "$work" > "$log/fp4q-2.out" 2>&1
      echo "rc=$?" >> "$log/fp4q-2.out" ) &
    pids+=($!)
  fi
  seed_fpq="${SEED_FPQ_CELLS:-nvfp4-w4a4-mrgptq-fix nvfp4-w4a4-mrgptq-bf16 nvfp4-w4a4-mrgptq-fused-fix nvfp4-w4a4-gptq-fix}"
  for s in ${CALIB_SEEDS:-}; do
    ( CELLS="$seed_fpq" JOBS="${SEED_JOBS:-4}" KL=1 DUMP_TOKENS=1 EVAL_DTYPES=fp32 \
        KL_CACHE="${KL_CACHE:-/tmp/klcache}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        timeout "$left" bash tools/fpquant_side_by_side.sh fpquant "models/$name" "$work-s$s" .ref/FP-Quant "$work-s$s/fpq" \
        > "$log/fpquant-s$s.out" 2>&1; echo "rc=$?" >> "$log/fpquant-s$s.out" ) &
    pids+=($!)
  done
  if [ -n "${CALIB_SEEDS:-}" ]; then  # second fp4q lane: the other seeds' cells one after another
    ( deadline=$(( $(date +%s) + left ))
      for s in $CALIB_SEEDS; do
        CELLS="${SEED_FP4Q_CELLS:-nvfp4-w4a4-mrgptq nvfp4-w4a4-gptq}" SKIP_UNQUANTIZED=1 \
          THREADS="${THREADS:-7}" KL=1 DUMP_TOKENS=1 \
          timeout $(( deadline - $(date +%s) )) bash tools/fpquant_side_by_side.sh fp4q "models/$name" "$work-s$s" \
          >> "$log/fp4q-seeds.out" 2>&1; echo "s$s rc=$?" >> "$log/fp4q-seeds.out"
      done ) &
    pids+=($!)
  fi
  wait "$fp4"; el "fp4q side done"
  wait "$fpq"; el "fpquant side done"
  for p in "${pids[@]}"; do wait "$p"; done; el "seed runs done"
fi
el "packing"
mkdir -p /tmp/pack/sbs
cp "$work"/*.json "$work"/*.tsv "$work"/plan.txt /tmp/pack/sbs/ 2>/dev/null
cp "$work"/fp4q/*.report.json /tmp/pack/sbs/ 2>/dev/null
cp "$work"/fpq/fpquant.jsonl "$work"/fpq/fpquant.log /tmp/pack/sbs/ 2>/dev/null
windows() {  # $1 = work directory, $2 = destination: per-window sums of both tools' per-token files
  mkdir -p "$2"
  for f in "$1"/fp4q/tokens/*.tsv "$1"/fpq/tokens/*.tsv; do
    [ -f "$f" ] || continue
    case "$f" in */fp4q/tokens/*) pre=fp4q ;; *) pre=fpq ;; esac
    python3 tools/paired_compare.py --to-windows "$f" "$2/$pre-$(basename "$f")"
  done
}
windows "$work" /tmp/pack/sbs/windows
for s in ${CALIB_SEEDS:-}; do
  windows "$work-s$s" "/tmp/pack/sbs/windows-s$s"
  cp "$work-s$s"/calib.json "$work-s$s"/plan.txt "$work-s$s"/fp4q.tsv "/tmp/pack/sbs/windows-s$s/" 2>/dev/null
  cp "$work-s$s"/fpq/fpquant.jsonl "/tmp/pack/sbs/windows-s$s/" 2>/dev/null
done
cp -r "$log" /tmp/pack/
tar -czf "$out/results.tar.gz" -C /tmp/pack .
rm -rf "$log"
el "done"
ls -la "$out" >&2
