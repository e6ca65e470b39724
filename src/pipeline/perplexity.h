// Language-model perplexity over a token stream with a sliding window, and the agreement of other
// models with the first one on the same scored tokens (mean KL divergence, top-1 agreement), all
// in one pass so the reference's log-probabilities never have to be stored for the whole text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/decoder.h"

namespace lancet {

struct PerplexityOptions {
    size_t ctx = 512;         // window length in tokens (>= 2)
    size_t stride = 0;        // window advance (1 <= stride < ctx); 0: ctx / 2
    int64_t vocab_limit = 0;  // score over ids [0, vocab_limit) (the tokenizer length); <= 0: all
    bool keep_token_kl = false;  // fill ModelScore::token_kl (tests)
};

// One model's result over the scored tokens.
struct ModelScore {
    size_t tokens = 0;                // predictions scored (n_tokens - 1)
    double mean_nll = 0, nll_se = 0;  // natural log; se = standard error of the mean
    double ppl = 0, ppl_se = 0;       // exp(mean_nll); se by the delta method: ppl * nll_se
    // Against the first model (the reference); NaN for the reference itself.
    double mean_kl = 0, kl_se = 0;  // mean of KL(P_ref || P_model) per token, in nats
    double kl_p99 = 0, kl_max = 0;  // 99th percentile (nearest rank) and maximum
    double top1_agree = 0;          // fraction of tokens with argmax_ref == argmax_model
    std::vector<double> token_kl;   // per scored token, in text order (keep_token_kl only)
    double seconds = 0;             // forwards + scoring of this model
};

struct PerplexityResult {
    size_t n_tokens = 0, windows = 0, ctx = 0, stride = 0;
    std::vector<ModelScore> models;  // one per decoder, in order
};

// The windows the scorer runs over n tokens: each is [begin, end) and scores the predictions of
// tokens [first_scored, end) (predicted from the rows before them). Windows start every `stride`
// tokens; the last one is moved back so it ends at n (the unscored tail then sees more context).
struct ScoreWindow {
    size_t begin, end, first_scored;
};
std::vector<ScoreWindow> perplexity_windows(size_t n_tokens, size_t ctx, size_t stride);

// Scores `tokens` (ids < vocab limit) with every decoder, decoders[0] being the reference. Each
// window is a fresh forward at positions 0..len-1 with logits for all rows. Throws lancet::Error
// for fewer than 2 tokens, a bad ctx/stride, a ctx beyond a model's max_position_embeddings, or
// models with different vocab sizes.
PerplexityResult evaluate_perplexity(const std::vector<DecoderSession*>& decoders,
                                     const std::vector<int32_t>& tokens,
                                     const PerplexityOptions& opt, ThreadPool* pool = nullptr);

}  // namespace lancet
