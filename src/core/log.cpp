#include "fp4q/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace fp4q {

void init_logging(int verbosity) {
  auto logger = spdlog::stderr_color_mt("fp4q");
  logger->set_pattern("%^[%L]%$ %v");
  logger->set_level(verbosity <= 0 ? spdlog::level::warn
                    : verbosity == 1 ? spdlog::level::info
                                     : spdlog::level::debug);
  spdlog::set_default_logger(logger);
}

}  // namespace fp4q
