// The quantization pipeline behind `lancet quantize`: a Lance checkpoint plus activation statistics
// in, an AWQ INT4 folder in the published layout (spec awq-checkpoint-format.md §1.1) out, streamed
// one decoder-layer path at a time, with a quality report.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "pipeline/calibrate.h"

namespace lancet {

struct QuantizeOptions {
    std::string method = "awq-gptq";  // awq-gptq | awq | gptq | rtn
    int group_size = 64;              // requested: 32, 64 or 128 (per-linear fallback, see q4.h)
    std::string stats;                // statistics file (required for all but rtn)
    std::string src, out;
    bool force = false;            // replace an existing output folder
    bool include_lm_head = false;  // quantize lm_head too (clipping search with stats, else RTN)
    bool include_vit = false;      // quantize the ViT's linears too (RTN)
    bool search = true;            // AWQ scale search (false: clipping only)
    bool clip = true;              // per-(row, group) clipping search
    bool fuse_ov = true;           // o_proj scales folded into v_proj rows and bias
    bool fuse_updown = true;       // down_proj scales folded into up_proj rows
    bool progress = true;          // a line per layer on stderr
    double gptq_damp = 0.01;       // GPTQ dampening (fraction of mean diag H)
    bool act_order = false;        // GPTQ columns by descending diag(H)
    // gptq / awq-gptq: also run the other GPTQ variant so the report compares all four methods.
    bool compare = true;
    // GPTQ's H from the statistics' full XᵀX when they carry one (calibrate --hessian, or
    // sequential with calib.hessian); false: from the reservoir's search rows.
    bool full_hessian = true;
    // Sequential calibration: the decoder paths' statistics are not read from --stats but
    // recorded here, layer by layer, with every earlier layer already quantized: calib.prompts
    // are built into sequences as `calibrate` builds them (calib: rows, latent size, seed, gen,
    // vit, hessian; calib.model and calib.out are ignored), their residual rows are held in one
    // buffer of at most max_rows rows x hidden f32, and each layer runs once with the original
    // weights (recording) and once with the quantized ones (the next layer's inputs). --stats,
    // if given, still serves lm_head and the ViT.
    bool sequential = false;
    CalibrateOptions calib;
    int64_t max_rows = 131072;
};

// Runs the pipeline and commits the output folder: awq_state_dict.safetensors, awq_meta.json,
// quant_report.json, llm_config.json, vit_config.json and the tokenizer files. Returns the report
// (also written as quant_report.json). Throws lancet::Error on bad input (already-quantized or
// mismatched source, statistics that do not fit, output over the source, an existing output
// without force, a full disk), leaving no output or temporary folder behind.
nlohmann::ordered_json quantize_checkpoint(const QuantizeOptions& opt);

// The report's per-type summary as a printable table: per linear type the mean relative output
// error of RTN and of the result on held-out rows, their ratio, and the overall line.
std::string report_table(const nlohmann::ordered_json& report);

}  // namespace lancet
