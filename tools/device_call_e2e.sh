#!/usr/bin/env bash
# Issue 8, item 3 on the GPU machine's CPU cores: a 2-layer synthetic model with Llama-3-8B shapes
# (fp4q synth) quantized end to end at the DEFAULT calibration, 128 x 2048 tokens, MR-GPTQ NVFP4;
# the planned peak memory (--dry-run) against the measured peak RSS (fp4q's own log line and, where
# the machine has it, /usr/bin/time -v).
#   bash tools/device_call_e2e.sh "$OUT"          carry: .device/run (tools/device_bundle.sh)
# One device call may not be enough (600 s per call; the run is ~8 min on 16 cores): the model and
# the checkpointed output live in .device/e2e on the device (not carried, so they survive while
# the machine stays warm). Call it again right away and it continues with `quantize --resume`
# (byte-identical output). LIMIT_S caps this call's quantize run (default 530 s).
# Output: $OUT/e2e-<n>.log (quantize stderr + time -v of that call), $OUT/dry-run.txt,
# $OUT/machine.txt, $OUT/summary.txt.
set -u
final="${1:?usage: tools/device_call_e2e.sh OUT}"
w=.device/e2e
mkdir -p "$w" /tmp/fp4q-bin
[ -x /tmp/fp4q-bin/fp4q ] || tar -xJf .device/run/fp4q-bin.tar.xz -C /tmp/fp4q-bin
export LD_LIBRARY_PATH=/tmp/fp4q-bin/lib
fp4q=/tmp/fp4q-bin/fp4q
{ lscpu | head -20; nproc; free -g; cat /tmp/fp4q-bin/COMMIT; } > "$final/machine.txt" 2>&1
if [ ! -f "$w/model/config.json" ]; then
  echo "== synth $(date +%T)"
  "$fp4q" synth "$w/model" --shape llama3-8b --layers 2 --ids 300000 --force || exit 1
  echo "== synth done $(date +%T)"
fi
args=("$w/model" "$w/out" --calib-ids "$w/model/random-ids.txt" --samples 128 --seqlen 2048)
"$fp4q" quantize "${args[@]}" --dry-run > "$final/dry-run.txt" 2>&1
n=1; while [ -e "$w/e2e-$n.log" ]; do n=$((n + 1)); done
tm=(); [ -x /usr/bin/time ] && tm=(/usr/bin/time -v)
echo "== quantize call $n $(date +%T) (time -v: ${tm[*]:-absent})"
"${tm[@]}" timeout "${LIMIT_S:-530}" "$fp4q" quantize "${args[@]}" --resume --force 2> "$w/e2e-$n.log" > "$w/e2e-$n.out"
echo "rc=$? $(date +%T)" | tee -a "$w/e2e-$n.log"
cp "$w"/e2e-*.log "$w"/e2e-*.out "$final/" 2>/dev/null
{ grep -h "peak resident\|phases (s)\|wrote\|checkpoint\|Maximum resident\|Elapsed\|rc=" "$w"/e2e-*.log; } > "$final/summary.txt"
cat "$final/summary.txt"
