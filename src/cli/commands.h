// The `lancet` subcommands: each add_* declares its flags on the app and sets its callback.
#pragma once

#include <CLI/CLI.hpp>

namespace lancet::cli {}  // namespace lancet::cli
