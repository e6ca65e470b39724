// Implementation of calibration.
#include "pipeline/calibrate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
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
#include "pipeline/batch.h"
#include "pipeline/flow_sampler.h"
#include "pipeline/gen_tasks.h"
#include "pipeline/understanding.h"
#include "pipeline/vae_codec.h"
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

namespace fs = std::filesystem;

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

const char* const kCalibrationTasks[] = {"t2i",        "t2v",       "i2v",      "image_edit",
                                         "video_edit", "x2t_image", "x2t_video"};

// One unit of calibration work; its index in the run's item list keys its rows (sharding).
struct CalItem {
    enum Kind { Text, X2t, Gen } kind = Text;
    std::string label;         // "<task> <key>" for logs
    CalibrationPrompt prompt;  // Text
    X2tExample x2t;            // X2t
    bool legacy_gen = false;   // Text / X2t without --tasks: also the gen-path recipe
    bool x2t_as_text = false;  // X2t whose media is missing (without --tasks): its text only
    GenTask gen_task = GenTask::T2I;
    GenExample gen;  // Gen
};

struct Plan {
    std::vector<CalItem> items;
    std::vector<std::string> tasks;  // the statistics file's lancet.stats.tasks
    bool need_gen = false, need_vit = false, need_vae = false;
    int width = 0, height = 0;
    std::string preset;
    int steps = 30;
};

void parse_wxh(const std::string& s, int* w, int* h) {
    const auto x = s.find('x');
    size_t a = 0, b = 0;
    try {
        if (x == std::string::npos) throw std::invalid_argument("");
        *w = std::stoi(s.substr(0, x), &a);
        *h = std::stoi(s.substr(x + 1), &b);
    } catch (const std::exception&) {
        a = 0;
    }
    if (x == std::string::npos || a != x || b != s.size() - x - 1)
        fail("calibrate: --size '", s, "' is not WIDTHxHEIGHT (e.g. 256x256)");
}

// Reads every input and checks it before anything loads: unknown tasks, missing files, missing
// media (unless skipped) fail here, so a bad run writes nothing.
Plan make_plan(const CalibrateOptions& opt, const LanceCheckpoint& ck) {
    Plan pl;
    const LanceConfig& cfg = ck.config();
    const bool tasks_mode = !opt.tasks.empty();
    for (const std::string& f : opt.prompts) {
        if (!tasks_mode && opt.vit && is_x2t_example_file(f)) {
            if (!ck.has_vit()) {
                log_warn(opt.model, " has no ViT weights: ", f, " calibrates as text only");
            } else {
                for (const X2tExample& e : read_x2t_examples(f)) {
                    CalItem it;
                    it.kind = CalItem::X2t;
                    it.label = "x2t " + e.key;
                    it.x2t = e;
                    it.prompt = {e.instruction, e.question, e.answer};
                    it.legacy_gen = opt.gen;
                    pl.items.push_back(it);
                }
                pl.need_vit = true;
                pl.tasks.push_back("x2t:" + f);
                continue;
            }
        }
        size_t n = 0;
        for (const CalibrationPrompt& p : read_calibration_prompts(f)) {
            CalItem it;
            it.label = "text " + std::to_string(++n);
            it.prompt = p;
            it.legacy_gen = !tasks_mode && opt.gen;
            pl.items.push_back(it);
        }
        pl.tasks.push_back("text:" + f);
    }
    if (!tasks_mode) {
        if (opt.prompts.empty()) fail("calibrate: give --prompts files or --tasks");
        if (opt.latent_hw < 1 || opt.latent_hw > cfg.max_latent_size)
            fail("calibrate: --latent-size must be in [1, ", cfg.max_latent_size, "]");
        if (opt.gen)
            pl.tasks.push_back(opt.gen_steps > 0
                                   ? "gen:t2i-trajectories-" + std::to_string(opt.gen_steps)
                                   : std::string("gen:noise-latents"));
        pl.need_gen = opt.gen;
        return pl;
    }

    if (opt.examples_dir.empty()) fail("calibrate: --tasks needs --examples-dir");
    std::error_code ec;
    if (!fs::is_directory(opt.examples_dir, ec))
        fail(opt.examples_dir, ": no such folder (--examples-dir)");
    pl.preset = opt.preset.empty() ? "image_256res" : opt.preset;
    stream_spec(pl.preset, VisionStream::Vae);  // refuses unknown names
    pl.steps = opt.gen_steps > 0 ? opt.gen_steps : 30;
    check_sampler_settings(pl.steps, opt.shift, opt.cfg, "calibrate", "--");
    if (opt.frames < 1) fail("calibrate: --frames must be at least 1");
    parse_wxh(opt.size, &pl.width, &pl.height);
    std::vector<std::string> seen;
    for (const std::string& t : opt.tasks) {
        if (std::find(std::begin(kCalibrationTasks), std::end(kCalibrationTasks), t) ==
            std::end(kCalibrationTasks))
            fail("calibrate: unknown task '", t,
                 "' (t2i, t2v, i2v, image_edit, video_edit, x2t_image, x2t_video)");
        if (std::find(seen.begin(), seen.end(), t) != seen.end())
            fail("calibrate: task '", t, "' is listed twice");
        seen.push_back(t);
        const std::string file = (fs::path(opt.examples_dir) / (t + "_example.json")).string();
        if (!fs::is_regular_file(file, ec)) fail(file, ": no such examples file (task ", t, ")");
        size_t before = pl.items.size(), skipped = 0;
        // An item whose media file is missing: an error, or a logged skip (--skip-missing-media).
        auto skip_missing = [&](const std::string& key, const std::string& media) {
            if (!opt.skip_missing_media)
                fail(file, ": item ", key, ": ", media,
                     " not found (--skip-missing-media skips such items)");
            log_info("calibrate: ", t, " item ", key, ": ", media, " not found; skipped");
            ++skipped;
        };
        // A new item of this task, labelled "task key".
        auto add_item = [&](CalItem::Kind kind, const std::string& key) -> CalItem& {
            CalItem& it = pl.items.emplace_back();
            it.kind = kind;
            it.label = t + " " + key;
            return it;
        };
        if (t.rfind("x2t_", 0) == 0) {
            if (!ck.has_vit()) fail(opt.model, ": ", t, " needs the ViT, and this model has none");
            pl.need_vit = true;
            for (const X2tExample& e : read_x2t_examples(file)) {
                std::error_code ec2;
                if (!fs::is_regular_file(e.media, ec2)) {
                    skip_missing(e.key, e.media);
                    continue;
                }
                CalItem& it = add_item(CalItem::X2t, e.key);
                it.x2t = e;
                it.prompt = {e.instruction, e.question, e.answer};
            }
        } else {
            GenTask task;
            parse_gen_task(t, &task);
            pl.need_gen = true;
            const bool media = task == GenTask::I2V || gen_task_is_edit(task);
            if (gen_task_is_edit(task)) {
                if (!ck.has_vit())
                    fail(opt.model, ": ", t, " needs the ViT, and this model has none");
                pl.need_vit = true;
            }
            pl.need_vae = pl.need_vae || media;
            if (!media) {
                check_latent_side("width", pl.width, cfg, "calibrate --size");
                check_latent_side("height", pl.height, cfg, "calibrate --size");
            }
            for (const GenExample& e : read_gen_examples(file)) {
                if (e.caption.empty()) fail(file, ": item ", e.key, " has no text");
                if (media && e.media_ref.empty())
                    fail(file, ": item ", e.key, " has no input ",
                         task == GenTask::VideoEdit ? "video" : "image");
                if (media && e.media.empty()) {
                    skip_missing(e.key, e.media_ref);
                    continue;
                }
                CalItem& it = add_item(CalItem::Gen, e.key);
                it.gen_task = task;
                it.gen = e;
            }
        }
        if (pl.items.size() == before) fail(file, ": no item can run");
        pl.tasks.push_back(t + ":" + file + " (" + std::to_string(pl.items.size() - before) +
                           " items" + (skipped ? ", " + std::to_string(skipped) + " skipped" : "") +
                           ")");
    }
    if (pl.need_gen) {
        char buf[200];
        std::snprintf(buf, sizeof buf,
                      "gen:trajectories steps=%d shift=%g cfg=%g size=%dx%d frames=%d preset=%s",
                      pl.steps, opt.shift, opt.cfg, pl.width, pl.height, opt.frames,
                      pl.preset.c_str());
        pl.tasks.push_back(buf);
    }
    return pl;
}

// Fingerprint of a run: what decides its statistics (tasks, items, settings, model path), so
// partial files of different runs are never joined.
std::string fingerprint(const CalibrateOptions& opt, const Plan& pl) {
    std::string d = json(pl.tasks).dump();
    for (const CalItem& it : pl.items) d += "\n" + it.label;
    char buf[400];
    std::snprintf(buf, sizeof buf, "\n%d %d %d %d %d %llu %s %d %s %g %g %d %s %d", opt.rows,
                  opt.max_prompt_tokens, opt.gen ? 1 : 0, opt.latent_hw, opt.vit ? 1 : 0,
                  static_cast<unsigned long long>(opt.seed), opt.vit_preset.c_str(), opt.gen_steps,
                  opt.size.c_str(), opt.shift, opt.cfg, opt.frames, pl.preset.c_str(),
                  opt.skip_missing_media ? 1 : 0);
    d += buf;
    d += "\n" + fs::absolute(opt.model).lexically_normal().string();
    char hex[32];
    std::snprintf(hex, sizeof hex, "%016llx",
                  static_cast<unsigned long long>(name_hash(0x5ca1ab1e, d)));
    return hex;
}

// Every linear's accumulator, keyed by a slot name that does not depend on the order linears are
// first seen in (each rank sees its own items), so seeds and keys agree across ranks.
class Recorder {
  public:
    Recorder(int rows, uint64_t seed, bool hessian) : rows_(rows), seed_(seed), hessian_(hessian) {}

    void begin_item(int64_t item) {
        item_ = item;
        for (auto& [k, a] : acc_) a.acc->begin_item(item);
    }
    void add(const std::string& slot, const std::vector<std::string>& names, const float* x,
             size_t n, size_t dim) {
        auto it = acc_.find(slot);
        if (it == acc_.end()) {
            Slot s{std::make_unique<quant::StatsAccumulator>(static_cast<int>(dim), rows_,
                                                             name_hash(seed_, slot), hessian_),
                   names};
            s.acc->begin_item(item_);
            it = acc_.emplace(slot, std::move(s)).first;
        }
        it->second.acc->add_rows(x, static_cast<int64_t>(n), static_cast<int>(dim));
    }
    // name -> statistics (q/k/v and gate/up share their input's).
    std::map<std::string, quant::LinearStats> stats(bool exact) const {
        std::map<std::string, quant::LinearStats> out;
        for (const auto& [k, s] : acc_) {
            const quant::LinearStats st = s.acc->stats(exact);
            for (const std::string& n : s.names) out[n] = st;
        }
        return out;
    }

  private:
    struct Slot {
        std::unique_ptr<quant::StatsAccumulator> acc;
        std::vector<std::string> names;
    };
    int rows_;
    uint64_t seed_;
    bool hessian_;
    int64_t item_ = 0;
    std::map<std::string, Slot> acc_;
};

std::vector<std::string> decoder_linears(int layer, bool gen, LinearInput which) {
    std::vector<std::string> v;
    const PathNames n = path_names(layer, gen);
    for (PathLinear lin : kAllPathLinears)
        if (linear_input(lin) == which) v.push_back(n[lin]);
    return v;
}

// The Recorder slot of a decoder linear input: its seed (and so its reservoir) depends on the
// position only, never on the order inputs are first seen in (ranks, layer-by-layer runs).
std::string decoder_slot(int layer, bool gen, LinearInput which) {
    char slot[48];
    std::snprintf(slot, sizeof slot, "L%03d.%c.%d", layer, gen ? 'g' : 'u',
                  static_cast<int>(which));
    return slot;
}

// Checks shared by calibrate() and sequential calibration, before anything loads.
void check_calibrate_options(const CalibrateOptions& opt) {
    if (opt.rows < 8) fail("calibrate: --rows must be at least 8");
    if (opt.max_prompt_tokens < 1) fail("calibrate: --max-prompt-tokens must be at least 1");
    if (opt.gen_steps < 0 || opt.gen_steps > 1000)
        fail("calibrate: --gen-steps must be in 0..1000");
    if (!opt.tasks.empty() && !opt.gen)
        fail(
            "calibrate: --no-gen applies to --prompts calibration; leave generation tasks out "
            "of --tasks instead");
    if (!opt.vit_preset.empty()) stream_spec(opt.vit_preset, VisionStream::Vit);  // known preset
}

// Runs one calibration item: every decoder sequence it makes goes to `sequence` (x2t batches
// carry their ViT rows in `embeddings`, valid during the call), every sampler trajectory runs
// flow_sample on `decoder` with `observer`. calibrate() forwards each sequence; sequential
// calibration keeps their input rows. Both see the same sequences in the same order.
struct ItemRunner {
    const CalibrateOptions& opt;
    const Plan& pl;
    const LanceConfig& cfg;
    const Qwen2Tokenizer& tok;
    DecoderSession& decoder;
    VisionTower* tower;
    std::string vae_path;
    int64_t cal_lt;
    std::function<void(const Batch&)> sequence;
    ActivationObserver observer;  // trajectories

    bool tasks_mode() const { return !opt.tasks.empty(); }

    void run_text(const CalibrationPrompt& p) {
        std::vector<ChatMessage> msgs = {{"user", p.user}};
        if (!p.assistant.empty()) msgs.push_back({"assistant", p.assistant});
        const std::string text =
            render_chat(p.system.empty() ? kDefaultSystemPrompt : p.system, msgs);
        std::vector<int32_t> ids32 = tok.encode(text);
        if (ids32.size() > static_cast<size_t>(opt.max_prompt_tokens))
            ids32.resize(opt.max_prompt_tokens);
        SequenceBuilder sb(cfg);
        sb.text(std::vector<int64_t>(ids32.begin(), ids32.end()));
        sequence(sb.build());
    }
    // x2t: the ViT (its linears observed), then the decoder on the x2t prompt with the reference
    // answer after it.
    void run_x2t(const X2tExample& e) {
        const std::string preset =
            tasks_mode()
                ? pl.preset
                : (opt.vit_preset.empty() ? x2t_default_preset(e.is_video) : opt.vit_preset);
        const PreprocessResult px = load_x2t_media(e.media, e.is_video, preset);
        std::vector<float> emb;
        Batch b =
            x2t_prompt_batch(decoder, *tower, tok, px.pixels, e.instruction, e.question, 0, emb);
        // The reference answer and <|im_end|> after the prompt, as text continuing the positions
        // (the rendered training sample), within --max-prompt-tokens.
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
    }
    // A real trajectory: every forward of the sampler (prefix prefill into both caches, the noisy
    // block at every step and both CFG branches) passes the observer.
    void run_trajectory(const GenTaskInput& in, size_t i, int steps, double shift,
                        double cfg_scale) {
        if (!observer) fail("calibrate: internal: a sampler trajectory without an observer");
        GenTaskInput g = in;
        g.noise =
            flow_noise(opt.seed + i, static_cast<size_t>(gen_task_rows(g)) * cfg.latent_channels);
        const GenSequence seq = build_gen_sequence(tok, cfg, g);
        FlowSamplerOptions so;
        so.steps = steps;
        so.shift = shift;
        so.cfg = cfg_scale;
        so.observer = observer;
        flow_sample(decoder, seq, so);
    }
    void run_gen_item(const CalItem& it, size_t i) {
        GenTaskInput in;
        in.task = it.gen_task;
        in.caption = it.gen.caption;
        in.lh = pl.height / 16;
        in.lw = pl.width / 16;
        in.lt = gen_task_is_video(it.gen_task) && !gen_task_is_edit(it.gen_task) ? cal_lt : 1;
        if (!it.gen.media.empty()) {
            GenMediaOptions mo;
            mo.preset = pl.preset;
            mo.vae_path = vae_path;
            mo.max_latent_frames = cal_lt;
            VitRunner vit;
            if (tower)
                vit = [&](const float* px, int64_t T, int64_t H, int64_t W) {
                    return tower->forward(kernels::OpContext::defaults(), px, T, H, W);
                };
            prepare_gen_media(it.gen_task, it.gen.media, cfg, mo, vit, in);
        }
        run_trajectory(in, i, pl.steps, opt.shift, opt.cfg);
    }
    // The text recipe's gen path: a t2i-layout sequence of Gaussian latents at one flow time.
    void run_latent_proxy(const CalibrationPrompt& p, size_t i) {
        const std::string head = "<|im_start|>system\n" + gen_system_prompt(GenTask::T2I) +
                                 "<|im_end|>\n<|im_start|>user\n" + p.user +
                                 "<|im_end|>\n<|im_start|>assistant\n";
        std::vector<int32_t> h32 = tok.encode(head);
        if (h32.size() > static_cast<size_t>(opt.max_prompt_tokens))
            h32.resize(opt.max_prompt_tokens);
        const int hw = opt.latent_hw, steps = 30;
        // Spread prompts over the whole schedule; the latent is noise scaled like x_t of a
        // unit-variance x0. Each item draws from its own seeded stream (ranks agree).
        std::vector<float> lat = flow_noise(name_hash(opt.seed, "latent " + std::to_string(i)),
                                            static_cast<size_t>(hw) * hw * cfg.latent_channels);
        const float t = shifted_sigma(static_cast<int>(i % steps), steps, 3.5f);
        const float sd = std::sqrt((1 - t) * (1 - t) + t * t);
        for (float& v : lat) v *= sd;
        SequenceBuilder g(cfg);
        g.text(std::vector<int64_t>(h32.begin(), h32.end()));
        g.latent_block(1, hw, hw, lat, t, SplitMode::Noise);
        sequence(g.build());
    }
    // Item i of the plan.
    void run(size_t i) {
        const CalItem& it = pl.items[i];
        switch (it.kind) {
            case CalItem::Text:
                run_text(it.prompt);
                break;
            case CalItem::X2t:
                if (tasks_mode()) {
                    run_x2t(it.x2t);
                } else {
                    // The text recipe: an item whose media cannot be loaded falls back to text.
                    bool done = false;
                    try {
                        run_x2t(it.x2t);
                        done = true;
                    } catch (const Error& err) {
                        log_warn("calibrate: item ", it.x2t.key, ": ", err.what(),
                                 "; using its text only");
                    }
                    if (!done) run_text(it.prompt);
                }
                break;
            case CalItem::Gen:
                run_gen_item(it, i);
                break;
        }
        if (it.legacy_gen && !it.prompt.user.empty()) {
            if (opt.gen_steps > 0) {
                GenTaskInput in;
                in.task = GenTask::T2I;
                in.caption = it.prompt.user;
                in.lh = in.lw = opt.latent_hw;
                run_trajectory(in, i, opt.gen_steps, 3.5, 4.0);
            } else {
                run_latent_proxy(it.prompt, i);
            }
        }
    }
};

}  // namespace

std::string calibrate_part_path(const std::string& out, int rank, int world) {
    return (fs::path(out + ".parts") / rank_part_name(rank, world, ".safetensors")).string();
}

void calibrate_merge(const std::string& out, std::vector<std::string> parts) {
    if (parts.empty()) {
        const fs::path dir(out + ".parts");
        std::error_code ec;
        if (!fs::is_directory(dir, ec))
            fail("calibrate --merge: ", dir.string(), " does not exist (give the parts)");
        for (const auto& e : fs::directory_iterator(dir, ec)) {
            const std::string f = e.path().filename().string();
            if (f.rfind("rank-", 0) == 0 && f.ends_with(".safetensors"))
                parts.push_back(e.path().string());
        }
        std::sort(parts.begin(), parts.end());
        if (parts.empty()) fail("calibrate --merge: no parts in ", dir.string());
    }
    check_not_source(out);
    quant::reduce_partial_stats_files(parts, out);
}

void calibrate(const CalibrateOptions& opt) {
    check_calibrate_options(opt);
    const RankInfo rank = launcher_rank(opt.world_size, "calibrate");
    // H is summed in double in the order rows come, so partial Hessians would not add up to the
    // same bits as one process's: no byte-identical reduction, so no sharding with it.
    if (opt.hessian && rank.world > 1)
        fail("calibrate: --hessian runs on one rank only (", rank.world,
             " ranks given): the Hessian does not reduce byte-identically across shards");
    auto ck = LanceCheckpoint::open(opt.model);
    check_not_source(opt.out);  // before the decoder runs, not after
    if (ck->kind() != CheckpointKind::Original)
        fail(opt.model, ": calibrate needs the original (unquantized) checkpoint");
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(opt.model);
    const LanceConfig& cfg = ck->config();
    const Plan pl = make_plan(opt, *ck);
    const std::string vae_path = pl.need_vae ? resolve_vae_path(opt.model) : std::string();
    const bool tasks_mode = !opt.tasks.empty();
    const int64_t max_lt = cfg.max_num_frames / 4 + 1;
    const int64_t cal_lt = std::min<int64_t>((opt.frames - 1) / 4 + 1, max_lt);
    if (tasks_mode && pl.need_gen && cal_lt < (opt.frames - 1) / 4 + 1)
        log_info("calibrate: --frames ", opt.frames, " makes ", (opt.frames - 1) / 4 + 1,
                 " latent frames; the model's PE3D table holds ", max_lt, ", using ", cal_lt);

    std::vector<size_t> mine;
    for (size_t i = 0; i < pl.items.size(); ++i)
        if (static_cast<int>(i % static_cast<size_t>(rank.world)) == rank.rank) mine.push_back(i);
    if (rank.world > 1)
        log_info("calibrate: rank ", rank.rank, " of ", rank.world, " (from $", rank.source,
                 "): ", mine.size(), " of ", pl.items.size(), " items");

    Recorder rec(opt.rows, opt.seed, opt.hessian);
    size_t rows_seen[2] = {0, 0}, vit_rows = 0;
    std::unique_ptr<LanceWeights> weights;
    std::unique_ptr<DecoderSession> decoder;
    std::unique_ptr<VisionTower> tower;
    ForwardOptions fo;
    fo.logits = LogitRows::None;
    fo.velocity = false;
    fo.observer = [&](int layer, bool gen, LinearInput which, const float* x, size_t n,
                      size_t dim) {
        if (layer == 0 && which == LinearInput::Qkv) rows_seen[gen] += n;
        rec.add(decoder_slot(layer, gen, which), decoder_linears(layer, gen, which), x, n, dim);
    };
    if (!mine.empty()) {
        DecoderOptions dopt;
        // Lance runs in bf16; calibrating with the weights it runs with also halves an F32 model.
        dopt.bf16_weights = true;
        dopt.load_gen = pl.need_gen;
        dopt.logits_limit = static_cast<int64_t>(tok.size());
        weights = std::make_unique<LanceWeights>(*ck, dopt);
        decoder = std::make_unique<DecoderSession>(*weights);
        if (pl.need_vit) {
            tower = std::make_unique<VisionTower>(*ck, /*bf16_weights=*/true);
            tower->set_observer(
                [&](int block, VitLinearInput which, const float* x, size_t n, size_t dim) {
                    if (block == 0 && which == VitLinearInput::Qkv) vit_rows += n;
                    char slot[48];
                    std::snprintf(slot, sizeof slot, "V%03d.%d", block, static_cast<int>(which));
                    rec.add(slot, vit_linears(block, which), x, n, dim);
                });
        }
    }

    Outputs outputs;
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<ItemRunner> runner;
    if (decoder)
        runner.reset(new ItemRunner{
            opt, pl, cfg, tok, *decoder, tower.get(), vae_path, cal_lt,
            [&](const Batch& b) { decoder->forward(b, nullptr, false, outputs, fo); },
            fo.observer});

    for (size_t n = 0; n < mine.size(); ++n) {
        const size_t i = mine[n];
        const CalItem& it = pl.items[i];
        rec.begin_item(static_cast<int64_t>(i));
        runner->run(i);
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        log_info("calibrate: item ", n + 1, "/", mine.size(), " (", it.label,
                 "), rows so far: ", rows_seen[0], " und (", vit_rows, " ViT patches) + ",
                 rows_seen[1], " gen, ", static_cast<int>(s), " s, ETA ",
                 static_cast<int>(s / (n + 1) * (mine.size() - n - 1)), " s");
    }

    if (rank.world == 1) {
        const auto stats = rec.stats(false);
        quant::write_stats_file(opt.out, pl.tasks, opt.rows, stats);
        log_info("calibrate: wrote ", opt.out, " (", stats.size(), " linears, ", rows_seen[0],
                 " und rows (", vit_rows, " ViT patches), ", rows_seen[1], " gen rows)");
        return;
    }
    const std::string part = calibrate_part_path(opt.out, rank.rank, rank.world);
    fs::create_directories(fs::path(part).parent_path());
    quant::PartialInfo info{rank.rank, rank.world, fingerprint(opt, pl)};
    quant::write_stats_file(part, pl.tasks, opt.rows, rec.stats(true), &info);
    log_info("calibrate: rank ", rank.rank, " wrote ", part);
    if (rank.rank != 0) return;
    std::vector<std::string> parts;
    for (int r = 0; r < rank.world; ++r)
        parts.push_back(calibrate_part_path(opt.out, r, rank.world));
    // A part counts once it exists (parts appear whole: written under a temporary name, then
    // renamed) and belongs to this run: a stale part of another run waits to be overwritten.
    const auto part_ready = [&](const std::string& p) {
        if (!fs::exists(p)) return false;
        try {
            const std::string md = quant::StatsFile(p).metadata("lancet.stats.partial");
            return md.find(info.fingerprint) != std::string::npos;
        } catch (const Error&) {
            return false;
        }
    };
    const bool all = wait_until([&] { return std::all_of(parts.begin(), parts.end(), part_ready); },
                                merge_wait_seconds(rank, opt.merge_wait));
    if (!all) {
        log_info(
            "calibrate: the other ranks' parts of this run are not all there yet: run "
            "`lancet calibrate --merge ",
            opt.out, "` when all ranks have finished");
        return;
    }
    quant::reduce_partial_stats_files(parts, opt.out);
    log_info("calibrate: merged ", parts.size(), " parts into ", opt.out);
}

void write_decoder_stats(quant::StatsFileWriter& w, const LanceConfig& cfg,
                         const DecoderStatsSlots& stats, const ExtraStats& extra) {
    // Name order: what calibrate() writes (quant::write_stats_file), so the files compare.
    std::map<std::string, const quant::StatsAccumulator*> order;
    for (int l = 0; l < cfg.num_hidden_layers; ++l)
        for (int gen = 0; gen < 2; ++gen)
            for (int k = 0; k < kLinearInputs; ++k) {
                const auto& a = stats[static_cast<size_t>(l) * 2 + gen][k];
                if (!a) continue;
                for (const std::string& n :
                     decoder_linears(l, gen == 1, static_cast<LinearInput>(k)))
                    order.emplace(n, a.get());
            }
    for (const auto& [base, acc] : extra) order.emplace(base, acc);
    for (const auto& [base, acc] : order)
        w.declare(base, acc->in(), acc->n_rows(), false, acc->hessian());
    // q/k/v (and gate/up) share one accumulator: reuse its statistics while the name runs on.
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
    check_calibrate_options(opt_);
    if (opt_.gen_steps > 0)
        fail(
            "sequential calibration does not take --gen-steps yet (the gen path is calibrated "
            "from the noise-latent proxy); record trajectories with `calibrate --gen-steps` and "
            "quantize from --stats instead");
    if (ck_.kind() != CheckpointKind::Original)
        fail(ck_.dir(), ": calibration needs the original (unquantized) checkpoint");
    const Plan pl = make_plan(opt_, ck_);
    for (const CalItem& it : pl.items)
        if (it.kind == CalItem::Gen)
            fail(
                "sequential calibration does not take generation tasks yet (they run sampler "
                "trajectories); record them with `calibrate --tasks` and quantize from --stats");
    tasks_ = pl.tasks;
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(ck_.dir());
    DecoderOptions dopt;
    dopt.bf16_weights = true;  // as calibrate() runs the original model
    dopt.logits_limit = static_cast<int64_t>(tok.size());
    dopt.embeddings_only = true;
    dopt.load_gen = pl.need_gen;
    weights_ = std::make_unique<LanceWeights>(ck_, dopt);
    session_ = std::make_unique<DecoderSession>(*weights_);
    std::unique_ptr<VisionTower> tower;
    if (pl.need_vit) {
        tower = std::make_unique<VisionTower>(ck_, /*bf16_weights=*/true);
        tower->set_observer([&](int block, VitLinearInput which, const float*, size_t n, size_t) {
            if (block == 0 && which == VitLinearInput::Qkv) counts_.vit_tokens += n;
        });
    }
    const size_t H = ck_.config().hidden_size, cap = static_cast<size_t>(max_rows);
    rows_.reserve(std::min<size_t>(cap, size_t{1} << 16) * H);
    int64_t item = 0;
    ItemRunner runner{opt_,
                      pl,
                      ck_.config(),
                      tok,
                      *session_,
                      tower.get(),
                      std::string(),
                      1,
                      [&](const Batch& b) {
                          if (n_rows_ + b.size() > cap) {
                              if (dropped_++ == 0)
                                  log_warn("sequential calibration: --max-rows ", max_rows,
                                           " reached: later calibration sequences are left out");
                              return;
                          }
                          offset_.push_back(n_rows_);
                          item_.push_back(item);
                          n_rows_ += b.size();
                          rows_.resize(n_rows_ * H);
                          session_->embed_inputs(b, &rows_[offset_.back() * H]);
                          Batch kept = b;
                          kept.embeddings = nullptr;
                          for (uint8_t g : kept.is_gen) {
                              has_gen_rows_ |= g != 0;
                              (g ? counts_.gen_tokens : counts_.und_tokens) += 1;
                          }
                          if (kept.is_gen.empty()) counts_.und_tokens += b.size();
                          seqs_.push_back(std::move(kept));
                      },
                      {}};
    for (size_t i = 0; i < pl.items.size(); ++i) {
        item = static_cast<int64_t>(i);
        runner.run(i);
    }
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
    // Each row keyed by (item, its number in the item) exactly as calibrate()'s Recorder keys it,
    // with the same per-slot seeds: the same rows in the same order give the same reservoir (and
    // the same H).
    int64_t item = seqs_.empty() ? 0 : item_.front();
    const ActivationObserver observer = [&](int l, bool g, LinearInput which, const float* x,
                                            size_t n, size_t dim) {
        auto& slot = slots[g ? 1 : 0][static_cast<int>(which)];
        if (!slot) {
            slot = std::make_unique<quant::StatsAccumulator>(
                static_cast<int>(dim), opt_.rows, name_hash(opt_.seed, decoder_slot(l, g, which)),
                opt_.hessian);
            slot->begin_item(item);
        }
        slot->add_rows(x, static_cast<int64_t>(n), static_cast<int>(dim));
    };
    std::vector<float> x;
    for (size_t i = 0; i < seqs_.size(); ++i) {
        if (item_[i] != item) {  // a new item (its sequences are adjacent)
            item = item_[i];
            for (auto& path : slots)
                for (auto& a : path)
                    if (a) a->begin_item(item);
        }
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

}  // namespace lancet
