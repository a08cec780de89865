#!/usr/bin/env bash
# Issue 9: fp4q cells of a side-by-side work directory on the GPU machine's 16 CPU cores, in
# parallel lanes, with KL to the unquantized model and per-token scores; the FP-Quant side and
# the model came from an earlier call (tools/device_call_model2.sh). From the repository root there:
#
#   LANES="cellA1 cellA2;cellB1 cellB2;..." THREADS=5 CALL_SECONDS=560 \
#     bash tools/device_call_fp4q_cells.sh MODEL WORK "$OUT"
#
# carry: .device/run (fp4q-bin.tar.xz from tools/device_bundle.sh), MODEL (a directory, or a
# .tar.xz of one directory: bf16 weights shrink by a third, which the 64 MiB carry cap needs for a
# 23M-parameter model), WORK (calib.json,
# eval-*.json and, to skip cells already scored, fp4q.tsv). Lanes are separated by ';', each runs
# its cells one after another (cell names as in tools/fpquant_side_by_side.sh) with THREADS fp4q
# threads. $OUT/results.tar.gz: fp4q.tsv, the cells' reports, windows/ (per-window sums of the
# per-token files, tools/paired_compare.py --to-windows) and logs/.
set -u
model="${1:?usage: tools/device_call_fp4q_cells.sh MODEL WORK OUT}"
src="${2:?usage}"; out="${3:?usage}"
t0=$(date +%s)
el() { echo "[$(( $(date +%s) - t0 )) s] $*" >&2; }
mkdir -p /tmp/fp4q-bin && tar -xJf .device/run/fp4q-bin.tar.xz -C /tmp/fp4q-bin
export LD_LIBRARY_PATH=/tmp/fp4q-bin/lib FP4Q=/tmp/fp4q-bin/fp4q
"$FP4Q" --version >&2 || { el "fp4q bundle does not run"; ldd "$FP4Q" >&2; }
case "$model" in *.tar.xz)
  mkdir -p /tmp/cells-model && tar -xJf "$model" -C /tmp/cells-model
  model="/tmp/cells-model/$(ls /tmp/cells-model | head -1)" ;; esac
work=/tmp/cells-work; log=/tmp/cells-logs; mkdir -p "$work" "$log"
cp "$src"/calib.json "$src"/eval-*.json "$work"/
[ -f "$src/fp4q.tsv" ] && cp "$src/fp4q.tsv" "$work/"   # header written once; scored cells skipped
left=$(( ${CALL_SECONDS:-560} - ($(date +%s) - t0) - 25 ))
IFS=';' read -r -a lanes <<<"${LANES:?LANES=\"cells;cells;...\"}"
pids=(); i=0
for cells in "${lanes[@]}"; do
  i=$((i + 1))
  ( CELLS="$cells" SKIP_UNQUANTIZED=1 THREADS="${THREADS:-5}" KL=1 DUMP_TOKENS=1 \
      timeout "$left" bash tools/fpquant_side_by_side.sh fp4q "$model" "$work" > "$log/lane$i.out" 2>&1
    echo "rc=$?" >> "$log/lane$i.out" ) &
  pids+=($!)
  sleep 2
done
for p in "${pids[@]}"; do wait "$p"; done
el "lanes done"
mkdir -p /tmp/pack/windows
cp "$work"/fp4q.tsv /tmp/pack/ 2>/dev/null
cp "$work"/fp4q/*.report.json /tmp/pack/ 2>/dev/null
for f in "$work"/fp4q/tokens/*.tsv; do
  [ -f "$f" ] || continue
  python3 tools/paired_compare.py --to-windows "$f" "/tmp/pack/windows/fp4q-$(basename "$f")" \
    || el "$(basename "$f"): not converted (cut by the time limit?)"
done
cp -r "$log" /tmp/pack/logs
tar -czf "$out/results.tar.gz" -C /tmp/pack .
el "done"
