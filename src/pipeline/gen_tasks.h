// The generation tasks' sequences (spec §2.4, §3.2–3.4): Lance's system prompts, the chat layout
// with the caption as its own split, VAE blocks, editing's ViT and clean source blocks, the
// target as a noise split, editing's re-anchored positions and the CFG drop (the caption only).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/image.h"
#include "model/lance_checkpoint.h"
#include "model/lance_config.h"
#include "model/vit.h"
#include "pipeline/flow_sampler.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {

enum class GenTask { T2I, T2V, I2V, ImageEdit, VideoEdit };

// "t2i", "t2v", "i2v", "image_edit", "video_edit"; false for other names.
bool parse_gen_task(const std::string& name, GenTask* out);
const char* gen_task_name(GenTask t);
bool gen_task_is_video(GenTask t);  // t2v, i2v, video_edit
bool gen_task_is_edit(GenTask t);

// Lance's system prompt for the task (data/common.py, type SP0; the editing prompt's two
// apostrophes are U+2019).
std::string gen_system_prompt(GenTask t);

struct GenTaskInput {
    GenTask task = GenTask::T2I;
    std::string caption;
    int64_t lt = 1, lh = 1, lw = 1;  // the target's latent grid
    // Initial noise of every gen row in token order [N, C] (edit: the source block's rows first,
    // then the target's; i2v and t2x: the target's).
    std::vector<float> noise;
    // i2v: latent frame 0 [lh*lw, C]; edit: the source latent [lt*lh*lw, C]; rows (t, h, w) order.
    std::vector<float> cond_latent;
    // Editing: the ViT block's get_rope_index grid and its output rows [merged, hidden].
    VisionGrid vit_grid;
    std::vector<float> vit_rows;
};

// Number of gen rows (and so noise rows) the task's sequence has.
int64_t gen_task_rows(const GenTaskInput& in);

// The sequence the sampler runs. Error for an empty caption or inconsistent sizes.
GenSequence build_gen_sequence(const Qwen2Tokenizer& tok, const LanceConfig& cfg,
                               const GenTaskInput& in);

// The rows of the target block in a sampled state x [N, C], as a VAE latent [C, lt, lh, lw].
std::vector<float> target_latent(const GenTaskInput& in, const std::vector<float>& x, size_t C);
// A VAE latent [C, t, h, w] as token rows [(t h w), C].
std::vector<float> latent_to_rows(const std::vector<float>& z, int64_t C, int64_t t, int64_t h,
                                  int64_t w);

// A pixel side of a generated or source frame: a positive multiple of 16 (the VAE's stride) whose
// latent side fits the PE3D table. Error naming `ctx` otherwise.
void check_latent_side(const char* what, int px, const LanceConfig& cfg, const std::string& ctx);

// How a task's input media becomes its conditioning.
struct GenMediaOptions {
    std::string preset;    // resize preset (preprocess.h)
    std::string vae_path;  // resolve_vae_path's result
    // > 0: a video source is cut to its first 1 + 4 (n - 1) sampled frames, n = this (or fewer
    // when the clip is shorter), so its latent has at most n frames (calibration's cap); 0: the
    // whole sampled clip, refused beyond the PE3D table.
    int64_t max_latent_frames = 0;
    uint64_t max_pixels = kDefaultMaxPixels;  // input images and video frames (io/image.h)
};
// Runs the ViT on normalised pixels [3, T, H, W] (T even): its output rows [merged, hidden].
using VitRunner =
    std::function<std::vector<float>(const float* pixels, int64_t T, int64_t H, int64_t W)>;

// The media conditioning of i2v (the first frame's clean latent in `in.cond_latent`, `in.lh/lw`
// from the input's bucket) and editing (the source latent, its grid `in.lt/lh/lw`, and its ViT
// rows and grid from `vit`, which must be given for editing). The VAE encodes the mean (Lance
// samples with torch's RNG: spec §3.4, pitfall 10). One-line Error naming the file.
void prepare_gen_media(GenTask task, const std::string& media, const LanceConfig& cfg,
                       const GenMediaOptions& opt, const VitRunner& vit, GenTaskInput& in);

// One item of Lance's generation example JSONs (t2i_example.json, t2v_example.json: a map of
// captions; i2v_example.json and the edit examples: interleave records of the instruction and an
// image or video path).
struct GenExample {
    std::string key;
    std::string caption;
    std::string media_ref;  // the path as the JSON writes it ("" for t2i / t2v)
    std::string media;      // the file found for it ("" when media_ref is empty or not found)
};
// Reads every item (structure errors name the file and item); media are looked up with
// find_example_media relative to the JSON's folder.
std::vector<GenExample> read_gen_examples(const std::string& path);

// An example's media path: as written relative to the JSON's folder `dir`, else its file name under
// the folder's images/ or videos/, else a file there named "<anything>-<file name>" (the shared
// copies carry a task prefix, e.g. i2v-00003.png). "" when none exists.
std::string find_example_media(const std::string& dir, const std::string& ref);

}  // namespace lancet
