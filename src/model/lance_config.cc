// Parsing and validation of Lance's llm_config.json.
#include "model/lance_config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/json_file.h"

namespace lancet {

using nlohmann::json;

namespace {

constexpr int64_t kMaxDim = 1 << 20;

}  // namespace

LanceConfig LanceConfig::from_json(const json& j, const std::string& where) {
    if (!j.is_object()) fail(where, ": not a JSON object");
    LanceConfig c;
    c.hidden_size = static_cast<int>(json_get_int(j, "hidden_size", 1, kMaxDim, where));
    c.num_hidden_layers = static_cast<int>(json_get_int(j, "num_hidden_layers", 1, 1000, where));
    c.num_attention_heads =
        static_cast<int>(json_get_int(j, "num_attention_heads", 1, 4096, where));
    c.num_key_value_heads =
        static_cast<int>(json_get_int(j, "num_key_value_heads", 1, 4096, where));
    c.intermediate_size = static_cast<int>(json_get_int(j, "intermediate_size", 1, kMaxDim, where));
    c.vocab_size = static_cast<int>(json_get_int(j, "vocab_size", 1, 1 << 24, where));
    const int64_t d_ctx = 32768;
    c.max_position_embeddings =
        static_cast<int>(json_get_int(j, "max_position_embeddings", 1, 1 << 24, where, &d_ctx));
    c.rms_norm_eps = json_get_double(j, "rms_norm_eps", 1e-12, 1e-2, where);
    c.rope_theta = json_get_double(j, "rope_theta", 1.0, 1e12, where);
    if (c.hidden_size % c.num_attention_heads != 0)
        fail(where, ": hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ",
             c.num_attention_heads);
    if (c.num_attention_heads % c.num_key_value_heads != 0)
        fail(where, ": num_attention_heads ", c.num_attention_heads,
             " is not a multiple of num_key_value_heads ", c.num_key_value_heads);
    if (c.head_dim() % 2 != 0) fail(where, ": head_dim ", c.head_dim(), " is odd");

    const auto rs = j.find("rope_scaling");
    if (rs == j.end() || !rs->is_object() || !rs->contains("mrope_section"))
        fail(where,
             ": missing \"rope_scaling\": {\"mrope_section\": [t, h, w]} (Lance uses M-RoPE)");
    const json& sec = (*rs)["mrope_section"];
    if (!sec.is_array() || sec.size() != 3)
        fail(where, ": rope_scaling.mrope_section must be three integers, got ", sec.dump());
    int sum = 0;
    for (int i = 0; i < 3; ++i) {
        if (!sec[i].is_number_integer() || sec[i].get<int64_t>() < 0 ||
            sec[i].get<int64_t>() > 4096)
            fail(where, ": rope_scaling.mrope_section ", sec.dump(),
                 " is not three small integers");
        c.mrope_section[i] = sec[i].get<int>();
        sum += c.mrope_section[i];
    }
    if (sum * 2 != c.head_dim())
        fail(where, ": rope_scaling.mrope_section ", sec.dump(), " sums to ", sum,
             " but must be head_dim/2 = ", c.head_dim() / 2);

    const int64_t vmax = c.vocab_size - 1;
    c.bos_token_id = json_get_int(j, "bos_token_id", 0, vmax, where);
    c.eos_token_id = json_get_int(j, "eos_token_id", 0, vmax, where);
    c.vision_start_token_id = json_get_int(j, "vision_start_token_id", 0, vmax, where);
    c.vision_end_token_id = json_get_int(j, "vision_end_token_id", 0, vmax, where);
    c.image_token_id = json_get_int(j, "image_token_id", 0, vmax, where);
    c.video_token_id = json_get_int(j, "video_token_id", 0, vmax, where);
    if (auto it = j.find("tie_word_embeddings"); it != j.end()) {
        if (!it->is_boolean()) fail(where, ": \"tie_word_embeddings\" must be true or false");
        c.tie_word_embeddings = it->get<bool>();
    }
    const auto vc = j.find("vision_config");
    if (vc == j.end()) fail(where, ": missing \"vision_config\"");
    c.vision = vit_config_from_json(*vc, where + ": vision_config");
    if (c.vision.out_hidden_size != c.hidden_size)
        fail(where, ": vision_config.out_hidden_size ", c.vision.out_hidden_size,
             " must equal hidden_size ", c.hidden_size, " (the merger feeds the LLM directly)");
    return c;
}

LanceConfig LanceConfig::load(const std::string& path) {
    return from_json(read_json_file(path), path);
}

json LanceConfig::to_json() const {
    json vc = vit_config_to_json(vision);
    vc.erase("model_type");
    return {{"architectures", {"Qwen2ForCausalLM"}},
            {"model_type", "qwen2"},
            {"hidden_act", "silu"},
            {"hidden_size", hidden_size},
            {"num_hidden_layers", num_hidden_layers},
            {"num_attention_heads", num_attention_heads},
            {"num_key_value_heads", num_key_value_heads},
            {"intermediate_size", intermediate_size},
            {"vocab_size", vocab_size},
            {"max_position_embeddings", max_position_embeddings},
            {"rms_norm_eps", rms_norm_eps},
            {"rope_theta", rope_theta},
            {"rope_scaling", {{"type", "mrope"}, {"mrope_section", mrope_section}}},
            {"bos_token_id", bos_token_id},
            {"eos_token_id", eos_token_id},
            {"vision_start_token_id", vision_start_token_id},
            {"vision_end_token_id", vision_end_token_id},
            {"image_token_id", image_token_id},
            {"video_token_id", video_token_id},
            {"tie_word_embeddings", tie_word_embeddings},
            {"torch_dtype", "bfloat16"},
            {"use_cache", true},
            {"vision_config", vc}};
}

}  // namespace lancet
