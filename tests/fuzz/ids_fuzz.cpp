// libFuzzer target "ids" (see fuzz_targets.h; run with tools/fuzz.sh ids SECONDS).
#include "fuzz_targets.h"

FP4Q_FUZZ_MAIN(token_ids)
