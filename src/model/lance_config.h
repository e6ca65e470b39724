// LanceConfig: the fields of Lance's llm_config.json (a Qwen2Config) and its ViT config, validated.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "model/vit_config.h"

namespace lancet {

// Lance's decoder (a Qwen2 LLM with two expert weight sets per layer) plus the constants of the
// generation bridge that the checkpoint shapes depend on.
struct LanceConfig {
    int hidden_size = 0;
    int num_hidden_layers = 0;
    int num_attention_heads = 0;
    int num_key_value_heads = 0;
    int intermediate_size = 0;
    int vocab_size = 0;
    int max_position_embeddings = 0;
    double rms_norm_eps = 1e-6;
    double rope_theta = 1e6;
    std::array<int, 3> mrope_section = {16, 24, 24};
    // Token ids the model code reads from the config (the tokenizer supplies im_start/im_end).
    int64_t bos_token_id = 0, eos_token_id = 0;
    int64_t vision_start_token_id = 0, vision_end_token_id = 0;
    int64_t image_token_id = 0, video_token_id = 0;
    bool tie_word_embeddings = false;  // read but overridden: Lance always runs untied
    VitConfig vision;

    // Bridge constants (Lance command-line defaults, not in the JSON).
    int latent_channels = 48;  // Wan2.2 VAE z_dim
    int time_freq_dim = 256;   // TimestepEmbedder frequency features
    int max_latent_size = 64;  // PE3D table side
    int max_num_frames = 121;  // PE3D table frames = max_num_frames / 4 + 1

    int head_dim() const { return hidden_size / num_attention_heads; }
    int q_dim() const { return num_attention_heads * head_dim(); }
    int kv_dim() const { return num_key_value_heads * head_dim(); }
    int64_t pos_embed_rows() const {
        return static_cast<int64_t>(max_num_frames / 4 + 1) * max_latent_size * max_latent_size;
    }

    // Parses and validates; `where` prefixes every error ("llm_config.json: ...").
    static LanceConfig from_json(const nlohmann::json& j, const std::string& where);
    // Reads `path` (a llm_config.json).
    static LanceConfig load(const std::string& path);
    // The llm_config.json Lancet writes (Qwen2Config keys, vision_config included).
    nlohmann::json to_json() const;
};

}  // namespace lancet
