// Continuous batching in the decoder: DecoderSession::decode_step (several sequences, each on its
// own KV cache, one pass over the weights) against forward() of each sequence alone, on tiny
// synthetic checkpoints with F32, BF16 and AWQ INT4 weights, exact and W4A8 activations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/ops.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/synth.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;

// ||a - b|| / ||b|| over the finite entries (the masked logits past logits_limit are -inf in
// both and must be equal).
double rel_l2(const float* a, const float* b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(b[i])) {
            EXPECT_EQ(a[i], b[i]) << "masked entry " << i;
            continue;
        }
        num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        den += double(b[i]) * b[i];
    }
    EXPECT_GT(den, 0.0);
    return std::sqrt(num / den);
}

std::string make_tiny(const fs::path& dir, DType dt) {
    SynthOptions o;
    o.preset = "tiny";
    o.dtype = dt;
    o.seed = 17;
    o.out = (dir / (dt == DType::BF16 ? "bf16" : "f32")).string();
    synth_checkpoint(o, synth_config("tiny"));
    return o.out;
}

// One sequence: its prompt (prefilled alone), then per step the tokens it feeds.
struct Seq {
    std::vector<int64_t> prompt;
    std::vector<std::vector<int64_t>> steps;
};

std::vector<RopePosition> text_positions(int64_t from, size_t n) {
    std::vector<RopePosition> p(n);
    for (size_t i = 0; i < n; ++i) {
        const int64_t v = from + static_cast<int64_t>(i);
        p[i] = {v, v, v};
    }
    return p;
}

// Five sequences with different prompt lengths (so different cache lengths, one past the 64-key
// attention tile) and four steps; step 2 feeds several tokens per sequence, so up to 13 rows run
// together (past the 8-row GEMV/GEMM switch of the linear kernels).
std::vector<Seq> make_seqs(int64_t vocab) {
    std::mt19937 g(3);
    const size_t prompt_len[] = {1, 7, 20, 70, 33};
    const size_t step_len[4][5] = {
        {1, 1, 1, 1, 1}, {1, 2, 1, 1, 1}, {3, 2, 3, 3, 2}, {1, 1, 1, 1, 1}};
    std::vector<Seq> seqs(5);
    for (size_t s = 0; s < seqs.size(); ++s) {
        for (size_t i = 0; i < prompt_len[s]; ++i) seqs[s].prompt.push_back(g() % vocab);
        for (const auto& st : step_len) {
            std::vector<int64_t> ids;
            for (size_t i = 0; i < st[s]; ++i) ids.push_back(g() % vocab);
            seqs[s].steps.push_back(ids);
        }
    }
    return seqs;
}

struct Mode {
    std::string model;  // key of the checkpoint
    kernels::ActMode act;
    DecoderOptions::LmHead lm_head;
    bool bit_identical;   // every linear row-independent for any row count
    double bound = 1e-5;  // else: relative L2 over all rows (one row: 3x)
};

class DecodeStep : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        dir_ = new test::TempDir();
        f32_ = new std::string(make_tiny(dir_->path(), DType::F32));
        bf16_ = new std::string(make_tiny(dir_->path(), DType::BF16));
        int4_ = new std::string(test::make_rtn_int4(*f32_, dir_->path() / "int4", 32));
    }
    static void TearDownTestSuite() {
        delete dir_;
        delete f32_;
        delete bf16_;
        delete int4_;
    }
    static const std::string& path(const std::string& key) {
        return key == "f32" ? *f32_ : key == "bf16" ? *bf16_ : *int4_;
    }
    static test::TempDir* dir_;
    static std::string *f32_, *bf16_, *int4_;
};
test::TempDir* DecodeStep::dir_ = nullptr;
std::string *DecodeStep::f32_ = nullptr, *DecodeStep::bf16_ = nullptr, *DecodeStep::int4_ = nullptr;

// For k = 1..5 sequences: every step's batched logits against forward() of each sequence alone
// (each on a cache prefilled alone). Bit-identical where the mode's linears are row-independent
// (W4A8 with an INT4 lm_head: linear.h prescribes W4A8's per-element arithmetic, and every
// other op of a decode step works row by row); else within the bound of a different f32
// summation order. That bound is the one IncrementalDecodingEqualsFullForward (decoder_test)
// derives for the same situation: per linear, two orders of a K-term f32 dot product differ by
// at most 2·γ_K·Σ|x·w| (γ_K ≈ K·2⁻²⁴, K <= 128 here), a few 1e-6 relative in practice, which the
// two layers of the outlier-heavy synthetic weights carry to the logits: <= 1e-5 over all rows,
// <= 3e-5 for one row. INT4 weights with f32 activations sum per group s·Σq·x − z·s·Σx, whose two
// terms are ~4x the size of their difference (codes 0..15 around a zero point near 7.5), so the
// same rounding is 4x larger relative to the result: 4e-5 and 1.2e-4. One sequence alone always
// runs the same kernels as forward(): identical.
TEST_F(DecodeStep, BatchedStepEqualsEachSequenceAlone) {
    const Mode modes[] = {
        {"f32", kernels::ActMode::F32, DecoderOptions::LmHead::Stored, false},
        {"bf16", kernels::ActMode::F32, DecoderOptions::LmHead::Stored, false},
        {"int4", kernels::ActMode::F32, DecoderOptions::LmHead::Stored, false, 4e-5},
        // W4A8 linears, but the lm_head stays BF16 (an f32-path linear): rounding in it alone.
        {"int4", kernels::ActMode::Int8, DecoderOptions::LmHead::Stored, false},
        {"int4", kernels::ActMode::Int8, DecoderOptions::LmHead::Int4, true},
    };
    ThreadPool pool(2);
    for (const Mode& mode : modes) {
        const auto ck = LanceCheckpoint::open(path(mode.model));
        const LanceConfig& c = ck->config();
        DecoderOptions dopt;
        dopt.load_gen = false;
        dopt.logits_limit = 278;
        dopt.lm_head = mode.lm_head;
        const LanceWeights weights(*ck, dopt);
        kernels::OpContext ctx = kernels::OpContext::defaults(&pool);
        ctx.act = mode.act;
        DecoderSession dec(weights, ctx);
        const std::vector<Seq> seqs = make_seqs(278);
        const size_t V = c.vocab_size;
        const std::string what =
            mode.model + " act " + kernels::act_mode_name(mode.act) +
            (mode.lm_head == DecoderOptions::LmHead::Int4 ? " lm_head int4" : "");
        double worst_agg = 0, worst_row = 0;
        for (size_t k = 1; k <= seqs.size(); ++k) {
            ForwardOptions fo;
            fo.logits = LogitRows::Last;
            fo.velocity = false;
            Outputs out;
            std::vector<KvCache> alone, batched;
            for (size_t s = 0; s < k; ++s) {
                Batch b;
                b.token_ids = seqs[s].prompt;
                b.positions = text_positions(0, b.token_ids.size());
                alone.push_back(dec.make_cache(4));  // small: both paths must grow it
                dec.forward(b, &alone.back(), true, out, fo);
                batched.push_back(alone.back());
            }
            for (size_t step = 0; step < seqs[0].steps.size(); ++step) {
                std::vector<std::vector<RopePosition>> pos(k);
                std::vector<DecodeItem> items(k);
                std::vector<float> want(k * V);
                for (size_t s = 0; s < k; ++s) {
                    const auto& ids = seqs[s].steps[step];
                    pos[s] = text_positions(static_cast<int64_t>(alone[s].size()), ids.size());
                    Batch b;
                    b.token_ids = ids;
                    b.positions = pos[s];
                    dec.forward(b, &alone[s], true, out, fo);
                    ASSERT_EQ(out.logit_rows, 1u);
                    std::copy_n(out.logits.begin(), V, want.begin() + s * V);
                    items[s] = {ids, pos[s], &batched[s]};
                }
                Outputs got;
                dec.decode_step(items, got);
                ASSERT_EQ(got.logit_rows, k);
                ASSERT_EQ(got.logits.size(), k * V);
                const std::string at =
                    what + ", " + std::to_string(k) + " sequences, step " + std::to_string(step);
                for (size_t s = 0; s < k; ++s) ASSERT_EQ(batched[s].size(), alone[s].size()) << at;
                if (mode.bit_identical || k == 1) {
                    size_t diff = 0;
                    for (size_t i = 0; i < k * V; ++i)
                        diff += std::memcmp(&got.logits[i], &want[i], sizeof(float)) != 0;
                    EXPECT_EQ(diff, 0u) << at << ": logits differ from the runs alone";
                } else {
                    const double agg = rel_l2(got.logits.data(), want.data(), k * V);
                    worst_agg = std::max(worst_agg, agg);
                    EXPECT_LT(agg, mode.bound) << at;
                    for (size_t s = 0; s < k; ++s) {
                        const double row = rel_l2(&got.logits[s * V], &want[s * V], V);
                        worst_row = std::max(worst_row, row);
                        EXPECT_LT(row, 3 * mode.bound) << at << ", sequence " << s;
                    }
                }
                // The sequences are told apart: a mix-up of caches or rows would show.
                if (k > 1) {
                    EXPECT_GT(rel_l2(&got.logits[0], &got.logits[V], V), 1e-2) << at;
                }
            }
        }
        if (mode.bit_identical)
            std::printf("  %-30s batched vs alone: bit-identical\n", what.c_str());
        else
            std::printf(
                "  %-30s batched vs alone: worst %.2e over rows, %.2e one row (bound %.0e; "
                "1 sequence bit-identical)\n",
                what.c_str(), worst_agg, worst_row, mode.bound);
    }
}

// Bad calls are one-line errors, and a failed call leaves the caches as they were.
TEST_F(DecodeStep, RejectsMalformedItems) {
    const auto ck = LanceCheckpoint::open(path("f32"));
    DecoderOptions dopt;
    dopt.load_gen = false;
    const LanceWeights weights(*ck, dopt);
    DecoderSession dec(weights);
    KvCache a = dec.make_cache(), b = dec.make_cache();
    const std::vector<int64_t> ids = {5, 6};
    const std::vector<RopePosition> pos = text_positions(0, 2), one = text_positions(0, 1);
    Outputs out;
    EXPECT_THROW(dec.decode_step({}, out), Error);
    const DecodeItem shared[] = {{ids, pos, &a}, {ids, pos, &a}};
    EXPECT_THROW(dec.decode_step(shared, out), Error);
    const DecodeItem short_pos[] = {{ids, one, &a}};
    EXPECT_THROW(dec.decode_step(short_pos, out), Error);
    const DecodeItem no_cache[] = {{ids, pos, nullptr}};
    EXPECT_THROW(dec.decode_step(no_cache, out), Error);
    const DecodeItem empty[] = {{{}, {}, &a}};
    EXPECT_THROW(dec.decode_step(empty, out), Error);
    KvCache wrong;
    const DecodeItem wrong_shape[] = {{ids, pos, &wrong}};
    EXPECT_THROW(dec.decode_step(wrong_shape, out), Error);
    EXPECT_EQ(a.size(), 0u);
    const DecodeItem ok[] = {{ids, pos, &a}, {ids, pos, &b}};
    dec.decode_step(ok, out);
    EXPECT_EQ(a.size(), 2u);
    EXPECT_EQ(b.size(), 2u);
    // Same tokens on equal caches: equal rows.
    EXPECT_EQ(std::memcmp(&out.logits[0], &out.logits[ck->config().vocab_size],
                          ck->config().vocab_size * sizeof(float)),
              0);

    DecoderOptions gen_only;
    gen_only.load_und = false;
    const LanceWeights gw(*ck, gen_only);
    DecoderSession gdec(gw);
    KvCache c = gdec.make_cache();
    const DecodeItem text[] = {{ids, pos, &c}};
    EXPECT_THROW(gdec.decode_step(text, out), Error);
}

// forward_chunks (CFG's stacked step): chunks of und and gen rows (text, a noise block, a clean
// block) against caches of different lengths, appended, equal forward() of each chunk alone on its
// own cache bit for bit with W4A8 on INT4 weights: the velocities, the cache sizes, and what a
// later forward sees in the caches. Bad calls are one-line errors.
TEST_F(DecodeStep, StackedChunksEqualEachChunkAlone) {
    const auto ck = LanceCheckpoint::open(path("int4"));
    const LanceConfig& c = ck->config();
    const LanceWeights weights(*ck);
    ThreadPool pool(2);
    kernels::OpContext ctx = kernels::OpContext::defaults(&pool);
    ctx.act = kernels::ActMode::Int8;
    DecoderSession dec(weights, ctx);
    const size_t C = c.latent_channels;
    std::mt19937 g(5);
    auto latents = [&](size_t n) {
        std::normal_distribution<float> nd;
        std::vector<float> v(n * C);
        for (float& x : v) x = nd(g);
        return v;
    };
    auto ids = [&](size_t n) {
        std::vector<int64_t> v(n);
        for (auto& x : v) x = g() % 278;
        return v;
    };
    // Three chunks: text + noise block 2x3; a clean 3x4 block; text only.
    std::vector<Batch> chunks = {
        SequenceBuilder(c)
            .text(ids(2))
            .latent_block(1, 2, 3, latents(6), 0.7f, SplitMode::Noise)
            .build(),
        SequenceBuilder(c).latent_block(1, 3, 4, latents(12), 0.0f, SplitMode::Full).build(),
        SequenceBuilder(c).text(ids(5)).build()};
    const size_t prompt_len[] = {20, 7, 70};
    std::vector<KvCache> alone, stacked;
    Outputs out;
    ForwardOptions pre;
    pre.logits = LogitRows::None;
    for (size_t i = 0; i < chunks.size(); ++i) {
        Batch b;
        b.token_ids = ids(prompt_len[i]);
        b.positions = text_positions(0, b.token_ids.size());
        alone.push_back(dec.make_cache());
        dec.forward(b, &alone.back(), true, out, pre);
        stacked.push_back(alone.back());
    }
    std::vector<float> want;
    for (size_t i = 0; i < chunks.size(); ++i) {
        dec.forward(chunks[i], &alone[i], true, out, pre);
        want.insert(want.end(), out.velocity.begin(), out.velocity.end());
    }
    std::vector<ChunkItem> items;
    for (size_t i = 0; i < chunks.size(); ++i) items.push_back({&chunks[i], &stacked[i]});
    Outputs got;
    dec.forward_chunks(items, true, got, pre);
    ASSERT_EQ(got.velocity.size(), want.size());
    ASSERT_EQ(want.size(), 18 * C);
    EXPECT_EQ(std::memcmp(got.velocity.data(), want.data(), want.size() * sizeof(float)), 0);
    // The appended keys and values: a later text token on each cache gives the same logits.
    ForwardOptions last;
    last.logits = LogitRows::Last;
    for (size_t i = 0; i < chunks.size(); ++i) {
        ASSERT_EQ(stacked[i].size(), alone[i].size());
        Batch t;
        t.token_ids = {9};
        t.positions = text_positions(500, 1);
        Outputs a, b;
        dec.forward(t, &alone[i], false, a, last);
        dec.forward(t, &stacked[i], false, b, last);
        EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), c.vocab_size * sizeof(float)), 0)
            << "chunk " << i;
    }

    const size_t before = stacked[0].size();
    EXPECT_THROW(dec.forward_chunks({}, false, got), Error);
    const ChunkItem shared[] = {{&chunks[0], &stacked[0]}, {&chunks[1], &stacked[0]}};
    EXPECT_THROW(dec.forward_chunks(shared, false, got), Error);
    const ChunkItem no_cache[] = {{&chunks[0], nullptr}};
    EXPECT_THROW(dec.forward_chunks(no_cache, false, got), Error);
    ForwardOptions logits;
    logits.logits = LogitRows::Last;
    EXPECT_THROW(dec.forward_chunks(items, false, got, logits), Error);
    EXPECT_EQ(stacked[0].size(), before);
}

}  // namespace
}  // namespace lancet
