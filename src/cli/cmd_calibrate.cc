// `lancet calibrate`: activation statistics from the real decoder, for `lancet quantize`.
#include "cli/commands.h"
#include "core/error.h"
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
    auto merge = std::make_shared<std::vector<std::string>>();
    cmd->add_option("-m,--model", o->model, "Original (unquantized) model folder");
    cmd->add_option("--prompts", o->prompts,
                    "Prompt file(s): text lines, a JSON array, or Lance example JSONs");
    cmd->add_option("--tasks", o->tasks,
                    "Lance tasks to calibrate from their example JSONs: t2i, t2v, i2v, "
                    "image_edit, video_edit, x2t_image, x2t_video (comma-separated)")
        ->delimiter(',');
    cmd->add_option("--examples-dir", o->examples_dir,
                    "Folder of Lance's <task>_example.json files (with --tasks)");
    cmd->add_option("-o,--out", o->out, "Statistics file to write (.safetensors)");
    cmd->add_option("--rows", o->rows, "Activation rows kept per linear (reservoir)")
        ->capture_default_str();
    cmd->add_option("--max-prompt-tokens", o->max_prompt_tokens, "Cut longer prompts")
        ->capture_default_str();
    cmd->add_option("--latent-size", o->latent_hw,
                    "Without --tasks: side of the noisy latent block that feeds the gen path")
        ->capture_default_str();
    cmd->add_option("--gen-steps", o->gen_steps,
                    "With --tasks: steps of every generation schedule (default Lance's 30); "
                    "without: record t2i trajectories of this many steps per prompt (0: one "
                    "forward of Gaussian latents)")
        ->capture_default_str();
    cmd->add_option("--size", o->size,
                    "With --tasks: t2i / t2v target WIDTHxHEIGHT (calibration's small default)")
        ->capture_default_str();
    cmd->add_option("--frames", o->frames,
                    "With --tasks: t2v / i2v frames; video sources are cut to as many latent "
                    "frames (capped by the model's PE3D table)")
        ->capture_default_str();
    cmd->add_option("--preset", o->preset,
                    "With --tasks: media resize preset for every task (default image_256res)");
    cmd->add_option("--shift", o->shift, "With --tasks: sampler time shift")->capture_default_str();
    cmd->add_option("--cfg", o->cfg, "With --tasks: text CFG scale")->capture_default_str();
    cmd->add_flag("--skip-missing-media", o->skip_missing_media,
                  "With --tasks: skip (and log) items whose image or video is missing instead of "
                  "failing");
    cmd->add_flag("--no-gen", *no_gen,
                  "Without --tasks: skip the gen path (text-only calibration, as the seed's x2t)");
    cmd->add_flag("--no-vit", *no_vit,
                  "Without --tasks: run x2t example files as text only (no ViT rows)");
    cmd->add_option("--vit-preset", o->vit_preset,
                    "Without --tasks: resize preset for x2t media (default image_768res / "
                    "video_480p)");
    cmd->add_option("--seed", o->seed, "Seed for the latents and the reservoirs")
        ->capture_default_str();
    cmd->add_option("--world-size", o->world_size,
                    "Ranks in all (needed with $JOB_COMPLETION_INDEX; checked against others)")
        ->check(CLI::Range(1, 1 << 20));
    cmd->add_option("--merge-wait", o->merge_wait,
                    "Seconds rank 0 waits for the other parts (default: 3600 under mpirun, "
                    "else 0)");
    cmd->add_option("--merge", *merge,
                    "OUT [PART...]: join partial files (default OUT.parts/rank-*.safetensors) "
                    "into OUT")
        ->expected(1, -1);
    cmd->add_flag("--hessian", o->hessian,
                  "Also record XᵀX over every input (<linear>.hessian, packed upper triangle), "
                  "which GPTQ then uses instead of the reservoir rows (one rank only)");
    cmd->callback([o, no_gen, no_vit, merge] {
        if (!merge->empty()) {
            const std::string out = merge->front();
            calibrate_merge(out, std::vector<std::string>(merge->begin() + 1, merge->end()));
            log_info("calibrate: merged into ", out);
            return;
        }
        if (o->model.empty() || o->out.empty())
            fail("calibrate: --model and -o are required (or --merge OUT)");
        o->gen = !*no_gen;
        o->vit = !*no_vit;
        log_info("lancet: ", kernels::runtime_description(default_pool()));
        calibrate(*o);
    });
}

}  // namespace lancet::cli
