// libFuzzer target "config" (see fuzz_targets.h; run with tools/fuzz.sh config SECONDS).
#include "fuzz_targets.h"

FP4Q_FUZZ_MAIN(config_json)
