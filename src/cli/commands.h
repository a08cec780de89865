// fp4q CLI subcommands: each registers its options on the CLI11 app and an action that runs
// after parsing (so exceptions reach main's single error handler).
#pragma once

#include <functional>
#include <string>

#include <CLI/CLI.hpp>

#include "fp4q/core/compute_dtype.h"

namespace fp4q::cli {

void register_all(CLI::App& app);
// Registers `action` to run when subcommand `sub` was selected (used by the other cli/*.cpp).
void add_action(const CLI::App* sub, std::function<void()> action);
// Subcommands defined in bench_cmd.cpp: `synth` and `bench`.
void add_bench_commands(CLI::App& app);
void run_selected(CLI::App& app);
// --compute f32 | bf16 (quantize, bench) -> ComputeDtype; Error(kUsage) naming --compute otherwise.
ComputeDtype parse_compute_option(const std::string& s);

}  // namespace fp4q::cli
