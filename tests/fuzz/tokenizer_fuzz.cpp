// libFuzzer target "tokenizer" (see fuzz_targets.h; run with tools/fuzz.sh tokenizer SECONDS).
#include "fuzz_targets.h"

FP4Q_FUZZ_MAIN(tokenizer_json)
