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
#    Same flags as tools/fuzz.sh (max_len per target, -timeout=10, -rss_limit_mb=2048,
#    -malloc_limit_mb=512, leaks on).
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

# 2. fuzzers
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
pids=()
for tk in $cores; do
  t="${tk%%:*}"; k="${tk##*:}"
  case "$t" in
    ids|config|index) max_len=16384 ;;
    safetensors|hessian) max_len=65536 ;;
    tokenizer|tokenize) max_len=32768 ;;
    importer|model_dir) max_len=131072 ;;
  esac
  mkdir -p "$w/corpus/$t" "$w/artifacts/$t"
  dict=(); [ -f "tests/fuzz/dicts/$t.dict" ] && dict=(-dict="$root/tests/fuzz/dicts/$t.dict")
  ( cd "$w" && timeout $((fuzz_s + 40)) "$w/bin/${t}_fuzz" "corpus/$t" "$root/tests/fuzz/seeds/$t" \
      -fork="$k" -max_total_time="$fuzz_s" -max_len="$max_len" -timeout=10 \
      -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" "${dict[@]}" > "logs/$t.log" 2>&1
    echo "rc=$?" >> "logs/$t.log" ) &
  pids+=($!)
done
wait "${pids[@]}"
wait
for t in $(ls "$w/logs"); do echo "== $t"; grep -E '^#[0-9]+' "$w/logs/$t" | tail -1; tail -1 "$w/logs/$t"; done
rm -rf "$w/bin"
tar -cJf "$final/corpus.tar.xz" -C "$w/corpus" . && rm -rf "$w/corpus"
tar -czf "$final/fuzz.tar.gz" -C "$w" .
ls -la "$final"
