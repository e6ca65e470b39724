// `lancet synth`: writes a synthetic checkpoint in Lance_3B_Video's exact layout.
#include <chrono>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "model/synth.h"

namespace lancet::cli {

void add_synth(CLI::App& app) {
    auto* cmd =
        app.add_subcommand("synth", "Write a synthetic Lance checkpoint (Lance_3B_Video layout)");
    auto opt = std::make_shared<SynthOptions>();
    auto dtype = std::make_shared<std::string>("f32");
    cmd->add_option("--preset", opt->preset, "tiny (a few MB), small (tens of MB), 3b (real size)")
        ->check(CLI::IsMember(synth_presets()))
        ->capture_default_str();
    cmd->add_option("--dtype", *dtype, "f32 or bf16")
        ->check(CLI::IsMember({"f32", "bf16"}))
        ->capture_default_str();
    cmd->add_option("--seed", opt->seed, "Seed; the same seed gives the same bytes")
        ->capture_default_str();
    cmd->add_option(
        "--tokenizer", opt->tokenizer_dir,
        "Copy the tokenizer files from this folder (default: a synthetic byte-level one)");
    cmd->add_option("-o,--out", opt->out, "Output folder")->required();
    cmd->add_flag("--force", opt->force, "Replace an existing output folder");
    auto no_outliers = std::make_shared<bool>(false);
    cmd->add_flag("--no-outliers", *no_outliers,
                  "Plant no activation-outlier channels (judge quantizers on plain weights)");
    cmd->callback([opt, dtype, no_outliers] {
        opt->outliers = !*no_outliers;
        opt->dtype = *dtype == "bf16" ? DType::BF16 : DType::F32;
        const auto t0 = std::chrono::steady_clock::now();
        const uint64_t bytes = synth_checkpoint(*opt);
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("wrote %s (%.1f MB of tensors) in %.1f s\n", opt->out.c_str(), bytes / 1e6, s);
    });
}

}  // namespace lancet::cli
