// `lancet inspect`: what a checkpoint holds (components, dtypes, parameters, bits per weight,
// config) read from the headers alone, or one tensor's statistics.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "io/tensor_source.h"
#include "model/lance_checkpoint.h"
#include "model/wan_vae_tensors.h"

namespace lancet::cli {

namespace fs = std::filesystem;

namespace {

struct Tally {
    int64_t tensors = 0, params = 0;
    uint64_t bytes = 0;
};

std::string human_bytes(double b) {
    char buf[32];
    if (b >= 1e9)
        std::snprintf(buf, sizeof buf, "%.2f GB", b / 1e9);
    else if (b >= 1e6)
        std::snprintf(buf, sizeof buf, "%.1f MB", b / 1e6);
    else
        std::snprintf(buf, sizeof buf, "%.1f kB", b / 1e3);
    return buf;
}

void print_tensor_stats(const std::string& name, const std::string& file, const TensorView& v) {
    const std::vector<float> x = to_f32(v);
    double sum = 0, sum2 = 0, abs_sum = 0;
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    int64_t nan = 0, inf = 0, zeros = 0;
    for (float f : x) {
        if (std::isnan(f)) {
            ++nan;
            continue;
        }
        if (std::isinf(f)) {
            ++inf;
            continue;
        }
        zeros += f == 0.0f;
        lo = std::min(lo, f);
        hi = std::max(hi, f);
        sum += f;
        sum2 += static_cast<double>(f) * f;
        abs_sum += std::fabs(f);
    }
    const double n = static_cast<double>(x.size() - nan - inf);
    const double mean = n > 0 ? sum / n : 0;
    std::printf("tensor:  %s\nfile:    %s\ndtype:   %s\nshape:   %s (%" PRId64 " elements, %s)\n",
                name.c_str(), file.c_str(), std::string(dtype_name(v.dtype)).c_str(),
                shape_str(v.shape).c_str(), v.numel(),
                human_bytes(static_cast<double>(v.nbytes)).c_str());
    if (x.empty()) return;
    std::printf("min %.6g  max %.6g  mean %.6g  std %.6g  mean|x| %.6g\n", lo, hi, mean,
                n > 0 ? std::sqrt(std::max(0.0, sum2 / n - mean * mean)) : 0.0,
                n > 0 ? abs_sum / n : 0.0);
    std::printf("zeros %" PRId64 "  nan %" PRId64 "  inf %" PRId64 "\n", zeros, nan, inf);
}

// A bare tensor file: a safetensors file (statistics, a ViT file, anything) or a PyTorch state
// dict (the Wan2.2 VAE ships as Wan2.2_VAE.pth, read without running any pickle). Counts by dtype.
void inspect_file(const std::string& path, const std::string& tensor) {
    const std::unique_ptr<TensorSource> src = open_tensor_source(path);
    if (!tensor.empty()) {
        const std::string& file = src->file_of(tensor);
        print_tensor_stats(tensor, file, src->get(tensor));
        return;
    }
    std::map<std::string, Tally> by_dtype;
    Tally total;
    for (const std::string& n : src->names()) {
        const TensorInfo e = src->info(n);
        for (Tally* x : {&by_dtype[std::string(dtype_name(e.dtype))], &total}) {
            ++x->tensors;
            x->params += shape_numel(e.shape);
            x->bytes += e.nbytes;
        }
    }
    const std::string format = src->format() == "safetensors" ? "" : " (" + src->format() + ")";
    std::printf("file:    %s%s\ntensors: %" PRId64 ", %" PRId64 " elements, %s\n",
                src->source().c_str(), format.c_str(), total.tensors, total.params,
                human_bytes(static_cast<double>(total.bytes)).c_str());
    for (const auto& [dt, t] : by_dtype)
        std::printf("  %-8s %6" PRId64 " tensors  %14" PRId64 " elements\n", dt.c_str(), t.tensors,
                    t.params);
    for (const auto& [k, v] : src->metadata())
        std::printf("metadata: %s = %s\n", k.c_str(), v.c_str());
    // A Wan2.2 VAE: its structure as recovered from the shapes, or why it would not load.
    const std::vector<std::string> names = src->names();
    const auto has = [&](const char* n) {
        return std::find(names.begin(), names.end(), n) != names.end();
    };
    if (has("encoder.conv1.weight") && has("decoder.conv1.weight")) {
        try {
            const WanVaeFile vae(path);
            const WanVaeConfig& c = vae.config();
            std::string mult, tdown;
            for (int64_t m : c.dim_mult) mult += (mult.empty() ? "" : ",") + std::to_string(m);
            for (bool b : c.temporal_downsample)
                tdown += tdown.empty() ? "" : ",", tdown += b ? "T" : "F";
            std::printf("Wan2.2 VAE: dim %" PRId64 ", dec_dim %" PRId64 ", z_dim %" PRId64
                        ", dim_mult [%s], %d residual blocks, temporal_downsample [%s]\n",
                        c.dim, c.dec_dim, c.z_dim, mult.c_str(), c.num_res_blocks, tdown.c_str());
        } catch (const Error& e) {
            std::printf("Wan2.2 VAE: would not load: %s\n", e.what());
        }
    }
}

void inspect_model(const std::string& dir, const std::string& vit_dir, const std::string& tensor,
                   bool json_out) {
    OpenOptions opt;
    opt.vit_dir = vit_dir;
    opt.strict = false;
    auto ck = LanceCheckpoint::open(dir, opt);
    if (!tensor.empty()) {
        if (!ck->has_tensor(tensor)) fail(dir, ": no tensor \"", tensor, "\"");
        print_tensor_stats(tensor,
                           tensor.rfind("vit_model.", 0) == 0 && ck->vit_file()
                               ? ck->vit_file()->source()
                               : ck->main().file_of(tensor),
                           ck->tensor(tensor));
        return;
    }
    const LanceConfig& c = ck->config();
    const char* kind = ck->kind() == CheckpointKind::Original ? "original"
                       : ck->kind() == CheckpointKind::Awq    ? "AWQ"
                                                              : "NVFP4";
    // Component tallies over what is on disk. Quantized linears count their logical [out, in]
    // parameters once (on .qweight); their scales and zeros add bytes only.
    std::map<std::string, Tally> by_comp;
    std::map<std::string, Tally> by_dtype;
    Tally total;
    int quantized = 0;
    auto count = [&](const Checkpoint& file, const TensorSpec& s, const std::string& name) {
        if (!file.has(name)) return;
        const TensorEntry& e = file.entry(name);
        int64_t params = shape_numel(e.shape);
        if (name.ends_with(".qweight")) {
            ++quantized;
            params = ck->quant_meta()
                         ->per_weight.at(name.substr(0, name.size() - 8) + ".weight")
                         .shape[0] *
                     ck->quant_meta()
                         ->per_weight.at(name.substr(0, name.size() - 8) + ".weight")
                         .shape[1];
        } else if (name.ends_with(".scales") || name.ends_with(".zeros") ||
                   name.ends_with(".scales_fp8") || name.ends_with(".scales_bf16")) {
            params = 0;
        }
        for (Tally* t : {&by_comp[std::string(component_name(s.component))],
                         &by_dtype[std::string(dtype_name(e.dtype))], &total}) {
            ++t->tensors;
            t->params += params;
            t->bytes += e.end - e.begin;
        }
    };
    for (const TensorSpec& s : ck->expected()) count(ck->main(), s, s.name);
    if (ck->vit_file())
        for_each_vit_tensor(c.vision, "",
                            [&](const TensorSpec& s) { count(*ck->vit_file(), s, s.name); });

    if (json_out) {
        nlohmann::json j;
        j["folder"] = ck->dir();
        j["kind"] = kind;
        j["config"] = c.to_json();
        for (const auto& [name, t] : by_comp)
            j["components"][name] = {
                {"tensors", t.tensors}, {"params", t.params}, {"bytes", t.bytes}};
        for (const auto& [name, t] : by_dtype)
            j["dtypes"][name] = {{"tensors", t.tensors}, {"bytes", t.bytes}};
        j["total"] = {{"tensors", total.tensors},
                      {"params", total.params},
                      {"bytes", total.bytes},
                      {"bits_per_weight", total.params ? 8.0 * total.bytes / total.params : 0.0}};
        j["quantized_linears"] = quantized;
        j["problems"] = ck->problems();
        std::printf("%s\n", j.dump(2).c_str());
    } else {
        std::printf("folder:   %s\n", ck->dir().c_str());
        std::printf("kind:     %s checkpoint, ViT %s\n", kind,
                    ck->vit_layout() == VitLayout::Bundled ? "bundled (vit_model.*)"
                    : ck->vit_file() ? ("separate: " + ck->vit_file()->source()).c_str()
                                     : "separate, not found");
        std::printf("decoder:  %d layers, hidden %d, heads %d/%d (head_dim %d), ffn %d, vocab %d\n",
                    c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
                    c.num_key_value_heads, c.head_dim(), c.intermediate_size, c.vocab_size);
        std::printf(
            "rope:     M-RoPE sections [%d, %d, %d], theta %g; rms_norm_eps %g; context %d\n",
            c.mrope_section[0], c.mrope_section[1], c.mrope_section[2], c.rope_theta,
            c.rms_norm_eps, c.max_position_embeddings);
        std::printf("special:  vision_start %" PRId64 ", vision_end %" PRId64 ", image_pad %" PRId64
                    ", video_pad %" PRId64 ", eos %" PRId64 "\n",
                    c.vision_start_token_id, c.vision_end_token_id, c.image_token_id,
                    c.video_token_id, c.eos_token_id);
        std::printf("vit:      depth %d, hidden %d, heads %d, ffn %d, patch %d, merge %d, out %d\n",
                    c.vision.depth, c.vision.hidden_size, c.vision.num_heads,
                    c.vision.intermediate_size, c.vision.patch_size, c.vision.spatial_merge_size,
                    c.vision.out_hidden_size);
        std::string full;
        for (const int b : c.vision.fullatt_block_indexes)
            full += (full.empty() ? "" : ", ") + std::to_string(b);
        std::printf("          window %d px, full attention at blocks [%s]\n", c.vision.window_size,
                    full.c_str());
        if (const AwqMeta* m = ck->quant_meta())
            std::printf("quant:    %s, group %d, scheme %s, %d quantized linears\n",
                        std::string(quant_format_name(m->format)).c_str(), m->group_size,
                        m->scheme.c_str(), quantized);
        std::printf(
            "\n| component | tensors | parameters | bytes | bits/weight "
            "|\n|---|---:|---:|---:|---:|\n");
        auto row = [](const std::string& name, const Tally& t) {
            std::printf("| %s | %" PRId64 " | %" PRId64 " | %s | %.3f |\n", name.c_str(), t.tensors,
                        t.params, human_bytes(static_cast<double>(t.bytes)).c_str(),
                        t.params ? 8.0 * t.bytes / t.params : 0.0);
        };
        for (const auto& [name, t] : by_comp) row(name, t);
        row("**total**", total);
        std::printf("\n| dtype | tensors | bytes |\n|---|---:|---:|\n");
        for (const auto& [name, t] : by_dtype)
            std::printf("| %s | %" PRId64 " | %s |\n", name.c_str(), t.tensors,
                        human_bytes(static_cast<double>(t.bytes)).c_str());
    }
    if (!ck->problems().empty())
        fail(ck->main().source(), ": ", ck->problems().size(),
             " problem(s): ", ck->problems_summary());
}

}  // namespace

void add_inspect(CLI::App& app) {
    auto* cmd =
        app.add_subcommand("inspect", "Summarise a checkpoint (or one tensor) from its headers");
    auto path = std::make_shared<std::string>();
    auto tensor = std::make_shared<std::string>();
    auto vit = std::make_shared<std::string>();
    auto json_out = std::make_shared<bool>(false);
    cmd->add_option("path", *path,
                    "Model folder, a .safetensors file, or a PyTorch .pth state dict")
        ->required();
    cmd->add_option("--tensor", *tensor, "Print one tensor's shape, dtype and statistics");
    cmd->add_option("--vit", *vit, "Folder with config.json + vit.safetensors (Lance_3B layout)");
    cmd->add_flag("--json", *json_out, "Machine-readable summary");
    cmd->callback([path, tensor, vit, json_out, cmd] {
        if (cmd->count("--tensor") && tensor->empty())
            fail("inspect: --tensor needs a tensor name");
        std::error_code ec;
        if (fs::is_directory(*path, ec))
            inspect_model(*path, *vit, *tensor, *json_out);
        else if (fs::exists(*path, ec))
            inspect_file(*path, *tensor);
        else
            fail(*path, ": no such file or folder");
    });
}

}  // namespace lancet::cli
