#!/usr/bin/env bash
# fp4q bench on the GPU machine's 16 CPU cores (issue 8's thread-scaling numbers): one device call,
# nothing else running. From the repository root there:
#   bash tools/device_call_bench.sh "$OUT"          carry: .device/run (tools/device_bundle.sh)
# Writes $OUT/bench-<tag>.json (fp4q bench --json; one fp4q process per thread count, so a run cut
# by its time limit loses only itself) and $OUT/bench.log (stderr: OpenBLAS core, fp4q's log),
# $OUT/machine.txt (lscpu, commit). Each run has its own time limit.
set -u
out="${1:?usage: tools/device_call_bench.sh OUT}"
mkdir -p /tmp/fp4q-bin && tar -xJf .device/run/fp4q-bin.tar.xz -C /tmp/fp4q-bin
export LD_LIBRARY_PATH=/tmp/fp4q-bin/lib
fp4q=/tmp/fp4q-bin/fp4q
{ lscpu; echo; nproc; echo; cat /tmp/fp4q-bin/COMMIT; free -g; } > "$out/machine.txt" 2>&1
b() {  # $1 = tag, $2 = seconds, rest = bench args
  local tag="$1" lim="$2"; shift 2
  echo "== $tag: fp4q bench $* ($(date +%T))" >&2
  OPENBLAS_VERBOSE=2 timeout "$lim" "$fp4q" bench "$@" --json > "$out/bench-$tag.json"
  echo "rc=$?" >&2
}
{
  for t in 16 8 4 2 1; do b tiny-t$t 40 --shape tiny --threads $t; done
  b llama3-8b-s16-t16 "${S16_S:-170}" --shape llama3-8b --samples 16 --seqlen 2048 --threads 16
  for t in 16 4 1; do b llama3-8b-s2-t$t "${S2_S:-200}" --shape llama3-8b --samples 2 --seqlen 2048 --threads $t; done
} 2> "$out/bench.log"
cat "$out/bench.log" | grep -v "^\[D\]"
