// Implementation of calibration.
#include "pipeline/calibrate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "io/json_file.h"
#include "io/output_dir.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/lance_tensors.h"
#include "model/vit.h"
#include "pipeline/flow_sampler.h"
#include "pipeline/gen_tasks.h"
#include "pipeline/understanding.h"
#include "quant/act_stats.h"
#include "quant/stats_file.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {

using nlohmann::json;

std::vector<CalibrationPrompt> read_calibration_prompts(const std::string& path) {
    std::vector<CalibrationPrompt> out;
    if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
        const json j = [&] {
            std::ifstream in(path, std::ios::binary);
            if (!in) fail(path, ": cannot open");
            std::stringstream ss;
            ss << in.rdbuf();
            return parse_strict_json(ss.str(), path);
        }();
        auto add_value = [&](const std::string& key, const json& v) {
            if (v.is_string()) {
                out.push_back({"", v.get<std::string>(), ""});
                return;
            }
            const auto ia = v.is_object() ? v.find("interleave_array") : v.end();
            if (ia == v.end() || !ia->is_array())
                fail(path, ": entry \"", key,
                     "\" is neither a prompt string nor an interleave record");
            for (const json& part : *ia) {
                if (part.is_array()) {  // x2t: [instruction, question, answer]
                    std::vector<std::string> t;
                    for (const json& s : part)
                        if (s.is_string()) t.push_back(s.get<std::string>());
                    if (t.size() >= 2) out.push_back({t[0], t[1], t.size() >= 3 ? t[2] : ""});
                } else if (part.is_string()) {
                    const std::string s = part.get<std::string>();
                    // Media paths are inputs for the ViT/VAE, not text.
                    const bool media = s.find('/') != std::string::npos &&
                                       (s.ends_with(".png") || s.ends_with(".jpg") ||
                                        s.ends_with(".mp4") || s.ends_with(".jpeg"));
                    if (!media) out.push_back({"", s, ""});
                }
            }
        };
        if (j.is_array()) {
            for (size_t i = 0; i < j.size(); ++i) add_value(std::to_string(i), j[i]);
        } else if (j.is_object()) {
            for (auto it = j.begin(); it != j.end(); ++it) add_value(it.key(), it.value());
        } else {
            fail(path, ": expected a JSON array or object of prompts");
        }
    } else {
        std::ifstream in(path, std::ios::binary);
        if (!in) fail(path, ": cannot open");
        std::string line;
        while (std::getline(in, line)) {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (line.find_first_not_of(" \t") != std::string::npos) out.push_back({"", line, ""});
        }
    }
    if (out.empty()) fail(path, ": no prompts");
    return out;
}

namespace {

// Whether `path` is one of Lance's x2t example files: a JSON map whose first record is an
// interleave of one image or video and [instruction, question, answer].
bool is_x2t_example_file(const std::string& path) {
    if (!(path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0)) return false;
    const json j = read_json_file(path);
    if (!j.is_object() || j.empty()) return false;
    const json& rec = j.begin().value();
    if (!rec.is_object()) return false;
    const auto dt = rec.find("element_dtype_array");
    const auto ia = rec.find("interleave_array");
    return dt != rec.end() && dt->is_array() && !dt->empty() &&
           ((*dt)[0] == "image" || (*dt)[0] == "video") && ia != rec.end() && ia->is_array() &&
           ia->size() == 2 && (*ia)[0].is_string() && (*ia)[1].is_array();
}

// The ViT linears fed by each observed input: per block qkv, proj, gate/up, down; the merger's two.
std::vector<std::string> vit_linears(int block, VitLinearInput which) {
    const std::string b = "vit_model.blocks." + std::to_string(block) + ".";
    switch (which) {
        case VitLinearInput::Qkv:
            return {b + "attn.qkv"};
        case VitLinearInput::Proj:
            return {b + "attn.proj"};
        case VitLinearInput::GateUp:
            return {b + "mlp.gate_proj", b + "mlp.up_proj"};
        case VitLinearInput::Down:
            return {b + "mlp.down_proj"};
        case VitLinearInput::Merger0:
            return {"vit_model.merger.mlp.0"};
        case VitLinearInput::Merger2:
            return {"vit_model.merger.mlp.2"};
    }
    return {};
}

// Lance's shifted flow-time schedule (§3.1): sigma_k = s u / (1 + (s-1) u), u = 1 - k/S.
float shifted_sigma(int k, int steps, float shift) {
    const float u = 1.0f - static_cast<float>(k) / static_cast<float>(steps);
    return shift * u / (1.0f + (shift - 1.0f) * u);
}

}  // namespace

CalibrationInputs read_calibration_inputs(const CalibrateOptions& opt, const LanceCheckpoint& ck) {
    if (opt.prompts.empty()) fail("calibrate: no --prompts file");
    if (opt.rows < 8) fail("calibrate: --rows must be at least 8");
    if (opt.max_prompt_tokens < 1) fail("calibrate: --max-prompt-tokens must be at least 1");
    if (ck.kind() != CheckpointKind::Original)
        fail(ck.dir(), ": calibration needs the original (unquantized) checkpoint");
    const LanceConfig& cfg = ck.config();
    if (opt.latent_hw < 1 || opt.latent_hw > cfg.max_latent_size)
        fail("calibrate: --latent-size must be in [1, ", cfg.max_latent_size, "]");
    CalibrationInputs in;
    for (const std::string& f : opt.prompts) {
        if (opt.vit && is_x2t_example_file(f)) {
            if (!ck.has_vit()) {
                log_warn(ck.dir(), " has no ViT weights: ", f, " calibrates as text only");
            } else {
                const auto x = read_x2t_examples(f);
                in.x2t_items.insert(in.x2t_items.end(), x.begin(), x.end());
                in.tasks.push_back("x2t:" + f);
                continue;
            }
        }
        const auto p = read_calibration_prompts(f);
        in.prompts.insert(in.prompts.end(), p.begin(), p.end());
        in.tasks.push_back("text:" + f);
    }
    if (!opt.vit_preset.empty()) stream_spec(opt.vit_preset, VisionStream::Vit);  // known preset
    if (opt.gen_steps < 0 || opt.gen_steps > 1000)
        fail("calibrate: --gen-steps must be in 0..1000");
    if (opt.gen)
        in.tasks.push_back(opt.gen_steps > 0
                               ? "gen:t2i-trajectories-" + std::to_string(opt.gen_steps)
                               : std::string("gen:noise-latents"));
    return in;
}

std::unique_ptr<quant::StatsAccumulator> make_decoder_accumulator(const CalibrateOptions& opt,
                                                                  int layer, bool gen,
                                                                  LinearInput which, size_t dim,
                                                                  bool hessian) {
    // Seeded by position, not by order of first use, so a layer-by-layer run draws the same
    // reservoir as a whole-model one.
    const uint64_t k =
        (static_cast<uint64_t>(layer) * 2 + gen) * kLinearInputs + static_cast<uint64_t>(which);
    return std::make_unique<quant::StatsAccumulator>(
        static_cast<int>(dim), opt.rows, opt.seed * 0x9e3779b97f4a7c15ull + 0x5eed + k, hessian);
}

CalibrationCounts run_calibration_sequences(const CalibrateOptions& opt, const LanceCheckpoint& ck,
                                            const Qwen2Tokenizer& tok, const CalibrationInputs& in,
                                            DecoderSession& decoder, VisionTower* tower,
                                            const std::function<void(const Batch&)>& sequence,
                                            const ActivationObserver& trajectory_observer) {
    const LanceConfig& cfg = ck.config();
    std::vector<CalibrationPrompt> prompts = in.prompts;
    const size_t first_x2t = prompts.size();
    if (!in.x2t_items.empty()) {
        if (!tower) fail("calibrate: internal: x2t items without a vision tower");
        for (const X2tExample& e : in.x2t_items)
            prompts.push_back({e.instruction, e.question, e.answer});
    }
    const auto t0 = std::chrono::steady_clock::now();
    Rng rng(opt.seed * 0x9e3779b97f4a7c15ull + 1);
    auto gauss = [&] {  // Box-Muller on the seeded stream
        const double u1 = rng.unit_double() + 0x1.0p-54, u2 = rng.unit_double();
        return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) *
                                  std::cos(6.283185307179586 * u2));
    };
    CalibrationCounts c;
    const int steps = 30;
    for (size_t i = 0; i < prompts.size(); ++i) {
        const CalibrationPrompt& p = prompts[i];
        bool done = false;
        if (i >= first_x2t) {
            // The ViT (its linears observed by the tower's observer) then the decoder on the x2t
            // prompt with the reference answer after it; media that cannot load: text only.
            const X2tExample& e = in.x2t_items[i - first_x2t];
            try {
                const std::string preset =
                    opt.vit_preset.empty() ? x2t_default_preset(e.is_video) : opt.vit_preset;
                const PreprocessResult px = load_x2t_media(e.media, e.is_video, preset);
                std::vector<float> emb;
                Batch b = x2t_prompt_batch(decoder, *tower, tok, px.pixels, e.instruction,
                                           e.question, 0, emb);
                const size_t K =
                    static_cast<size_t>(px.pixels.T / 2 * px.pixels.H / 28 * px.pixels.W / 28);
                // The reference answer and <|im_end|> after the prompt, as text continuing the
                // positions (the rendered training sample), within --max-prompt-tokens.
                std::vector<int32_t> ans = tok.encode(e.answer + "<|im_end|>");
                const size_t room = static_cast<size_t>(opt.max_prompt_tokens) > b.size()
                                        ? static_cast<size_t>(opt.max_prompt_tokens) - b.size()
                                        : 0;
                if (ans.size() > room) ans.resize(room);
                const size_t H = static_cast<size_t>(cfg.hidden_size);
                int64_t next = next_text_position(b.positions);
                for (const int32_t id : ans) {
                    const int64_t id64 = id;
                    b.token_ids.push_back(id64);
                    b.positions.push_back({next, next, next});
                    ++next;
                    emb.resize(emb.size() + H);
                    decoder.embed_tokens(&id64, 1, emb.data() + emb.size() - H);
                }
                b.splits.back().len += static_cast<int64_t>(ans.size());
                b.embeddings = emb.data();
                sequence(b);
                c.und_tokens += b.size();
                c.vit_tokens += K;
                done = true;
            } catch (const Error& err) {
                log_warn("calibrate: item ", e.key, ": ", err.what(), "; using its text only");
            }
        }
        if (!done) {
            std::vector<ChatMessage> msgs = {{"user", p.user}};
            if (!p.assistant.empty()) msgs.push_back({"assistant", p.assistant});
            const std::string text =
                render_chat(p.system.empty() ? kDefaultSystemPrompt : p.system, msgs);
            std::vector<int32_t> ids32 = tok.encode(text);
            if (ids32.size() > static_cast<size_t>(opt.max_prompt_tokens))
                ids32.resize(opt.max_prompt_tokens);
            const std::vector<int64_t> ids(ids32.begin(), ids32.end());
            SequenceBuilder sb(cfg);
            sb.text(ids);
            sequence(sb.build());
            c.und_tokens += ids.size();
        }

        if (opt.gen && opt.gen_steps > 0 && !p.user.empty()) {
            // A real t2i trajectory: every step's noisy block (and both CFG branches) passes the
            // observer, so the gen linears see the activations of the whole schedule.
            if (!trajectory_observer)
                fail("calibrate: internal: --gen-steps without a trajectory observer");
            GenTaskInput gin;
            gin.task = GenTask::T2I;
            gin.caption = p.user;
            gin.lh = gin.lw = opt.latent_hw;
            gin.noise = flow_noise(opt.seed + i,
                                   static_cast<size_t>(gen_task_rows(gin)) * cfg.latent_channels);
            const GenSequence seq = build_gen_sequence(tok, cfg, gin);
            FlowSamplerOptions so;
            so.steps = opt.gen_steps;
            so.observer = trajectory_observer;
            const SampleResult r = flow_sample(decoder, seq, so);
            c.gen_tokens += static_cast<size_t>(opt.latent_hw) * opt.latent_hw * r.forwards;
        } else if (opt.gen && opt.gen_steps == 0) {
            // t2i layout (§2.4): template + caption, then VS + latents + VE as the noisy split.
            const std::string sys =
                "Describe the image by detailing the color, quantity, text, shape, size, texture, "
                "spatial relationships of the objects and background:";
            const std::string head = "<|im_start|>system\n" + sys +
                                     "<|im_end|>\n<|im_start|>user\n" + p.user +
                                     "<|im_end|>\n<|im_start|>assistant\n";
            std::vector<int32_t> h32 = tok.encode(head);
            if (h32.size() > static_cast<size_t>(opt.max_prompt_tokens))
                h32.resize(opt.max_prompt_tokens);
            const int hw = opt.latent_hw;
            std::vector<float> lat(static_cast<size_t>(hw) * hw * cfg.latent_channels);
            for (float& v : lat) v = gauss();
            // Spread prompts over the whole schedule; the latent is noise scaled like x_t of a
            // unit-variance x0 (a proxy until real generations can be recorded).
            const float t = shifted_sigma(static_cast<int>(i % steps), steps, 3.5f);
            const float sd = std::sqrt((1 - t) * (1 - t) + t * t);
            for (float& v : lat) v *= sd;
            SequenceBuilder g(cfg);
            g.text(std::vector<int64_t>(h32.begin(), h32.end()));
            g.latent_block(1, hw, hw, lat, t, SplitMode::Noise);
            sequence(g.build());
            c.gen_tokens += static_cast<size_t>(hw) * hw;
        }
        const double sec =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        log_info("calibrate: prompt ", i + 1, "/", prompts.size(), ", ", c.und_tokens, " und (",
                 c.vit_tokens, " ViT) + ", c.gen_tokens, " latent tokens, ", static_cast<int>(sec),
                 " s, ETA ", static_cast<int>(sec / (i + 1) * (prompts.size() - i - 1)), " s");
    }
    return c;
}

void write_decoder_stats(quant::StatsFileWriter& w, const LanceConfig& cfg,
                         const DecoderStatsSlots& stats, const ExtraStats& extra) {
    std::vector<std::pair<std::string, const quant::StatsAccumulator*>> order;
    for (int l = 0; l < cfg.num_hidden_layers; ++l)
        for (int gen = 0; gen < 2; ++gen)
            for (int k = 0; k < kLinearInputs; ++k) {
                const auto& a = stats[static_cast<size_t>(l) * 2 + gen][k];
                if (!a) continue;
                const PathNames n = path_names(l, gen == 1);
                for (PathLinear lin : kAllPathLinears)
                    if (static_cast<int>(linear_input(lin)) == k)
                        order.emplace_back(n[lin], a.get());
            }
    for (const auto& [base, acc] : extra) order.emplace_back(base, acc);
    for (const auto& [base, acc] : order) w.declare(base, acc->in(), acc->n_rows(), acc->hessian());
    // q/k/v (and gate/up) share one accumulator: compute its statistics once for the run of names.
    const quant::StatsAccumulator* last = nullptr;
    quant::LinearStats cur;
    for (const auto& [base, acc] : order) {
        if (acc != last) cur = acc->stats(), last = acc;
        w.write(base, cur);
    }
    w.finish();
}

SequentialCalibration::SequentialCalibration(const CalibrateOptions& opt, const LanceCheckpoint& ck,
                                             int64_t max_rows)
    : opt_(opt), ck_(ck) {
    if (max_rows < 1) fail("sequential calibration: --max-rows must be at least 1");
    if (opt_.gen_steps > 0)
        fail(
            "sequential calibration does not take --gen-steps yet (the gen path is calibrated "
            "from the noise-latent proxy); record trajectories with `calibrate --gen-steps` and "
            "quantize from --stats instead");
    const CalibrationInputs in = read_calibration_inputs(opt_, ck_);
    tasks_ = in.tasks;
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(ck_.dir());
    DecoderOptions dopt;
    dopt.bf16_weights = true;  // as calibrate() runs the original model
    dopt.logits_limit = static_cast<int64_t>(tok.size());
    dopt.embeddings_only = true;
    dopt.load_gen = ck_.has_tensor(std::string(lance_names::kVae2Llm) + ".weight");
    weights_ = std::make_unique<LanceWeights>(ck_, dopt);
    session_ = std::make_unique<DecoderSession>(*weights_);
    std::unique_ptr<VisionTower> tower;
    if (!in.x2t_items.empty()) tower = std::make_unique<VisionTower>(ck_, true);
    const size_t H = ck_.config().hidden_size, cap = static_cast<size_t>(max_rows);
    rows_.reserve(std::min<size_t>(cap, size_t{1} << 16) * H);
    counts_ = run_calibration_sequences(
        opt_, ck_, tok, in, *session_, tower.get(),
        [&](const Batch& b) {
            if (n_rows_ + b.size() > cap) {
                if (dropped_++ == 0)
                    log_warn("sequential calibration: --max-rows ", max_rows,
                             " reached: later calibration sequences are left out");
                return;
            }
            offset_.push_back(n_rows_);
            n_rows_ += b.size();
            rows_.resize(n_rows_ * H);
            session_->embed_inputs(b, &rows_[offset_.back() * H]);
            Batch kept = b;
            kept.embeddings = nullptr;
            for (uint8_t g : kept.is_gen) has_gen_rows_ |= g != 0;
            seqs_.push_back(std::move(kept));
        },
        {});
    if (seqs_.empty()) fail("sequential calibration: --max-rows ", max_rows, " holds no sequence");
    if (has_gen_rows_ && !weights_->has_gen())
        fail(ck_.dir(), ": the calibration has latent rows but the checkpoint no gen path");
    log_info("sequential calibration: ", seqs_.size(), " sequences, ", n_rows_, " rows (",
             n_rows_ * H * 4 / (1 << 20), " MiB of residual stream), ", dropped_,
             " sequences left out");
}

SequentialCalibration::~SequentialCalibration() = default;

DecoderStatsSlots SequentialCalibration::record(int layer, const LayerPathWeights& und,
                                                const LayerPathWeights* gen) {
    const auto t0 = std::chrono::steady_clock::now();
    const size_t H = ck_.config().hidden_size;
    DecoderStatsSlots slots(2);
    const ActivationObserver observer = [&](int l, bool g, LinearInput which, const float* x,
                                            size_t n, size_t dim) {
        auto& slot = slots[g ? 1 : 0][static_cast<int>(which)];
        if (!slot) slot = make_decoder_accumulator(opt_, l, g, which, dim, opt_.hessian);
        slot->add_rows(x, static_cast<int64_t>(n), static_cast<int>(dim));
    };
    std::vector<float> x;
    for (size_t i = 0; i < seqs_.size(); ++i) {
        const size_t n = seqs_[i].size();
        x.assign(rows_.begin() + offset_[i] * H, rows_.begin() + (offset_[i] + n) * H);
        session_->forward_layer(seqs_[i], layer, &und, gen, x.data(), observer);
    }
    seconds_record_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return slots;
}

void SequentialCalibration::advance(int layer, const LayerPathWeights& und,
                                    const LayerPathWeights* gen) {
    const auto t0 = std::chrono::steady_clock::now();
    const size_t H = ck_.config().hidden_size;
    for (size_t i = 0; i < seqs_.size(); ++i)
        session_->forward_layer(seqs_[i], layer, &und, gen, &rows_[offset_[i] * H], {});
    seconds_advance_ +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void calibrate(const CalibrateOptions& opt) {
    auto ck = LanceCheckpoint::open(opt.model);
    check_not_source(opt.out);  // before the decoder runs, not after
    const CalibrationInputs in = read_calibration_inputs(opt, *ck);
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(opt.model);
    const LanceConfig& cfg = ck->config();

    DecoderOptions dopt;
    // Lance runs in bf16; calibrating with the weights it runs with also halves an F32 model.
    dopt.bf16_weights = true;
    dopt.logits_limit = static_cast<int64_t>(tok.size());
    const LanceWeights weights(*ck, dopt);
    DecoderSession decoder(weights);
    DecoderStatsSlots stats(static_cast<size_t>(cfg.num_hidden_layers) * 2);
    Outputs outputs;
    ForwardOptions fo;
    fo.logits = LogitRows::None;
    fo.velocity = false;
    fo.observer = [&](int layer, bool gen, LinearInput which, const float* x, size_t n,
                      size_t dim) {
        auto& slot = stats[static_cast<size_t>(layer) * 2 + gen][static_cast<int>(which)];
        if (!slot) slot = make_decoder_accumulator(opt, layer, gen, which, dim, opt.hessian);
        slot->add_rows(x, static_cast<int64_t>(n), static_cast<int>(dim));
    };

    // x2t items run the ViT, whose linears are observed too.
    std::vector<std::unique_ptr<quant::StatsAccumulator>> vit_acc;
    std::vector<std::vector<std::string>> vit_names;
    std::unique_ptr<VisionTower> tower;
    uint64_t vit_seed = opt.seed;
    if (!in.x2t_items.empty()) {
        tower = std::make_unique<VisionTower>(*ck, /*bf16_weights=*/true);
        const int depth = tower->config().depth;
        vit_acc.resize(static_cast<size_t>(depth) * 4 + 2);
        vit_names.resize(vit_acc.size());
        tower->set_observer([&, depth](int block, VitLinearInput which, const float* x, size_t n,
                                       size_t dim) {
            const size_t k = block >= 0 ? static_cast<size_t>(block) * 4 + static_cast<int>(which)
                                        : static_cast<size_t>(depth) * 4 +
                                              (which == VitLinearInput::Merger2 ? 1 : 0);
            auto& slot = vit_acc[k];
            if (!slot) {
                slot = std::make_unique<quant::StatsAccumulator>(static_cast<int>(dim), opt.rows,
                                                                 vit_seed++, opt.hessian);
                vit_names[k] = vit_linears(block, which);
            }
            slot->add_rows(x, static_cast<int64_t>(n), static_cast<int>(dim));
        });
    }
    const CalibrationCounts c = run_calibration_sequences(
        opt, *ck, tok, in, decoder, tower.get(),
        [&](const Batch& b) { decoder.forward(b, nullptr, false, outputs, fo); }, fo.observer);

    ExtraStats extra;
    for (size_t k = 0; k < vit_acc.size(); ++k)
        if (vit_acc[k])
            for (const std::string& base : vit_names[k]) extra.emplace_back(base, vit_acc[k].get());
    quant::StatsFileWriter w(opt.out, in.tasks, opt.rows);
    write_decoder_stats(w, cfg, stats, extra);
    log_info("calibrate: wrote ", opt.out, " (", c.und_tokens, " und tokens (", c.vit_tokens,
             " of them ViT rows), ", c.gen_tokens, " latent tokens)");
}

}  // namespace lancet
