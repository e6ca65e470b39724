// Calibration: prompt files, statistics recorded at the real linear inputs, and the whole chain
// synth -> calibrate -> quantize showing AWQ closer to the original than RTN.
#include "pipeline/calibrate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "pipeline/perplexity.h"
#include "pipeline/quantize.h"
#include "quant/stats_file.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;
using test::synth_tiny;
using test::TempDir;

TEST(Calibrate, ReadsEveryPromptFormat) {
    TempDir dir;
    test::write_file(dir / "p.txt", "first prompt\n\n  \nsecond\r\n");
    test::write_file(dir / "a.json", R"(["one", "two"])");
    test::write_file(dir / "t2i.json", R"({"000.png": "a cat", "001.png": "a dog"})");
    test::write_file(dir / "x2t.json", R"({"0001": {"interleave_array": ["assets/x/case.png",
        ["Look carefully.", "What is it?", "A pie chart."]]},
        "0002": {"interleave_array": ["Remove the hat.", "config/examples/edit.jpg"]}})");
    auto p = read_calibration_prompts((dir / "p.txt").string());
    ASSERT_EQ(p.size(), 2u);
    EXPECT_EQ(p[1].user, "second");
    EXPECT_EQ(read_calibration_prompts((dir / "a.json").string()).size(), 2u);
    EXPECT_EQ(read_calibration_prompts((dir / "t2i.json").string())[1].user, "a dog");
    p = read_calibration_prompts((dir / "x2t.json").string());
    ASSERT_EQ(p.size(), 2u);
    EXPECT_EQ(p[0].system, "Look carefully.");
    EXPECT_EQ(p[0].user, "What is it?");
    EXPECT_EQ(p[0].assistant, "A pie chart.");
    EXPECT_EQ(p[1].user, "Remove the hat.");
    test::write_file(dir / "empty.txt", "\n\n");
    EXPECT_THROW(read_calibration_prompts((dir / "empty.txt").string()), Error);
    test::write_file(dir / "bad.json", R"({"a": 5})");
    EXPECT_THROW(read_calibration_prompts((dir / "bad.json").string()), Error);
}

// The q/k/v input of layer 0 is RMSNorm(embedding) * input_layernorm: recompute its mean |x| per
// channel in f64 straight from the checkpoint and compare with what calibrate recorded.
TEST(Calibrate, RecordsTheRealLinearInputs) {
    TempDir dir;
    const std::string model = synth_tiny(dir);
    test::write_file(dir / "p.txt", "Hello there, calibration!\n");
    CalibrateOptions o;
    o.model = model;
    o.prompts = {(dir / "p.txt").string()};
    o.out = (dir / "s.safetensors").string();
    o.latent_hw = 4;
    calibrate(o);
    {
        // With the gen pass, the gen linears see the 4x4 latent block; the und linears also see
        // the t2i-layout text around it.
        quant::StatsFile with_gen(o.out);
        EXPECT_EQ(with_gen.n_tokens("language_model.model.layers.0.self_attn.q_proj_moe_gen"), 16);
        EXPECT_EQ(with_gen.n_tokens("language_model.model.layers.1.mlp_moe_gen.down_proj"), 16);
    }
    {
        // Real trajectories: 3 steps, all with CFG (sigma 1, 0.875, 0.7 > 0.4), so 6 noisy-block
        // forwards of 16 latent tokens each reach the gen linears.
        o.gen_steps = 3;
        o.out = (dir / "traj.safetensors").string();
        calibrate(o);
        quant::StatsFile traj(o.out);
        EXPECT_EQ(traj.n_tokens("language_model.model.layers.0.self_attn.q_proj_moe_gen"), 96);
        EXPECT_EQ(traj.n_tokens("language_model.model.layers.1.mlp_moe_gen.down_proj"), 96);
        o.gen_steps = 0;
    }
    o.gen = false;
    o.out = (dir / "und.safetensors").string();
    calibrate(o);

    quant::StatsFile sf(o.out);
    auto ck = LanceCheckpoint::open(model);
    const LanceConfig& c = ck->config();
    EXPECT_EQ(sf.entries().size(), static_cast<size_t>(c.num_hidden_layers) * 7);  // und only
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model);
    const auto ids =
        tok.encode(render_chat(kDefaultSystemPrompt, {{"user", "Hello there, calibration!"}}));
    const std::string q0 = "language_model.model.layers.0.self_attn.q_proj";
    const quant::LinearStats s = sf.load(q0);
    EXPECT_EQ(s.n_tokens, static_cast<int64_t>(ids.size()));
    EXPECT_EQ(sf.load("language_model.model.layers.0.self_attn.v_proj").mean_abs, s.mean_abs);

    const int h = c.hidden_size;
    const auto emb = to_f32(ck->tensor("language_model.model.embed_tokens.weight"));
    const auto g = to_f32(ck->tensor("language_model.model.layers.0.input_layernorm.weight"));
    std::vector<double> mean(h, 0.0), mx(h, 0.0);
    for (int32_t id : ids) {
        const float* e = emb.data() + static_cast<size_t>(id) * h;
        double ss = 0;
        for (int k = 0; k < h; ++k) ss += static_cast<double>(e[k]) * e[k];
        const double r = 1.0 / std::sqrt(ss / h + c.rms_norm_eps);
        for (int k = 0; k < h; ++k) {
            const double x = std::fabs(e[k] * r * g[k]);
            mean[k] += x / ids.size();
            mx[k] = std::max(mx[k], x);
        }
    }
    for (int k = 0; k < h; ++k) {
        EXPECT_NEAR(s.mean_abs[k], mean[k], 1e-5 * (1 + mean[k])) << k;
        EXPECT_NEAR(s.max_abs[k], mx[k], 1e-5 * (1 + mx[k])) << k;
    }
}

TEST(Calibrate, AwqIsCloserToTheOriginalThanRtn) {
    TempDir dir;
    const std::string model = synth_tiny(dir);
    std::string lines;
    for (int i = 0; i < 12; ++i)
        lines += "Prompt number " + std::to_string(i) + ": describe a scene with " +
                 std::to_string(3 + i) + " boats, a lighthouse and gulls.\n";
    test::write_file(dir / "p.txt", lines);
    CalibrateOptions co;
    co.model = model;
    co.prompts = {(dir / "p.txt").string()};
    co.out = (dir / "s.safetensors").string();
    co.latent_hw = 8;
    calibrate(co);
    QuantizeOptions qo;
    qo.src = model;
    qo.progress = false;
    qo.method = "rtn";
    qo.out = (dir / "rtn").string();
    quantize_checkpoint(qo);
    qo.method = "awq";
    qo.stats = co.out;
    qo.out = (dir / "awq").string();
    quantize_checkpoint(qo);

    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model);
    auto a = LanceCheckpoint::open(model), b = LanceCheckpoint::open(qo.out),
         r = LanceCheckpoint::open((dir / "rtn").string());
    DecoderOptions d;
    d.logits_limit = static_cast<int64_t>(tok.size());
    const LanceWeights da_w(*a, d);
    const LanceWeights db_w(*b, d);
    const LanceWeights dr_w(*r, d);
    DecoderSession da(da_w), db(db_w), dr(dr_w);
    PerplexityOptions po;
    po.ctx = 128;
    po.vocab_limit = d.logits_limit;
    // Held-out text: not one of the calibration prompts.
    const auto ids = tok.encode(
        "An old map showed a river, three bridges and a mill. The travellers argued about the "
        "route for an hour, then followed the river north until the road turned to gravel.");
    const PerplexityResult pr = evaluate_perplexity({&da, &dr, &db}, ids, po);
    const ModelScore &rtn = pr.models[1], &awq = pr.models[2];
    EXPECT_LT(awq.mean_kl, rtn.mean_kl);
    EXPECT_LT(awq.mean_kl, 0.5 * rtn.mean_kl);
    EXPECT_GT(awq.top1_agree, rtn.top1_agree);
}

TEST(Calibrate, CliErrorsAreOneLine) {
    TempDir dir;
    const std::string model = synth_tiny(dir);
    test::write_file(dir / "p.txt", "hello\n");
    const std::string out = (dir / "s.safetensors").string();
    auto r = test::run_lancet("calibrate -m " + model + " --prompts " +
                              (dir / "nope.txt").string() + " -o " + out);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("nope.txt: cannot open"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
    r = test::run_lancet("calibrate -m " + model + " --prompts " + (dir / "p.txt").string() +
                         " -o " + out + " --latent-size 1000");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("--latent-size"), std::string::npos) << r.err;
    r = test::run_lancet("quantize --method rtn --src " + model + " --out " + (dir / "q").string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = test::run_lancet("calibrate -m " + (dir / "q").string() + " --prompts " +
                         (dir / "p.txt").string() + " -o " + out);
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("needs the original"), std::string::npos) << r.err;
    // One error line (an informational ISA line may precede it).
    EXPECT_EQ(r.err.find("lancet: error:"), r.err.rfind("lancet: error:")) << r.err;
    EXPECT_EQ(r.err.substr(r.err.find("lancet: error:")).find('\n'),
              r.err.size() - r.err.find("lancet: error:") - 1);
    EXPECT_FALSE(fs::exists(out));
}

TEST(Calibrate, NoWriterPutsOutputIntoAnOpenSource) {
    TempDir dir;
    const std::string model = synth_tiny(dir);
    const std::string in_src = model + "/extra.safetensors";
    {
        auto ck = LanceCheckpoint::open(model);
        EXPECT_THROW(SafetensorsWriter{in_src}, Error);
        EXPECT_THROW(write_file_atomic(model + "/llm_config.json", "{}"), Error);
        EXPECT_THROW(OutputDir(model, /*force=*/true), Error);
        EXPECT_THROW(OutputDir(dir.path().string(), /*force=*/true), Error);  // around it
        EXPECT_NO_THROW(write_file_atomic((dir / "beside.json").string(), "{}"));
    }
    // Closed, the folder is an ordinary folder again.
    EXPECT_NO_THROW(write_file_atomic(model + "/notes.json", "{}"));
}

TEST(Calibrate, CommandsNeverWriteIntoTheSourceFolder) {
    TempDir dir;
    const std::string model = synth_tiny(dir);
    test::write_file(dir / "p.txt", "hello\n");
    const std::string prompts = " --prompts " + (dir / "p.txt").string();
    const std::string weights = model + "/model.safetensors", config = model + "/llm_config.json";
    const std::string weights_before = test::read_file(weights),
                      config_before = test::read_file(config);
    for (const std::string& args : {
             // Both used to replace the file and exit 0.
             "stats synth --model " + model + " -o " + weights,
             "calibrate -m " + model + prompts + " --latent-size 2 -o " + config,
             // Used to reach the decoder with an empty prompt ("forward: empty batch").
             "calibrate -m " + model + prompts + " --max-prompt-tokens 0 -o " +
                 (dir / "s.safetensors").string(),
         }) {
        const auto r = test::run_lancet(args);
        EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
        const size_t e = r.err.find("lancet: error: ");
        ASSERT_NE(e, std::string::npos) << args << ": " << r.err;
        EXPECT_EQ(r.err.find('\n', e), r.err.size() - 1) << args << ": " << r.err;
    }
    EXPECT_EQ(test::read_file(weights), weights_before);
    EXPECT_EQ(test::read_file(config), config_before);
    EXPECT_FALSE(fs::exists(dir / "s.safetensors"));
    for (const auto& e : fs::directory_iterator(model))
        EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
}

}  // namespace
}  // namespace lancet
