#!/usr/bin/env bash
# fp4q bench on the GPU machine's 16 CPU cores (issue 8's thread-scaling numbers): one device call,
# nothing else running. From the repository root there:
#   bash tools/device_call_bench.sh "$OUT"          carry: .device/run (tools/device_bundle.sh)
# Writes (packed in $OUT/bench.tar.gz) bench-<tag>.json (fp4q bench --json; one fp4q process per thread count, so a run cut
# by its time limit loses only itself) and $OUT/bench.log (stderr: OpenBLAS core, fp4q's log),
# $OUT/machine.txt (lscpu, commit). Each run has its own time limit.
set -u
final="${1:?usage: tools/device_call_bench.sh OUT}"
out=/tmp/bench-out; mkdir -p "$out"       # packed into $OUT/bench.tar.gz at the end (8-file limit)
deadline=$(( $(date +%s) + ${TOTAL_S:-440} ))
. "$(dirname "$0")/device_gpu_jobs.sh"
mkdir -p /tmp/fp4q-bin && tar -xJf .device/run/fp4q-bin.tar.xz -C /tmp/fp4q-bin
export LD_LIBRARY_PATH=/tmp/fp4q-bin/lib
fp4q=/tmp/fp4q-bin/fp4q
{ lscpu; echo; nproc; echo; cat /tmp/fp4q-bin/COMMIT; free -g; } > "$out/machine.txt" 2>&1
b() {  # $1 = tag, $2 = seconds, rest = bench args
  local tag="$1" lim="$2"; shift 2
  local left=$(( deadline - $(date +%s) - 15 ))
  [ "$left" -lt "$lim" ] && lim=$left
  [ "$lim" -le 5 ] && { echo "== $tag skipped (no time left)" >&2; return; }
  echo "== $tag: fp4q bench $* ($(date +%T))" >&2
  OPENBLAS_VERBOSE=2 timeout "$lim" "$fp4q" bench "$@" --json > "$out/bench-$tag.json"
  echo "rc=$?" >&2
}
{
  for t in 16 8 4 2 1; do b tiny-t$t 40 --shape tiny --threads $t; done
  b llama3-8b-s16-t16 "${S16_S:-120}" --shape llama3-8b --samples 16 --seqlen 2048 --threads 16
  for t in 16 4; do b llama3-8b-s2-t$t "${S2_S:-200}" --shape llama3-8b --samples 2 --seqlen 2048 --threads $t; done
  # WITH_GPU_JOBS=1: the GPU jobs of tools/device_call_quality.sh (MoE goldens, real-consumer
  # verification) run beside the 1-thread bench, which leaves 15 cores idle anyway.
  if [ "${WITH_GPU_JOBS:-0}" = 1 ]; then
    device_moe_goldens "$out" "$final" 150 &
    device_verify_consumers "$out" 220 &
  fi
  b llama3-8b-s2-t1 "${S1_S:-200}" --shape llama3-8b --samples 2 --seqlen 2048 --threads 1
  wait
  # IDENTITY=1: the same quantization at 16, 7 and 5 threads gives byte-identical outputs (one
  # Qwen3-8B-shaped layer: the 12288-wide down_proj takes the recursive factorisation of
  # src/linalg/cholesky.cpp five levels deep). sha256 per thread count in identity.txt.
  if [ "${IDENTITY:-0}" = 1 ]; then
    "$fp4q" -q synth /tmp/id-model --shape qwen3-8b --layers 1 --vocab 1024 --ids 4096 --force
    for t in 16 7 5; do
      left=$(( deadline - $(date +%s) - 10 ))
      [ "$left" -le 20 ] && { echo "identity t$t skipped (no time left)" >&2; continue; }
      timeout "$left" "$fp4q" -q -t $t quantize /tmp/id-model /tmp/id-out-$t --force --samples 2 --seqlen 256 \
        --calib-ids /tmp/id-model/random-ids.txt && echo "t$t $(cat /tmp/id-out-$t/*.safetensors | sha256sum)" >> "$out/identity.txt"
    done
    cat "$out/identity.txt" >&2
  fi
} 2> "$out/bench.log"
grep -v "^\[D\]" "$out/bench.log"
tar -czf "$final/bench.tar.gz" -C "$out" .
