// The `lancet` subcommands: each add_* declares its flags on the app and sets its callback.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "model/decoder.h"

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
void add_sample(CLI::App& app);
void add_compare(CLI::App& app);
// The generation tasks of `lancet run` (t2i, t2v, i2v, image_edit, video_edit), in cmd_generate.cc:
// adds their options to the run command; run_generation runs one of them.
struct GenRunArgs;
std::shared_ptr<GenRunArgs> add_generation_options(CLI::App* run);
// The media options add_generation_options declares, which the understanding tasks share.
struct MediaArgs {
    std::string image, video, examples, preset;
};
MediaArgs media_args(const GenRunArgs& g);
bool is_generation_task(const std::string& task);
void run_generation(const GenRunArgs& g, const std::string& task, const std::string& model,
                    const std::string& prompt, uint64_t seed);
void add_serve(CLI::App& app);
void add_batch(CLI::App& app);
// `bench vae`, added under the bench command by add_bench.
void add_bench_vae(CLI::App& bench);
void add_bench_gen(CLI::App& bench);
void add_bench_attention(CLI::App& bench);

// The global speed/accuracy flags (main.cc): `--lm-head int4|bf16` (default int4) is what every
// command that loads a decoder passes as DecoderOptions::lm_head; `--exact-activations` (else
// int8 activations for INT4 weights, unless $LANCET_ACT says otherwise) is applied to the process
// activation mode at parse time.
DecoderOptions::LmHead lm_head_option();

}  // namespace lancet::cli
