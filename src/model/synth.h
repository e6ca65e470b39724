// Synthetic Lance checkpoints in the exact on-disk layout, from tiny to full 3B size, with the
// structure quantization cares about (activation outlier channels, heavy-tailed weight rows).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/lance_config.h"

namespace lancet {

struct SynthOptions {
    std::string preset = "tiny";  // tiny | small | 3b
    DType dtype = DType::F32;     // F32 or BF16
    uint64_t seed = 1;
    std::string out;            // output folder (Lance_3B_Video layout)
    std::string tokenizer_dir;  // copy vocab.json/merges.txt/tokenizer_config.json from here
    bool force = false;
    // false: no planted activation-outlier channels (models a quantizer cannot win on by scaling).
    bool outliers = true;
};

std::vector<std::string> synth_presets();
// The config of a preset; special-token ids follow the tokenizer the preset gets.
LanceConfig synth_config(const std::string& preset);

// Input channels of the decoder's norms that carry the planted activation outliers, and their
// gains (20-100x), derived from the seed. Tests use them to check what AWQ finds.
struct OutlierPlan {
    std::vector<int> channels;
    std::vector<float> gains;
};
OutlierPlan synth_outliers(const LanceConfig& cfg, uint64_t seed);

// Writes the folder. Prints progress through log_info. Returns the number of bytes written.
uint64_t synth_checkpoint(const SynthOptions& opt);
// The same for any config (opt.preset only labels the file): tests build GQA/head_dim variants of
// a preset this way. Without opt.tokenizer_dir the synthetic tokenizer is written, so `cfg` must
// keep the preset's special ids and a vocab_size of at least 278.
uint64_t synth_checkpoint(const SynthOptions& opt, LanceConfig cfg);

// Writes a byte-level BPE tokenizer (vocab.json, merges.txt, tokenizer_config.json) with Qwen2's 22
// special tokens placed right after the 256 byte tokens, so tiny checkpoints exercise the rule that
// special ids come from the files. Returns the tokenizer length (278).
int write_synthetic_tokenizer(const std::string& dir);

}  // namespace lancet
