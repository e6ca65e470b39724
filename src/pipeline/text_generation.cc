// Implementation of text generation.
#include "pipeline/text_generation.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace lancet {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

GenerateResult generate_text(DecoderSession& decoder, const LanceConfig& cfg,
                             const std::vector<int64_t>& prompt, const GenerateOptions& opt,
                             const std::function<bool(int32_t)>& on_token) {
    if (prompt.empty()) fail("generate: empty prompt");
    // Text positions are equal on the three M-RoPE axes, so the whole prompt is one causal split
    // at positions 0..n-1 and each new token continues at the next position.
    Batch b;
    b.token_ids = prompt;
    b.positions.resize(prompt.size());
    for (size_t i = 0; i < prompt.size(); ++i) {
        const auto p = static_cast<int64_t>(i);
        b.positions[i] = {p, p, p};
    }
    return generate_from_batch(decoder, cfg, b, opt, on_token);
}

GenerateResult generate_from_batch(DecoderSession& decoder, const LanceConfig& cfg,
                                   const Batch& prompt, const GenerateOptions& opt,
                                   const std::function<bool(int32_t)>& on_token) {
    if (prompt.size() == 0) fail("generate: empty prompt");
    if (!prompt.is_gen.empty() && prompt.is_gen.back())
        fail("generate: the prompt's last row is a latent, not text");
    const size_t limit = static_cast<size_t>(cfg.max_position_embeddings);
    if (prompt.size() + static_cast<size_t>(opt.max_new_tokens) > limit)
        fail("prompt of ", prompt.size(), " tokens plus ", opt.max_new_tokens,
             " new tokens exceeds the model context of ", limit, " tokens");
    GenerateResult r;
    r.prompt_tokens = prompt.size();
    Sampler sampler(opt.sampler);
    KvCache cache = decoder.make_cache(prompt.size() + static_cast<size_t>(opt.max_new_tokens));
    Outputs out;
    ForwardOptions fo;
    fo.logits = LogitRows::Last;
    fo.velocity = false;

    const auto t0 = std::chrono::steady_clock::now();
    decoder.forward(prompt, &cache, /*append=*/true, out, fo);
    r.prefill_seconds = seconds_since(t0);

    const int64_t next = next_text_position(prompt.positions);
    const int vocab = cfg.vocab_size;
    const auto t1 = std::chrono::steady_clock::now();
    for (int step = 0; step < opt.max_new_tokens; ++step) {
        const int32_t id = sampler.sample(out.logits.data(), vocab);
        if (std::find(opt.stop_ids.begin(), opt.stop_ids.end(), id) != opt.stop_ids.end()) {
            r.stopped = true;
            break;
        }
        r.tokens.push_back(id);
        if (on_token && !on_token(id)) break;
        if (step + 1 == opt.max_new_tokens) break;
        const int64_t p = next + step;
        Batch d;
        d.token_ids = {id};
        d.positions = {{p, p, p}};
        decoder.forward(d, &cache, /*append=*/true, out, fo);
    }
    r.decode_seconds = seconds_since(t1);
    return r;
}

}  // namespace lancet
