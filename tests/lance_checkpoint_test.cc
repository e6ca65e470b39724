// The Lance inventory, config validation, synth and the model-folder loader, on synthetic folders.
#include "model/lance_checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/numeric.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/positions.h"
#include "model/synth.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using test::synth_tiny;
using test::TempDir;

// Copies `src` to `dst` through the writer, letting `edit` drop (return false), rename or reshape
// tensors on the way.
struct Edit {
    std::string name;
    DType dtype;
    Shape shape;
    std::vector<uint8_t> bytes;
};
void rewrite(const std::string& src_file, const std::string& dst_file,
             const std::function<bool(Edit&)>& edit) {
    auto ck = Checkpoint::open(src_file);
    std::vector<Edit> kept;
    for (const std::string& n : ck->names()) {
        const TensorView v = ck->view(n);
        Edit e{n, v.dtype, v.shape, std::vector<uint8_t>(v.data, v.data + v.nbytes)};
        if (edit(e)) kept.push_back(std::move(e));
    }
    SafetensorsWriter w(dst_file);
    for (const Edit& e : kept) w.add(e.name, e.dtype, e.shape);
    for (const Edit& e : kept) w.write(e.name, e.bytes.data(), e.bytes.size());
    w.finish();
}

void copy_folder(const std::string& from, const std::string& to) {
    fs::create_directories(to);
    for (const auto& e : fs::directory_iterator(from))
        if (e.path().filename() != "model.safetensors")
            fs::copy(e.path(), fs::path(to) / e.path().filename(), fs::copy_options::recursive);
}

TEST(LanceInventory, MatchesThePublishedCounts) {
    const LanceConfig c = synth_config("3b");
    const auto video = lance_tensor_list(c, VitLayout::Bundled);
    const auto image = lance_tensor_list(c, VitLayout::Separate, 4096);
    EXPECT_EQ(video.size(), 1411u);
    EXPECT_EQ(image.size(), 1021u);
    int64_t pv = 0, pi = 0;
    for (const auto& s : video) pv += shape_numel(s.shape);
    for (const auto& s : image) pi += shape_numel(s.shape);
    // Parameter totals of the two Hugging Face files (architecture spec §6.1).
    EXPECT_EQ(pv, 7105548336);
    EXPECT_EQ(pi, 6185205808);
    EXPECT_EQ(lance_layer_linears(0).size(), 14u);
}

TEST(LanceInventory, PathNamesFollowTheCheckpoint) {
    // The spelling of both experts as the published checkpoint has it (spec §1.3).
    const PathNames u = path_names(3, false), g = path_names(3, true);
    EXPECT_EQ(u.input_norm, "language_model.model.layers.3.input_layernorm.weight");
    EXPECT_EQ(g.input_norm, "language_model.model.layers.3.input_layernorm_moe_gen.weight");
    EXPECT_EQ(g.post_norm, "language_model.model.layers.3.post_attention_layernorm_moe_gen.weight");
    EXPECT_EQ(u.q_norm, "language_model.model.layers.3.self_attn.q_norm.weight");
    EXPECT_EQ(g.k_norm, "language_model.model.layers.3.self_attn.k_norm_moe_gen.weight");
    EXPECT_EQ(u.weight(PathLinear::Q), "language_model.model.layers.3.self_attn.q_proj.weight");
    EXPECT_EQ(g.bias(PathLinear::V), "language_model.model.layers.3.self_attn.v_proj_moe_gen.bias");
    EXPECT_EQ(g[PathLinear::O], "language_model.model.layers.3.self_attn.o_proj_moe_gen");
    EXPECT_EQ(u[PathLinear::Gate], "language_model.model.layers.3.mlp.gate_proj");
    EXPECT_EQ(g[PathLinear::Down], "language_model.model.layers.3.mlp_moe_gen.down_proj");
    // The inventory's layer tensors are exactly the path visitor's, und then gen per layer, and
    // each linear's input width is the one its statistics group declares.
    const LanceConfig c = synth_config("tiny");
    std::vector<std::string> want, got;
    for (int i = 0; i < c.num_hidden_layers; ++i)
        for (int gen = 0; gen < 2; ++gen)
            for_each_path_tensor(c, i, gen == 1, [&](const TensorSpec& s) {
                want.push_back(s.name);
                if (s.kind != TensorKind::LinearWeight) return;
                const auto l = static_cast<PathLinear>(s.path_linear);
                EXPECT_EQ(s.shape[1], linear_input_width(c, linear_input(l))) << s.name;
            });
    for (const TensorSpec& s : lance_tensor_list(c, VitLayout::Bundled))
        if (s.layer >= 0 && s.component != Component::Vit) got.push_back(s.name);
    EXPECT_EQ(got, want);
    EXPECT_EQ(want.size(), static_cast<size_t>(c.num_hidden_layers) * 2 * 14);
}

TEST(LanceConfig, ReadsTheRealConfigValues) {
    const fs::path shared = test::shared_dir();
    if (shared.empty()) GTEST_SKIP() << "../shared absent";
    // shared/data/qwen2-tokenizer/config.json holds the field values of Lance's llm_config.json.
    const LanceConfig c = LanceConfig::load((shared / "data/qwen2-tokenizer/config.json").string());
    EXPECT_EQ(c.hidden_size, 2048);
    EXPECT_EQ(c.head_dim(), 128);
    EXPECT_EQ(c.kv_dim(), 256);
    EXPECT_EQ(c.mrope_section, (std::array<int, 3>{16, 24, 24}));
    EXPECT_EQ(c.video_token_id, 151656);
    EXPECT_EQ(c.vision_start_token_id, 151652);
    EXPECT_EQ(c.vision.depth, 32);
    EXPECT_EQ(c.vision.fullatt_block_indexes, (std::vector<int>{7, 15, 23, 31}));
    // And the writer round-trips it.
    const LanceConfig d = LanceConfig::from_json(c.to_json(), "rt");
    EXPECT_EQ(d.to_json(), c.to_json());
}

TEST(LanceConfig, RejectsMissingAndAbsurdKeys) {
    const nlohmann::json good = synth_config("tiny").to_json();
    auto expect_bad = [&](const std::function<void(nlohmann::json&)>& edit, const char* fragment) {
        nlohmann::json j = good;
        edit(j);
        try {
            LanceConfig::from_json(j, "llm_config.json");
            FAIL() << "accepted: " << fragment;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("llm_config.json"), std::string::npos);
        }
    };
    expect_bad([](auto& j) { j.erase("hidden_size"); }, "missing key \"hidden_size\"");
    expect_bad([](auto& j) { j["hidden_size"] = -4; }, "out of range");
    expect_bad([](auto& j) { j["num_hidden_layers"] = 1000000; }, "out of range");
    expect_bad([](auto& j) { j["hidden_size"] = "64"; }, "must be an integer");
    expect_bad([](auto& j) { j["num_key_value_heads"] = 3; }, "not a multiple");
    expect_bad([](auto& j) { j["rope_scaling"]["mrope_section"] = {2, 3, 4}; }, "sums to 9");
    expect_bad([](auto& j) { j.erase("rope_scaling"); }, "mrope_section");
    expect_bad([](auto& j) { j["video_token_id"] = 100000; }, "video_token_id");
    expect_bad([](auto& j) { j["rms_norm_eps"] = 5.0; }, "rms_norm_eps");
    expect_bad([](auto& j) { j["vision_config"]["out_hidden_size"] = 7; }, "out_hidden_size");
    expect_bad([](auto& j) { j.erase("vision_config"); }, "vision_config");
}

TEST(Synth, TinyLoadsAndIsDeterministic) {
    TempDir dir;
    const std::string a = synth_tiny(dir, "a", 5), b = synth_tiny(dir, "b", 5),
                      c = synth_tiny(dir, "c", 6);
    auto ck = LanceCheckpoint::open(a);
    EXPECT_EQ(ck->kind(), CheckpointKind::Original);
    EXPECT_EQ(ck->vit_layout(), VitLayout::Bundled);
    // 69 decoder-side tensors plus the ViT's 1 + 12 per block (4 blocks) + 5.
    EXPECT_EQ(ck->main().names().size(), 69u + 1 + 12 * 4 + 5);
    EXPECT_TRUE(ck->problems().empty());
    EXPECT_EQ(test::read_file(fs::path(a) / "model.safetensors"),
              test::read_file(fs::path(b) / "model.safetensors"));
    EXPECT_NE(test::read_file(fs::path(a) / "model.safetensors"),
              test::read_file(fs::path(c) / "model.safetensors"));
    // Special ids come from the synthetic tokenizer, not from Qwen2's numbering.
    EXPECT_EQ(ck->config().video_token_id, 269);
    const nlohmann::json tc = read_json_file((fs::path(a) / "tokenizer_config.json").string());
    EXPECT_EQ(tc["added_tokens_decoder"]["269"]["content"], "<|video_pad|>");
}

TEST(Synth, NoOutliersLeavesEveryNormChannelNearOne) {
    TempDir dir;
    SynthOptions o;
    o.preset = "tiny";
    o.seed = 9;
    o.outliers = false;
    o.out = (dir / "plain").string();
    synth_checkpoint(o);
    auto ck = LanceCheckpoint::open(o.out);
    const OutlierPlan plan = synth_outliers(ck->config(), 9);
    for (const char* name :
         {"language_model.model.layers.1.post_attention_layernorm_moe_gen.weight",
          "language_model.model.layers.0.input_layernorm.weight"}) {
        const auto g = to_f32(ck->tensor(name));
        float worst = 0;
        for (float v : g) worst = std::max(worst, std::fabs(v - 1.0f));
        EXPECT_LT(worst, 0.5f) << name;  // the planted channels would be 20-100
        for (int c : plan.channels) EXPECT_LT(g[c], 2.0f) << name << " channel " << c;
    }
    // No loud v_proj rows either: every row's RMS within 8x of the median row's (planted loud
    // rows are 20-80x).
    const auto w = to_f32(ck->tensor("language_model.model.layers.0.self_attn.v_proj.weight"));
    const int64_t in = ck->tensor("language_model.model.layers.0.self_attn.v_proj.weight").shape[1];
    std::vector<double> rms;
    for (size_t r = 0; r < w.size() / in; ++r) {
        double s = 0;
        for (int64_t i = 0; i < in; ++i) s += double(w[r * in + i]) * w[r * in + i];
        rms.push_back(std::sqrt(s / in));
    }
    std::vector<double> sorted = rms;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_LT(sorted.back(), 8 * sorted[sorted.size() / 2]);
}

TEST(Synth, PlantsOutlierChannelsAndRealisticWeights) {
    TempDir dir;
    const std::string a = synth_tiny(dir, "a", 9, DType::BF16);
    auto ck = LanceCheckpoint::open(a);
    const OutlierPlan plan = synth_outliers(ck->config(), 9);
    ASSERT_GE(plan.channels.size(), 2u);
    const auto g =
        to_f32(ck->tensor("language_model.model.layers.1.post_attention_layernorm_moe_gen.weight"));
    EXPECT_EQ(
        ck->tensor("language_model.model.layers.1.post_attention_layernorm_moe_gen.weight").dtype,
        DType::BF16);
    for (size_t k = 0; k < plan.channels.size(); ++k) {
        EXPECT_GE(plan.gains[k], 20.0f);
        EXPECT_LE(plan.gains[k], 100.0f);
        EXPECT_GT(g[plan.channels[k]], 10.0f);
    }
    // Norm gains are not all 1; other channels sit near 1.
    int near_one = 0, not_one = 0;
    for (size_t c = 0; c < g.size(); ++c) {
        near_one += std::fabs(g[c] - 1.0f) < 0.5f;
        not_one += g[c] != 1.0f;
    }
    EXPECT_GE(near_one, static_cast<int>(g.size() - plan.channels.size()) - 2);
    EXPECT_GT(not_one, static_cast<int>(g.size()) / 2);
    // Weight rows are heavy-tailed: kurtosis well above a Gaussian's 3.
    const auto w = to_f32(ck->tensor("language_model.model.layers.0.mlp.gate_proj.weight"));
    double m2 = 0, m4 = 0;
    for (float x : w) m2 += x * x, m4 += static_cast<double>(x) * x * x * x;
    m2 /= w.size(), m4 /= w.size();
    EXPECT_GT(m4 / (m2 * m2), 4.0);
    // The PE3D table follows the spec's formula: row (t=0, h=1, w=2).
    const auto pe = ck->tensor("latent_pos_embed.pos_embed");
    std::vector<double> want(64);
    pe3d_row(64, 1 * 64 + 2, 64, want.data());
    const auto got = to_f32(pe);
    for (int c = 0; c < 64; ++c) EXPECT_NEAR(got[(64 + 2) * 64 + c], want[c], 4e-3) << c;
    EXPECT_EQ(want[0], 0.0);                      // sin(0) on the t axis
    EXPECT_NEAR(want[20], std::sin(1.0), 1e-12);  // first h frequency, h = 1
}

TEST(LanceCheckpoint, NamesMissingUnexpectedAndMisshapedTensors) {
    TempDir dir;
    const std::string src = synth_tiny(dir);
    const std::string bad = (dir / "bad").string();
    copy_folder(src, bad);
    rewrite(src + "/model.safetensors", bad + "/model.safetensors", [](Edit& e) {
        if (e.name == "language_model.model.layers.1.mlp.up_proj.weight") return false;
        if (e.name == "vae2llm.bias") e.name = "vae2llm.bias_typo";
        if (e.name == "language_model.model.norm.weight") {
            e.shape = {32, 2};
        }
        return true;
    });
    try {
        LanceCheckpoint::open(bad);
        FAIL() << "accepted a broken checkpoint";
    } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("missing language_model.model.layers.1.mlp.up_proj.weight"),
                  std::string::npos)
            << m;
        EXPECT_NE(m.find("unexpected vae2llm.bias_typo"), std::string::npos) << m;
        EXPECT_NE(m.find("language_model.model.norm.weight has shape [32, 2], expected [64]"),
                  std::string::npos)
            << m;
        EXPECT_NE(m.find("missing vae2llm.bias"), std::string::npos) << m;
        EXPECT_EQ(m.find('\n'), std::string::npos);
    }
    // The CLI says the same in one line with exit code 1 and still prints the summary.
    const auto r = test::run_lancet("inspect " + bad);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.signal, 0);
    EXPECT_NE(r.err.find("4 problem(s)"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(LanceCheckpoint, LoadsTheSeparateVitLayout) {
    TempDir dir;
    const std::string src = synth_tiny(dir);
    // Lance_3B layout: downloads/{Lance_3B, Qwen2.5-VL-ViT}.
    const std::string model = (dir / "Lance_3B").string(), vit = (dir / "Qwen2.5-VL-ViT").string();
    copy_folder(src, model);
    fs::create_directories(vit);
    rewrite(src + "/model.safetensors", model + "/model.safetensors",
            [](Edit& e) { return e.name.rfind("vit_model.", 0) != 0; });
    rewrite(src + "/model.safetensors", vit + "/vit.safetensors", [](Edit& e) {
        if (e.name.rfind("vit_model.", 0) != 0) return false;
        e.name = e.name.substr(10);
        return true;
    });
    fs::copy_file(src + "/Qwen2.5-VL-ViT/config.json", vit + "/config.json");
    auto ck = LanceCheckpoint::open(model);
    EXPECT_EQ(ck->vit_layout(), VitLayout::Separate);
    ASSERT_TRUE(ck->has_vit());
    const auto a = to_f32(ck->tensor("vit_model.blocks.1.attn.qkv.weight"));
    auto orig = LanceCheckpoint::open(src);
    EXPECT_EQ(a, to_f32(orig->tensor("vit_model.blocks.1.attn.qkv.weight")));
}

TEST(LanceCheckpoint, BadFoldersFailInOneLine) {
    TempDir dir;
    const std::string src = synth_tiny(dir);
    struct Case {
        std::string name;
        std::function<void(const std::string&)> make;
        const char* fragment;
    };
    const std::vector<Case> cases = {
        {"noconfig", [&](const std::string& d) { fs::create_directories(d); },
         "no llm_config.json"},
        {"badjson",
         [&](const std::string& d) {
             copy_folder(src, d);
             fs::copy_file(src + "/model.safetensors", d + "/model.safetensors");
             test::write_file(d + "/llm_config.json", "{\"hidden_size\": 64,");
         },
         "invalid JSON"},
        {"noweights", [&](const std::string& d) { copy_folder(src, d); }, "no model.safetensors"},
        {"truncated",
         [&](const std::string& d) {
             copy_folder(src, d);
             std::string bytes = test::read_file(src + "/model.safetensors");
             bytes.resize(bytes.size() - 1000);
             test::write_file(d + "/model.safetensors", bytes);
         },
         "past the end of the data section"},
        {"awqnometa",
         [&](const std::string& d) {
             copy_folder(src, d);
             fs::copy_file(src + "/model.safetensors", d + "/awq_state_dict.safetensors");
         },
         "without awq_meta.json"},
    };
    for (const Case& c : cases) {
        const std::string d = (dir / c.name).string();
        c.make(d);
        const auto r = test::run_lancet("inspect " + d);
        EXPECT_EQ(r.exit_code, 1) << c.name << ": " << r.err;
        EXPECT_EQ(r.signal, 0) << c.name;
        EXPECT_NE(r.err.find(c.fragment), std::string::npos) << c.name << ": " << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << c.name << ": " << r.err;
    }
    const auto r = test::run_lancet("inspect " + (dir / "nowhere").string());
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("no such file or folder"), std::string::npos);
}

TEST(Synth, RefusesToOverwriteWithoutForce) {
    TempDir dir;
    const std::string a = synth_tiny(dir);
    const auto r = test::run_lancet("synth --preset tiny -o " + a);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("already exists"), std::string::npos) << r.err;
    const auto r2 = test::run_lancet("synth --preset tiny --seed 2 --force -o " + a);
    EXPECT_EQ(r2.exit_code, 0) << r2.err;
    // Nothing but the folder itself is left behind (no .tmp or .old siblings).
    EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), {}), 1);
}

}  // namespace
}  // namespace lancet

namespace lancet {
namespace {

TEST(Cli, OutOfRangeThreadsAndEmptyTensorNameAreOneLineErrors) {
    test::TempDir dir;
    const std::string model = synth_tiny(dir);
    for (const std::string& args : {"-t -1 inspect " + model, "-t 5000 inspect " + model,
                                    "inspect " + model + " --tensor ''"}) {
        const auto r = test::run_lancet(args);
        EXPECT_EQ(r.exit_code, 1) << args;
        EXPECT_EQ(r.err.rfind("lancet: error:", 0), 0u) << args << ": " << r.err;
        EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << ": " << r.err;
    }
}

}  // namespace
}  // namespace lancet
