// libFuzzer target "safetensors" (see fuzz_targets.h; run with tools/fuzz.sh safetensors SECONDS).
#include "fuzz_targets.h"

FP4Q_FUZZ_MAIN(safetensors)
