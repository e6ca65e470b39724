// The `lancet` subcommands: each add_* declares its flags on the app and sets its callback.
#pragma once

#include <CLI/CLI.hpp>

namespace lancet::cli {

// `lancet bench kernels` (cmd_bench.cc).
void add_bench(CLI::App& app);

}  // namespace lancet::cli
