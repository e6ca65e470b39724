// Implementation of the x2t tasks.
#include "pipeline/understanding.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "io/image.h"
#include "io/json_file.h"

namespace lancet {

namespace fs = std::filesystem;

std::string x2t_default_system(bool video) {
    return video ? "Watch the video carefully and answer the question."
                 : "Look at the image carefully and answer the question.";
}

std::string x2t_default_preset(bool video) { return video ? "video_480p" : "image_768res"; }

X2tPrompt build_x2t_prompt(const LanceConfig& cfg, const Qwen2Tokenizer& tok,
                           const std::string& system, const std::string& question,
                           const VisionGrid& grid, int merge_size) {
    if (merge_size < 1 || grid.h % merge_size != 0 || grid.w % merge_size != 0)
        fail("x2t: ViT grid (", grid.t, ", ", grid.h, ", ", grid.w,
             ") is not divisible by the merge size ", merge_size);
    X2tPrompt p;
    // Added tokens are matched before BPE, so encoding the pieces between the special tokens
    // separately gives the ids of the whole rendered text. The system prompt and the question are
    // untrusted text: encoded plain, a "<|vision_start|>" in them stays characters and cannot open
    // a vision block (the template's own markers are the only special tokens).
    const int32_t im_start = tok.special_id("<|im_start|>"), im_end = tok.special_id("<|im_end|>");
    auto plain = [&](std::vector<int32_t>& out, const std::string& text) {
        const std::vector<int32_t> p = tok.encode_plain_text(text);
        out.insert(out.end(), p.begin(), p.end());
    };
    std::vector<int32_t> head = {im_start}, tail;
    plain(head, "system\n" + system);
    head.push_back(im_end);
    plain(head, "\n");
    head.push_back(im_start);
    plain(head, "user\n");
    plain(tail, question);
    tail.push_back(im_end);
    plain(tail, "\n");
    tail.push_back(im_start);
    plain(tail, "assistant\n");
    p.vit_rows = grid.t * (grid.h / merge_size) * (grid.w / merge_size);
    p.ids.assign(head.begin(), head.end());
    p.ids.push_back(cfg.vision_start_token_id);
    p.vit_begin = static_cast<int64_t>(p.ids.size());
    p.ids.insert(p.ids.end(), static_cast<size_t>(p.vit_rows), cfg.video_token_id);
    p.ids.push_back(cfg.vision_end_token_id);
    p.ids.insert(p.ids.end(), tail.begin(), tail.end());
    p.splits = {{static_cast<int64_t>(head.size()), SplitMode::Causal},
                {p.vit_rows + 2, SplitMode::Full},
                {static_cast<int64_t>(tail.size()), SplitMode::Causal}};
    p.positions = mrope_positions(p.ids, {grid}, cfg);
    return p;
}

void check_x2t_context(const LanceConfig& cfg, const X2tPrompt& p, const PixelTensor& px,
                       size_t new_tokens, const std::string& where) {
    const size_t limit = static_cast<size_t>(cfg.max_position_embeddings);
    if (p.ids.size() + new_tokens > limit)
        fail(where, ": prompt of ", p.ids.size(), " tokens (", p.vit_rows, " image tokens for ",
             px.W, "x", px.H, " px, ", px.T, " frames) plus ", new_tokens,
             " new tokens exceeds the model context of ", limit, " tokens");
}

PreprocessResult load_x2t_media(const std::string& path, bool is_video, const std::string& preset) {
    std::error_code ec;
    if (!fs::exists(path, ec)) fail(path, ": no such file");
    if (fs::is_directory(path, ec)) fail(path, ": is a folder, not an image or video");
    if (is_video) return preprocess_video(path, preset, VisionStream::Vit);
    return preprocess_image(read_image(path), preset, VisionStream::Vit);
}

X2tRunner::X2tRunner(const LanceCheckpoint& ck, const Qwen2Tokenizer& tok, const X2tOptions& opt)
    : ck_(ck), tok_(tok), opt_(opt) {
    if (!ck.has_vit())
        fail(ck.dir(), ": the checkpoint has no ViT weights (x2t needs the vision tower)");
    if (opt_.generate.stop_ids.empty()) opt_.generate.stop_ids = {tok.special_id("<|im_end|>")};
    DecoderOptions dopt;
    dopt.load_gen = false;  // understanding runs the und expert only
    dopt.bf16_weights = opt.bf16_weights;
    dopt.logits_limit = static_cast<int64_t>(tok.size());
    weights_ = std::make_unique<LanceWeights>(ck, dopt);
    decoder_ = std::make_unique<DecoderSession>(*weights_);
    tower_ = std::make_unique<VisionTower>(ck, opt.bf16_weights);
    if (tower_->config().out_hidden_size != ck.config().hidden_size)
        fail(ck.dir(), ": the ViT's out_hidden_size ", tower_->config().out_hidden_size,
             " differs from the decoder's hidden_size ", ck.config().hidden_size);
}

Batch x2t_prompt_batch(DecoderSession& decoder, VisionTower& tower, const Qwen2Tokenizer& tok,
                       const PixelTensor& px, const std::string& system,
                       const std::string& question, size_t new_tokens,
                       std::vector<float>& embeddings, double* vit_seconds) {
    const VitConfig& v = tower.config();
    const VitPlan plan = vit_plan(v, px.T, px.H, px.W, "x2t pixels");
    const LanceConfig& cfg = decoder.config();
    const X2tPrompt p = build_x2t_prompt(cfg, tok, system, question, {plan.gt, plan.gh, plan.gw},
                                         v.spatial_merge_size);
    check_x2t_context(cfg, p, px, new_tokens, "x2t");
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<float> rows =
        tower.forward(decoder.context(), px.data.data(), px.T, px.H, px.W);
    if (vit_seconds)
        *vit_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const size_t L = p.ids.size(), H = static_cast<size_t>(cfg.hidden_size);
    if (rows.size() != static_cast<size_t>(p.vit_rows) * H)
        fail("x2t: the ViT gives rows of ", v.out_hidden_size, " values, the decoder's hidden ",
             "size is ", H);
    embeddings.resize(L * H);
    decoder.embed_tokens(p.ids.data(), L, embeddings.data());
    std::copy(rows.begin(), rows.end(), embeddings.begin() + p.vit_begin * H);
    Batch b;
    b.token_ids = p.ids;
    b.positions = p.positions;
    b.splits = p.splits;
    b.embeddings = embeddings.data();
    return b;
}

Batch X2tRunner::prompt_batch(const PixelTensor& px, const std::string& system,
                              const std::string& question, std::vector<float>& embeddings,
                              double* vit_seconds) {
    return x2t_prompt_batch(*decoder_, *tower_, tok_, px, system, question,
                            static_cast<size_t>(opt_.generate.max_new_tokens), embeddings,
                            vit_seconds);
}

X2tAnswer X2tRunner::answer(const PixelTensor& px, const std::string& system,
                            const std::string& question,
                            const std::function<bool(int32_t)>& on_token) {
    X2tAnswer a;
    std::vector<float> emb;
    const Batch b = prompt_batch(px, system, question, emb, &a.vit_seconds);
    a.vit_tokens = static_cast<size_t>(
        std::count(b.token_ids.begin(), b.token_ids.end(), ck_.config().video_token_id));
    a.gen = generate_from_batch(*decoder_, ck_.config(), b, opt_.generate, on_token);
    a.text = tok_.decode(a.gen.tokens);
    return a;
}

std::vector<X2tExample> read_x2t_examples(const std::string& path) {
    const nlohmann::json j = read_json_file(path);
    if (!j.is_object()) fail(path, ": expected Lance's example map {\"0001\": {...}, ...}");
    const fs::path dir = fs::path(path).parent_path();
    std::vector<X2tExample> out;
    for (auto it = j.begin(); it != j.end(); ++it) {
        const nlohmann::json& rec = it.value();
        const auto ia = rec.is_object() ? rec.find("interleave_array") : rec.end();
        if (ia == rec.end() || !ia->is_array() || ia->size() != 2 || !(*ia)[0].is_string() ||
            !(*ia)[1].is_array() || (*ia)[1].size() < 2)
            fail(path, ": item \"", it.key(),
                 "\" is not an x2t record (interleave_array [media, [instruction, question, "
                 "answer]])");
        X2tExample e;
        e.key = it.key();
        const std::string media = (*ia)[0].get<std::string>();
        const auto dt = rec.find("element_dtype_array");
        e.is_video = dt != rec.end() && dt->is_array() && !dt->empty() && (*dt)[0] == "video";
        const nlohmann::json& t = (*ia)[1];
        for (size_t k = 0; k < t.size() && k < 3; ++k)
            if (!t[k].is_string())
                fail(path, ": item \"", it.key(), "\": text part ", k, " is not a string");
        e.instruction = t[0].get<std::string>();
        e.question = t[1].get<std::string>();
        if (t.size() >= 3) e.answer = t[2].get<std::string>();
        const std::string name = fs::path(media).filename().string();
        const fs::path cands[] = {dir / media, dir / "images" / name, dir / "videos" / name};
        e.media = cands[0].string();
        std::error_code ec;
        for (const fs::path& c : cands)
            if (fs::is_regular_file(c, ec)) {
                e.media = c.string();
                break;
            }
        out.push_back(std::move(e));
    }
    if (out.empty()) fail(path, ": no items");
    return out;
}

}  // namespace lancet
