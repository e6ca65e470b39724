// `lancet calibrate`: runs the real decoder over prompts and records, at the input of every
// targeted linear of both paths, the activation statistics the quantizer reads.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/decoder.h"
#include "pipeline/understanding.h"
#include "quant/act_stats.h"
#include "quant/stats_file.h"

namespace lancet {

class Qwen2Tokenizer;
class VisionTower;

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
    // > 0: instead of that proxy, run the real flow sampler (t2i sequence of Lance's layout, this
    // many steps, CFG 4.0, shift 3.5, seeded noise) per prompt and record every forward of the
    // trajectory: the noisy block at each step of the schedule, both CFG branches, and the
    // prefilled prefix on the und path.
    int gen_steps = 0;
    uint64_t seed = 1;
    // Also accumulate H = XᵀX over every input (packed upper triangle, `<linear>.hessian`), which
    // GPTQ then uses instead of the reservoir rows' Gram matrix. Size per linear: in (in + 1) / 2
    // f32 values (small: 129 KB at in = 256, 0.99 MB at 704; 3b: 8.4 MB at 2048, 242 MB at 11008).
    bool hessian = false;
};

void calibrate(const CalibrateOptions& opt);

// ---- the pieces calibrate() is made of, shared with sequential calibration (quantize) ----

// The prompts and x2t items of opt's files, and the task list. Checks the options against `ck`.
struct CalibrationInputs {
    std::vector<CalibrationPrompt> prompts;
    std::vector<X2tExample> x2t_items;
    std::vector<std::string> tasks;
};
CalibrationInputs read_calibration_inputs(const CalibrateOptions& opt, const LanceCheckpoint& ck);

struct CalibrationCounts {
    size_t und_tokens = 0, gen_tokens = 0, vit_tokens = 0;
};

// Builds every calibration sequence in calibrate's order and hands each to `sequence` (x2t
// batches carry ViT rows in `embeddings`, valid during the call; `tower` runs them and must be
// given when there are x2t items). With --gen-steps the t2i trajectories run the flow sampler
// on `decoder` and reach `trajectory_observer` instead.
CalibrationCounts run_calibration_sequences(const CalibrateOptions& opt, const LanceCheckpoint& ck,
                                            const Qwen2Tokenizer& tok, const CalibrationInputs& in,
                                            DecoderSession& decoder, VisionTower* tower,
                                            const std::function<void(const Batch&)>& sequence,
                                            const ActivationObserver& trajectory_observer);

// The accumulator of layer `layer`'s `which` input on one path, seeded by its position (the same
// reservoir whether the model runs whole or layer by layer).
std::unique_ptr<quant::StatsAccumulator> make_decoder_accumulator(const CalibrateOptions& opt,
                                                                  int layer, bool gen,
                                                                  LinearInput which, size_t dim,
                                                                  bool hessian);

// [layer * 2 + gen][LinearInput]: null where nothing was observed.
using DecoderStatsSlots =
    std::vector<std::array<std::unique_ptr<quant::StatsAccumulator>, kLinearInputs>>;
using ExtraStats = std::vector<std::pair<std::string, const quant::StatsAccumulator*>>;
// Sequential calibration: calibrate's sequences (run_calibration_sequences) embedded once, their
// residual rows held in one buffer of at most max_rows x hidden f32 (later sequences are left
// out, with a warning), and pushed through the decoder one layer at a time with weights the
// caller brings (DecoderSession::forward_layer). Layer l's statistics are recorded from its
// inputs as they are now, so with every earlier layer advanced through its quantized weights
// they are the quantized model's; advancing through the original weights instead reproduces
// calibrate()'s statistics exactly. Memory: the rows, one sequence's scratch and the layer's
// accumulators; the caller holds the layer weights.
class SequentialCalibration {
  public:
    SequentialCalibration(const CalibrateOptions& opt, const LanceCheckpoint& ck, int64_t max_rows);
    ~SequentialCalibration();
    // Layer `layer` over the held rows with `und` / `gen` (gen may be null when no sequence has
    // gen rows), recording [gen][LinearInput]; the rows are left unchanged.
    DecoderStatsSlots record(int layer, const LayerPathWeights& und, const LayerPathWeights* gen);
    // Replaces the held rows by layer `layer`'s outputs computed with `und` / `gen`.
    void advance(int layer, const LayerPathWeights& und, const LayerPathWeights* gen);

    const std::vector<std::string>& tasks() const { return tasks_; }
    bool has_gen_rows() const { return has_gen_rows_; }
    size_t n_sequences() const { return seqs_.size(); }
    size_t n_rows() const { return n_rows_; }
    size_t dropped() const { return dropped_; }
    double seconds_record() const { return seconds_record_; }
    double seconds_advance() const { return seconds_advance_; }
    const CalibrationCounts& counts() const { return counts_; }

  private:
    CalibrateOptions opt_;
    const LanceCheckpoint& ck_;
    std::unique_ptr<LanceWeights> weights_;  // input embeddings only
    std::unique_ptr<DecoderSession> session_;
    std::vector<Batch> seqs_;     // without embeddings (x2t ViT rows are in rows_ already)
    std::vector<size_t> offset_;  // first row of each sequence in rows_
    std::vector<float> rows_;     // [n_rows, hidden]
    size_t n_rows_ = 0, dropped_ = 0;
    bool has_gen_rows_ = false;
    std::vector<std::string> tasks_;
    CalibrationCounts counts_;
    double seconds_record_ = 0, seconds_advance_ = 0;
};

// Declares and writes every decoder linear's statistics (q/k/v and gate/up from their shared
// input), then `extra`, and finishes the file.
void write_decoder_stats(quant::StatsFileWriter& w, const LanceConfig& cfg,
                         const DecoderStatsSlots& stats, const ExtraStats& extra);

}  // namespace lancet
