// Opening and validating Lance model folders.
#include "model/lance_checkpoint.h"

#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/json_file.h"
#include "model/vit_config.h"

namespace lancet {

namespace fs = std::filesystem;

namespace {

std::string strip_suffix(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
                   s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0
               ? s.substr(0, s.size() - suffix.size())
               : s;
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

const char* kVitPrefix = "vit_model.";

}  // namespace

std::vector<TensorSpec> quantized_tensor_specs(const TensorSpec& w, QuantFormat f, int gs) {
    const std::string base = strip_suffix(w.name, ".weight");
    const int64_t out = w.shape[0], in = w.shape[1];
    auto spec = [&](const std::string& suffix, Shape s) {
        return TensorSpec{base + suffix, std::move(s), w.component, w.kind, w.layer};
    };
    switch (f) {
        case QuantFormat::Int4:
            return {spec(".qweight", {out, in / 2}), spec(".scales", {out, in / gs}),
                    spec(".zeros", {out, in / gs})};
        case QuantFormat::Int5:
            return {spec(".qweight", {out, in}), spec(".scales", {out, in / gs}),
                    spec(".zeros", {out, in / gs})};
        case QuantFormat::Nvfp4:
            return {spec(".qweight", {out, in / 2}), spec(".scales_fp8", {out, in / gs}),
                    spec(".scales_bf16", {out, in / gs})};
    }
    return {};
}

std::unique_ptr<LanceCheckpoint> LanceCheckpoint::open(const std::string& dir_in,
                                                       const OpenOptions& opt) {
    std::error_code ec;
    if (!fs::exists(dir_in, ec)) fail(dir_in, ": no such model folder");
    if (!fs::is_directory(dir_in, ec)) fail(dir_in, ": not a folder (give the model folder)");
    const fs::path dir = dir_in;
    auto ck = std::unique_ptr<LanceCheckpoint>(new LanceCheckpoint());
    ck->dir_ = dir.string();
    ck->guard_ = std::make_unique<SourceGuard>(ck->dir_);
    const fs::path cfg = dir / "llm_config.json";
    if (!fs::exists(cfg, ec)) fail(dir_in, ": no llm_config.json (is this a Lance model folder?)");
    ck->config_ = LanceConfig::load(cfg.string());

    std::string main_path;
    if (fs::exists(dir / "awq_meta.json", ec) ||
        fs::exists(dir / "awq_state_dict.safetensors", ec)) {
        ck->kind_ = CheckpointKind::Awq;
        if (!fs::exists(dir / "awq_meta.json", ec))
            fail(dir_in, ": awq_state_dict.safetensors without awq_meta.json");
        if (!fs::exists(dir / "awq_state_dict.safetensors", ec))
            fail(dir_in, ": awq_meta.json without awq_state_dict.safetensors");
        ck->meta_ = AwqMeta::load((dir / "awq_meta.json").string(), false);
        main_path = (dir / "awq_state_dict.safetensors").string();
    } else if (fs::exists(dir / "nvfp4_meta.json", ec)) {
        ck->kind_ = CheckpointKind::Nvfp4;
        if (!fs::exists(dir / "nvfp4_state_dict.safetensors", ec))
            fail(dir_in, ": nvfp4_meta.json without nvfp4_state_dict.safetensors");
        ck->meta_ = AwqMeta::load((dir / "nvfp4_meta.json").string(), true);
        main_path = (dir / "nvfp4_state_dict.safetensors").string();
    } else if (fs::exists(dir / "model.safetensors.index.json", ec) ||
               fs::exists(dir / "model.safetensors", ec)) {
        main_path = dir.string();
    } else if (fs::exists(dir / "ema.safetensors", ec)) {
        main_path = (dir / "ema.safetensors").string();
    } else {
        fail(dir_in,
             ": no model.safetensors, awq_state_dict.safetensors or nvfp4_state_dict.safetensors");
    }
    ck->main_ = Checkpoint::open(main_path);

    bool bundled = false;
    for (const std::string& n : ck->main_->names())
        if (starts_with(n, kVitPrefix)) {
            bundled = true;
            break;
        }
    // The ViT folder (Qwen2.5-VL-ViT: config.json, vit.safetensors): --vit DIR, else inside the
    // model folder (where lancet synth writes the config), else beside it (the release's layout).
    // Its config.json sizes the tower in both layouts; bundled vit_model.* weights override its
    // vit.safetensors, as Lance's load order does (spec §1.1).
    std::vector<fs::path> vdirs;
    if (!opt.vit_dir.empty()) {
        if (!fs::is_directory(opt.vit_dir, ec)) fail(opt.vit_dir, ": no such ViT folder");
        vdirs = {fs::path(opt.vit_dir)};
    } else {
        vdirs = {dir / "Qwen2.5-VL-ViT", dir.parent_path() / "Qwen2.5-VL-ViT"};
    }
    auto first_with = [&](const char* file) -> std::optional<fs::path> {
        for (const fs::path& d : vdirs)
            if (fs::exists(d / file, ec)) return d / file;
        return std::nullopt;
    };
    if (const auto vcfg = first_with("config.json")) {
        const std::string where = vcfg->string();
        ck->config_.vision = vit_config_from_json(read_json_file(where), where);
        if (ck->config_.vision.out_hidden_size != ck->config_.hidden_size)
            fail(where, ": out_hidden_size ", ck->config_.vision.out_hidden_size,
                 " must equal the decoder's hidden_size ", ck->config_.hidden_size);
    }
    if (bundled) {
        ck->vit_layout_ = VitLayout::Bundled;
    } else {
        ck->vit_layout_ = VitLayout::Separate;
        if (const auto vw = first_with("vit.safetensors")) {
            ck->vit_ = Checkpoint::open(vw->string());
        } else if (!opt.vit_dir.empty()) {
            fail(opt.vit_dir, ": no vit.safetensors in the ViT folder");
        }
    }
    ck->validate(opt.strict);
    return ck;
}

void LanceCheckpoint::validate(bool strict) {
    int64_t pos_rows = -1;
    const std::string pos_name = "latent_pos_embed.pos_embed";
    if (main_->has(pos_name) && main_->entry(pos_name).shape.size() == 2)
        pos_rows = main_->entry(pos_name).shape[0];

    // What the main file should hold, in its on-disk form.
    std::vector<TensorSpec> main_specs;
    std::set<std::string> quantized_weights;
    for_each_lance_tensor(
        config_, vit_layout_,
        [&](const TensorSpec& s) {
            if (meta_ && s.kind == TensorKind::LinearWeight && meta_->per_weight.count(s.name)) {
                const AwqWeightMeta& w = meta_->per_weight.at(s.name);
                if (w.shape != s.shape)
                    problems_.push_back(s.name + ": awq_meta.json shape " + shape_str(w.shape) +
                                        ", expected " + shape_str(s.shape));
                quantized_weights.insert(s.name);
                for (TensorSpec& q : quantized_tensor_specs(s, meta_->format, w.group_size))
                    main_specs.push_back(std::move(q));
                return;
            }
            main_specs.push_back(s);
        },
        pos_rows);
    if (meta_)
        for (const auto& [name, w] : meta_->per_weight)
            if (!quantized_weights.count(name))
                problems_.push_back("awq_meta.json names \"" + name +
                                    "\", which is not a Lance linear");

    std::set<std::string> expected_names;
    auto check = [&](const Checkpoint& file, const TensorSpec& s, const std::string& name_in_file) {
        expected_names.insert(name_in_file);
        if (!file.has(name_in_file)) {
            // The PE3D table is regenerated at load; a checkpoint may omit it.
            if (s.kind != TensorKind::PosTable) problems_.push_back("missing " + name_in_file);
            return;
        }
        const TensorEntry& e = file.entry(name_in_file);
        if (e.shape != s.shape)
            problems_.push_back(name_in_file + " has shape " + shape_str(e.shape) + ", expected " +
                                shape_str(s.shape));
        const bool want_int = name_in_file.ends_with(".qweight") ||
                              name_in_file.ends_with(".zeros") ||
                              name_in_file.ends_with(".scales_fp8");
        if (want_int && e.dtype != DType::U8)
            problems_.push_back(name_in_file + " is " + std::string(dtype_name(e.dtype)) +
                                ", expected U8");
        if (!want_int && !dtype_is_float(e.dtype))
            problems_.push_back(name_in_file + " is " + std::string(dtype_name(e.dtype)) +
                                ", expected a float type");
    };
    for (const TensorSpec& s : main_specs) check(*main_, s, s.name);
    for (const std::string& n : main_->names())
        if (!expected_names.count(n)) problems_.push_back("unexpected " + n);
    if (vit_) {
        std::set<std::string> vit_names;
        for_each_vit_tensor(config_.vision, "", [&](const TensorSpec& s) {
            vit_names.insert(s.name);
            if (!vit_->has(s.name)) {
                problems_.push_back(vit_->source() + ": missing " + s.name);
            } else if (vit_->entry(s.name).shape != s.shape) {
                problems_.push_back(vit_->source() + ": " + s.name + " has shape " +
                                    shape_str(vit_->entry(s.name).shape) + ", expected " +
                                    shape_str(s.shape));
            }
        });
        for (const std::string& n : vit_->names())
            if (!vit_names.count(n)) problems_.push_back(vit_->source() + ": unexpected " + n);
    }
    expected_ = std::move(main_specs);
    if (strict && !problems_.empty())
        fail(main_->source(), ": does not match llm_config.json (", problems_.size(),
             problems_.size() == 1 ? " problem): " : " problems): ", problems_summary());
}

std::string LanceCheckpoint::problems_summary() const {
    std::string msg;
    for (size_t i = 0; i < problems_.size() && i < 4; ++i) msg += (i ? "; " : "") + problems_[i];
    if (problems_.size() > 4) msg += "; and " + std::to_string(problems_.size() - 4) + " more";
    return msg;
}

bool LanceCheckpoint::has_tensor(const std::string& name) const {
    if (vit_ && starts_with(name, kVitPrefix)) return vit_->has(name.substr(10));
    return main_->has(name);
}

TensorView LanceCheckpoint::tensor(const std::string& name) const {
    if (vit_ && starts_with(name, kVitPrefix)) return vit_->view(name.substr(10));
    if (starts_with(name, kVitPrefix) && vit_layout_ == VitLayout::Separate)
        fail(dir_, ": the ViT is not bundled and no vit.safetensors was found (use --vit DIR)");
    return main_->view(name);
}

const MappedFile* LanceCheckpoint::mapping_of(const TensorView& v) const {
    for (const Checkpoint* c : {main_.get(), vit_.get()}) {
        if (!c) continue;
        for (const auto& f : c->files()) {
            const MappedFile& m = f->mapping();
            if (v.data >= m.data() && v.data + v.nbytes <= m.data() + m.size()) return &m;
        }
    }
    return nullptr;
}

void LanceCheckpoint::release(const TensorView& v) const {
    if (const MappedFile* m = mapping_of(v))
        m->release(static_cast<size_t>(v.data - m->data()), v.nbytes);
}

void LanceCheckpoint::prefetch(const TensorView& v) const {
    if (const MappedFile* m = mapping_of(v))
        m->prefetch(static_cast<size_t>(v.data - m->data()), v.nbytes);
}

bool LanceCheckpoint::is_quantized(const std::string& base) const {
    return meta_ && meta_->per_weight.count(base + ".weight");
}

QuantizedLinearView LanceCheckpoint::quantized(const std::string& base) const {
    if (!is_quantized(base)) fail(dir_, ": linear \"", base, "\" is not quantized");
    const AwqWeightMeta& w = meta_->per_weight.at(base + ".weight");
    QuantizedLinearView q;
    q.format = meta_->format;
    q.out = static_cast<int>(w.shape[0]);
    q.in = static_cast<int>(w.shape[1]);
    q.group_size = w.group_size;
    q.qweight = main_->view(base + ".qweight");
    if (q.format == QuantFormat::Nvfp4) {
        q.scales = main_->view(base + ".scales_bf16");
    } else {
        q.scales = main_->view(base + ".scales");
        q.zeros = main_->view(base + ".zeros");
    }
    return q;
}

}  // namespace lancet
