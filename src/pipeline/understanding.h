// Lance's understanding tasks x2t_image and x2t_video (spec §3.5, §2.4, §2.6, §2.7.2): the
// prompt layout with one ViT block, its M-RoPE positions, the ViT rows spliced into the und
// <|video_pad|> rows, the bidirectional prefill of the `full` split and greedy decoding.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/positions.h"
#include "model/vit.h"
#include "pipeline/preprocess.h"
#include "pipeline/text_generation.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {

// The instruction Lance's x2t examples carry as the system prompt (the JSON's first text part).
std::string x2t_default_system(bool video);
// The preset Lance's inference script uses: image_768res for images, video_480p for videos.
std::string x2t_default_preset(bool video);

// The packed x2t prompt (spec §2.4, "x2t"):
//   <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n      causal
//   <|vision_start|> K x <|video_pad|> <|vision_end|>                   full (the ViT block)
//   {question}<|im_end|>\n<|im_start|>assistant\n                       causal
// with get_rope_index positions for the ViT grid (t, h, w) = (T/2, H/14, W/14).
struct X2tPrompt {
    std::vector<int64_t> ids;
    std::vector<Split> splits;
    std::vector<RopePosition> positions;
    int64_t vit_begin = 0;  // index of the first <|video_pad|>
    int64_t vit_rows = 0;   // K = (T/2) (H/28) (W/28)
};
X2tPrompt build_x2t_prompt(const LanceConfig& cfg, const Qwen2Tokenizer& tok,
                           const std::string& system, const std::string& question,
                           const VisionGrid& grid, int merge_size);

// Fails (one line naming `where`) when the prompt for pixels `px` plus `new_tokens` exceeds the
// model context.
void check_x2t_context(const LanceConfig& cfg, const X2tPrompt& p, const PixelTensor& px,
                       size_t new_tokens, const std::string& where);

// Pixels [3, T, H, W] for the ViT from an image (is_video false) or a video file, as Lance's x2t
// loader makes them. One-line Error naming the file on missing or corrupt media.
PreprocessResult load_x2t_media(const std::string& path, bool is_video, const std::string& preset);

// The x2t prompt for pixels `px` as a packed und batch: its input embeddings (embed_tokens rows,
// the ViT's rows on the pads) are written to `embeddings`, which the batch points into. Fails
// when the prompt plus `new_tokens` exceeds the model context (checked before the ViT runs).
Batch x2t_prompt_batch(DecoderSession& decoder, VisionTower& tower, const Qwen2Tokenizer& tok,
                       const PixelTensor& px, const std::string& system,
                       const std::string& question, size_t new_tokens,
                       std::vector<float>& embeddings, double* vit_seconds = nullptr);

struct X2tOptions {
    bool bf16_weights = true;  // hold F32 linears as BF16, as Lance casts at load
    GenerateOptions generate;  // stop_ids default to <|im_end|> when empty
};

struct X2tAnswer {
    GenerateResult gen;
    std::string text;  // decoded answer (stop token excluded)
    size_t vit_tokens = 0;
    double vit_seconds = 0;
};

// The decoder (und expert only) and the vision tower of one checkpoint, loaded once for any
// number of questions.
class X2tRunner {
  public:
    X2tRunner(const LanceCheckpoint& ck, const Qwen2Tokenizer& tok, const X2tOptions& opt = {});

    // Builds the prompt for pixels `px`, checks it fits the context (before the ViT runs), runs
    // the ViT, prefills and decodes. `on_token` sees each new id as it is produced.
    X2tAnswer answer(const PixelTensor& px, const std::string& system, const std::string& question,
                     const std::function<bool(int32_t)>& on_token = {});

    // x2t_prompt_batch with this runner's decoder and tower: what answer() prefills.
    Batch prompt_batch(const PixelTensor& px, const std::string& system,
                       const std::string& question, std::vector<float>& embeddings,
                       double* vit_seconds = nullptr);

    DecoderSession& decoder() { return *decoder_; }
    VisionTower& tower() { return *tower_; }

  private:
    const LanceCheckpoint& ck_;
    const Qwen2Tokenizer& tok_;
    X2tOptions opt_;
    std::unique_ptr<LanceWeights> weights_;
    std::unique_ptr<DecoderSession> decoder_;
    std::unique_ptr<VisionTower> tower_;
};

// Lance's example files for x2t (x2t_image_example.json, x2t_video_example.json): per item the
// media path and [instruction, question, answer].
struct X2tExample {
    std::string key;
    std::string media;  // resolved path (see resolve_example_media)
    bool is_video = false;
    std::string instruction, question, answer;
};
// Paths inside the JSONs are relative to Lance's repository; they are tried relative to the
// JSON's folder as given, then as images/<name> and videos/<name> beside it (the layout of
// shared/data/lance-examples). The first that exists wins; else the first candidate is returned
// (and fails when loaded).
std::vector<X2tExample> read_x2t_examples(const std::string& path);

}  // namespace lancet
