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

std::string_view path_linear_name(PathLinear l) {
    static constexpr const char* kNames[kPathLinears] = {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    return kNames[static_cast<int>(l)];
}

LinearInput linear_input(PathLinear l) {
    switch (l) {
        case PathLinear::Q:
        case PathLinear::K:
        case PathLinear::V:
            return LinearInput::Qkv;
        case PathLinear::O:
            return LinearInput::O;
        case PathLinear::Gate:
        case PathLinear::Up:
            return LinearInput::GateUp;
        case PathLinear::Down:
            return LinearInput::Down;
    }
    return LinearInput::Qkv;
}

int64_t linear_input_width(const LanceConfig& cfg, LinearInput in) {
    switch (in) {
        case LinearInput::O:
            return cfg.q_dim();
        case LinearInput::Down:
            return cfg.intermediate_size;
        case LinearInput::Qkv:
        case LinearInput::GateUp:
            break;
    }
    return cfg.hidden_size;
}

PathNames path_names(int layer, bool gen) {
    // The gen expert's attention tensors carry the suffix on the last component
    // (self_attn.q_proj_moe_gen.weight); its MLP is a sibling module
    // (mlp_moe_gen.gate_proj.weight).
    const std::string p = "language_model.model.layers." + std::to_string(layer) + ".";
    const std::string s = gen ? "_moe_gen" : "";
    const std::string attn = p + "self_attn.", mlp = p + (gen ? "mlp_moe_gen." : "mlp.");
    PathNames n;
    n.layer = layer;
    n.gen = gen;
    n.input_norm = p + "input_layernorm" + s + ".weight";
    n.post_norm = p + "post_attention_layernorm" + s + ".weight";
    n.q_norm = attn + "q_norm" + s + ".weight";
    n.k_norm = attn + "k_norm" + s + ".weight";
    for (PathLinear l : kAllPathLinears) {
        const std::string name(path_linear_name(l));
        n.linear[static_cast<int>(l)] =
            linear_input(l) == LinearInput::GateUp || linear_input(l) == LinearInput::Down
                ? mlp + name
                : attn + name + s;
    }
    return n;
}

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
    namespace N = lance_names;
    const int64_t h = c.hidden_size, vocab = c.vocab_size, lat = c.latent_channels;
    auto top = [&](const std::string& name, Shape shape, Component comp, TensorKind k) {
        fn({name, std::move(shape), comp, k});
    };
    auto linear = [&](const std::string& base, int64_t out, int64_t in, bool bias) {
        top(base + ".weight", {out, in}, Component::Bridge, TensorKind::LinearWeight);
        if (bias) top(base + ".bias", {out}, Component::Bridge, TensorKind::Bias);
    };
    top(N::kEmbedTokens, {vocab, h}, Component::Embedding, TensorKind::Embedding);
    for (int i = 0; i < c.num_hidden_layers; ++i)
        for (int gen = 0; gen < 2; ++gen) for_each_path_tensor(c, i, gen == 1, fn);
    top(N::kNorm, {h}, Component::LlmUnd, TensorKind::Norm);
    top(N::kNormGen, {h}, Component::LlmGen, TensorKind::Norm);
    top(std::string(N::kLmHead) + ".weight", {vocab, h}, Component::LmHead,
        TensorKind::LinearWeight);
    linear(N::kTimeMlp0, h, c.time_freq_dim, true);
    linear(N::kTimeMlp2, h, h, true);
    linear(N::kVae2Llm, h, lat, true);
    linear(N::kLlm2Vae, lat, h, true);
    top(N::kPosEmbed, {pos_rows >= 0 ? pos_rows : c.pos_embed_rows(), h}, Component::PosEmbed,
        TensorKind::PosTable);
    if (vit == VitLayout::Bundled) for_each_vit_tensor(c.vision, "vit_model.", fn);
}

std::vector<TensorSpec> lance_tensor_list(const LanceConfig& cfg, VitLayout vit, int64_t pos_rows) {
    std::vector<TensorSpec> v;
    for_each_lance_tensor(
        cfg, vit, [&](const TensorSpec& s) { v.push_back(s); }, pos_rows);
    return v;
}

void for_each_path_tensor(const LanceConfig& c, int layer, bool gen,
                          const std::function<void(const TensorSpec&)>& fn) {
    const int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), hd = c.head_dim();
    const int64_t ff = c.intermediate_size;
    const PathNames n = path_names(layer, gen);
    const Component comp = gen ? Component::LlmGen : Component::LlmUnd;
    auto norm = [&](const std::string& name, int64_t dim) {
        fn({name, {dim}, comp, TensorKind::Norm, layer});
    };
    auto linear = [&](PathLinear l, int64_t out, int64_t in, bool bias) {
        const int k = static_cast<int>(l);
        fn({n.weight(l), {out, in}, comp, TensorKind::LinearWeight, layer, k});
        if (bias) fn({n.bias(l), {out}, comp, TensorKind::Bias, layer, k});
    };
    norm(n.input_norm, h);
    linear(PathLinear::Q, q, h, true);
    linear(PathLinear::K, kv, h, true);
    linear(PathLinear::V, kv, h, true);
    linear(PathLinear::O, h, q, false);
    norm(n.q_norm, hd);
    norm(n.k_norm, hd);
    norm(n.post_norm, h);
    linear(PathLinear::Gate, ff, h, false);
    linear(PathLinear::Up, ff, h, false);
    linear(PathLinear::Down, h, ff, false);
}

std::vector<std::string> lance_layer_linears(int i) {
    std::vector<std::string> r;
    for (int gen = 0; gen < 2; ++gen) {
        const PathNames n = path_names(i, gen == 1);
        r.insert(r.end(), std::begin(n.linear), std::end(n.linear));
    }
    return r;
}

}  // namespace lancet
