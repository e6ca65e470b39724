// The `lancet` subcommands: each add_* declares its flags on the app and sets its callback.
#pragma once

#include <CLI/CLI.hpp>

namespace lancet::cli {

void add_synth(CLI::App& app);
void add_inspect(CLI::App& app);
void add_demo(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_bench(CLI::App& app);
void add_run(CLI::App& app);
void add_calibrate(CLI::App& app);
void add_forward(CLI::App& app);
void add_quantize(CLI::App& app);
void add_stats(CLI::App& app);
void add_perplexity(CLI::App& app);
void add_preprocess(CLI::App& app);
void add_vae(CLI::App& app);
void add_serve(CLI::App& app);
void add_batch(CLI::App& app);
// `bench vae`, added under the bench command by add_bench.
void add_bench_vae(CLI::App& bench);

}  // namespace lancet::cli
