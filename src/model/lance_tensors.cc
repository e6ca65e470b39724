// The Lance tensor inventory (names and shapes from the architecture spec §1.3).
#include "model/lance_tensors.h"

namespace lancet {

std::string_view component_name(Component c) {
    switch (c) {
        case Component::LlmUnd:
            return "llm.und";
        case Component::LlmGen:
            return "llm.gen";
        case Component::Embedding:
            return "embed_tokens";
        case Component::LmHead:
            return "lm_head";
        case Component::Bridge:
            return "bridge";
        case Component::Vit:
            return "vit";
        case Component::PosEmbed:
            return "latent_pos_embed";
    }
    return "?";
}

namespace {

std::string layer_prefix(int i) { return "language_model.model.layers." + std::to_string(i) + "."; }

}  // namespace

void for_each_vit_tensor(const VitConfig& v, const std::string& prefix,
                         const std::function<void(const TensorSpec&)>& fn) {
    const int64_t d = v.hidden_size, f = v.intermediate_size, m = v.merged_dim();
    auto emit = [&](const std::string& n, Shape s, TensorKind k, int layer = -1) {
        fn({prefix + n, std::move(s), Component::Vit, k, layer});
    };
    emit("patch_embed.proj.weight",
         {d, v.in_chans, v.temporal_patch_size, v.patch_size, v.patch_size},
         TensorKind::ConvWeight);
    for (int j = 0; j < v.depth; ++j) {
        const std::string b = "blocks." + std::to_string(j) + ".";
        emit(b + "norm1.weight", {d}, TensorKind::Norm, j);
        emit(b + "norm2.weight", {d}, TensorKind::Norm, j);
        emit(b + "attn.qkv.weight", {3 * d, d}, TensorKind::LinearWeight, j);
        emit(b + "attn.qkv.bias", {3 * d}, TensorKind::Bias, j);
        emit(b + "attn.proj.weight", {d, d}, TensorKind::LinearWeight, j);
        emit(b + "attn.proj.bias", {d}, TensorKind::Bias, j);
        emit(b + "mlp.gate_proj.weight", {f, d}, TensorKind::LinearWeight, j);
        emit(b + "mlp.gate_proj.bias", {f}, TensorKind::Bias, j);
        emit(b + "mlp.up_proj.weight", {f, d}, TensorKind::LinearWeight, j);
        emit(b + "mlp.up_proj.bias", {f}, TensorKind::Bias, j);
        emit(b + "mlp.down_proj.weight", {d, f}, TensorKind::LinearWeight, j);
        emit(b + "mlp.down_proj.bias", {d}, TensorKind::Bias, j);
    }
    emit("merger.ln_q.weight", {d}, TensorKind::Norm);
    emit("merger.mlp.0.weight", {m, m}, TensorKind::LinearWeight);
    emit("merger.mlp.0.bias", {m}, TensorKind::Bias);
    emit("merger.mlp.2.weight", {v.out_hidden_size, m}, TensorKind::LinearWeight);
    emit("merger.mlp.2.bias", {v.out_hidden_size}, TensorKind::Bias);
}

void for_each_lance_tensor(const LanceConfig& c, VitLayout vit,
                           const std::function<void(const TensorSpec&)>& fn, int64_t pos_rows) {
    const int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), hd = c.head_dim();
    const int64_t ff = c.intermediate_size, vocab = c.vocab_size;
    fn({"language_model.model.embed_tokens.weight",
        {vocab, h},
        Component::Embedding,
        TensorKind::Embedding});
    for (int i = 0; i < c.num_hidden_layers; ++i) {
        const std::string p = layer_prefix(i);
        for (int gen = 0; gen < 2; ++gen) {
            const std::string s = gen ? "_moe_gen" : "";
            const Component comp = gen ? Component::LlmGen : Component::LlmUnd;
            auto emit = [&](const std::string& n, Shape shape, TensorKind k) {
                fn({p + n, std::move(shape), comp, k, i});
            };
            emit("input_layernorm" + s + ".weight", {h}, TensorKind::Norm);
            emit("self_attn.q_proj" + s + ".weight", {q, h}, TensorKind::LinearWeight);
            emit("self_attn.q_proj" + s + ".bias", {q}, TensorKind::Bias);
            emit("self_attn.k_proj" + s + ".weight", {kv, h}, TensorKind::LinearWeight);
            emit("self_attn.k_proj" + s + ".bias", {kv}, TensorKind::Bias);
            emit("self_attn.v_proj" + s + ".weight", {kv, h}, TensorKind::LinearWeight);
            emit("self_attn.v_proj" + s + ".bias", {kv}, TensorKind::Bias);
            emit("self_attn.o_proj" + s + ".weight", {h, q}, TensorKind::LinearWeight);
            emit("self_attn.q_norm" + s + ".weight", {hd}, TensorKind::Norm);
            emit("self_attn.k_norm" + s + ".weight", {hd}, TensorKind::Norm);
            emit("post_attention_layernorm" + s + ".weight", {h}, TensorKind::Norm);
            const std::string mlp = gen ? "mlp_moe_gen." : "mlp.";
            emit(mlp + "gate_proj.weight", {ff, h}, TensorKind::LinearWeight);
            emit(mlp + "up_proj.weight", {ff, h}, TensorKind::LinearWeight);
            emit(mlp + "down_proj.weight", {h, ff}, TensorKind::LinearWeight);
        }
    }
    fn({"language_model.model.norm.weight", {h}, Component::LlmUnd, TensorKind::Norm});
    fn({"language_model.model.norm_moe_gen.weight", {h}, Component::LlmGen, TensorKind::Norm});
    fn({"language_model.lm_head.weight", {vocab, h}, Component::LmHead, TensorKind::LinearWeight});
    fn({"time_embedder.mlp.0.weight",
        {h, c.time_freq_dim},
        Component::Bridge,
        TensorKind::LinearWeight});
    fn({"time_embedder.mlp.0.bias", {h}, Component::Bridge, TensorKind::Bias});
    fn({"time_embedder.mlp.2.weight", {h, h}, Component::Bridge, TensorKind::LinearWeight});
    fn({"time_embedder.mlp.2.bias", {h}, Component::Bridge, TensorKind::Bias});
    fn({"vae2llm.weight", {h, c.latent_channels}, Component::Bridge, TensorKind::LinearWeight});
    fn({"vae2llm.bias", {h}, Component::Bridge, TensorKind::Bias});
    fn({"llm2vae.weight", {c.latent_channels, h}, Component::Bridge, TensorKind::LinearWeight});
    fn({"llm2vae.bias", {c.latent_channels}, Component::Bridge, TensorKind::Bias});
    fn({"latent_pos_embed.pos_embed",
        {pos_rows >= 0 ? pos_rows : c.pos_embed_rows(), h},
        Component::PosEmbed,
        TensorKind::PosTable});
    if (vit == VitLayout::Bundled) for_each_vit_tensor(c.vision, "vit_model.", fn);
}

std::vector<TensorSpec> lance_tensor_list(const LanceConfig& cfg, VitLayout vit, int64_t pos_rows) {
    std::vector<TensorSpec> v;
    for_each_lance_tensor(
        cfg, vit, [&](const TensorSpec& s) { v.push_back(s); }, pos_rows);
    return v;
}

std::vector<std::string> lance_layer_linears(int i) {
    const std::string p = layer_prefix(i);
    std::vector<std::string> r;
    for (int gen = 0; gen < 2; ++gen) {
        const std::string s = gen ? "_moe_gen" : "";
        for (const char* n : {"q_proj", "k_proj", "v_proj", "o_proj"})
            r.push_back(p + "self_attn." + n + s);
        for (const char* n : {"gate_proj", "up_proj", "down_proj"})
            r.push_back(p + (gen ? "mlp_moe_gen." : "mlp.") + n);
    }
    return r;
}

std::vector<FusionGroup> lance_fusion_groups(const LanceConfig& cfg) {
    using K = FusionGroup::Kind;
    std::vector<FusionGroup> g;
    for (int i = 0; i < cfg.num_hidden_layers; ++i) {
        const std::string p = layer_prefix(i);
        for (int gen = 0; gen < 2; ++gen) {
            const std::string s = gen ? "_moe_gen" : "";
            const std::string a = p + "self_attn.";
            const std::string m = p + (gen ? "mlp_moe_gen." : "mlp.");
            g.push_back({K::NormToLinears,
                         i,
                         gen == 1,
                         p + "input_layernorm" + s + ".weight",
                         {a + "q_proj" + s, a + "k_proj" + s, a + "v_proj" + s}});
            g.push_back({K::NormToLinears,
                         i,
                         gen == 1,
                         p + "post_attention_layernorm" + s + ".weight",
                         {m + "gate_proj", m + "up_proj"}});
            g.push_back({K::VToO, i, gen == 1, a + "v_proj" + s, {a + "o_proj" + s}});
            g.push_back({K::UpToDown, i, gen == 1, m + "up_proj", {m + "down_proj"}});
        }
    }
    return g;
}

}  // namespace lancet
