// `lancet demo`: the built-in end-to-end run on a tiny synthetic checkpoint. It grows with the
// project: today it synthesizes, validates and inspects.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "model/lance_checkpoint.h"
#include "model/synth.h"

namespace lancet::cli {

namespace fs = std::filesystem;

namespace {

void run_demo(const std::string& dir) {
    std::error_code ec;
    // The demo folder is ours to replace, but only when it carries our marker.
    if (fs::exists(dir, ec) && !fs::exists(fs::path(dir) / ".lancet-demo", ec))
        fail(dir, ": exists and was not made by `lancet demo`; pick another --dir");
    fs::create_directories(dir, ec);
    if (ec) fail(dir, ": cannot create: ", ec.message());
    std::FILE* f = std::fopen((fs::path(dir) / ".lancet-demo").c_str(), "w");
    if (!f) fail(dir, ": cannot write");
    std::fclose(f);

    const std::string model = (fs::path(dir) / "tiny").string();
    std::printf("[1/2] synth: tiny Lance_3B_Video-layout checkpoint -> %s\n", model.c_str());
    SynthOptions o;
    o.preset = "tiny";
    o.out = model;
    o.force = true;
    synth_checkpoint(o);

    std::printf("[2/2] load and validate against llm_config.json\n");
    auto ck = LanceCheckpoint::open(model);
    const LanceConfig& c = ck->config();
    int64_t params = 0;
    for (const TensorSpec& s : ck->expected()) params += shape_numel(s.shape);
    std::printf("  %zu tensors, %lld parameters, all names, shapes and dtypes as Lance declares\n",
                ck->main().names().size(), static_cast<long long>(params));
    std::printf("  decoder: %d layers x (und + gen) experts, hidden %d, heads %d/%d, ffn %d\n",
                c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
                c.intermediate_size);
    std::printf("demo done: inspect it with `lancet inspect %s`\n", model.c_str());
}

}  // namespace

void add_demo(CLI::App& app) {
    auto* cmd =
        app.add_subcommand("demo", "Run the built-in end-to-end demo on a tiny synthetic model");
    auto dir = std::make_shared<std::string>("lancet-demo");
    cmd->add_option("--dir", *dir, "Working folder for the demo's files")->capture_default_str();
    cmd->callback([dir] { run_demo(*dir); });
}

}  // namespace lancet::cli
