// The quantization pipeline: plan the output tensors from the inventory, then stream one decoder
// layer path at a time from the mapped source through AWQ (or RTN) into the safetensors writer.
#include "pipeline/quantize.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "core/error.h"
#include "core/log.h"
#include "core/numeric.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/lance_tensors.h"
#include "quant/awq.h"
#include "quant/awq_layer.h"
#include "quant/fusion.h"
#include "quant/q4.h"
#include "quant/stats_file.h"

namespace lancet {

namespace {

using namespace quant;  // the algorithms this run drives

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

const char* const kSchemeAwq = "asym_int4_grouped_awq";
const char* const kSchemeMinmax = "asym_int4_grouped_minmax";
const char* const kSchemeNoAwq = "asym_int4_grouped_no_awq";

std::string fixed1(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.1f", v);
    return b;
}

std::string strip(const std::string& s, const std::string& suffix) {
    return s.ends_with(suffix) ? s.substr(0, s.size() - suffix.size()) : s;
}

bool in_decoder_path(const TensorSpec& s) {
    return s.layer >= 0 && (s.component == Component::LlmUnd || s.component == Component::LlmGen);
}

// "q_proj", "down_proj", "lm_head", "vit": the row of the summary table a linear belongs to.
std::string linear_type(const TensorSpec& s) {
    if (s.component == Component::Vit) return "vit";
    if (s.component == Component::LmHead) return "lm_head";
    return std::string(path_linear_name(static_cast<PathLinear>(s.path_linear)));
}

std::vector<uint8_t> bf16_bytes(const std::vector<float>& v) {
    std::vector<uint8_t> b(v.size() * 2);
    for (size_t i = 0; i < v.size(); ++i) {
        const uint16_t h = f32_to_bf16(v[i]);
        std::memcpy(&b[i * 2], &h, 2);
    }
    return b;
}

template <typename T>
std::vector<uint8_t> raw_bytes(const std::vector<T>& v) {
    std::vector<uint8_t> b(v.size() * sizeof(T));
    if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
    return b;
}

ojson err_json(const RelErr& e) {
    auto num = [](double v) { return std::isfinite(v) ? ojson(v) : ojson(nullptr); };
    return ojson{{"search", num(e.search)}, {"heldout", num(e.heldout)}};
}

// One output tensor's declaration.
struct OutTensor {
    std::string name;
    DType dtype;
    Shape shape;
};

// One quantized linear of the plan.
struct Target {
    std::string base;
    std::string type;  // linear_type()
    int out = 0, in = 0, gs = 0;
    std::string scheme;  // filled when quantized
};

class Pipeline {
  public:
    explicit Pipeline(const QuantizeOptions& opt) : opt_(opt) {}
    ojson run();

  private:
    void check_arguments();
    void check_stats();
    void plan();
    void process_path(int layer, bool gen);
    void prefetch_path(int layer, bool gen) const;
    void process_vit_block(int block);
    void process_vit_merger();
    void quantize_single(const Target& t);
    void emit_quantized(const Target& t, const QuantizedMatrix& q);
    void pass_through(const TensorSpec& s);
    void record(const std::string& base, const std::string& scheme, int gs, const AwqResult* group,
                const AwqConsumerResult* c);
    void write_cached(const std::string& name);
    AwqOptions::Feedback feedback() const {
        return opt_.method == "gptq"       ? AwqOptions::Feedback::Gptq
               : opt_.method == "awq-gptq" ? AwqOptions::Feedback::AwqGptq
                                           : AwqOptions::Feedback::None;
    }
    ojson make_meta() const;
    ojson make_report(double seconds) const;
    // Sequential calibration (opt_.sequential).
    void begin_sequential();
    void sequential_layer(int layer);
    bool path_has_stats(int layer, bool gen) const;
    LinearStats path_stats(int layer, bool gen, PathLinear which) const;
    LayerPathWeights stored_path(int layer, bool gen) const;
    std::vector<std::string> tasks() const {
        if (seq_) {
            std::vector<std::string> t = seq_->tasks();
            t.push_back("sequential");
            return t;
        }
        return stats_ ? stats_->tasks() : std::vector<std::string>{};
    }

    const QuantizeOptions& opt_;
    bool awq_ = true;
    std::unique_ptr<LanceCheckpoint> ck_;
    std::unique_ptr<StatsFile> stats_;
    std::vector<TensorSpec> specs_;          // source tensors present, inventory order
    std::map<std::string, Target> targets_;  // by weight name ("...q_proj.weight")
    std::vector<std::string> meta_order_;    // weight names in the meta's order
    std::vector<OutTensor> outputs_;         // declaration order
    std::set<std::pair<int, bool>> no_stats_paths_;
    // ViT blocks (and the merger) whose linears have statistics: AWQ with --include vit.
    std::set<int> vit_awq_blocks_;
    bool vit_awq_merger0_ = false, vit_awq_merger2_ = false;
    std::unique_ptr<SafetensorsWriter> writer_;
    std::map<std::string, std::vector<uint8_t>> cache_;  // outputs of the current layer path
    std::map<std::string, ojson> linear_report_;
    std::vector<std::string> warnings_;

    // Sequential calibration: the rows, and the statistics of the layer being quantized.
    std::unique_ptr<SequentialCalibration> seq_;
    DecoderStatsSlots layer_stats_;  // [gen][LinearInput]
    int next_layer_ = 0;
};

void Pipeline::check_arguments() {
    if (opt_.method != "awq" && opt_.method != "rtn" && opt_.method != "gptq" &&
        opt_.method != "awq-gptq")
        fail("quantize: --method must be awq, gptq, awq-gptq or rtn, got \"", opt_.method, "\"");
    awq_ = opt_.method != "rtn";  // every method but rtn searches on recorded statistics
    if (opt_.group_size != 32 && opt_.group_size != 64 && opt_.group_size != 128)
        fail("quantize: --group-size must be 32, 64 or 128, got ", opt_.group_size);
    if (opt_.src.empty()) fail("quantize: no source checkpoint given (--src DIR)");
    if (opt_.out.empty()) fail("quantize: no output folder given (--out DIR)");
    if (opt_.sequential && !awq_)
        fail(
            "quantize: --sequential needs --method awq, gptq or awq-gptq (rtn uses no "
            "statistics)");
    if (opt_.sequential && opt_.calib.prompts.empty())
        fail("quantize: --sequential needs calibration prompts (--prompts FILE...)");
    if (opt_.sequential && opt_.max_rows < 1) fail("quantize: --max-rows must be at least 1");
    if (awq_ && opt_.stats.empty() && !opt_.sequential)
        fail("quantize: --method ", opt_.method,
             " needs activation statistics (--stats FILE; "
             "`lancet stats synth` makes synthetic ones)");
    if (path_overlaps(opt_.src, opt_.out))
        fail("quantize: --out ", opt_.out, " overlaps the source checkpoint ", opt_.src,
             " (the source is never written; choose a folder outside it)");
    if (!opt_.stats.empty() && path_overlaps(opt_.stats, opt_.out))
        fail("quantize: --out ", opt_.out, " overlaps the statistics file ", opt_.stats);
}

void Pipeline::plan() {
    const LanceConfig& cfg = ck_->config();
    int64_t pos_rows = -1;
    if (ck_->main().has("latent_pos_embed.pos_embed"))
        pos_rows = ck_->main().entry("latent_pos_embed.pos_embed").shape[0];
    if (opt_.include_vit && ck_->vit_layout() != VitLayout::Bundled)
        fail(opt_.src, ": the ViT is not bundled in this checkpoint; --include vit needs a ",
             "Lance_3B_Video-style folder with vit_model.* tensors");
    for (const TensorSpec& s : lance_tensor_list(cfg, ck_->vit_layout(), pos_rows))
        if (ck_->has_tensor(s.name)) specs_.push_back(s);

    auto targeted = [&](const TensorSpec& s) {
        if (s.kind != TensorKind::LinearWeight) return false;
        if (in_decoder_path(s)) return true;
        if (s.component == Component::LmHead) return opt_.include_lm_head;
        if (s.component == Component::Vit) return opt_.include_vit;
        return false;
    };
    for (const TensorSpec& s : specs_) {
        // The INT4 kernels need a group size that is a multiple of 8 dividing `in`: a width with
        // none (the ViT's MLP width 3420 = 4 x 855, the small preset's 172) stays unquantized.
        if (targeted(s) && !in_decoder_path(s) &&
            choose_group_size(static_cast<int>(s.shape[1]), opt_.group_size) % 8 != 0) {
            warnings_.push_back(strip(s.name, ".weight") + ": in = " + std::to_string(s.shape[1]) +
                                " has no INT4 group size (a multiple of 8 dividing it); kept as "
                                "BF16");
            std::fprintf(stderr, "lancet: warning: %s\n", warnings_.back().c_str());
            outputs_.push_back({s.name, DType::BF16, s.shape});
            continue;
        }
        if (targeted(s)) {
            Target t;
            t.base = strip(s.name, ".weight");
            t.type = linear_type(s);
            t.out = static_cast<int>(s.shape[0]);
            t.in = static_cast<int>(s.shape[1]);
            t.gs = choose_group_size(t.in, opt_.group_size);
            if (t.gs != opt_.group_size) {
                warnings_.push_back(t.base + ": in = " + std::to_string(t.in) +
                                    " is not divisible by " + std::to_string(opt_.group_size) +
                                    "; using group size " + std::to_string(t.gs));
                std::fprintf(stderr, "lancet: warning: %s\n", warnings_.back().c_str());
            }
            for (TensorSpec& q : quantized_tensor_specs(s, QuantFormat::Int4, t.gs))
                outputs_.push_back(
                    {q.name, q.name.ends_with(".scales") ? DType::BF16 : DType::U8, q.shape});
            targets_[s.name] = t;
        } else {
            const DType src = ck_->tensor(s.name).dtype;
            outputs_.push_back({s.name, dtype_is_float(src) ? DType::BF16 : src, s.shape});
        }
    }
    // The meta lists the fusion groups' linears first, then the unfused ones, layer by layer
    // (spec §1.1), then lm_head and the ViT.
    for (int i = 0; i < cfg.num_hidden_layers; ++i)
        for (LinearInput g :
             {LinearInput::Qkv, LinearInput::GateUp, LinearInput::O, LinearInput::Down})
            for (int gen = 0; gen < 2; ++gen) {
                const PathNames n = path_names(i, gen == 1);
                for (PathLinear l : kAllPathLinears)
                    if (linear_input(l) == g) meta_order_.push_back(n.weight(l));
            }
    for (const TensorSpec& s : specs_)
        if (targets_.count(s.name) && !in_decoder_path(s)) meta_order_.push_back(s.name);
}

void Pipeline::check_stats() {
    if (opt_.stats.empty()) return;
    stats_ = std::make_unique<StatsFile>(opt_.stats);
    std::map<std::string, int> widths;  // every linear of the checkpoint
    for (const TensorSpec& s : specs_)
        if (s.kind == TensorKind::LinearWeight)
            widths[strip(s.name, ".weight")] = static_cast<int>(s.shape[1]);
    for (const auto& [base, e] : stats_->entries()) {
        auto it = widths.find(base);
        // A separate ViT file (Lance_3B layout) is not part of the output: its statistics are
        // unused.
        if (it == widths.end() && base.starts_with("vit_model.") &&
            ck_->vit_layout() != VitLayout::Bundled)
            continue;
        if (it == widths.end())
            fail(opt_.stats, ": statistics for \"", base, "\", which is not a linear of ",
                 opt_.src);
        if (it->second != e.in)
            fail(opt_.stats, ": ", base, " has statistics for ", e.in,
                 " input channels, but the checkpoint's linear has in = ", it->second);
    }
    // A layer path is calibrated as a whole or not at all (the seed's gen path can be missing).
    // (With --sequential the decoder paths' statistics are recorded, not read.)
    const int L = opt_.sequential ? 0 : ck_->config().num_hidden_layers;
    for (int i = 0; i < L; ++i) {
        for (int gen = 0; gen < 2; ++gen) {
            const PathNames n = path_names(i, gen == 1);
            int have = 0;
            for (const std::string& b : n.linear) have += stats_->has(b);
            if (have == 0) {
                no_stats_paths_.insert({i, gen == 1});
                continue;
            }
            for (const std::string& b : n.linear)
                if (!stats_->has(b))
                    fail(opt_.stats, ": no statistics for ", b, " (", have,
                         " other linears of its layer path have some)");
        }
    }
    // ViT blocks likewise: all five linears of a block or none (then RTN, as without stats).
    if (opt_.include_vit) {
        const int depth = ck_->config().vision.depth;
        int without = 0;
        for (int j = 0; j < depth; ++j) {
            const std::string b = "vit_model.blocks." + std::to_string(j) + ".";
            const std::string names[5] = {b + "attn.qkv", b + "attn.proj", b + "mlp.gate_proj",
                                          b + "mlp.up_proj", b + "mlp.down_proj"};
            int have = 0;
            for (const std::string& n : names) have += stats_->has(n);
            if (have == 0) {
                ++without;
                continue;
            }
            for (const std::string& n : names)
                if (!stats_->has(n))
                    fail(opt_.stats, ": no statistics for ", n, " (", have,
                         " other linears of its ViT block have some)");
            bool quantized = true;  // qkv, proj, gate and up all have an INT4 group size
            for (int i = 0; i < 4; ++i) quantized &= targets_.count(names[i] + ".weight") != 0;
            if (quantized) vit_awq_blocks_.insert(j);
        }
        // (a merger linear left in BF16 for want of a group size is not a target)
        vit_awq_merger0_ = stats_->has("vit_model.merger.mlp.0") &&
                           targets_.count("vit_model.merger.mlp.0.weight");
        vit_awq_merger2_ = stats_->has("vit_model.merger.mlp.2") &&
                           targets_.count("vit_model.merger.mlp.2.weight");
        if (awq_ && without > 0) {
            warnings_.push_back(std::to_string(without) + " of " + std::to_string(depth) +
                                " ViT blocks have no statistics (calibrate with x2t example "
                                "files): plain RTN");
            std::fprintf(stderr, "lancet: warning: %s\n", warnings_.back().c_str());
        }
    }
    if (awq_ && !opt_.sequential && !no_stats_paths_.empty()) {
        std::string which;
        int shown = 0;
        for (const auto& [i, gen] : no_stats_paths_)
            if (shown++ < 4)
                which += (which.empty() ? "" : ", ") + std::to_string(i) + (gen ? " gen" : " und");
        if (no_stats_paths_.size() > 4) which += ", ...";
        warnings_.push_back(std::to_string(no_stats_paths_.size()) + " of " +
                            std::to_string(2 * L) + " layer paths have no statistics (" + which +
                            "): plain RTN, norms unchanged (" + kSchemeNoAwq + ")");
        std::fprintf(stderr, "lancet: warning: %s\n", warnings_.back().c_str());
    }
}

void Pipeline::record(const std::string& base, const std::string& scheme, int gs,
                      const AwqResult* group, const AwqConsumerResult* c) {
    Target& t = targets_.at(base + ".weight");
    t.scheme = scheme;
    ojson e;
    e["type"] = t.type;
    e["scheme"] = scheme;
    e["group_size"] = gs;
    if (group && c) {
        e["rtn_error"] = err_json(c->rtn);
        e["awq_error"] = err_json(c->awq);
        e["gptq_error"] = err_json(c->gptq);
        e["awq_gptq_error"] = err_json(c->awq_gptq);
        e["result_error"] = err_json(c->result);
        e["chosen"] = group->chosen;
        e["alpha"] = group->alpha;
        e["rtn_fallback"] = group->rtn_fallback;
        e["synthetic_rows"] = group->synthetic_rows;
        e["full_hessian"] = group->full_hessian;
        e["rows"] = {{"search", group->n_search_rows}, {"heldout", group->n_heldout_rows}};
        // The group's totals: the search guarantees awq <= rtn on the search rows per group, not
        // per consumer.
        e["group_error"] = {{"rtn", err_json(group->rtn)},
                            {"awq", err_json(group->awq)},
                            {"gptq", err_json(group->gptq)},
                            {"awq_gptq", err_json(group->awq_gptq)},
                            {"result", err_json(group->result)}};
        double sum = 0;
        int64_t clipped = 0;
        for (float r : c->clip) {
            sum += r;
            clipped += r < 1.0f;
        }
        const double n = static_cast<double>(std::max<size_t>(1, c->clip.size()));
        e["clip"] = {{"mean_ratio", sum / n}, {"fraction_clipped", clipped / n}};
    }
    linear_report_[base] = std::move(e);
}

void Pipeline::emit_quantized(const Target& t, const QuantizedMatrix& q) {
    if (q.out != t.out || q.in != t.in || q.group_size != t.gs)
        fail("quantize: internal: ", t.base, " came out as [", q.out, ", ", q.in, "] g",
             q.group_size, ", planned [", t.out, ", ", t.in, "] g", t.gs);
    cache_[t.base + ".qweight"] = q.qweight;
    cache_[t.base + ".scales"] = raw_bytes(q.scales);
    cache_[t.base + ".zeros"] = q.zeros;
}

void Pipeline::write_cached(const std::string& name) {
    auto it = cache_.find(name);
    if (it == cache_.end()) fail("quantize: internal: ", name, " was not produced");
    writer_->write(name, it->second.data(), it->second.size());
    cache_.erase(it);
}

bool Pipeline::path_has_stats(int layer, bool gen) const {
    if (seq_) {
        if (next_layer_ != layer + 1)
            fail("quantize: internal: statistics of layer ", layer, " asked at ", next_layer_);
        return layer_stats_[gen ? 1 : 0][0] != nullptr;
    }
    return stats_ && !no_stats_paths_.count({layer, gen});
}

LinearStats Pipeline::path_stats(int layer, bool gen, PathLinear which) const {
    if (seq_) {
        const auto& a = layer_stats_[gen ? 1 : 0][static_cast<int>(linear_input(which))];
        if (!a) fail("quantize: internal: no sequential statistics for layer ", layer);
        return a->stats();
    }
    const std::string base = path_names(layer, gen)[which];
    LinearStats st = stats_->load(base);
    stats_->release(base);
    return st;
}

void Pipeline::begin_sequential() {
    CalibrateOptions c = opt_.calib;
    c.model = opt_.src;
    seq_ = std::make_unique<SequentialCalibration>(c, *ck_, opt_.max_rows);
}

// The layer path as it was just stored: INT4 linears from the cached output bytes, norms and
// biases as written (bf16), the pass-through q/k norms rounded to bf16 as the writer does.
LayerPathWeights Pipeline::stored_path(int layer, bool gen) const {
    const LanceConfig& c = ck_->config();
    const PathNames n = path_names(layer, gen);
    auto floats = [&](const std::string& name) {
        std::vector<float> f;
        auto it = cache_.find(name);
        if (it != cache_.end()) {
            f.resize(it->second.size() / 2);
            for (size_t i = 0; i < f.size(); ++i) {
                uint16_t h;
                std::memcpy(&h, &it->second[2 * i], 2);
                f[i] = bf16_to_f32(h);
            }
        } else {
            const TensorView v = ck_->tensor(name);
            f = to_f32(v);
            ck_->release(v);
            for (float& x : f) x = bf16_to_f32(f32_to_bf16(x));
        }
        return f;
    };
    auto linear = [&](PathLinear which) {
        const std::string& base = n[which];
        const Target& t = targets_.at(base + ".weight");
        const std::vector<uint8_t>& qw = cache_.at(base + ".qweight");
        const std::vector<uint8_t>& sb = cache_.at(base + ".scales");
        std::vector<uint16_t> scales(sb.size() / 2);
        std::memcpy(scales.data(), sb.data(), sb.size());
        return kernels::LinearWeight::from_awq_int4(
            qw.data(), scales.data(), cache_.at(base + ".zeros").data(), t.out, t.in, t.gs);
    };
    LayerPathWeights w;
    w.ln = floats(n.input_norm);
    w.post = floats(n.post_norm);
    w.q_norm = floats(n.q_norm);
    w.k_norm = floats(n.k_norm);
    w.bq = floats(n.bias(PathLinear::Q));
    w.bk = floats(n.bias(PathLinear::K));
    w.bv = floats(n.bias(PathLinear::V));
    if (w.ln.size() != static_cast<size_t>(c.hidden_size))
        fail("quantize: internal: ", n.input_norm, " has ", w.ln.size(), " values");
    w.q = linear(PathLinear::Q);
    w.k = linear(PathLinear::K);
    w.v = linear(PathLinear::V);
    w.o = linear(PathLinear::O);
    w.gate = linear(PathLinear::Gate);
    w.up = linear(PathLinear::Up);
    w.down = linear(PathLinear::Down);
    return w;
}

void Pipeline::sequential_layer(int l) {
    const bool gen = seq_->has_gen_rows();
    // 1. Layer l with the original weights over its inputs (layers < l quantized), recording.
    {
        const LayerPathWeights und_w = load_layer_path(*ck_, l, false, true);
        LayerPathWeights gen_w;
        if (gen) gen_w = load_layer_path(*ck_, l, true, true);
        layer_stats_ = seq_->record(l, und_w, gen ? &gen_w : nullptr);
    }
    next_layer_ = l + 1;
    // 2. Both paths quantized from those statistics (into the output cache).
    process_path(l, false);
    if (ck_->has_tensor(path_names(l, true).input_norm)) process_path(l, true);
    layer_stats_.clear();
    // 3. The rows through the layer as stored: the next layer's inputs.
    if (l + 1 < ck_->config().num_hidden_layers) {
        const LayerPathWeights und_q = stored_path(l, false);
        LayerPathWeights gen_q;
        if (gen) gen_q = stored_path(l, true);
        seq_->advance(l, und_q, gen ? &gen_q : nullptr);
    }
}

// Starts reading a layer path's linear weights into the page cache, so the disk works while the
// current path is searched (a bf16 3b path is 155 MB).
void Pipeline::prefetch_path(int layer, bool gen) const {
    if (layer >= ck_->config().num_hidden_layers) return;
    for (const std::string& b : path_names(layer, gen).linear)
        if (ck_->has_tensor(b + ".weight")) ck_->prefetch(ck_->tensor(b + ".weight"));
}

void Pipeline::process_path(int layer, bool gen) {
    const LanceConfig& c = ck_->config();
    const PathNames n = path_names(layer, gen);
    // The next two paths in processing order (und, gen, then the next layer).
    prefetch_path(gen ? layer + 1 : layer, !gen);
    prefetch_path(layer + 1, gen);
    std::vector<TensorView> used;
    auto load = [&](const std::string& name) {
        const TensorView v = ck_->tensor(name);
        used.push_back(v);
        return to_f32(v);
    };
    const auto& names = n.linear;  // q k v o gate up down
    const std::string& in_norm = n.input_norm;
    const std::string& post_norm = n.post_norm;

    if (!awq_) {
        for (const std::string& b : names) {
            const Target& t = targets_.at(b + ".weight");
            const std::vector<float> w = load(b + ".weight");
            RtnOptions ro;
            ro.group_size = t.gs;
            emit_quantized(t, quantize_rtn(w.data(), t.out, t.in, ro));
            record(b, kSchemeMinmax, t.gs, nullptr, nullptr);
        }
    } else {
        LayerWeights w;
        w.hidden = c.hidden_size;
        w.intermediate = c.intermediate_size;
        w.num_heads = c.num_attention_heads;
        w.num_kv_heads = c.num_key_value_heads;
        w.head_dim = c.head_dim();
        w.input_norm = load(in_norm);
        w.post_norm = load(post_norm);
        w.q = load(names[0] + ".weight");
        w.k = load(names[1] + ".weight");
        w.v = load(names[2] + ".weight");
        w.q_bias = load(names[0] + ".bias");
        w.k_bias = load(names[1] + ".bias");
        w.v_bias = load(names[2] + ".bias");
        w.o = load(names[3] + ".weight");
        w.gate = load(names[4] + ".weight");
        w.up = load(names[5] + ".weight");
        w.down = load(names[6] + ".weight");
        auto gs = [&](PathLinear l) { return targets_.at(n.weight(l)).gs; };
        w.group_size = {gs(PathLinear::Q), gs(PathLinear::O), gs(PathLinear::Gate),
                        gs(PathLinear::Down)};
        for (const TensorView& v : used) ck_->release(v);
        used.clear();

        const bool have = path_has_stats(layer, gen);
        LinearStats st_qkv, st_o, st_gu, st_down;
        LayerStats ls;
        if (have) {
            // q, k and v read the same input (as do gate and up): the first one's statistics
            // stand for the group.
            st_qkv = path_stats(layer, gen, PathLinear::Q);
            st_o = path_stats(layer, gen, PathLinear::O);
            st_gu = path_stats(layer, gen, PathLinear::Gate);
            st_down = path_stats(layer, gen, PathLinear::Down);
            ls = {&st_qkv, &st_o, &st_gu, &st_down};
        }
        AwqOptions ao;  // group sizes: w.group_size
        ao.search_scales = opt_.search;
        ao.clip = opt_.clip;
        ao.feedback = feedback();
        ao.gptq_damp = opt_.gptq_damp;
        ao.gptq_act_order = opt_.act_order;
        ao.gptq_full_hessian = opt_.full_hessian;
        ao.compare = opt_.compare;
        const LayerResult r = quantize_layer(w, ls, ao, {opt_.fuse_ov, opt_.fuse_updown});
        if (opt_.progress)
            log_info("quantize: layer ", layer, gen ? " gen" : " und",
                     " seconds (of which GPTQ): qkv ", fixed1(r.qkv.seconds), " (",
                     fixed1(r.qkv.seconds_gptq), "), o ", fixed1(r.o.seconds), " (",
                     fixed1(r.o.seconds_gptq), "), gate/up ", fixed1(r.gate_up.seconds), " (",
                     fixed1(r.gate_up.seconds_gptq), "), down ", fixed1(r.down.seconds), " (",
                     fixed1(r.down.seconds_gptq), ")");

        // A norm or producer carries scales only where the search ran and they were kept.
        const bool scaled = opt_.search && opt_.method != "gptq";
        const char* norm_scheme = !have ? kSchemeNoAwq : scaled ? kSchemeAwq : kSchemeMinmax;
        auto pair_scheme = [&](bool fuse) {
            return have && scaled && fuse ? kSchemeAwq : kSchemeMinmax;
        };
        struct Out {
            int name;
            const AwqResult* g;
            int consumer;
            const char* scheme;
        };
        const Out outs[7] = {{0, &r.qkv, 0, norm_scheme},
                             {1, &r.qkv, 1, norm_scheme},
                             {2, &r.qkv, 2, norm_scheme},
                             {3, &r.o, 0, pair_scheme(opt_.fuse_ov)},
                             {4, &r.gate_up, 0, norm_scheme},
                             {5, &r.gate_up, 1, norm_scheme},
                             {6, &r.down, 0, pair_scheme(opt_.fuse_updown)}};
        for (const Out& o : outs) {
            const Target& t = targets_.at(names[o.name] + ".weight");
            const AwqConsumerResult& cr = o.g->consumers[o.consumer];
            emit_quantized(t, cr.q);
            record(names[o.name], o.scheme, t.gs, have ? o.g : nullptr, have ? &cr : nullptr);
        }
        // The fused norms (g / s) and the rescaled v bias, stored bf16 like every float.
        cache_[in_norm] = bf16_bytes(w.input_norm);
        cache_[post_norm] = bf16_bytes(w.post_norm);
        cache_[names[0] + ".bias"] = bf16_bytes(w.q_bias);
        cache_[names[1] + ".bias"] = bf16_bytes(w.k_bias);
        cache_[names[2] + ".bias"] = bf16_bytes(w.v_bias);
    }
    for (const TensorView& v : used) ck_->release(v);
}

// One ViT block as a decoder layer path (spec §4 -> §3.1 fusion groups): norm1 -> the q/k/v row
// blocks of attn.qkv, norm2 -> gate/up, attn.proj through the v rows of qkv (one kv head per
// head: no tie), down through up's rows and bias. Every fusion is exact: RoPE touches q and k
// only, and silu(gate) * (up / s) = (silu(gate) * up) / s.
void Pipeline::process_vit_block(int block) {
    const VitConfig& v = ck_->config().vision;
    const int d = v.hidden_size, f = v.intermediate_size;
    const std::string b = "vit_model.blocks." + std::to_string(block) + ".";
    std::vector<TensorView> used;
    auto load = [&](const std::string& name) {
        const TensorView t = ck_->tensor(name);
        used.push_back(t);
        return to_f32(t);
    };
    LayerWeights w;
    w.hidden = d;
    w.intermediate = f;
    w.num_heads = w.num_kv_heads = v.num_heads;
    w.head_dim = v.head_dim();
    w.input_norm = load(b + "norm1.weight");
    w.post_norm = load(b + "norm2.weight");
    const std::vector<float> qkv = load(b + "attn.qkv.weight"), qkv_b = load(b + "attn.qkv.bias");
    const size_t dd = static_cast<size_t>(d) * d;
    w.q.assign(qkv.begin(), qkv.begin() + dd);
    w.k.assign(qkv.begin() + dd, qkv.begin() + 2 * dd);
    w.v.assign(qkv.begin() + 2 * dd, qkv.end());
    w.q_bias.assign(qkv_b.begin(), qkv_b.begin() + d);
    w.k_bias.assign(qkv_b.begin() + d, qkv_b.begin() + 2 * d);
    w.v_bias.assign(qkv_b.begin() + 2 * d, qkv_b.end());
    w.o = load(b + "attn.proj.weight");
    w.gate = load(b + "mlp.gate_proj.weight");
    w.up = load(b + "mlp.up_proj.weight");
    std::vector<float> up_b = load(b + "mlp.up_proj.bias");
    w.down = load(b + "mlp.down_proj.weight");
    for (const TensorView& t : used) ck_->release(t);

    const std::string names[5] = {b + "attn.qkv", b + "attn.proj", b + "mlp.gate_proj",
                                  b + "mlp.up_proj", b + "mlp.down_proj"};
    const LinearStats st_qkv = stats_->load(names[0]), st_o = stats_->load(names[1]),
                      st_gu = stats_->load(names[2]), st_down = stats_->load(names[4]);
    for (const std::string& n : names) stats_->release(n);
    auto gs = [&](int i) {
        const auto t = targets_.find(names[i] + ".weight");
        return t != targets_.end() ? t->second.gs
                                   : choose_group_size(i == 4 ? f : d, opt_.group_size);
    };
    w.group_size = {gs(0), gs(1), gs(2), gs(4)};
    AwqOptions ao;  // group sizes: w.group_size
    ao.search_scales = opt_.search;
    ao.clip = opt_.clip;
    // A down_proj left in BF16 (no INT4 group size for its width) keeps up's rows unscaled.
    const bool down_q = targets_.count(names[4] + ".weight") != 0;
    const bool fuse_updown = opt_.fuse_updown && down_q;
    const LayerResult r =
        quantize_layer(w, {&st_qkv, &st_o, &st_gu, &st_down}, ao, {opt_.fuse_ov, fuse_updown});
    // quantize_layer divides up's rows by down's scales; up's bias (the decoder has none) too.
    if (opt_.search && fuse_updown && !r.down.rtn_fallback)
        for (int i = 0; i < f; ++i)
            up_b[i] = static_cast<float>(static_cast<double>(up_b[i]) / r.down.s[i]);

    const char* norm_scheme = opt_.search ? kSchemeAwq : kSchemeMinmax;
    auto pair_scheme = [&](bool fuse) { return opt_.search && fuse ? kSchemeAwq : kSchemeMinmax; };
    // attn.qkv is one stored linear: its q, k and v row blocks stacked (groups run along the
    // input, so rows quantize independently); reported with the group's totals.
    const Target& tq = targets_.at(names[0] + ".weight");
    QuantizedMatrix qm;
    AwqConsumerResult qc;
    qc.rtn = r.qkv.rtn;
    qc.awq = r.qkv.awq;
    for (const AwqConsumerResult& c : r.qkv.consumers) {
        qm.out += c.q.out;
        qm.in = c.q.in;
        qm.group_size = c.q.group_size;
        qm.qweight.insert(qm.qweight.end(), c.q.qweight.begin(), c.q.qweight.end());
        qm.scales.insert(qm.scales.end(), c.q.scales.begin(), c.q.scales.end());
        qm.zeros.insert(qm.zeros.end(), c.q.zeros.begin(), c.q.zeros.end());
        qc.clip.insert(qc.clip.end(), c.clip.begin(), c.clip.end());
    }
    emit_quantized(tq, qm);
    record(names[0], norm_scheme, tq.gs, &r.qkv, &qc);
    struct Out {
        int name;
        const AwqResult* g;
        int consumer;
        const char* scheme;
    };
    const Out outs[4] = {{1, &r.o, 0, pair_scheme(opt_.fuse_ov)},
                         {2, &r.gate_up, 0, norm_scheme},
                         {3, &r.gate_up, 1, norm_scheme},
                         {4, &r.down, 0, pair_scheme(fuse_updown)}};
    for (const Out& o : outs) {
        if (o.name == 4 && !down_q) continue;
        const Target& t = targets_.at(names[o.name] + ".weight");
        const AwqConsumerResult& cr = o.g->consumers[o.consumer];
        emit_quantized(t, cr.q);
        record(names[o.name], o.scheme, t.gs, o.g, &cr);
    }
    std::vector<float> bias = w.q_bias;
    bias.insert(bias.end(), w.k_bias.begin(), w.k_bias.end());
    bias.insert(bias.end(), w.v_bias.begin(), w.v_bias.end());
    cache_[b + "norm1.weight"] = bf16_bytes(w.input_norm);
    cache_[b + "norm2.weight"] = bf16_bytes(w.post_norm);
    cache_[b + "attn.qkv.bias"] = bf16_bytes(bias);
    cache_[b + "mlp.up_proj.bias"] = bf16_bytes(up_b);
}

// The merger: mlp.0 reads the ln_q output of the merge unit's patches side by side (channel i is
// ln_q channel i mod hidden), so its scales are tied mod hidden and folded into ln_q; mlp.2 reads
// a GELU output (nothing to fold into): the clipping search only.
void Pipeline::process_vit_merger() {
    const VitConfig& v = ck_->config().vision;
    const int d = v.hidden_size, M = v.merged_dim();
    const std::string b0 = "vit_model.merger.mlp.0", b2 = "vit_model.merger.mlp.2";
    AwqOptions ao;
    ao.clip = opt_.clip;
    if (vit_awq_merger0_) {
        ao.group_size = targets_.at(b0 + ".weight").gs;
        const TensorView tn = ck_->tensor("vit_model.merger.ln_q.weight");
        std::vector<float> ln_q = to_f32(tn);
        ck_->release(tn);
        const TensorView tw = ck_->tensor(b0 + ".weight");
        const std::vector<float> w0 = to_f32(tw);
        ck_->release(tw);
        const LinearStats st = stats_->load(b0);
        stats_->release(b0);
        std::vector<int> tie(static_cast<size_t>(M));
        for (int i = 0; i < M; ++i) tie[i] = i % d;
        ao.search_scales = opt_.search;
        const AwqResult r = awq_search({{b0, w0.data(), M}}, M, &st, ao, &tie);
        if (opt_.search && !r.rtn_fallback) fuse_scale_into_norm(ln_q.data(), r.s_free.data(), d);
        const Target& t = targets_.at(b0 + ".weight");
        emit_quantized(t, r.consumers[0].q);
        record(b0, opt_.search ? kSchemeAwq : kSchemeMinmax, t.gs, &r, &r.consumers[0]);
        cache_["vit_model.merger.ln_q.weight"] = bf16_bytes(ln_q);
    }
    if (vit_awq_merger2_) {
        const Target& t = targets_.at(b2 + ".weight");
        ao.group_size = t.gs;
        const TensorView tw = ck_->tensor(b2 + ".weight");
        const std::vector<float> w2 = to_f32(tw);
        ck_->release(tw);
        const LinearStats st = stats_->load(b2);
        stats_->release(b2);
        ao.search_scales = false;
        const AwqResult r = awq_search({{b2, w2.data(), t.out}}, t.in, &st, ao);
        emit_quantized(t, r.consumers[0].q);
        record(b2, kSchemeMinmax, t.gs, &r, &r.consumers[0]);
    }
}

void Pipeline::quantize_single(const Target& t) {
    const TensorView v = ck_->tensor(t.base + ".weight");
    const std::vector<float> w = to_f32(v);
    ck_->release(v);
    const bool vit = t.base.starts_with("vit_model.");
    if (awq_ && !vit && stats_ && stats_->has(t.base)) {
        // lm_head: nothing to fuse a scale into exactly (model.norm also feeds nothing else, but
        // the seed format keeps norms pass-through here), so the clipping search only.
        const LinearStats st = stats_->load(t.base);
        stats_->release(t.base);
        AwqOptions ao;
        ao.group_size = t.gs;
        ao.search_scales = false;
        ao.clip = opt_.clip;
        ao.feedback = feedback() == AwqOptions::Feedback::None ? AwqOptions::Feedback::None
                                                               : AwqOptions::Feedback::Gptq;
        ao.gptq_damp = opt_.gptq_damp;
        ao.gptq_act_order = opt_.act_order;
        ao.gptq_full_hessian = opt_.full_hessian;
        ao.compare = false;
        const AwqResult r = awq_search({{t.base, w.data(), t.out}}, t.in, &st, ao);
        emit_quantized(t, r.consumers[0].q);
        record(t.base, kSchemeMinmax, t.gs, &r, &r.consumers[0]);
    } else {
        RtnOptions ro;
        ro.group_size = t.gs;
        emit_quantized(t, quantize_rtn(w.data(), t.out, t.in, ro));
        record(t.base, kSchemeMinmax, t.gs, nullptr, nullptr);
    }
    for (const char* suffix : {".qweight", ".scales", ".zeros"}) write_cached(t.base + suffix);
}

void Pipeline::pass_through(const TensorSpec& s) {
    if (cache_.count(s.name)) {
        write_cached(s.name);
        return;
    }
    const TensorView v = ck_->tensor(s.name);
    if (writer_->next_tensor() != s.name)
        fail("quantize: internal: writing ", s.name, ", expected ", writer_->next_tensor());
    if (!dtype_is_float(v.dtype) || v.dtype == DType::BF16) {
        // Already in its output form: copied in 64 MB slices, each released after the write.
        constexpr size_t kSlice = 64u << 20;
        for (size_t off = 0; off < v.nbytes; off += kSlice) {
            TensorView part = v;
            part.data = v.data + off;
            part.nbytes = std::min(kSlice, v.nbytes - off);
            writer_->append(part.data, part.nbytes);
            ck_->release(part);
        }
    } else {
        // Convert in slices of ~4M elements so a large table never needs an f32 copy.
        const int64_t n = v.numel(), esz = static_cast<int64_t>(dtype_size(v.dtype));
        const int64_t step = 4 << 20;
        std::vector<float> f;
        std::vector<uint16_t> h;
        for (int64_t i = 0; i < n; i += step) {
            const int64_t k = std::min(step, n - i);
            TensorView part = v;
            part.shape = {k};
            part.data = v.data + i * esz;
            part.nbytes = static_cast<size_t>(k * esz);
            f.resize(static_cast<size_t>(k));
            h.resize(static_cast<size_t>(k));
            convert_to_f32(part, f.data());
            for (int64_t j = 0; j < k; ++j) h[j] = f32_to_bf16(f[j]);
            writer_->append(h.data(), h.size() * 2);
            ck_->release(part);
        }
    }
    ck_->release(v);
}

ojson Pipeline::make_meta() const {
    ojson j;
    j["n_bit"] = 4;
    j["group_size"] = opt_.group_size;
    j["scheme"] = awq_ ? kSchemeAwq : kSchemeMinmax;
    int n_awq = 0, n_plain = 0;
    for (const auto& [name, t] : targets_) (t.scheme == kSchemeAwq ? n_awq : n_plain)++;
    if (awq_) {
        j["awq_linears"] = n_awq;
        j["plain_linears"] = n_plain;
        j["tasks_calibrated"] = tasks();
    } else {
        j["calibration_samples"] = 0;
    }
    ojson pw = ojson::object();
    for (const std::string& name : meta_order_) {
        const Target& t = targets_.at(name);
        pw[name] = {
            {"shape", {t.out, t.in}}, {"n_bit", 4}, {"group_size", t.gs}, {"scheme", t.scheme}};
    }
    j["per_weight"] = std::move(pw);
    return j;
}

ojson Pipeline::make_report(double seconds) const {
    ojson r;
    r["method"] = opt_.method;
    r["group_size"] = opt_.group_size;
    r["source"] = opt_.src;
    r["stats"] = opt_.stats;
    r["tasks"] = tasks();
    if (seq_)
        r["sequential"] = {{"sequences", seq_->n_sequences()},
                           {"rows", seq_->n_rows()},
                           {"sequences_dropped", seq_->dropped()},
                           {"max_rows", opt_.max_rows},
                           {"hessian", opt_.calib.hessian},
                           {"seconds_record", seq_->seconds_record()},
                           {"seconds_advance", seq_->seconds_advance()}};
    r["options"] = {{"search", opt_.search},
                    {"clip", opt_.clip},
                    {"fuse_ov", opt_.fuse_ov},
                    {"fuse_updown", opt_.fuse_updown},
                    {"include_lm_head", opt_.include_lm_head},
                    {"include_vit", opt_.include_vit},
                    {"damp", opt_.gptq_damp},
                    {"act_order", opt_.act_order},
                    {"full_hessian", opt_.full_hessian},
                    {"sequential", opt_.sequential},
                    {"compare", opt_.compare}};
    r["warnings"] = warnings_;
    // Means over the linears whose errors were measured (those with statistics), per method:
    // rtn, awq (scale + clip stage), gptq, awq_gptq (NaN unless run) and the stored result.
    static const char* const kKinds[5] = {"rtn", "awq", "gptq", "awq_gptq", "result"};
    struct Acc {
        int n = 0;
        int measured_s[5] = {}, measured_h[5] = {};
        double sum_s[5] = {}, sum_h[5] = {};
    };
    std::map<std::string, Acc> by_type;
    Acc all;
    ojson lin = ojson::object();
    for (const std::string& name : meta_order_) {
        const std::string base = strip(name, ".weight");
        const ojson& e = linear_report_.at(base);
        lin[base] = e;
        for (Acc* acc : {&by_type[e["type"].get<std::string>()], &all}) {
            ++acc->n;
            for (int k = 0; k < 5; ++k) {
                const std::string key = std::string(kKinds[k]) + "_error";
                if (!e.contains(key)) continue;
                const ojson& v = e[key];
                if (v["search"].is_number()) {
                    ++acc->measured_s[k];
                    acc->sum_s[k] += v["search"].get<double>();
                }
                if (v["heldout"].is_number()) {
                    ++acc->measured_h[k];
                    acc->sum_h[k] += v["heldout"].get<double>();
                }
            }
        }
    }
    auto summary = [](const Acc& a) {
        auto mean = [](double s, int n) { return n > 0 ? ojson(s / n) : ojson(nullptr); };
        ojson o;
        o["n_linears"] = a.n;
        o["n_measured"] = a.measured_s[0];
        for (int k = 0; k < 5; ++k)
            o[std::string("mean_") + kKinds[k] + "_error_heldout"] =
                mean(a.sum_h[k], a.measured_h[k]);
        // result / RTN over the linears where both were measured.
        o["ratio_heldout"] =
            a.measured_h[4] > 0 && a.sum_h[0] > 0 ? ojson(a.sum_h[4] / a.sum_h[0]) : ojson(nullptr);
        for (int k = 0; k < 5; ++k)
            o[std::string("mean_") + kKinds[k] + "_error_search"] =
                mean(a.sum_s[k], a.measured_s[k]);
        o["ratio_search"] =
            a.measured_s[4] > 0 && a.sum_s[0] > 0 ? ojson(a.sum_s[4] / a.sum_s[0]) : ojson(nullptr);
        return o;
    };
    ojson bt = ojson::object();
    for (const char* t : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                          "down_proj", "lm_head", "vit"})
        if (by_type.count(t)) bt[t] = summary(by_type.at(t));
    r["by_type"] = std::move(bt);
    ojson tot = summary(all);
    int n_awq = 0;
    for (const auto& [name, t] : targets_) n_awq += t.scheme == kSchemeAwq;
    tot["awq_linears"] = n_awq;
    tot["plain_linears"] = static_cast<int>(targets_.size()) - n_awq;
    tot["seconds"] = seconds;
    r["totals"] = std::move(tot);
    r["linears"] = std::move(lin);
    return r;
}

ojson Pipeline::run() {
    const auto t0 = std::chrono::steady_clock::now();
    check_arguments();
    {
        std::error_code ec;
        if (!fs::is_directory(opt_.src, ec)) fail(opt_.src, ": no such model folder");
    }
    ck_ = LanceCheckpoint::open(opt_.src);
    if (ck_->kind() != CheckpointKind::Original)
        fail(opt_.src, ": is already quantized (",
             ck_->kind() == CheckpointKind::Awq ? "an AWQ INT4 folder" : "an NVFP4 folder",
             "); quantize the original checkpoint");
    plan();
    check_stats();

    OutputDir out(opt_.out, opt_.force);
    if (opt_.sequential) begin_sequential();
    writer_ = std::make_unique<SafetensorsWriter>(out.file("awq_state_dict.safetensors"));
    for (const OutTensor& o : outputs_) writer_->add(o.name, o.dtype, o.shape);
    writer_->set_metadata("format", "pt");
    writer_->set_metadata("lancet.quantize", opt_.method + " g" + std::to_string(opt_.group_size));
    writer_->begin();

    const int L = ck_->config().num_hidden_layers;
    std::set<std::pair<int, bool>> done;
    std::set<int> vit_done;
    int layers_done = 0;
    for (const TensorSpec& s : specs_) {
        // AWQ'd ViT blocks and the merger: processed at their first tensor (a norm), their
        // outputs cached until the writer reaches them.
        if (awq_ && s.component == Component::Vit) {
            if (s.layer >= 0 && vit_awq_blocks_.count(s.layer) && !vit_done.count(s.layer)) {
                process_vit_block(s.layer);
                vit_done.insert(s.layer);
            } else if (s.name == "vit_model.merger.ln_q.weight") {
                process_vit_merger();
            }
        }
        if (in_decoder_path(s)) {
            const std::pair<int, bool> key{s.layer, s.component == Component::LlmGen};
            // Sequentially, a layer's two paths are quantized together (both run on the same
            // sequences), every earlier layer first.
            while (seq_ && next_layer_ <= key.first) {
                const int l = next_layer_;
                sequential_layer(l);
                for (int gen = 0; gen < 2; ++gen) done.insert({l, gen == 1});
                ++layers_done;
                const double secs =
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                if (opt_.progress)
                    log_info("quantize: layer ", layers_done, "/", L, " (sequential)  ",
                             static_cast<int>(secs), " s elapsed, ETA ",
                             static_cast<int>(secs / layers_done * (L - layers_done)), " s");
            }
            if (!done.count(key)) {
                process_path(key.first, key.second);
                done.insert(key);
                if (key.second) {
                    ++layers_done;
                    const double secs =
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                            .count();
                    if (opt_.progress)
                        log_info("quantize: layer ", layers_done, "/", L, "  ",
                                 static_cast<int>(secs), " s elapsed, ETA ",
                                 static_cast<int>(secs / layers_done * (L - layers_done)), " s");
                }
            }
        }
        auto t = targets_.find(s.name);
        if (t != targets_.end()) {
            if (in_decoder_path(s) || cache_.count(t->second.base + ".qweight")) {
                for (const char* suffix : {".qweight", ".scales", ".zeros"})
                    write_cached(t->second.base + suffix);
            } else {
                quantize_single(t->second);
            }
        } else {
            pass_through(s);
        }
    }
    if (!cache_.empty()) fail("quantize: internal: ", cache_.begin()->first, " was never written");
    writer_->finish();

    // Configs and tokenizer files travel with the weights.
    for (const char* f :
         {"llm_config.json", "Qwen2.5-VL-ViT/config.json", "config.json", "vocab.json",
          "merges.txt", "tokenizer_config.json", "tokenizer.json", "generation_config.json",
          "special_tokens_map.json", "added_tokens.json"}) {
        const fs::path from = fs::path(opt_.src) / f;
        std::error_code ec;
        if (!fs::exists(from, ec)) continue;
        fs::create_directories(fs::path(out.file(f)).parent_path(), ec);
        fs::copy_file(from, out.file(f), ec);
        if (ec) fail(out.final_path(), ": cannot copy ", f, ": ", ec.message());
    }
    write_file_atomic(out.file("awq_meta.json"), make_meta().dump(2) + "\n");
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ojson report = make_report(secs);
    write_file_atomic(out.file("quant_report.json"), report.dump(2) + "\n");
    out.commit();
    writer_.reset();
    return report;
}

}  // namespace

ojson quantize_checkpoint(const QuantizeOptions& opt) {
    Pipeline p(opt);
    return p.run();
}

std::string report_table(const ojson& report) {
    std::string s;
    char line[512];
    auto num = [](const ojson& v, char* buf, size_t n) {
        if (v.is_number())
            std::snprintf(buf, n, "%.4f", v.get<double>());
        else
            std::snprintf(buf, n, "-");
    };
    std::snprintf(line, sizeof line, "%-10s %5s %9s %9s %9s %9s %9s %7s\n", "linear", "n", "RTN",
                  "AWQ", "GPTQ", "AWQ+GPTQ", "result", "ratio");
    s += line;
    auto row = [&](const std::string& name, const ojson& o) {
        char v[6][16];
        const char* keys[6] = {"mean_rtn_error_heldout",    "mean_awq_error_heldout",
                               "mean_gptq_error_heldout",   "mean_awq_gptq_error_heldout",
                               "mean_result_error_heldout", "ratio_heldout"};
        for (int k = 0; k < 6; ++k) num(o.value(keys[k], ojson(nullptr)), v[k], sizeof v[k]);
        std::snprintf(line, sizeof line, "%-10s %5d %9s %9s %9s %9s %9s %7s\n", name.c_str(),
                      o["n_linears"].get<int>(), v[0], v[1], v[2], v[3], v[4], v[5]);
        s += line;
    };
    for (auto it = report["by_type"].begin(); it != report["by_type"].end(); ++it)
        row(it.key(), it.value());
    row("overall", report["totals"]);
    s += "(mean relative output error ||dY||/||Y|| on held-out recorded rows; result: what was "
         "stored; ratio: result / RTN; '-': not run or no statistics)\n";
    return s;
}

}  // namespace lancet
