// libFuzzer target "tokenize" (see fuzz_targets.h; run with tools/fuzz.sh tokenize SECONDS).
#include "fuzz_targets.h"

FP4Q_FUZZ_MAIN(tokenize_text)
