#!/usr/bin/env bash
# fp4q bench on the GPU machine's 16 CPU cores (issue 8's thread-scaling numbers): one device call,
# nothing else running. From the repository root there:
#   bash tools/device_call_bench.sh "$OUT"          carry: .device/run (tools/device_bundle.sh)
# Writes $OUT/bench-<shape>-<threads>.json (fp4q bench --json) and .txt (the table on stderr),
# $OUT/machine.txt (lscpu, OpenBLAS core the library picks). Each run has its own time limit.
set -u
out="${1:?usage: tools/device_call_bench.sh OUT}"
mkdir -p /tmp/fp4q-bin && tar -xJf .device/run/fp4q-bin.tar.xz -C /tmp/fp4q-bin
export LD_LIBRARY_PATH=/tmp/fp4q-bin/lib
fp4q=/tmp/fp4q-bin/fp4q
{ lscpu; echo; nproc; echo; cat /tmp/fp4q-bin/COMMIT; free -g; } > "$out/machine.txt" 2>&1
b() {  # $1 = tag, $2 = seconds, rest = bench args
  local tag="$1" lim="$2"; shift 2
  echo "== $tag: fp4q bench $*" >&2
  OPENBLAS_VERBOSE=2 timeout "$lim" "$fp4q" bench "$@" --json > "$out/bench-$tag.json" 2> "$out/bench-$tag.txt"
  echo "rc=$?" >> "$out/bench-$tag.txt"; tail -n 25 "$out/bench-$tag.txt" >&2
}
b tiny "${TINY_S:-90}" --shape tiny --threads 16,8,4,2,1
b llama3-8b-s16-t16 "${S16_S:-150}" --shape llama3-8b --samples 16 --seqlen 2048 --threads 16
b llama3-8b-s4 "${S4_S:-330}" --shape llama3-8b --samples 4 --seqlen 2048 --threads 16,8,4,1
