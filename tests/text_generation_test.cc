// Text generation: the KV-cache loop equals re-running the whole sequence, stops, limits, CLI
// errors.
#include "pipeline/text_generation.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "model/lance_checkpoint.h"
#include "model/synth.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;

std::string synth_tiny(const test::TempDir& dir) {
    SynthOptions o;
    o.out = (dir / "tiny").string();
    synth_checkpoint(o);
    return o.out;
}

// Greedy continuation by re-running the full sequence for every new token (no cache reuse).
std::vector<int32_t> greedy_by_full_forward(LanceDecoder& dec, const LanceConfig& cfg,
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
    LanceDecoder dec(*ck, d);
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
