// fp4q CLI subcommands: each registers its options on the CLI11 app and an action that runs
// after parsing (so exceptions reach main's single error handler).
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace fp4q::cli {

void register_all(CLI::App& app);
// Registers `action` to run when subcommand `sub` was selected (used by the other cli/*.cpp).
void add_action(const CLI::App* sub, std::function<void()> action);
// Subcommands defined in bench_cmd.cpp: `synth` and `bench`.
void add_bench_commands(CLI::App& app);
void run_selected(CLI::App& app);

}  // namespace fp4q::cli
