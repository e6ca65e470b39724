// Synthetic Lance checkpoints: deterministic per-tensor generation streamed into safetensors.
#include "model/synth.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/numeric.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/lance_tensors.h"
#include "model/positions.h"
#include "model/wan_vae_synth.h"

namespace lancet {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Qwen2's added tokens in id order (151643..151664 in the real vocabulary).
const char* const kSpecialTokens[] = {
    "<|endoftext|>",      "<|im_start|>",     "<|im_end|>",     "<|object_ref_start|>",
    "<|object_ref_end|>", "<|box_start|>",    "<|box_end|>",    "<|quad_start|>",
    "<|quad_end|>",       "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>",      "<|video_pad|>",    "<tool_call>",    "</tool_call>",
    "<|fim_prefix|>",     "<|fim_middle|>",   "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>",      "<|file_sep|>"};
constexpr int kNumSpecial = 22;

uint64_t hash_name(uint64_t seed, const std::string& s) {
    return Rng(name_hash(seed, s)).next_u64();
}

// A cheap approximately standard normal value: the centred sum of four 16-bit uniforms (variance
// 4/12 of the unit range, rescaled). Its tails stop at about 3.5 sigma; heavy tails are planted
// separately.
inline float approx_normal(Rng& rng) {
    const uint64_t r = rng.next_u64();
    const float sum =
        static_cast<float>((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48));
    return (sum - 2.0f * 65535.0f) * (1.7320508f / 65535.0f);
}

// GPT-2's reversible byte -> printable code point mapping used by byte-level BPE vocabularies.
std::string byte_token(int b) {
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cp = b;
    } else {
        int n = 0;
        for (int x = 0; x < b; ++x)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
        cp = 256 + n;
    }
    std::string s;
    if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
    } else {
        s.push_back(static_cast<char>(0xc0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
    return s;
}

// Special-token ids of a tokenizer folder, looked up by content in tokenizer_config.json.
std::map<std::string, int64_t> added_token_ids(const std::string& dir) {
    const json j = read_json_file((fs::path(dir) / "tokenizer_config.json").string());
    std::map<std::string, int64_t> ids;
    const auto it = j.find("added_tokens_decoder");
    if (it == j.end() || !it->is_object())
        fail(dir, "/tokenizer_config.json: no \"added_tokens_decoder\"");
    for (auto a = it->begin(); a != it->end(); ++a)
        if (a.value().is_object() && a.value().contains("content") &&
            a.value()["content"].is_string())
            ids[a.value()["content"].get<std::string>()] = std::stoll(a.key());
    return ids;
}

void set_special_ids(LanceConfig& c, const std::map<std::string, int64_t>& ids,
                     const std::string& where) {
    auto get = [&](const char* tok) {
        auto it = ids.find(tok);
        if (it == ids.end()) fail(where, ": tokenizer has no ", tok);
        return it->second;
    };
    c.bos_token_id = get("<|endoftext|>");
    c.eos_token_id = get("<|im_end|>");
    c.vision_start_token_id = get("<|vision_start|>");
    c.vision_end_token_id = get("<|vision_end|>");
    c.image_token_id = get("<|image_pad|>");
    c.video_token_id = get("<|video_pad|>");
}

}  // namespace

std::vector<std::string> synth_presets() { return {"tiny", "small", "3b"}; }

LanceConfig synth_config(const std::string& preset) {
    LanceConfig c;
    c.rms_norm_eps = 1e-6;
    c.rope_theta = 1e6;
    if (preset == "tiny") {
        c.hidden_size = 64, c.num_hidden_layers = 2, c.num_attention_heads = 4;
        c.num_key_value_heads = 2, c.intermediate_size = 128, c.vocab_size = 320;
        c.max_position_embeddings = 4096, c.mrope_section = {2, 3, 3};
        // The ViT's real patch, merge and window geometry at narrow widths: window blocks and
        // two full-attention blocks.
        c.vision = {.depth = 4,
                    .hidden_size = 32,
                    .intermediate_size = 48,
                    .num_heads = 2,
                    .out_hidden_size = 64,
                    .fullatt_block_indexes = {1, 3}};
        c.max_num_frames = 1;  // a Lance_3B-sized PE3D table (one latent frame of 64x64)
    } else if (preset == "small") {
        c.hidden_size = 256, c.num_hidden_layers = 4, c.num_attention_heads = 8;
        c.num_key_value_heads = 2, c.intermediate_size = 704, c.vocab_size = 512;
        c.max_position_embeddings = 8192, c.mrope_section = {4, 6, 6};
        c.vision = {.depth = 6,
                    .hidden_size = 64,
                    .intermediate_size = 172,
                    .num_heads = 4,
                    .out_hidden_size = 256,
                    .fullatt_block_indexes = {2, 5}};
        c.max_num_frames = 1;
    } else if (preset == "3b") {
        c.hidden_size = 2048, c.num_hidden_layers = 36, c.num_attention_heads = 16;
        c.num_key_value_heads = 2, c.intermediate_size = 11008, c.vocab_size = 151936;
        c.max_position_embeddings = 128000, c.mrope_section = {16, 24, 24};
        c.vision = VitConfig{};
    } else {
        fail("unknown preset \"", preset, "\" (tiny, small, 3b)");
    }
    // The synthetic tokenizer's ids: 256 byte tokens, then the specials in Qwen2's order.
    std::map<std::string, int64_t> ids;
    for (int k = 0; k < kNumSpecial; ++k) ids[kSpecialTokens[k]] = 256 + k;
    set_special_ids(c, ids, preset);
    return c;
}

OutlierPlan synth_outliers(const LanceConfig& cfg, uint64_t seed) {
    OutlierPlan p;
    Rng s(hash_name(seed, "outliers"));
    const int n = std::max(2, cfg.hidden_size / 256);
    while (static_cast<int>(p.channels.size()) < n) {
        const int c = static_cast<int>(s.next_u64() % static_cast<uint64_t>(cfg.hidden_size));
        if (std::find(p.channels.begin(), p.channels.end(), c) != p.channels.end()) continue;
        p.channels.push_back(c);
        p.gains.push_back(20.0f + 80.0f * s.unit_float());
    }
    return p;
}

int write_synthetic_tokenizer(const std::string& dir) {
    json vocab = json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_token(b)] = b;
    write_file_atomic((fs::path(dir) / "vocab.json").string(), vocab.dump());
    write_file_atomic((fs::path(dir) / "merges.txt").string(), "#version: 0.2\n");
    json added = json::object();
    for (int k = 0; k < kNumSpecial; ++k)
        added[std::to_string(256 + k)] = {{"content", kSpecialTokens[k]}, {"lstrip", false},
                                          {"normalized", false},          {"rstrip", false},
                                          {"single_word", false},         {"special", k < 14}};
    const json cfg = {{"added_tokens_decoder", added},
                      {"bos_token", nullptr},
                      {"eos_token", "<|im_end|>"},
                      {"pad_token", "<|endoftext|>"},
                      {"model_max_length", 32768},
                      {"tokenizer_class", "Qwen2Tokenizer"},
                      {"errors", "replace"}};
    write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(), cfg.dump(2));
    return 256 + kNumSpecial;
}

namespace {

// Fills rows [r0, r1) of tensor `s` (row = last dimension) into `out` as f32.
struct Filler {
    const LanceConfig& cfg;
    const OutlierPlan& outliers;
    uint64_t seed;

    void fill(const TensorSpec& s, int64_t r0, int64_t r1, float* out) const {
        const int64_t cols = s.shape.empty() ? 1 : s.shape.back();
        const uint64_t base = hash_name(seed, s.name);
        const bool outlier_norm = s.kind == TensorKind::Norm && s.component != Component::Vit &&
                                  (s.name.find("input_layernorm") != std::string::npos ||
                                   s.name.find("post_attention_layernorm") != std::string::npos);
        // Producers of the o_proj and down_proj inputs get a few loud rows, so those inputs have
        // outlier channels too.
        // (Planted with the outlier channels; `synth --no-outliers` leaves out both.)
        const bool loud_rows = !outliers.channels.empty() && s.kind == TensorKind::LinearWeight &&
                               s.component != Component::Vit &&
                               (s.name.find("v_proj") != std::string::npos ||
                                s.name.find("up_proj") != std::string::npos);
        // Consumers of an outlier norm see those channels damped by 1/sqrt(gain): salient, not
        // dominant, as in trained models.
        const bool norm_consumer = s.kind == TensorKind::LinearWeight &&
                                   s.component != Component::Vit && s.layer >= 0 &&
                                   (s.name.find("q_proj") != std::string::npos ||
                                    s.name.find("k_proj") != std::string::npos ||
                                    s.name.find("v_proj") != std::string::npos ||
                                    s.name.find("gate_proj") != std::string::npos ||
                                    s.name.find("up_proj") != std::string::npos);
        for (int64_t r = r0; r < r1; ++r) {
            Rng st(base ^ (static_cast<uint64_t>(r) * 0xd1b54a32d192ed03ull));
            float* o = out + (r - r0) * cols;
            switch (s.kind) {
                case TensorKind::Norm: {
                    for (int64_t c = 0; c < cols; ++c) o[c] = 1.0f + 0.1f * approx_normal(st);
                    if (outlier_norm)
                        for (size_t k = 0; k < outliers.channels.size(); ++k)
                            o[outliers.channels[k]] *= outliers.gains[k];
                    break;
                }
                case TensorKind::Bias:
                    for (int64_t c = 0; c < cols; ++c) o[c] = 0.02f * approx_normal(st);
                    break;
                case TensorKind::Embedding:
                    for (int64_t c = 0; c < cols; ++c) o[c] = 0.03f * approx_normal(st);
                    break;
                case TensorKind::PosTable: {
                    std::vector<double> row(static_cast<size_t>(cols));
                    pe3d_row(static_cast<int>(cols), r, cfg.max_latent_size, row.data());
                    for (int64_t c = 0; c < cols; ++c) o[c] = static_cast<float>(row[c]);
                    break;
                }
                case TensorKind::LinearWeight:
                case TensorKind::ConvWeight: {
                    const int64_t fan_in = shape_numel(s.shape) / s.shape[0];
                    // Heavy-tailed rows: a log-normal per-row scale, and 1 in 128 weights 3-6x
                    // larger.
                    float scale =
                        std::exp(0.25f * approx_normal(st)) / std::sqrt(static_cast<float>(fan_in));
                    if (loud_rows && (st.next_u64() % 97) == 0)
                        scale *= 20.0f + 60.0f * st.unit_float();
                    for (int64_t c = 0; c < cols; ++c) {
                        float w = approx_normal(st);
                        if ((st.next_u64() & 127) == 0) w *= 3.0f + 3.0f * st.unit_float();
                        o[c] = w * scale;
                    }
                    if (norm_consumer)
                        for (size_t k = 0; k < outliers.channels.size(); ++k)
                            o[outliers.channels[k]] /= std::sqrt(outliers.gains[k]);
                    break;
                }
            }
        }
    }
};

}  // namespace

uint64_t synth_checkpoint(const SynthOptions& opt) {
    return synth_checkpoint(opt, synth_config(opt.preset));
}

uint64_t synth_checkpoint(const SynthOptions& opt, LanceConfig cfg) {
    if (opt.dtype != DType::F32 && opt.dtype != DType::BF16)
        fail("synth: --dtype must be f32 or bf16");
    if (opt.out.empty()) fail("synth: no output folder given (-o DIR)");
    OutputDir out(opt.out, opt.force);

    int tokenizer_len;
    if (!opt.tokenizer_dir.empty()) {
        for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json"})
            if (!fs::exists(fs::path(opt.tokenizer_dir) / f))
                fail(opt.tokenizer_dir, ": missing tokenizer file ", f);
        for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json",
                              "generation_config.json"})
            if (fs::exists(fs::path(opt.tokenizer_dir) / f))
                fs::copy_file(fs::path(opt.tokenizer_dir) / f, out.file(f));
        const auto ids = added_token_ids(opt.tokenizer_dir);
        set_special_ids(cfg, ids, opt.tokenizer_dir);
        const json vocab = read_json_file((fs::path(opt.tokenizer_dir) / "vocab.json").string());
        int64_t top = static_cast<int64_t>(vocab.size()) - 1;
        for (const auto& [tok, id] : ids) top = std::max(top, id);
        tokenizer_len = static_cast<int>(top + 1);
        if (tokenizer_len > cfg.vocab_size)
            fail(opt.tokenizer_dir, ": tokenizer has ", tokenizer_len, " tokens but preset ",
                 opt.preset, " has vocab_size ", cfg.vocab_size, " (use --preset 3b)");
    } else {
        tokenizer_len = write_synthetic_tokenizer(out.file(""));
    }
    write_file_atomic(out.file("llm_config.json"), cfg.to_json().dump(2) + "\n");
    // The vision config as the release ships it (Qwen2.5-VL-ViT/config.json); LanceCheckpoint
    // finds it inside the model folder as well as beside it.
    fs::create_directories(out.file("Qwen2.5-VL-ViT"));
    write_file_atomic(out.file("Qwen2.5-VL-ViT/config.json"),
                      vit_folder_config_json(cfg.vision).dump(2) + "\n");

    const OutlierPlan outliers = opt.outliers ? synth_outliers(cfg, opt.seed) : OutlierPlan{};
    const Filler filler{cfg, outliers, opt.seed};
    const auto specs = lance_tensor_list(cfg, VitLayout::Bundled);
    SafetensorsWriter w(out.file("model.safetensors"));
    uint64_t params = 0;
    for (const TensorSpec& s : specs) {
        w.add(s.name, opt.dtype, s.shape);
        params += static_cast<uint64_t>(shape_numel(s.shape));
    }
    w.set_metadata("format", "pt");
    w.set_metadata("lancet.synth", opt.preset + " seed " + std::to_string(opt.seed) +
                                       (opt.outliers ? "" : " no-outliers"));
    w.begin();
    log_info("synth: preset ", opt.preset, ", ", specs.size(), " tensors, ", params / 1000000,
             "M parameters, ", dtype_name(opt.dtype), ", tokenizer of ", tokenizer_len, " tokens");

    const auto t0 = std::chrono::steady_clock::now();
    uint64_t done = 0, next_report = 0;
    std::vector<float> buf;
    std::vector<uint16_t> half;
    for (const TensorSpec& s : specs) {
        const int64_t rows = s.shape.empty() ? 1 : shape_numel(s.shape) / s.shape.back();
        const int64_t cols = s.shape.empty() ? 1 : s.shape.back();
        // Stream in blocks of ~4M elements; rows are independent so threads split a block.
        const int64_t block = std::max<int64_t>(1, (4 << 20) / std::max<int64_t>(cols, 1));
        for (int64_t r0 = 0; r0 < rows; r0 += block) {
            const int64_t r1 = std::min(rows, r0 + block);
            buf.resize(static_cast<size_t>((r1 - r0) * cols));
            default_pool().parallel_for(static_cast<size_t>(r1 - r0), [&](size_t a, size_t b) {
                filler.fill(s, r0 + static_cast<int64_t>(a), r0 + static_cast<int64_t>(b),
                            buf.data() + static_cast<int64_t>(a) * cols);
            });
            if (opt.dtype == DType::F32) {
                w.append(buf.data(), buf.size() * 4);
            } else {
                half.resize(buf.size());
                for (size_t i = 0; i < buf.size(); ++i) half[i] = f32_to_bf16(buf[i]);
                w.append(half.data(), half.size() * 2);
            }
            done += buf.size();
            if (done >= next_report && params > (50u << 20)) {
                const double secs =
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                log_info("synth: ", done * 100 / params, "% (", done / 1000000, "M of ",
                         params / 1000000, "M) ", static_cast<int>(secs), " s");
                next_report = done + params / 10;
            }
        }
    }
    w.finish();
    // The Wan2.2 VAE beside the model, so the folder is a complete Lance_3B_Video checkpoint.
    const WanVaeConfig vae = wan_vae_synth_config(opt.preset);
    log_info("synth: Wan2.2_VAE.pth, ", wan_vae_tensor_list(vae).size(), " tensors, base widths ",
             vae.dim, "/", vae.dec_dim);
    const uint64_t vae_bytes =
        write_synth_wan_vae(out.file("Wan2.2_VAE.pth"), vae, opt.dtype, opt.seed);
    out.commit();
    return w.total_bytes() + vae_bytes;
}

}  // namespace lancet
