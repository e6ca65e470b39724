// The server's chat engine with continuous batching: requests submitted together decode in one
// batch (checked through the engine's counters) and each one's reply equals a direct run of it
// alone; a cancelled request leaves the batch without disturbing the others.
#include "server/chat_engine.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/linear.h"
#include "pipeline/text_generation.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"

namespace lancet {
namespace {

class ScopedAct {
  public:
    explicit ScopedAct(kernels::ActMode m) { kernels::set_activation_mode(m); }
    ~ScopedAct() { kernels::clear_activation_mode(); }
};

struct Reply {
    std::string text, finish;
    size_t tokens = 0;
};

// The request alone, without the engine: generate_text on a session of its own over weights
// loaded as the engine loads them.
Reply direct(const std::string& model, const server::ChatRequest& req, const Qwen2Tokenizer& tok) {
    auto ck = LanceCheckpoint::open(model);
    DecoderOptions d;
    d.load_gen = false;
    d.bf16_weights = true;
    d.logits_limit = static_cast<int64_t>(tok.size());
    d.lm_head = DecoderOptions::LmHead::Int4;
    LanceWeights w(*ck, d);
    DecoderSession s(w);
    const GenerateResult r = generate_text(s, ck->config(), req.prompt, req.gen);
    return {tok.decode(r.tokens), r.stopped ? "stop" : "length", r.tokens.size()};
}

// Four requests (different prompts, lengths, greedy and sampled) submitted at once to an engine
// with room for three, on an AWQ INT4 model with W4A8 activations and an INT4 lm_head: there every
// linear is row-independent (decode_step's contract), so each batched reply must equal its run
// alone to the token. Prompts are prefilled in chunks of 8 between decode steps. A fifth, long
// request is cancelled after its first piece; the others finish as if it had never been there.
TEST(ChatEngine, ConcurrentRequestsDecodeTogetherAndMatchRunsAlone) {
    test::TempDir dir;
    const std::string model = test::make_rtn_int4(test::synth_tiny(dir), dir / "int4", 32);
    const ScopedAct act(kernels::ActMode::Int8);

    server::ChatEngineOptions eo;
    eo.model = model;
    eo.parallel = 3;
    eo.max_queue = 8;
    eo.threads = 2;
    eo.prefill_chunk = 8;
    eo.lm_head = DecoderOptions::LmHead::Int4;
    server::ChatEngine engine(eo);
    const Qwen2Tokenizer& tok = engine.tokenizer();

    const char* users[] = {"hello there", "a longer question about the weather in spring", "x",
                           "count: one two three four five"};
    const int limits[] = {12, 20, 7, 16};
    std::vector<server::ChatRequest> reqs;
    for (size_t i = 0; i < 4; ++i) {
        server::ChatRequest r;
        const auto ids = chat_ids(tok, kDefaultSystemPrompt, {{"user", users[i]}}, false);
        r.prompt.assign(ids.begin(), ids.end());
        r.gen.max_new_tokens = limits[i];
        r.gen.stop_ids = {tok.special_id("<|im_end|>")};
        if (i == 3) {
            r.gen.sampler.temperature = 0.9f;
            r.gen.sampler.seed = 1234;
        }
        reqs.push_back(r);
    }
    server::ChatRequest long_req = reqs[1];
    long_req.gen.max_new_tokens = 3000;
    long_req.gen.stop_ids.clear();

    auto cancelled = engine.submit(long_req);
    ASSERT_TRUE(cancelled);
    std::vector<std::shared_ptr<server::ChatJob>> jobs;
    for (const auto& r : reqs) {
        jobs.push_back(engine.submit(r));
        ASSERT_TRUE(jobs.back());
    }
    std::string piece;
    ASSERT_TRUE(cancelled->next(piece));
    cancelled->cancel();
    cancelled->wait();
    EXPECT_EQ(cancelled->finish_reason, "cancelled");
    EXPECT_LT(cancelled->completion_tokens, 3000u);

    for (size_t i = 0; i < jobs.size(); ++i) {
        std::string text;
        while (jobs[i]->next(piece)) text += piece;
        jobs[i]->wait();
        ASSERT_TRUE(jobs[i]->error.empty()) << jobs[i]->error;
        const Reply want = direct(model, reqs[i], tok);
        EXPECT_EQ(text, want.text) << "request " << i;
        EXPECT_EQ(jobs[i]->completion_tokens, want.tokens) << "request " << i;
        EXPECT_EQ(jobs[i]->finish_reason, want.finish) << "request " << i;
        EXPECT_EQ(jobs[i]->prompt_tokens, reqs[i].prompt.size());
    }
    const server::ChatEngineStats st = engine.stats();
    std::printf("  decode steps %llu, rows %llu, largest batch %zu, prefill chunks %llu\n",
                static_cast<unsigned long long>(st.decode_steps),
                static_cast<unsigned long long>(st.decode_rows), st.max_batch,
                static_cast<unsigned long long>(st.prefill_chunks));
    EXPECT_GE(st.max_batch, 2u);  // requests really decoded together
    EXPECT_LE(st.max_batch, 3u);  // never more than --parallel
    EXPECT_GT(st.decode_rows, st.decode_steps);
    size_t chunks = 0;  // every prompt in chunks of 8 (the cancelled one included)
    for (const auto& r : reqs) chunks += (r.prompt.size() + 7) / 8;
    EXPECT_EQ(st.prefill_chunks, chunks + (long_req.prompt.size() + 7) / 8);
    EXPECT_EQ(engine.running(), 0u);
    EXPECT_EQ(engine.queue_depth(), 0u);
}

// An impossible request (prompt + max_tokens past the context) fails alone; the next one runs.
TEST(ChatEngine, AFailingRequestAffectsNoOther) {
    test::TempDir dir;
    const std::string model = test::synth_tiny(dir);
    server::ChatEngineOptions eo;
    eo.model = model;
    eo.parallel = 2;
    eo.threads = 1;
    server::ChatEngine engine(eo);
    server::ChatRequest bad, good;
    bad.prompt = {1, 2, 3};
    bad.gen.max_new_tokens = engine.config().max_position_embeddings;
    good.prompt = {1, 2, 3};
    good.gen.max_new_tokens = 4;
    auto jb = engine.submit(bad);
    auto jg = engine.submit(good);
    jb->wait();
    jg->wait();
    EXPECT_NE(jb->error.find("exceeds the model context"), std::string::npos) << jb->error;
    EXPECT_TRUE(jg->error.empty()) << jg->error;
    EXPECT_LE(jg->completion_tokens, 4u);
    EXPECT_NE(jg->finish_reason, "cancelled");
}

}  // namespace
}  // namespace lancet
