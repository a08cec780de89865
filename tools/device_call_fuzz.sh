#!/usr/bin/env bash
# Fuzzing (issue 11) and the bf16 kernel check on Intel (issue 8) on the GPU machine's 16 CPU cores,
# one device call. From the repository root there:
#
#   bash tools/device_call_fuzz.sh "$OUT"
#
# carry: .device/fuzz/fuzz-bin.tar.xz, .device/fuzz/corpus.tar.xz (tools/device_fuzz_bundle.sh: the ASan+UBSan libFuzzer binaries of
#        build-fuzz/, linalg_test and fp4q of build/, and the shared libraries ldd lists).
# Seeds and dictionaries come with the work tree (tests/fuzz/seeds, tests/fuzz/dicts).
#
# 1. linalg_test --gtest_filter='Bf16*' (the AVX512_BF16 kernel against its scalar emulation) and
#    one `fp4q bench --compute bf16` tiny run, before the fuzzers take the cores.
# 2. Every target in libFuzzer's fork mode (-fork=K: K child processes, executions summed) for
#    FUZZ_S seconds; K per target from CORES ("target:K ..."), slow parsers get more cores.
#    Same flags and sanitizer settings as tools/fuzz.sh (tools/fuzz_common.sh).
# Writes $OUT/fuzz.tar.gz: logs/<target>.log (libFuzzer's output, with its final fork-mode line
# "#N: cov: ... exec/s ..."), artifacts/<target>/ (findings), and $OUT/corpus.tar.xz (the grown
# corpora; unpack into build-fuzz/corpus to continue them here), bf16.log, machine.txt.
set -u
final="${1:?usage: tools/device_call_fuzz.sh OUT}"
fuzz_s="${FUZZ_S:-480}"
cores="${CORES:-ids:1 hessian:1 safetensors:2 config:2 index:2 tokenize:2 tokenizer:2 model_dir:2 importer:2}"
root="$PWD"; w=/tmp/fuzzw; mkdir -p "$w/bin" "$w/logs"
tar -xJf .device/fuzz/fuzz-bin.tar.xz -C "$w/bin"
mkdir -p "$w/corpus"; [ -f .device/fuzz/corpus.tar.xz ] && tar -xJf .device/fuzz/corpus.tar.xz -C "$w/corpus"
export LD_LIBRARY_PATH="$w/bin/lib"
{ lscpu; nproc; free -g; cat "$w/bin/COMMIT"; } > "$w/machine.txt" 2>&1

# 1. bf16 kernel on this CPU (AVX512_BF16 on Emerald Rapids; no AMX kernel in fp4q)
{
  grep -o 'avx512_bf16\|amx_bf16' /proc/cpuinfo | sort | uniq -c
  timeout 60 "$w/bin/linalg_test" --gtest_filter='Bf16*:*bf16*:*Bf16*'; echo "linalg_test rc=$?"
  timeout 60 "$w/bin/fp4q" bench --shape tiny --threads 16 --compute bf16; echo "bench bf16 rc=$?"
  timeout 60 "$w/bin/fp4q" bench --shape tiny --threads 16; echo "bench fp32 rc=$?"
  timeout 60 "$w/bin/bench_bf16_gemm" --benchmark_min_time=0.1; echo "bench_bf16_gemm rc=$?"
} > "$w/bf16.log" 2>&1

# WITH_CONSUMERS=1 (carry .device/consumers and .ref too): issue 10's real-library verification on
# the GPU beside the fuzzers (tools/device_gpu_jobs.sh), logs in $OUT/consumers.tar.gz.
if [ "${WITH_CONSUMERS:-0}" = 1 ]; then
  . tools/device_gpu_jobs.sh
  mkdir -p /tmp/cons
  ( device_verify_consumers /tmp/cons "${CONSUMERS_S:-420}"; tar -czf "$final/consumers.tar.gz" -C /tmp/cons . ) &
fi

# 2. fuzzers (the rules of tools/fuzz.sh: tools/fuzz_common.sh)
. tools/fuzz_common.sh
fuzz_env
for tk in $cores; do
  t="${tk%%:*}"; k="${tk##*:}"
  mkdir -p "$w/corpus/$t" "$w/artifacts/$t"
  mapfile -t flags < <(fuzz_flags "$t" "$root" "$(fuzz_max_len "$t")")
  ( cd "$w" && timeout $((fuzz_s + 40)) "$w/bin/${t}_fuzz" "corpus/$t" "$root/tests/fuzz/seeds/$t" \
      -fork="$k" -max_total_time="$fuzz_s" -artifact_prefix="artifacts/$t/" "${flags[@]}" > "logs/$t.log" 2>&1
    echo "rc=$?" >> "logs/$t.log" ) &
done
wait   # the fuzzers and, with WITH_CONSUMERS=1, the verification
for t in $(ls "$w/logs"); do echo "== $t"; grep -E '^#[0-9]+' "$w/logs/$t" | tail -1; tail -1 "$w/logs/$t"; done
rm -rf "$w/bin"
tar -cJf "$final/corpus.tar.xz" -C "$w/corpus" . && rm -rf "$w/corpus"
tar -czf "$final/fuzz.tar.gz" -C "$w" .
ls -la "$final"
