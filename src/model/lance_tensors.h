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

struct TensorSpec {
    std::string name;
    Shape shape;
    Component component;
    TensorKind kind;
    int layer = -1;  // decoder or ViT block index, -1 for top-level tensors
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

// One AWQ fusion group: a norm (or producing linear) whose output feeds the consumers. For the
// o_proj and down_proj pairs the "norm" is the producing linear (v_proj, up_proj).
struct FusionGroup {
    enum class Kind { NormToLinears, VToO, UpToDown };
    Kind kind;
    int layer;
    bool gen;                            // the _moe_gen path
    std::string source;                  // norm weight name, or producing linear base name
    std::vector<std::string> consumers;  // linear base names (without ".weight")
};

// The decoder's fusion groups for AWQ, in layer order: input norm -> q,k,v; post-attention norm ->
// gate,up; v -> o; up -> down; for und then gen.
std::vector<FusionGroup> lance_fusion_groups(const LanceConfig& cfg);

// The 14 targeted linears of decoder layer `i` (base names), und then gen.
std::vector<std::string> lance_layer_linears(int i);

}  // namespace lancet
