// The `lancet` subcommands: each add_* declares its flags on the app and sets its callback.
#pragma once

#include <CLI/CLI.hpp>

namespace lancet::cli {

// `lancet tokenize`: Qwen2 text <-> token ids.
void add_tokenize(CLI::App& app);





}  // namespace lancet::cli
