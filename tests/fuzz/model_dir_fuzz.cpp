// libFuzzer target "model_dir" (see fuzz_targets.h; run with tools/fuzz.sh model_dir SECONDS).
#include "fuzz_targets.h"

FP4Q_FUZZ_MAIN(model_dir)
