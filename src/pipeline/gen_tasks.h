// The generation tasks' sequences (spec §2.4, §3.2–3.4): Lance's system prompts, the chat layout
// with the caption as its own split, VAE blocks, editing's ViT and clean source blocks, the
// target as a noise split, editing's re-anchored positions and the CFG drop (the caption only).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/lance_config.h"
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

}  // namespace lancet
