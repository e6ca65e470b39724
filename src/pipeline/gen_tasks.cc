// Generation task sequences (spec §2.4 worked layouts, §3.2–3.4).
#include "pipeline/gen_tasks.h"

#include <filesystem>

#include "core/error.h"
#include "core/log.h"
#include "io/image.h"
#include "io/json_file.h"
#include "pipeline/preprocess.h"
#include "pipeline/vae_codec.h"

namespace lancet {

bool parse_gen_task(const std::string& name, GenTask* out) {
    static const std::pair<const char*, GenTask> tasks[] = {{"t2i", GenTask::T2I},
                                                            {"t2v", GenTask::T2V},
                                                            {"i2v", GenTask::I2V},
                                                            {"image_edit", GenTask::ImageEdit},
                                                            {"video_edit", GenTask::VideoEdit}};
    for (const auto& [n, t] : tasks)
        if (name == n) {
            if (out) *out = t;
            return true;
        }
    return false;
}

const char* gen_task_name(GenTask t) {
    switch (t) {
        case GenTask::T2I:
            return "t2i";
        case GenTask::T2V:
            return "t2v";
        case GenTask::I2V:
            return "i2v";
        case GenTask::ImageEdit:
            return "image_edit";
        case GenTask::VideoEdit:
            return "video_edit";
    }
    return "?";
}

bool gen_task_is_video(GenTask t) {
    return t == GenTask::T2V || t == GenTask::I2V || t == GenTask::VideoEdit;
}
bool gen_task_is_edit(GenTask t) { return t == GenTask::ImageEdit || t == GenTask::VideoEdit; }

std::string gen_system_prompt(GenTask t) {
    if (t == GenTask::T2I)
        return "Describe the image by detailing the color, quantity, text, shape, size, texture, "
               "spatial relationships of the objects and background:";
    if (t == GenTask::T2V || t == GenTask::I2V)
        return "Describe the video by detailing the color, quantity, visible text, shape, size, "
               "texture, spatial relationships and motion/camera movements of the objects and "
               "background:";
    const std::string x = t == GenTask::ImageEdit ? "image" : "video";
    const std::string rsquo = "\xE2\x80\x99";  // U+2019, as in Lance's prompt
    return "Describe the key features of the input " + x +
           " (color, shape, size, texture, objects, background), then explain how the user" +
           rsquo + "s text instruction should alter or modify the " + x + ". Generate a new " + x +
           " that meets the user" + rsquo +
           "s requirements while maintaining consistency with the original input where "
           "appropriate.";
}

int64_t gen_task_rows(const GenTaskInput& in) {
    const int64_t n = in.lt * in.lh * in.lw;
    return gen_task_is_edit(in.task) ? 2 * n : n;
}

namespace {
std::vector<int64_t> ids64(const Qwen2Tokenizer& tok, const std::string& text) {
    const std::vector<int32_t> v = tok.encode(text);
    return std::vector<int64_t>(v.begin(), v.end());
}
}  // namespace

GenSequence build_gen_sequence(const Qwen2Tokenizer& tok, const LanceConfig& cfg,
                               const GenTaskInput& in) {
    if (in.caption.empty()) fail(gen_task_name(in.task), ": the prompt is empty");
    const size_t C = cfg.latent_channels;
    const int64_t n_tgt = in.lt * in.lh * in.lw;
    const bool edit = gen_task_is_edit(in.task);
    const int64_t N = gen_task_rows(in);
    if (in.noise.size() != static_cast<size_t>(N) * C)
        fail(gen_task_name(in.task), ": the initial noise needs [", N, ", ", C, "] values");
    const size_t H = cfg.hidden_size;

    // Chat layout (SP0, text template): system turn, user turn [media,] caption, assistant turn
    // holding the target block. The caption is tokenized on its own: it begins after a newline
    // and ends before <|im_end|>, both pre-tokenizer boundaries, so this equals Lance's search
    // for the caption's tokens inside the whole rendering.
    const std::vector<int64_t> pre =
        ids64(tok, "<|im_start|>system\n" + gen_system_prompt(in.task) + "<|im_end|>\n" +
                       "<|im_start|>user\n");
    const std::vector<int64_t> cap = ids64(tok, in.caption);
    const std::vector<int64_t> post = ids64(tok, "<|im_end|>\n<|im_start|>assistant\n");
    const std::vector<int64_t> fin = ids64(tok, "<|im_end|>");

    SequenceBuilder sb(cfg);
    std::vector<Modality> mod;
    std::vector<float> x0;  // initial state of the gen rows in order
    std::vector<uint8_t> gen_rows;
    sb.text(pre);
    mod.insert(mod.end(), pre.size(), Modality::Text);
    GenSequence seq;
    if (edit) {
        const int64_t m = cfg.vision.spatial_merge_size;
        const int64_t n_vit = in.vit_grid.t * (in.vit_grid.h / m) * (in.vit_grid.w / m);
        if (in.vit_rows.size() != static_cast<size_t>(n_vit) * H)
            fail(gen_task_name(in.task), ": the ViT grid needs ", n_vit, " rows of ", H);
        if (in.cond_latent.size() != static_cast<size_t>(n_tgt) * C)
            fail(gen_task_name(in.task), ": the source latent needs [", n_tgt, ", ", C, "]");
        sb.vit_block(in.vit_grid, SplitMode::Full);
        mod.insert(mod.end(), n_vit + 2, Modality::Vit);
        sb.latent_block(in.lt, in.lh, in.lw, in.cond_latent, 0.0f, SplitMode::Full);
        mod.insert(mod.end(), n_tgt + 2, Modality::Source);
        x0 = in.cond_latent;  // clean: the noise rows are overwritten by the latent
        gen_rows.assign(n_tgt, 0);
        seq.vit_rows = in.vit_rows;
    }
    sb.text(cap);
    mod.insert(mod.end(), cap.size(), Modality::Caption);
    sb.text(post);
    mod.insert(mod.end(), post.size(), Modality::Text);
    std::vector<float> tgt(in.noise.end() - n_tgt * C, in.noise.end());
    std::vector<uint8_t> tgt_gen(n_tgt, 1);
    if (in.task == GenTask::I2V) {
        const int64_t f0 = in.lh * in.lw;
        if (in.cond_latent.size() != static_cast<size_t>(f0) * C)
            fail("i2v: the first-frame latent needs [", f0, ", ", C, "]");
        std::copy(in.cond_latent.begin(), in.cond_latent.end(), tgt.begin());
        std::fill_n(tgt_gen.begin(), f0, 0);
    }
    sb.latent_block(in.lt, in.lh, in.lw, tgt, 1.0f, SplitMode::Noise);
    mod.insert(mod.end(), n_tgt + 2, Modality::Target);
    x0.insert(x0.end(), tgt.begin(), tgt.end());
    gen_rows.insert(gen_rows.end(), tgt_gen.begin(), tgt_gen.end());
    sb.text(fin);
    mod.insert(mod.end(), fin.size(), Modality::Text);

    seq.batch = sb.build();
    seq.batch.latents = x0;
    seq.grids = sb.grids();
    seq.modality = mod;
    seq.gen_rows = gen_rows;
    seq.cfg_drop.resize(mod.size());
    for (size_t i = 0; i < mod.size(); ++i) seq.cfg_drop[i] = mod[i] == Modality::Caption;
    // get_rope_index, then editing's re-anchoring.
    seq.batch.positions =
        gen_positions(seq.batch.token_ids, seq.grids, seq.modality, seq.batch.splits, cfg);
    return seq;
}

std::vector<float> target_latent(const GenTaskInput& in, const std::vector<float>& x, size_t C) {
    const int64_t n = in.lt * in.lh * in.lw;
    if (x.size() < static_cast<size_t>(n) * C) fail("target_latent: the state is too short");
    const float* rows = x.data() + x.size() - n * C;  // the target is the last block
    std::vector<float> z(static_cast<size_t>(n) * C);
    for (int64_t r = 0; r < n; ++r)
        for (size_t c = 0; c < C; ++c) z[c * n + r] = rows[r * C + c];
    return z;
}

std::vector<float> latent_to_rows(const std::vector<float>& z, int64_t C, int64_t t, int64_t h,
                                  int64_t w) {
    const int64_t n = t * h * w;
    if (z.size() != static_cast<size_t>(n * C)) fail("latent_to_rows: size mismatch");
    std::vector<float> rows(z.size());
    for (int64_t c = 0; c < C; ++c)
        for (int64_t r = 0; r < n; ++r) rows[r * C + c] = z[c * n + r];
    return rows;
}

void check_latent_side(const char* what, int px, const LanceConfig& cfg, const std::string& ctx) {
    if (px < 16 || px % 16)
        fail(ctx, ": ", what, " ", px, " is not a positive multiple of 16 (the VAE's stride)");
    if (px / 16 > cfg.max_latent_size)
        fail(ctx, ": ", what, " ", px, " gives a latent side of ", px / 16,
             " beyond the PE3D limit ", cfg.max_latent_size,
             " (Lance would silently wrap the position rows, spec §8.9); at most ",
             16 * cfg.max_latent_size, " px");
}

namespace {

// The first `frames` frames of pixels [3, T, H, W].
PixelTensor first_frames(const PixelTensor& p, int64_t frames) {
    if (frames >= p.T) return p;
    PixelTensor o;
    o.T = frames, o.H = p.H, o.W = p.W;
    const size_t plane = static_cast<size_t>(p.H * p.W);
    o.data.resize(3 * static_cast<size_t>(frames) * plane);
    for (int c = 0; c < 3; ++c)
        std::copy_n(p.data.data() + static_cast<size_t>(c * p.T) * plane, frames * plane,
                    o.data.data() + static_cast<size_t>(c * frames) * plane);
    return o;
}

}  // namespace

void prepare_gen_media(GenTask task, const std::string& media, const LanceConfig& cfg,
                       const GenMediaOptions& opt, const VitRunner& vit, GenTaskInput& in) {
    const int64_t C = cfg.latent_channels;
    const bool video_src = task == GenTask::VideoEdit;
    ImageReadOptions ro;
    ro.max_pixels = opt.max_pixels;
    VideoReadOptions vro;
    vro.max_pixels = opt.max_pixels;
    PreprocessResult vae_px =
        video_src ? preprocess_video(media, opt.preset, VisionStream::Vae, vro)
                  : preprocess_image(read_image(media, ro), opt.preset, VisionStream::Vae);
    const int64_t max_lt = cfg.max_num_frames / 4 + 1;
    if (opt.max_latent_frames > 0) {
        const int64_t keep = 1 + 4 * (std::min(opt.max_latent_frames, max_lt) - 1);
        if (vae_px.pixels.T > keep) vae_px.pixels = first_frames(vae_px.pixels, keep);
    }
    const PixelTensor& px = vae_px.pixels;
    check_latent_side("the source height", static_cast<int>(px.H), cfg, media);
    check_latent_side("the source width", static_cast<int>(px.W), cfg, media);
    in.lh = px.H / 16;
    in.lw = px.W / 16;
    if (1 + (px.T - 1) / 4 > max_lt)
        fail(media, ": ", px.T, " sampled frames make ", 1 + (px.T - 1) / 4,
             " latent frames; the PE3D table holds ", max_lt);
    VaeEncodeOptions eo;  // the mean: Lance samples with torch's RNG (spec §3.4, pitfall 10)
    const std::vector<float> z =
        vae_encode_video(opt.vae_path, px.data.data(), px.T, px.H, px.W, eo);
    const int64_t zt = 1 + (px.T - 1) / 4;
    if (task == GenTask::I2V) {
        // The image alone (T = 1): the causal VAE's latent frame 0 sees only pixel frame 0.
        in.cond_latent = latent_to_rows(z, C, 1, in.lh, in.lw);
        log_info("i2v: image ", vae_px.source_width, "x", vae_px.source_height, " -> bucket ", px.W,
                 "x", px.H, " (", opt.preset, ")");
        return;
    }
    if (!gen_task_is_edit(task)) fail(gen_task_name(task), ": takes no input media");
    if (!vit) fail(gen_task_name(task), ": editing needs the ViT");
    in.lt = zt;
    in.cond_latent = latent_to_rows(z, C, zt, in.lh, in.lw);
    PreprocessResult vit_px =
        video_src ? preprocess_video(media, opt.preset, VisionStream::Vit, vro)
                  : preprocess_image(read_image(media, ro), opt.preset, VisionStream::Vit);
    if (vit_px.pixels.T > px.T + (px.T % 2))  // the same frames as the VAE source, an even count
        vit_px.pixels = first_frames(vit_px.pixels, px.T + (px.T % 2));
    const PixelTensor& vp = vit_px.pixels;
    PixelTensor two;  // an image (or one frame) goes to the ViT as two identical frames
    const PixelTensor* v = &vp;
    if (vp.T == 1) {
        two.T = 2, two.H = vp.H, two.W = vp.W;
        const size_t plane = static_cast<size_t>(vp.H * vp.W);
        two.data.resize(3 * 2 * plane);
        for (int c = 0; c < 3; ++c)
            for (int t = 0; t < 2; ++t)
                std::copy_n(vp.data.data() + c * plane, plane,
                            two.data.data() + (c * 2 + t) * plane);
        v = &two;
    }
    const VitConfig& vc = cfg.vision;
    in.vit_rows = vit(v->data.data(), v->T, v->H, v->W);
    in.vit_grid = {v->T / vc.temporal_patch_size, v->H / vc.patch_size, v->W / vc.patch_size};
    log_info(gen_task_name(task), ": source ", vae_px.source_width, "x", vae_px.source_height,
             " -> VAE ", px.W, "x", px.H, "x", px.T, ", ViT ", v->W, "x", v->H, "x", v->T, " (",
             opt.preset, ")");
}

std::string find_example_media(const std::string& dir_s, const std::string& p) {
    namespace fs = std::filesystem;
    const fs::path dir(dir_s);
    std::error_code ec;
    const fs::path name = fs::path(p).filename();
    for (const fs::path& c : {dir / p, dir / "images" / name, dir / "videos" / name, fs::path(p)})
        if (fs::is_regular_file(c, ec)) return c.string();
    const std::string suffix = "-" + name.string();
    for (const char* sub : {"images", "videos"}) {
        if (!fs::is_directory(dir / sub, ec)) continue;
        for (const auto& e : fs::directory_iterator(dir / sub, ec)) {
            const std::string f = e.path().filename().string();
            if (f.size() > suffix.size() && f.ends_with(suffix)) return e.path().string();
        }
    }
    return {};
}

std::vector<GenExample> read_gen_examples(const std::string& path) {
    const nlohmann::json j = read_json_file(path);
    if (!j.is_object() || j.empty()) fail(path, ": expected an object of items");
    const std::string dir = std::filesystem::path(path).parent_path().string();
    std::vector<GenExample> items;
    for (const auto& [key, v] : j.items()) {
        GenExample it;
        it.key = key;
        if (v.is_string()) {
            it.caption = v.get<std::string>();
        } else if (v.is_object() && v.contains("interleave_array") &&
                   v["interleave_array"].is_array() && v.contains("element_dtype_array")) {
            const auto& arr = v["interleave_array"];
            const auto& types = v["element_dtype_array"];
            for (size_t i = 0; i < arr.size() && i < types.size(); ++i) {
                if (!arr[i].is_string() || !types[i].is_string())
                    fail(path, ": item ", key, ": interleave entries must be strings");
                const std::string t = types[i].get<std::string>(), s = arr[i].get<std::string>();
                if (t == "text") it.caption = s;
                if ((t == "image" || t == "video") && it.media_ref.empty()) {
                    it.media_ref = s;
                    it.media = find_example_media(dir, s);
                }
            }
        } else {
            fail(path, ": item ", key,
                 " is neither a prompt string nor an interleave_array object");
        }
        items.push_back(it);
    }
    return items;
}

}  // namespace lancet
