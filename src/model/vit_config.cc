// Parsing and validation of the Qwen2.5-VL vision config.
#include "model/vit_config.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"

namespace lancet {

using nlohmann::json;

namespace {

constexpr int64_t kMaxDim = 1 << 20;

}  // namespace

bool VitConfig::is_full_attention(int block) const {
    return std::find(fullatt_block_indexes.begin(), fullatt_block_indexes.end(), block) !=
           fullatt_block_indexes.end();
}

VitConfig vit_config_from_json(const json& j, const std::string& where) {
    if (!j.is_object()) fail(where, ": vision config is not an object");
    VitConfig v;
    const int64_t d_in = 3, d_tps = 2, d_win = 112, d_tp = 2;
    auto get = [&](const char* key, int64_t lo, int64_t hi, const int64_t* def = nullptr) {
        return static_cast<int>(json_get_int(j, key, lo, hi, where, def));
    };
    v.depth = get("depth", 1, 1000);
    v.hidden_size = get("hidden_size", 1, kMaxDim);
    v.intermediate_size = get("intermediate_size", 1, kMaxDim);
    v.num_heads = get("num_heads", 1, 4096);
    // HF's Qwen2_5_VLVisionConfig spells it in_channels; the copy in llm_config.json in_chans.
    v.in_chans = get(j.contains("in_channels") ? "in_channels" : "in_chans", 1, 16, &d_in);
    v.out_hidden_size = get("out_hidden_size", 1, kMaxDim);
    v.patch_size = get("patch_size", 1, 1024);
    v.spatial_merge_size = get("spatial_merge_size", 1, 16);
    v.temporal_patch_size = get("temporal_patch_size", 1, 16, &d_tp);
    v.window_size = get("window_size", 1, 1 << 16, &d_win);
    v.tokens_per_second = get("tokens_per_second", 0, 1000, &d_tps);
    if (v.hidden_size % v.num_heads != 0 || v.head_dim() % 4 != 0)
        fail(where, ": vision hidden_size ", v.hidden_size, " / num_heads ", v.num_heads,
             " must give a head_dim divisible by 4 (2-D rotary)");
    if (v.window_size % v.merge_pixels() != 0)
        fail(where, ": vision window_size ", v.window_size,
             " is not a multiple of patch_size x spatial_merge_size = ", v.merge_pixels());
    if (auto it = j.find("hidden_act"); it != j.end() && *it != "silu")
        fail(where, ": vision hidden_act ", it->dump(), " is not supported (the tower uses silu)");
    if (auto it = j.find("spatial_patch_size");
        it != j.end() && !(it->is_number_integer() && it->get<int64_t>() == v.patch_size))
        fail(where, ": vision spatial_patch_size ", it->dump(), " differs from patch_size ",
             v.patch_size);
    v.fullatt_block_indexes.clear();
    if (auto it = j.find("fullatt_block_indexes"); it != j.end()) {
        if (!it->is_array()) fail(where, ": \"fullatt_block_indexes\" must be an array");
        for (const json& b : *it) {
            if (!b.is_number_integer() || b.get<int64_t>() < 0 || b.get<int64_t>() >= v.depth)
                fail(where, ": fullatt_block_indexes entry ", b.dump(), " is not a block index < ",
                     v.depth);
            if (v.is_full_attention(b.get<int>()))
                fail(where, ": fullatt_block_indexes lists block ", b.dump(), " twice");
            v.fullatt_block_indexes.push_back(b.get<int>());
        }
    }
    return v;
}

json vit_config_to_json(const VitConfig& v) {
    return {{"model_type", "qwen2_5_vl"},
            {"depth", v.depth},
            {"hidden_act", "silu"},
            {"hidden_size", v.hidden_size},
            {"intermediate_size", v.intermediate_size},
            {"num_heads", v.num_heads},
            {"in_chans", v.in_chans},
            {"out_hidden_size", v.out_hidden_size},
            {"patch_size", v.patch_size},
            {"spatial_patch_size", v.patch_size},
            {"spatial_merge_size", v.spatial_merge_size},
            {"temporal_patch_size", v.temporal_patch_size},
            {"window_size", v.window_size},
            {"fullatt_block_indexes", v.fullatt_block_indexes},
            {"tokens_per_second", v.tokens_per_second}};
}

json vit_folder_config_json(const VitConfig& v) {
    json j = vit_config_to_json(v);
    j.erase("in_chans");
    j.erase("spatial_patch_size");
    j["in_channels"] = v.in_chans;
    j["model_type"] = "qwen2_5_vl";
    j["initializer_range"] = 0.02;
    return j;
}

}  // namespace lancet
