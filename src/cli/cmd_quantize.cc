// `lancet quantize` (AWQ / RTN INT4 checkpoint writer) and `lancet stats` (merge, synth).
#include <array>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "pipeline/quantize.h"
#include "pipeline/stats_synth.h"
#include "quant/stats_file.h"

namespace lancet::cli {

void add_quantize(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "quantize",
        "Quantize a Lance checkpoint to AWQ INT4 (the published awq_state_dict layout)");
    auto opt = std::make_shared<QuantizeOptions>();
    auto include = std::make_shared<std::vector<std::string>>();
    auto no = std::make_shared<std::array<bool, 4>>();  // search, clip, fuse-ov, fuse-updown
    cmd->add_option("--method", opt->method,
                    "awq (activation-aware scales + clipping), gptq (error feedback), awq-gptq "
                    "(both; the three need --stats) or rtn")
        ->check(CLI::IsMember({"awq", "gptq", "awq-gptq", "rtn"}))
        ->capture_default_str();
    cmd->add_option("--group-size", opt->group_size,
                    "Group size 32, 64 or 128 (a linear whose width it does not divide falls back "
                    "to a smaller one, with a warning)")
        ->capture_default_str();
    cmd->add_option("--stats", opt->stats, "Activation statistics (lancet stats synth / merge)");
    cmd->add_option("--src", opt->src, "Source checkpoint folder (never written)")->required();
    cmd->add_option("--out", opt->out, "Output folder")->required();
    cmd->add_flag("--force", opt->force, "Replace an existing output folder");
    cmd->add_option("--include", *include, "Also quantize: lm_head, vit (repeatable)")
        ->check(CLI::IsMember({"lm_head", "vit"}));
    cmd->add_flag("--no-search", (*no)[0], "No AWQ scale search (clipping search only)");
    cmd->add_flag("--no-clip", (*no)[1], "No clipping search");
    cmd->add_flag("--no-fuse-ov", (*no)[2], "Do not fold o_proj scales into v_proj");
    cmd->add_flag("--no-fuse-updown", (*no)[3], "Do not fold down_proj scales into up_proj");
    cmd->add_option("--damp", opt->gptq_damp,
                    "GPTQ dampening: this fraction of mean diag(XᵀX) added to the diagonal")
        ->capture_default_str();
    cmd->add_flag("--act-order", opt->act_order,
                  "GPTQ: quantize columns by descending diag(XᵀX) (grids fixed first, from the "
                  "original order)");
    cmd->add_flag(
        "--no-full-hessian", [opt](int64_t) { opt->full_hessian = false; },
        "GPTQ: build H from the reservoir's search rows even when the statistics carry "
        "the full XᵀX");
    // Sequential calibration: calibrate's options, recorded here layer by layer.
    cmd->add_flag("--sequential", opt->sequential,
                  "Record each layer's statistics with the earlier layers already quantized "
                  "(needs --prompts; --stats then serves lm_head and the ViT only)");
    cmd->add_option("--prompts", opt->calib.prompts,
                    "--sequential: calibration prompt files, as for calibrate");
    cmd->add_option("--max-rows", opt->max_rows,
                    "--sequential: residual-stream rows held (rows x hidden x 4 bytes); later "
                    "sequences are left out")
        ->capture_default_str();
    cmd->add_option("--rows", opt->calib.rows, "--sequential: reservoir rows kept per linear")
        ->capture_default_str();
    cmd->add_option("--max-prompt-tokens", opt->calib.max_prompt_tokens,
                    "--sequential: cut longer prompts")
        ->capture_default_str();
    cmd->add_option("--latent-size", opt->calib.latent_hw,
                    "--sequential: side of the gen path's noisy latent block")
        ->capture_default_str();
    cmd->add_flag(
        "--no-gen", [opt](int64_t) { opt->calib.gen = false; },
        "--sequential: calibrate the und path only");
    cmd->add_flag(
        "--no-vit", [opt](int64_t) { opt->calib.vit = false; },
        "--sequential: x2t example files as text only");
    cmd->add_option("--seed", opt->calib.seed, "--sequential: seed for latents and reservoirs")
        ->capture_default_str();
    cmd->add_flag("--hessian", opt->calib.hessian,
                  "--sequential: accumulate each layer's full XᵀX in memory for GPTQ");
    auto no_compare = std::make_shared<bool>(false);
    cmd->add_flag("--no-compare", *no_compare,
                  "gptq/awq-gptq: skip the other GPTQ variant the report compares against");
    cmd->callback([opt, include, no, no_compare] {
        opt->compare = !*no_compare;
        for (const std::string& i : *include) {
            if (i == "lm_head") opt->include_lm_head = true;
            if (i == "vit") opt->include_vit = true;
        }
        opt->search = !(*no)[0];
        opt->clip = !(*no)[1];
        opt->fuse_ov = !(*no)[2];
        opt->fuse_updown = !(*no)[3];
        const auto report = quantize_checkpoint(*opt);
        std::printf("wrote %s (%s, group size %d) in %.1f s\n", opt->out.c_str(),
                    opt->method.c_str(), opt->group_size,
                    report["totals"]["seconds"].get<double>());
        std::printf("%s", report_table(report).c_str());
    });
}

void add_stats(CLI::App& app) {
    auto* cmd = app.add_subcommand("stats", "Activation statistics files: merge, synth");
    cmd->require_subcommand(1);

    auto* merge = cmd->add_subcommand("merge", "Merge statistics files (token-weighted)");
    auto inputs = std::make_shared<std::vector<std::string>>();
    auto out = std::make_shared<std::string>();
    auto capacity = std::make_shared<int>(0);
    merge->add_option("inputs", *inputs, "Statistics files")->required()->check(CLI::ExistingFile);
    merge->add_option("-o,--out", *out, "Output file")->required();
    merge->add_option("--rows", *capacity,
                      "Reservoir rows kept per linear (default: the largest input capacity)");
    merge->callback([inputs, out, capacity] {
        quant::merge_stats_files(*inputs, *out, *capacity);
        std::printf("wrote %s from %zu files\n", out->c_str(), inputs->size());
    });

    auto* synth = cmd->add_subcommand(
        "synth",
        "Statistics from synthetic activations consistent with a checkpoint, without running it "
        "(`lancet calibrate` records the real ones)");
    auto so = std::make_shared<SynthStatsOptions>();
    synth->add_option("--model", so->model, "Checkpoint folder (e.g. from lancet synth)")
        ->required();
    synth->add_option("-o,--out", so->out, "Output file")->required();
    synth->add_option("--tokens", so->tokens, "Synthetic tokens per linear")->capture_default_str();
    synth->add_option("--rows", so->rows, "Reservoir rows kept per linear")->capture_default_str();
    synth->add_option("--seed", so->seed, "Seed")->capture_default_str();
    synth->add_flag("--und-only", so->und_only,
                    "Only the und path (like the seed's x2t calibration): gen gets none");
    synth->callback([so] {
        synth_stats(*so);
        std::printf("wrote %s\n", so->out.c_str());
    });
}

}  // namespace lancet::cli
