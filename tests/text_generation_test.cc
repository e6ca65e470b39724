// Text generation: the KV-cache loop equals re-running the whole sequence, stops, limits, CLI
// errors.
#include "pipeline/text_generation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/numeric.h"
#include "io/safetensors.h"
#include "model/lance_checkpoint.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;

using test::synth_tiny;

// Greedy continuation by re-running the full sequence for every new token (no cache reuse).
std::vector<int32_t> greedy_by_full_forward(DecoderSession& dec, const LanceConfig& cfg,
                                            std::vector<int64_t> ids, int n) {
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i) {
        Batch b;
        b.token_ids = ids;
        for (size_t p = 0; p < ids.size(); ++p) {
            const auto q = static_cast<int64_t>(p);
            b.positions.push_back({q, q, q});
        }
        Outputs o;
        ForwardOptions fo;
        fo.logits = LogitRows::Last;
        dec.forward(b, nullptr, false, o, fo);
        int32_t best = 0;
        for (int v = 1; v < cfg.vocab_size; ++v)
            if (o.logits[v] > o.logits[best]) best = v;
        out.push_back(best);
        ids.push_back(best);
    }
    return out;
}

TEST(TextGeneration, CachedDecodingEqualsFullRecompute) {
    test::TempDir dir;
    auto ck = LanceCheckpoint::open(synth_tiny(dir));
    DecoderOptions d;
    d.logits_limit = 278;  // the synthetic tokenizer's length
    const LanceWeights dec_w(*ck, d);
    DecoderSession dec(dec_w);
    const std::vector<int64_t> prompt = {256 + 1, 115, 121, 115, 10, 72, 105, 33, 256 + 2, 10};
    GenerateOptions g;
    g.max_new_tokens = 12;
    const GenerateResult r = generate_text(dec, ck->config(), prompt, g);
    ASSERT_EQ(r.tokens.size(), 12u);
    EXPECT_FALSE(r.stopped);
    EXPECT_EQ(r.tokens, greedy_by_full_forward(dec, ck->config(), prompt, 12));
    for (int32_t t : r.tokens) EXPECT_LT(t, 278);  // masked ids are never produced

    // Stopping at the first greedy token gives nothing, and reports the stop.
    g.stop_ids = {r.tokens[0]};
    const GenerateResult s = generate_text(dec, ck->config(), prompt, g);
    EXPECT_TRUE(s.stopped);
    EXPECT_TRUE(s.tokens.empty());
    // The callback can end generation early.
    g.stop_ids.clear();
    int seen = 0;
    const GenerateResult e =
        generate_text(dec, ck->config(), prompt, g, [&](int32_t) { return ++seen < 3; });
    EXPECT_EQ(e.tokens.size(), 3u);

    g.max_new_tokens = ck->config().max_position_embeddings;
    EXPECT_THROW(generate_text(dec, ck->config(), prompt, g), Error);
}

TEST(RunChat, CliErrorsAreOneLine) {
    test::TempDir dir;
    const std::string model = synth_tiny(dir);
    const auto ok = test::run_lancet("run --task chat -m " + model + " -p hello -n 4");
    EXPECT_EQ(ok.exit_code, 0) << ok.err;
    EXPECT_NE(ok.err.find("4 new tokens"), std::string::npos) << ok.err;

    const auto too_long = test::run_lancet("run -m " + model + " -p hello -n 100000");
    EXPECT_EQ(too_long.exit_code, 1);
    EXPECT_NE(too_long.err.find("exceeds the model context"), std::string::npos) << too_long.err;

    fs::remove(fs::path(model) / "merges.txt");
    const auto no_tok = test::run_lancet("run -m " + model + " -p hello");
    EXPECT_EQ(no_tok.exit_code, 1);
    EXPECT_NE(no_tok.err.find("merges.txt"), std::string::npos) << no_tok.err;
    EXPECT_EQ(std::count(no_tok.err.begin(), no_tok.err.end(), '\n'), 1) << no_tok.err;

    const auto no_model = test::run_lancet("run -m " + (dir / "none").string() + " -p hello");
    EXPECT_EQ(no_model.exit_code, 1);
    EXPECT_NE(no_model.err.find("no such model folder"), std::string::npos) << no_model.err;
}

}  // namespace
}  // namespace lancet

namespace lancet {
namespace {

// bf16_weights holds F32 linears as BF16 (Lance's own load-time cast). Reference: the same F32
// checkpoint with every linear weight rounded to bf16 on disk and everything else unchanged; the
// two must agree to f32 rounding (the kernels differ: BF16 vs F32), and differ from the F32 model.
TEST(DecoderWeights, Bf16CastEqualsPreRoundedWeights) {
    test::TempDir dir;
    const std::string f32_dir = synth_tiny(dir, "f32");
    const std::string rounded = (dir / "rounded").string();
    fs::create_directories(rounded);
    for (const auto& e : fs::directory_iterator(f32_dir))
        if (e.path().filename() != "model.safetensors")
            fs::copy(e.path(), fs::path(rounded) / e.path().filename(),
                     fs::copy_options::recursive);
    {
        auto src = Checkpoint::open(f32_dir + "/model.safetensors");
        SafetensorsWriter w(rounded + "/model.safetensors");
        for (const std::string& n : src->names()) w.add(n, DType::F32, src->view(n).shape);
        for (const std::string& n : src->names()) {
            std::vector<float> v = to_f32(src->view(n));
            const bool linear = n.ends_with("_proj.weight") || n.ends_with("lm_head.weight");
            if (linear && n.rfind("vit_model.", 0) != 0)
                for (float& x : v) x = round_bf16(x);
            w.write(n, v.data(), v.size() * 4);
        }
        w.finish();
    }
    auto f32 = LanceCheckpoint::open(f32_dir);
    auto pre = LanceCheckpoint::open(rounded);
    DecoderOptions cast;
    cast.bf16_weights = true;
    cast.load_gen = false;
    DecoderOptions plain;
    plain.load_gen = false;
    const LanceWeights d_cast_w(*f32, cast);
    const LanceWeights d_f32_w(*f32, plain);
    const LanceWeights d_pre_w(*pre, plain);
    DecoderSession d_cast(d_cast_w), d_f32(d_f32_w), d_pre(d_pre_w);
    Batch b;
    for (int64_t i = 0; i < 40; ++i) {
        b.token_ids.push_back((i * 37 + 11) % 278);
        b.positions.push_back({i, i, i});
    }
    Outputs oc, of, op;
    d_cast.forward(b, nullptr, false, oc);
    d_f32.forward(b, nullptr, false, of);
    d_pre.forward(b, nullptr, false, op);
    auto rel = [](const std::vector<float>& a, const std::vector<float>& r) {
        double num = 0, den = 0;
        for (size_t i = 0; i < a.size(); ++i) {
            const double d = static_cast<double>(a[i]) - r[i];
            if (std::isfinite(d)) num += d * d, den += static_cast<double>(r[i]) * r[i];
        }
        return std::sqrt(num / den);
    };
    EXPECT_LT(rel(oc.logits, op.logits), 1e-5);
    EXPECT_GT(rel(oc.logits, of.logits), 1e-4);
}

}  // namespace
}  // namespace lancet
