# Sourced by tools/fuzz.sh (here) and tools/device_call_fuzz.sh (the GPU machine's cores): the
# fuzz targets, their input size limits, the sanitizer environment and the libFuzzer flags that
# define a finding, so both places fuzz with the same rules.
FUZZ_TARGETS=(safetensors index config tokenizer ids hessian importer model_dir tokenize)

# Per-target input size limit (bytes): JSON texts stay small, model directories need room.
fuzz_max_len() {
  case "$1" in
    ids|config|index) echo 16384 ;;
    safetensors|hessian) echo 65536 ;;
    tokenizer|tokenize) echo 32768 ;;
    importer|model_dir) echo 131072 ;;
  esac
}

# Leaks are bugs too (detect_leaks); UBSan stops at the first report with a stack.
fuzz_env() {
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=0}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
}

# fuzz_flags TARGET ROOT MAX_LEN: one libFuzzer flag per line. -malloc_limit_mb: one allocation
# above 512 MB from an input of at most MAX_LEN bytes is a finding ("a small file must never make
# fp4q allocate gigabytes"); the target's dictionary when tests/fuzz/dicts has one.
fuzz_flags() {
  printf '%s\n' -max_len="$3" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1
  [ -f "$2/tests/fuzz/dicts/$1.dict" ] && echo "-dict=$2/tests/fuzz/dicts/$1.dict"
  return 0
}
