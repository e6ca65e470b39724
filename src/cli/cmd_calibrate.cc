// `lancet calibrate`: activation statistics from the real decoder, for `lancet quantize`.
#include "cli/commands.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "pipeline/calibrate.h"

namespace lancet::cli {

void add_calibrate(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "calibrate", "Record activation statistics at every targeted linear (input for quantize)");
    auto o = std::make_shared<CalibrateOptions>();
    auto no_gen = std::make_shared<bool>(false);
    auto no_vit = std::make_shared<bool>(false);
    cmd->add_option("-m,--model", o->model, "Original (unquantized) model folder")->required();
    cmd->add_option("--prompts", o->prompts,
                    "Prompt file(s): text lines, a JSON array, or Lance example JSONs")
        ->required();
    cmd->add_option("-o,--out", o->out, "Statistics file to write (.safetensors)")->required();
    cmd->add_option("--rows", o->rows, "Activation rows kept per linear (reservoir)")
        ->capture_default_str();
    cmd->add_option("--max-prompt-tokens", o->max_prompt_tokens, "Cut longer prompts")
        ->capture_default_str();
    cmd->add_option("--latent-size", o->latent_hw,
                    "Side of the noisy latent block that feeds the gen path")
        ->capture_default_str();
    cmd->add_option("--gen-steps", o->gen_steps,
                    "Record the gen path from real t2i sampler trajectories of this many steps "
                    "(0: one forward of Gaussian latents per prompt)")
        ->capture_default_str();
    cmd->add_flag("--no-gen", *no_gen,
                  "Skip the gen path (text-only calibration, as the seed's x2t)");
    cmd->add_flag("--no-vit", *no_vit,
                  "Run x2t example files as text only (no ViT rows, no ViT statistics)");
    cmd->add_option("--vit-preset", o->vit_preset,
                    "Resize preset for x2t media (default image_768res / video_480p)");
    cmd->add_option("--seed", o->seed, "Seed for the latents and the reservoirs")
        ->capture_default_str();
    cmd->add_flag("--hessian", o->hessian,
                  "Also record XᵀX over every input (<linear>.hessian, packed upper triangle), "
                  "which GPTQ then uses instead of the reservoir rows");
    cmd->callback([o, no_gen, no_vit] {
        o->gen = !*no_gen;
        o->vit = !*no_vit;
        log_info("lancet: ", kernels::runtime_description(default_pool()));
        calibrate(*o);
    });
}

}  // namespace lancet::cli
