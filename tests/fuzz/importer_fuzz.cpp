// libFuzzer target "importer" (see fuzz_targets.h; run with tools/fuzz.sh importer SECONDS).
#include "fuzz_targets.h"

FP4Q_FUZZ_MAIN(importer)
