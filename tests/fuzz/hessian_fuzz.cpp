// libFuzzer target "hessian" (see fuzz_targets.h; run with tools/fuzz.sh hessian SECONDS).
#include "fuzz_targets.h"

FP4Q_FUZZ_MAIN(hessian_file)
