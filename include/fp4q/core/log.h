// fp4q/core/log.h — logging goes to stderr through one spdlog logger; stdout is reserved for
// machine-readable output (inspect --json, report --format tsv, ...).
#pragma once

#include <spdlog/spdlog.h>

namespace fp4q {

// Creates the stderr logger with fp4q's pattern. level: 0 = warn, 1 = info (default), 2 = debug.
void init_logging(int verbosity);

}  // namespace fp4q
