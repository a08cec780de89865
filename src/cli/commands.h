// fp4q CLI subcommands: each registers its options on the CLI11 app and an action that runs
// after parsing (so exceptions reach main's single error handler).
#pragma once

#include <CLI/CLI.hpp>

namespace fp4q::cli {

void register_all(CLI::App& app);
void run_selected(CLI::App& app);

}  // namespace fp4q::cli
