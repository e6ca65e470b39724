// VitConfig: the Qwen2.5-VL vision tower's widths (spec §4), read from the release's
// Qwen2.5-VL-ViT/config.json (Qwen2_5_VLVisionConfig keys) or the vision_config copy in
// llm_config.json, range-checked. Nothing in the tower is sized by a constant.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace lancet {

struct VitConfig {
    int depth = 32;
    int hidden_size = 1280;
    int intermediate_size = 3420;
    int num_heads = 16;
    int in_chans = 3;
    int out_hidden_size = 2048;
    int patch_size = 14;
    int spatial_merge_size = 2;
    int temporal_patch_size = 2;
    int window_size = 112;  // pixels
    int tokens_per_second = 2;
    std::vector<int> fullatt_block_indexes = {7, 15, 23, 31};

    int head_dim() const { return hidden_size / num_heads; }
    // Conv3d patch embedding input: in_chans x temporal_patch x patch x patch.
    int patch_dim() const { return in_chans * temporal_patch_size * patch_size * patch_size; }
    int merge_unit() const { return spatial_merge_size * spatial_merge_size; }
    int merged_dim() const { return hidden_size * merge_unit(); }
    // Pixels per side of one merge block (the divisor H and W must have: 28).
    int merge_pixels() const { return patch_size * spatial_merge_size; }
    // Merge blocks per side of one attention window (112 / 28 = 4).
    int window_merge_blocks() const { return window_size / merge_pixels(); }
    bool is_full_attention(int block) const;
};

// Parses and validates a vision config object; `where` prefixes every one-line error. Accepts
// HF's in_channels or the llm_config copy's in_chans.
VitConfig vit_config_from_json(const nlohmann::json& j, const std::string& where);
// The vision_config block of llm_config.json (in_chans spelling, as Lance's copy has it).
nlohmann::json vit_config_to_json(const VitConfig& v);
// Qwen2.5-VL-ViT/config.json as the release ships it (Qwen2_5_VLVisionConfig keys).
nlohmann::json vit_folder_config_json(const VitConfig& v);

}  // namespace lancet
