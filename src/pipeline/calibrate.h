// `lancet calibrate`: runs the real decoder over prompts and records, at the input of every
// targeted linear of both paths, the activation statistics the quantizer reads.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lancet {

struct CalibrationPrompt {
    std::string system;  // empty: Lance's default system prompt
    std::string user;
    std::string assistant;  // reference answer, rendered after the user turn when present
};

// Reads prompts from a text file (one per non-empty line), a JSON array of strings, or one of
// Lance's example JSONs: a map of captions (t2i/t2v) or of interleave records whose text parts
// become system/user/assistant turns (x2t: [instruction, question, answer]; edit: the instruction).
std::vector<CalibrationPrompt> read_calibration_prompts(const std::string& path);

struct CalibrateOptions {
    std::string model;
    std::vector<std::string> prompts;  // prompt files
    std::string out;
    int rows = 512;                // reservoir rows kept per linear
    int max_prompt_tokens = 2048;  // longer prompts are cut
    // Gen path: every prompt also runs as a t2i-layout sequence whose noisy latent block holds
    // Gaussian latents at a flow time from Lance's shifted schedule (no VAE is needed), so the
    // _moe_gen linears see real decoder activations. latent_hw x latent_hw latent tokens.
    bool gen = true;
    int latent_hw = 16;
    // Lance's x2t example files among the prompts (x2t_image_example.json, x2t_video_example.json)
    // run as x2t: each item's image or video through the ViT, whose rows fill the prompt's pads
    // (the und path sees real vision rows), the reference answer after the prompt; the ViT's own
    // linears are recorded too (vit_model.blocks.*, merger.mlp.*). An item whose media is
    // missing runs as text with a warning. false: the items' text only (the seed's recipe).
    bool vit = true;
    std::string vit_preset;  // empty: image_768res for images, video_480p for videos
    uint64_t seed = 1;
};

void calibrate(const CalibrateOptions& opt);

}  // namespace lancet
