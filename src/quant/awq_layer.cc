// Orders the AWQ searches of one decoder-layer path and applies each group's fusion.
#include "quant/awq_layer.h"

#include "core/error.h"
#include "quant/fusion.h"

namespace lancet::quant {
namespace {

void check_size(const std::vector<float>& v, size_t n, const char* name) {
    if (v.size() != n) fail("layer weights: ", name, " has ", v.size(), " values, expected ", n);
}

}  // namespace

LayerResult quantize_layer(LayerWeights& w, const LayerStats& stats, const AwqOptions& opt,
                           const LayerSwitches& sw) {
    const size_t h = w.hidden, I = w.intermediate, qd = size_t(w.num_heads) * w.head_dim,
                 kvd = size_t(w.num_kv_heads) * w.head_dim;
    check_size(w.input_norm, h, "input_norm");
    check_size(w.post_norm, h, "post_norm");
    check_size(w.q, qd * h, "q_proj");
    check_size(w.k, kvd * h, "k_proj");
    check_size(w.v, kvd * h, "v_proj");
    check_size(w.o, h * qd, "o_proj");
    check_size(w.gate, I * h, "gate_proj");
    check_size(w.up, I * h, "up_proj");
    check_size(w.down, h * I, "down_proj");
    if (!w.v_bias.empty()) check_size(w.v_bias, kvd, "v_proj bias");
    LayerResult r;

    // o_proj through v_proj: one scale per (kv head, dim), shared by that group's query heads.
    {
        AwqOptions o_opt = opt;
        o_opt.group_size = w.group_size.o;
        o_opt.search_scales = opt.search_scales && sw.fuse_o_v;
        const std::vector<int> tie = gqa_tie_map(w.num_heads, w.num_kv_heads, w.head_dim);
        const std::vector<AwqConsumer> c = {{"o_proj", w.o.data(), w.hidden}};
        r.o = stats.o ? awq_search(c, static_cast<int>(qd), stats.o, o_opt, &tie)
                      : rtn_group(c, static_cast<int>(qd), o_opt);
        if (stats.o && !r.o.rtn_fallback && o_opt.search_scales)
            scale_weight_rows_inverse(w.v.data(), w.v_bias.empty() ? nullptr : w.v_bias.data(),
                                      static_cast<int64_t>(kvd), static_cast<int64_t>(h),
                                      r.o.s_free.data());
    }
    // down_proj through up_proj.
    {
        AwqOptions d_opt = opt;
        d_opt.group_size = w.group_size.down;
        d_opt.search_scales = opt.search_scales && sw.fuse_down_up;
        const std::vector<AwqConsumer> c = {{"down_proj", w.down.data(), w.hidden}};
        r.down = stats.down ? awq_search(c, w.intermediate, stats.down, d_opt)
                            : rtn_group(c, w.intermediate, d_opt);
        if (stats.down && !r.down.rtn_fallback && d_opt.search_scales)
            scale_weight_rows_inverse<float>(w.up.data(), nullptr, static_cast<int64_t>(I),
                                             static_cast<int64_t>(h), r.down.s.data());
    }
    const std::vector<AwqConsumer> qkv = {{"q_proj", w.q.data(), static_cast<int>(qd)},
                                          {"k_proj", w.k.data(), static_cast<int>(kvd)},
                                          {"v_proj", w.v.data(), static_cast<int>(kvd)}};
    AwqOptions qkv_opt = opt;
    qkv_opt.group_size = w.group_size.qkv;
    r.qkv = stats.qkv ? awq_search(qkv, w.hidden, stats.qkv, qkv_opt)
                      : rtn_group(qkv, w.hidden, qkv_opt);
    if (stats.qkv) fuse_scale_into_norm(w.input_norm.data(), r.qkv.s.data(), w.hidden);
    const std::vector<AwqConsumer> gu = {{"gate_proj", w.gate.data(), w.intermediate},
                                         {"up_proj", w.up.data(), w.intermediate}};
    AwqOptions gu_opt = opt;
    gu_opt.group_size = w.group_size.gate_up;
    r.gate_up = stats.gate_up ? awq_search(gu, w.hidden, stats.gate_up, gu_opt)
                              : rtn_group(gu, w.hidden, gu_opt);
    if (stats.gate_up) fuse_scale_into_norm(w.post_norm.data(), r.gate_up.s.data(), w.hidden);
    return r;
}

}  // namespace lancet::quant
