// Autoregressive text generation over the decoder's KV cache (Lance's x2t loop, §2.7.2).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/decoder.h"
#include "pipeline/sampler.h"

namespace lancet {

struct GenerateOptions {
    int max_new_tokens = 256;       // Lance's max_length
    std::vector<int32_t> stop_ids;  // Lance stops at <|im_end|> only
    SamplerOptions sampler;         // greedy by default (do_sample=False)
};

struct GenerateResult {
    std::vector<int32_t> tokens;  // generated ids, the stop token excluded
    bool stopped = false;         // a stop id ended it (else the token limit)
    size_t prompt_tokens = 0;
    double prefill_seconds = 0, decode_seconds = 0;
};

// Prefills `prompt` (text, causal) and decodes until a stop id or the limit. `on_token` sees each
// generated id (stop token excluded) as it is produced and may return false to stop early.
// Fails with Error when prompt + limit exceeds the model's context.
GenerateResult generate_text(DecoderSession& decoder, const LanceConfig& cfg,
                             const std::vector<int64_t>& prompt, const GenerateOptions& opt,
                             const std::function<bool(int32_t)>& on_token = {});

// The same loop for a prompt that is already a packed und sequence (positions, splits, optional
// input embeddings, e.g. x2t's ViT block): prefilled in one chunk, then decoding continues at the
// next text position after the prompt's largest M-RoPE coordinate (spec §2.7.2: the ids are
// computed once for prompt ++ 256 pads, so new tokens continue the text positions). The prompt's
// last row must be und text (its logits start the decoding).
GenerateResult generate_from_batch(DecoderSession& decoder, const LanceConfig& cfg,
                                   const Batch& prompt, const GenerateOptions& opt,
                                   const std::function<bool(int32_t)>& on_token = {});

}  // namespace lancet
