// Text decoding throughput of one model (prefill, then greedy decoding on a KV cache) and the
// weight bytes each decoded token has to stream, for `lancet bench decode`'s roofline.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "model/decoder.h"
#include "model/lance_checkpoint.h"

namespace lancet {

// Bytes of the weights a decoded text token reads, as stored in the checkpoint (INT4 codes with
// their scales and zeros, BF16 or F32): the und-path decoder layers (linears with their biases;
// the per-head q/k norms count as norms), the final und norm, lm_head, and one embedding row.
struct DecodeWeightBytes {
    uint64_t linears = 0;  // und-path q/k/v/o/gate/up/down of every layer, biases included
    uint64_t norms = 0;    // input/post-attention/q/k norms of every layer and model.norm
    uint64_t lm_head = 0;
    uint64_t embedding_row = 0;
    uint64_t total() const { return linears + norms + lm_head + embedding_row; }
};
DecodeWeightBytes decode_weight_bytes(const LanceCheckpoint& ck);

// A short label of how the checkpoint stores its decoder linears: "f32", "bf16", "int4 g64".
std::string weight_format_label(const LanceCheckpoint& ck);

struct DecodeBenchOptions {
    size_t prompt_tokens = 512;
    size_t decode_tokens = 64;
    int reps = 3;  // whole prefill + decode runs; medians are reported
    uint64_t seed = 1;
};

struct DecodeBenchResult {
    double prefill_s = 0, decode_s = 0;  // median seconds of the prefill / of all decode steps
    double prefill_tps = 0, decode_tps = 0;
    // Of the run whose decode time is the median: seconds of its decode steps spent inside the
    // linear calls (kernels::linear_seconds); decode_s minus this is the time outside them.
    double decode_linear_s = 0;
    // Pool jobs dispatched per decoded token (ThreadPool::jobs_dispatched over the decode steps
    // of that run, divided by the tokens).
    double decode_jobs_per_token = 0;
};

// Prefills a prompt of random ids below dec.logits_limit(), then decodes greedily (argmax of the
// last row's logits, each token fed back on the KV cache). Throws lancet::Error when the prompt
// plus the decoded tokens exceed the model's context.
DecodeBenchResult bench_decode(DecoderSession& dec, const DecodeBenchOptions& opt);

struct StreamsBenchResult {
    size_t streams = 0;
    double decode_s = 0;         // median seconds of all decode steps
    double decode_tps = 0;       // aggregate: streams * decode_tokens / decode_s
    double decode_linear_s = 0;  // of the median run: seconds inside the linear calls
};

// Continuous batching: `streams` sequences, each prefilled alone with a random prompt of its own
// (opt.prompt_tokens ids, seeds differ per stream), then opt.decode_tokens steps of
// DecoderSession::decode_step over all of them together (greedy per sequence, each token fed
// back on its own cache). Only the decode steps are timed; median of opt.reps runs.
StreamsBenchResult bench_decode_streams(DecoderSession& dec, const DecodeBenchOptions& opt,
                                        size_t streams);

}  // namespace lancet
