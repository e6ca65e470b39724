// The tensor inventory of a Lance checkpoint, declared once and walked by load, validation,
// quantization, writing, synth and inspect alike.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/lance_config.h"

namespace lancet {

enum class Component { LlmUnd, LlmGen, Embedding, LmHead, Bridge, Vit, PosEmbed };
std::string_view component_name(Component c);

// What a tensor is, which decides how synth fills it and what the quantizer may do with it.
enum class TensorKind {
    LinearWeight,  // [out, in] of a Linear: quantizable
    Bias,
    Norm,        // RMSNorm gain
    Embedding,   // embed_tokens rows
    ConvWeight,  // the ViT patch embedding (a Conv3d)
    PosTable,    // latent_pos_embed.pos_embed: a fixed sin-cos table, ignored at load
};

// Where the ViT lives: bundled under vit_model.* (Lance_3B_Video) or in a separate vit.safetensors
// (Lance_3B), and so whether the main checkpoint holds it.
enum class VitLayout { Bundled, Separate };

// The seven linears of a decoder layer path, in the checkpoint's order.
enum class PathLinear { Q, K, V, O, Gate, Up, Down };
inline constexpr int kPathLinears = 7;
inline constexpr PathLinear kAllPathLinears[kPathLinears] = {
    PathLinear::Q,    PathLinear::K,  PathLinear::V,   PathLinear::O,
    PathLinear::Gate, PathLinear::Up, PathLinear::Down};
// "q_proj" ... "down_proj": the linear's type, the same on both paths.
std::string_view path_linear_name(PathLinear l);

// The four activations a decoder layer path's linears read, one per AWQ fusion group (spec
// §3.1/§7.2). Linears reading the same one share their activation statistics and one AWQ scale
// vector; o's scales fold into v_proj's rows, down's into up_proj's.
enum class LinearInput {
    Qkv,     // input_layernorm output, feeds q/k/v_proj
    O,       // attention output, feeds o_proj
    GateUp,  // post_attention_layernorm output, feeds gate/up_proj
    Down,    // silu(gate) * up, feeds down_proj
};
inline constexpr int kLinearInputs = 4;
LinearInput linear_input(PathLinear l);
// Width of that activation (the linear's `in`).
int64_t linear_input_width(const LanceConfig& cfg, LinearInput in);

// Every tensor name of one decoder layer path (layer `layer`, und or gen expert): built by
// path_names(), the only place in src/ that joins decoder layer names.
struct PathNames {
    int layer = 0;
    bool gen = false;  // the _moe_gen expert
    // Full tensor names.
    std::string input_norm, post_norm, q_norm, k_norm;
    // Linear base names, indexed by PathLinear: add ".weight" / ".bias" (q, k, v), or the AWQ
    // suffixes ".qweight" / ".scales" / ".zeros".
    std::string linear[kPathLinears];
    const std::string& operator[](PathLinear l) const { return linear[static_cast<int>(l)]; }
    std::string weight(PathLinear l) const { return (*this)[l] + ".weight"; }
    std::string bias(PathLinear l) const { return (*this)[l] + ".bias"; }
};
PathNames path_names(int layer, bool gen);

// The checkpoint's top-level tensor names (linears as base names, like PathNames::linear).
namespace lance_names {
inline constexpr const char* kEmbedTokens = "language_model.model.embed_tokens.weight";
inline constexpr const char* kNorm = "language_model.model.norm.weight";
inline constexpr const char* kNormGen = "language_model.model.norm_moe_gen.weight";
inline constexpr const char* kLmHead = "language_model.lm_head";
inline constexpr const char* kTimeMlp0 = "time_embedder.mlp.0";
inline constexpr const char* kTimeMlp2 = "time_embedder.mlp.2";
inline constexpr const char* kVae2Llm = "vae2llm";
inline constexpr const char* kLlm2Vae = "llm2vae";
inline constexpr const char* kPosEmbed = "latent_pos_embed.pos_embed";
inline std::string weight(const char* base) { return std::string(base) + ".weight"; }
inline std::string bias(const char* base) { return std::string(base) + ".bias"; }
}  // namespace lance_names

struct TensorSpec {
    std::string name;
    Shape shape;
    Component component;
    TensorKind kind;
    int layer = -1;  // decoder or ViT block index, -1 for top-level tensors
    // Decoder layer-path linears (weight and bias): which one; -1 for every other tensor.
    int path_linear = -1;
};

// Every tensor of a Lance checkpoint for `cfg`, in a fixed order (per layer, und before gen).
// With VitLayout::Separate the ViT tensors are left out (they live in vit.safetensors, listed by
// for_each_vit_tensor without the prefix). `pos_rows` is the latent_pos_embed row count found in
// the file (it differs between Lance_3B and Lance_3B_Video) or -1 for cfg.pos_embed_rows().
void for_each_lance_tensor(const LanceConfig& cfg, VitLayout vit,
                           const std::function<void(const TensorSpec&)>& fn, int64_t pos_rows = -1);

// The ViT's own tensors, with names prefixed by `prefix` ("vit_model." when bundled, "" in
// vit.safetensors).
void for_each_vit_tensor(const VitConfig& v, const std::string& prefix,
                         const std::function<void(const TensorSpec&)>& fn);

std::vector<TensorSpec> lance_tensor_list(const LanceConfig& cfg, VitLayout vit,
                                          int64_t pos_rows = -1);

// The tensors of decoder layer path (layer, gen) in checkpoint order: input norm, q/k/v weight and
// bias, o, q/k norms, post-attention norm, gate, up, down. for_each_lance_tensor walks it per path.
void for_each_path_tensor(const LanceConfig& cfg, int layer, bool gen,
                          const std::function<void(const TensorSpec&)>& fn);

// The 14 targeted linears of decoder layer `i` (base names), und then gen.
std::vector<std::string> lance_layer_linears(int i);

}  // namespace lancet
