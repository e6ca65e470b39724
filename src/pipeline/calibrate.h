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
    // --prompts without --tasks (the text recipe): every prompt also runs as a t2i-layout
    // sequence whose noisy latent block holds Gaussian latents at a flow time from Lance's
    // shifted schedule (no VAE is needed), so the _moe_gen linears see real decoder activations.
    // latent_hw x latent_hw latent tokens.
    bool gen = true;
    int latent_hw = 16;
    // Lance's x2t example files among the prompts (x2t_image_example.json, x2t_video_example.json)
    // run as x2t: each item's image or video through the ViT, whose rows fill the prompt's pads
    // (the und path sees real vision rows), the reference answer after the prompt; the ViT's own
    // linears are recorded too (vit_model.blocks.*, merger.mlp.*). An item whose media is
    // missing runs as text with a warning. false: the items' text only (the seed's recipe).
    bool vit = true;
    std::string vit_preset;  // empty: image_768res for images, video_480p for videos
    // Without --tasks: > 0 runs, instead of that proxy, the real flow sampler (t2i sequence, this
    // many steps) per prompt. With --tasks: the steps of every generation item's schedule
    // (0: Lance's 30).
    int gen_steps = 0;
    uint64_t seed = 1;

    // Lance's tasks (t2i, t2v, i2v, image_edit, video_edit, x2t_image, x2t_video), each from
    // <examples_dir>/<task>_example.json. A generation item builds the task's real sequence
    // (pipeline/gen_tasks.h, what `lancet run --task` runs) and runs the flow sampler with CFG;
    // every forward of the trajectory is recorded: the condition prefix prefilled into both caches
    // (und rows: system prompt, caption, ViT block; gen rows: editing's clean source latent) and
    // the noisy target block at every step, both CFG branches (gen rows; its two markers on the
    // und path). An x2t item records the understanding prompt with its ViT rows and the answer.
    // With tasks given, --prompts files add und rows only (no latent proxy).
    std::vector<std::string> tasks;
    std::string examples_dir;
    std::string size = "256x256";  // t2i / t2v target (calibration's cap, not Lance's 768x768)
    int frames = 5;                // t2v / i2v frames, video sources cut to as many latent frames
    std::string preset;            // media resize preset; empty: image_256res (the smallest)
    double shift = 3.5, cfg = 4.0;
    bool skip_missing_media = false;  // skip (logged) items whose media is missing; else error

    // Sharding across launcher ranks (pipeline/batch.h): rank r of W calibrates items i with
    // i % W == r into <out>.parts/rank-r-of-W.safetensors; rank 0 reduces the parts into `out`
    // (byte-identical to one process over every item) once all exist, waiting up to merge_wait
    // seconds (< 0: an hour under mpirun, else 0; `calibrate --merge` joins later).
    int world_size = 0;
    double merge_wait = -1;
    // Also accumulate H = XᵀX over every input (packed upper triangle, `<linear>.hessian`), which
    // GPTQ then uses instead of the reservoir rows' Gram matrix. One rank only: H is summed in
    // an order-dependent way, so it does not reduce byte-identically across shards. Size per
    // linear: in (in + 1) / 2 f32 values (small: 129 KB at in = 256, 0.99 MB at 704; 3b: 8.4 MB at
    // 2048, 242 MB at 11008).
    bool hessian = false;
};

void calibrate(const CalibrateOptions& opt);

// The partial files rank 0 waits for: <out>.parts/rank-R-of-W.safetensors.
std::string calibrate_part_path(const std::string& out, int rank, int world);

// Joins partial statistics files into `out` (quant::reduce_partial_stats_files). No parts: every
// <out>.parts/rank-*-of-*.safetensors.
void calibrate_merge(const std::string& out, std::vector<std::string> parts);

// ---- the pieces calibrate() is made of, shared with sequential calibration (quantize) ----

struct CalibrationCounts {
    size_t und_tokens = 0, gen_tokens = 0, vit_tokens = 0;
};

// [layer * 2 + gen][LinearInput]: null where nothing was observed.
using DecoderStatsSlots =
    std::vector<std::array<std::unique_ptr<quant::StatsAccumulator>, kLinearInputs>>;
using ExtraStats = std::vector<std::pair<std::string, const quant::StatsAccumulator*>>;
// Sequential calibration: calibrate's items (the plan calibrate() runs, item by item) embedded
// once, their
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
    std::vector<int64_t> item_;   // each sequence's calibration item: with the row's number in
                                  // the item, the key of its reservoir priority (act_stats.h)
    std::vector<float> rows_;     // [n_rows, hidden]
    size_t n_rows_ = 0, dropped_ = 0;
    bool has_gen_rows_ = false;
    std::vector<std::string> tasks_;
    CalibrationCounts counts_;
    double seconds_record_ = 0, seconds_advance_ = 0;
};

// Declares and writes every decoder linear's statistics (q/k/v and gate/up from their shared
// input) and `extra`, in name order (as calibrate() writes them), and finishes the file.
void write_decoder_stats(quant::StatsFileWriter& w, const LanceConfig& cfg,
                         const DecoderStatsSlots& stats, const ExtraStats& extra);

}  // namespace lancet
