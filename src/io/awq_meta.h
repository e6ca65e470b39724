// AwqMeta: the awq_meta.json / nvfp4_meta.json that accompanies a published quantized checkpoint.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "core/tensor.h"

namespace lancet {

enum class QuantFormat { Int4, Int5, Nvfp4 };
std::string_view quant_format_name(QuantFormat f);

struct AwqWeightMeta {
    Shape shape;          // the original [out, in]
    int group_size = 64;  // per weight: the seed's fallback can differ from the top-level value
    std::string scheme;   // asym_int4_grouped_awq | _minmax | _no_awq | nvfp4_awq | ...
};

struct AwqMeta {
    QuantFormat format = QuantFormat::Int4;
    int n_bit = 4;
    int group_size = 64;  // top level (block_size for NVFP4); informational
    std::string scheme;
    // Keyed by the original weight name ("...q_proj.weight").
    std::map<std::string, AwqWeightMeta> per_weight;
    // Everything else in the file (tasks_calibrated, awq_linears, Lancet's own fields), kept as is.
    nlohmann::json extra = nlohmann::json::object();

    // `is_nvfp4` selects the NVFP4 schema (block_size, no n_bit).
    static AwqMeta from_json(const nlohmann::json& j, bool is_nvfp4, const std::string& where);
    static AwqMeta load(const std::string& path, bool is_nvfp4);
    nlohmann::json to_json() const;
};

}  // namespace lancet
