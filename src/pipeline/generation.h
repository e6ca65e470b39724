// One generation request end to end (spec §3.2–3.4, §3.6 defaults, §3.7 resize rules): media in,
// the task's sequence, the flow sampler on a caller's DecoderSession, VAE decode, and the metadata
// the outputs carry. `lancet run --task t2i|...` and `lancet serve`'s image and video routes both
// run it, so the same request gives the same pixels through either.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/image.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/vit.h"
#include "pipeline/gen_tasks.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet {

constexpr const char* kLancetVersion = "lancet 0.1.0";
constexpr int kGenDefaultFrames = 50;  // Lance's NUM_FRAMES
constexpr int kGenDefaultSide = 768;   // VIDEO_HEIGHT x VIDEO_WIDTH

// The sampler settings and the media preset of a request.
struct GenSettings {
    int steps = 30;
    double shift = 3.5, cfg = 4.0;
    bool f32_state = false;                   // latent state in f32 (default bf16 as Lance)
    bool consistent_positions = false;        // unconditional cache with its own position ids
    std::string preset;                       // media resize preset; empty: the task's default
    uint64_t max_pixels = kDefaultMaxPixels;  // input images and video frames
};

// Error (prefixed with `where`; the names with `flag`, e.g. "--") for out-of-range steps / shift /
// cfg.
void check_gen_settings(const GenSettings& s, const std::string& where, const char* flag = "");

// One generation to run, checked before anything heavy happens.
struct GenItem {
    GenTask task = GenTask::T2I;
    std::string caption;
    std::string media;          // i2v / editing: the input file
    std::string out;            // the final output path (the CLI) or a name
    int width = 0, height = 0;  // t2i / t2v pixels
    int64_t lt = 1;             // target latent frames
};

// Lance's RESOLUTION default (video_480p); image_768res for image editing as its README.
std::string default_gen_preset(GenTask t);
// Latent frames for a requested frame count ((frames - 1) // 4 + 1; 0 = Lance's default 50),
// with a log line when the decoded length differs from the request. Error beyond the PE3D table.
int64_t gen_latent_frames(GenTask task, int frames, const LanceConfig& cfg);
// (check_latent_side, the pixel-side rule, lives in gen_tasks.h.)
// "WxH" -> width, height; Error naming `what` otherwise.
void parse_gen_size(const std::string& s, int* w, int* h, const std::string& what);

// The tEXt chunks / MP4 tags every output carries (Software, task, prompt, seed, steps, shift,
// cfg, model, and source for media tasks).
ImageMetadata gen_metadata(const GenItem& it, const GenSettings& s, uint64_t seed,
                           const std::string& model, const std::string& source);

// What one item produced.
struct GenOutput {
    std::vector<float> latent;  // [C, lt, lh, lw] the target's final latent
    std::vector<float> frames;  // [3, T, H, W] in [-1, 1] (empty with GenCallbacks::on_frames)
    int64_t T = 0, H = 0, W = 0;
    double prefill_s = 0, step_s = 0, vae_s = 0;
    int cfg_steps = 0;
};

// Progress (after every step: index, steps, seconds) and cancellation (checked before every
// step; a cancelled run throws SampleCancelled).
struct GenCallbacks {
    std::function<void(int, int, double)> on_step;
    std::function<bool()> cancelled;
    // When set, the decoded frames are handed here chunk by chunk ([3, n, H, W] in [-1, 1], in
    // time order: an MP4 writer) and GenOutput::frames stays empty, so a long video is never
    // held whole.
    std::function<void(const float* frames, int64_t n, int64_t H, int64_t W)> on_frames;
};

// The per-model part of generation: the checkpoint, tokenizer and VAE path, and the ViT (loaded on
// the first editing request). The decoder weights are not here: each call brings a DecoderSession
// over LanceWeights with the gen expert, so one Generator serves any number of sessions.
class Generator {
  public:
    // `tower`: a ViT shared with other users in the process (null: one of its own, loaded on
    // the first editing request).
    Generator(const LanceCheckpoint& ck, const Qwen2Tokenizer& tok, std::string vae_path,
              std::shared_ptr<SharedVisionTower> tower = nullptr);
    const LanceConfig& config() const { return ck_.config(); }
    const std::string& vae_path() const { return vae_path_; }

    // Samples and decodes one item; the noise comes from `seed` (flow_noise).
    GenOutput generate(DecoderSession& dec, const GenItem& it, const GenSettings& s, uint64_t seed,
                       const GenCallbacks& cb = {});

  private:
    void prepare_media(const GenItem& it, const GenSettings& s, const std::string& preset,
                       GenTaskInput& in);

    const LanceCheckpoint& ck_;
    const Qwen2Tokenizer& tok_;
    std::string vae_path_;
    std::shared_ptr<SharedVisionTower> tower_;
};

}  // namespace lancet
