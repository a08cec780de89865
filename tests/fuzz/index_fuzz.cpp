// libFuzzer target "index" (see fuzz_targets.h; run with tools/fuzz.sh index SECONDS).
#include "fuzz_targets.h"

FP4Q_FUZZ_MAIN(index_json)
