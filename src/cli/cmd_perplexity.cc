// `lancet perplexity`: sliding-window perplexity of one or more models on a raw text, with the KL
// divergence and top-1 agreement of every later model against the first, in one run.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/format.h"
#include "core/error.h"
#include "core/log.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "kernels/dispatch.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "pipeline/decode_bench.h"
#include "pipeline/perplexity.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::cli {

namespace {

struct PerplexityArgs {
    std::vector<std::string> models;
    std::string text, json;
    size_t ctx = 512, stride = 0, max_tokens = 0;
    bool also_bf16_act = false;
    std::vector<std::string> also_act;  // --also-activations: f32, int8, bf16 for INT4 weights
};

std::string read_text_file(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) fail(path, ": text file missing");
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, ": cannot open");
    std::ostringstream os;
    os << in.rdbuf();
    if (in.bad()) fail(path, ": read error");
    return os.str();
}

void run_perplexity(const PerplexityArgs& a) {
    if (a.ctx < 2) fail("perplexity: --ctx must be >= 2, got ", a.ctx);
    const size_t stride = a.stride ? a.stride : a.ctx / 2;
    if (stride >= a.ctx) fail("perplexity: --stride ", stride, " must be < --ctx ", a.ctx);
    const std::string text = read_text_file(a.text);

    // Open (mmap) every checkpoint and check them against each other before any slow work.
    std::vector<std::unique_ptr<LanceCheckpoint>> cks;
    for (const std::string& m : a.models) cks.push_back(LanceCheckpoint::open(m));
    const LanceConfig& c0 = cks[0]->config();
    for (size_t i = 0; i < cks.size(); ++i) {
        const LanceConfig& c = cks[i]->config();
        if (c.vocab_size != c0.vocab_size)
            fail("perplexity: ", a.models[i], " has vocab_size ", c.vocab_size, " but ",
                 a.models[0], " has ", c0.vocab_size, " (models must share the vocabulary)");
        if (c.max_position_embeddings > 0 && a.ctx > static_cast<size_t>(c.max_position_embeddings))
            fail("perplexity: --ctx ", a.ctx, " exceeds the context of ", a.models[i],
                 " (max_position_embeddings ", c.max_position_embeddings, ")");
    }

    if (!a.json.empty()) check_not_source(a.json);  // before the windows run, not after

    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(a.models[0]);
    std::vector<int32_t> ids = tok.encode(text);
    if (a.max_tokens > 0 && ids.size() > a.max_tokens) ids.resize(a.max_tokens);
    if (ids.size() < 2)
        fail("perplexity: ", a.text, " gives ", ids.size(), " token(s); at least 2 are needed");

    ThreadPool& pool = default_pool();
    std::printf("lancet perplexity: %s\n", kernels::runtime_description(pool).c_str());
    std::fflush(stdout);
    DecoderOptions dopt;
    dopt.lm_head = lm_head_option();
    dopt.load_gen = false;  // text only: the und expert alone
    dopt.logits_limit = static_cast<int64_t>(tok.size());
    std::vector<std::unique_ptr<LanceWeights>> weights;
    std::vector<std::unique_ptr<DecoderSession>> decs;
    std::vector<DecoderSession*> ptrs;
    for (size_t i = 0; i < cks.size(); ++i) {
        log_info("perplexity: loading ", a.models[i]);
        weights.push_back(std::make_unique<LanceWeights>(*cks[i], dopt));
        decs.push_back(
            std::make_unique<DecoderSession>(*weights.back(), kernels::OpContext::defaults(&pool)));
        ptrs.push_back(decs.back().get());
    }
    // Labels and kinds per session; --also-bf16-activations adds a session per model over the
    // same weights with bf16 activations for its BF16 weights (scored against the first model,
    // which then runs exact: below).
    std::vector<std::string> labels = a.models, kinds;
    for (const auto& ck : cks) kinds.push_back(weight_format_label(*ck));
    if (a.also_bf16_act)
        for (size_t i = 0; i < cks.size(); ++i) {
            kernels::OpContext ctx = kernels::OpContext::defaults(&pool);
            ctx.bf16_act = kernels::Bf16Act::Bf16;
            decs.push_back(std::make_unique<DecoderSession>(*weights[i], ctx));
            ptrs.push_back(decs.back().get());
            labels.push_back(a.models[i] + " (bf16 act)");
            kinds.push_back(kinds[i]);
        }
    // --also-activations: a session per INT4 model and listed mode over the same weights, its INT4
    // weights with that activation mode (kernels/linear.h), BF16 weights as the flags left them.
    for (const std::string& m : a.also_act) {
        kernels::ActMode mode = kernels::ActMode::F32;
        if (m == "int8")
            mode = kernels::ActMode::Int8;
        else if (m == "bf16")
            mode = kernels::ActMode::Bf16;
        else if (m == "auto")
            mode = kernels::ActMode::Auto;
        else if (m != "f32")
            fail("perplexity: --also-activations ", m,
                 ": unknown mode (expected f32, int8, bf16 or auto)");
        for (size_t i = 0; i < cks.size(); ++i) {
            if (kinds[i].rfind("int4", 0) != 0) continue;  // the mode only changes INT4 weights
            kernels::OpContext ctx = kernels::OpContext::defaults(&pool);
            ctx.act = mode;
            decs.push_back(std::make_unique<DecoderSession>(*weights[i], ctx));
            ptrs.push_back(decs.back().get());
            labels.push_back(a.models[i] + " (int4 act " + m + ")");
            kinds.push_back(kinds[i]);
        }
    }
    // The first model is the reference the others are scored against: with other sessions it
    // runs exact arithmetic (f32 activations and attention) whatever the flags, so the defaults'
    // bf16 rounding on AMX is charged to the models measured, not hidden in the reference.
    if (ptrs.size() > 1) {
        kernels::OpContext exact = kernels::OpContext::defaults(&pool);
        exact.act = kernels::ActMode::F32;
        exact.bf16_act = kernels::Bf16Act::F32;
        exact.attn = kernels::AttnPrecision::F32;
        decs[0] = std::make_unique<DecoderSession>(*weights[0], exact);
        ptrs[0] = decs[0].get();
    }
    PerplexityOptions po;
    po.ctx = a.ctx;
    po.stride = stride;
    po.vocab_limit = static_cast<int64_t>(tok.size());
    const PerplexityResult r = evaluate_perplexity(ptrs, ids, po, &pool);

    std::printf("%zu tokens of %s, ctx %zu, stride %zu, %zu window(s), vocabulary %zu\n\n",
                r.n_tokens, a.text.c_str(), r.ctx, r.stride, r.windows, tok.size());
    std::printf("| model | kind | tokens | PPL ± se | mean KL | KL p99 | top-1 agree | s |\n");
    std::printf("|---|---|---:|---:|---:|---:|---:|---:|\n");
    nlohmann::json models = nlohmann::json::array();
    for (size_t i = 0; i < r.models.size(); ++i) {
        const ModelScore& s = r.models[i];
        const std::string& kind = kinds[i];
        std::printf("| %s | %s | %zu | %s ± %s | %s | %s | %s | %.1f |\n", labels[i].c_str(),
                    kind.c_str(), s.tokens, fmt("%.4f", s.ppl).c_str(),
                    fmt("%.4f", s.ppl_se).c_str(), fmt("%.6f", s.mean_kl).c_str(),
                    fmt("%.6f", s.kl_p99).c_str(), fmt("%.4f", s.top1_agree).c_str(), s.seconds);
        nlohmann::json j = {{"model", labels[i]},     {"kind", kind},        {"tokens", s.tokens},
                            {"mean_nll", s.mean_nll}, {"nll_se", s.nll_se},  {"ppl", s.ppl},
                            {"ppl_se", s.ppl_se},     {"seconds", s.seconds}};
        if (i > 0) {
            j["reference"] = a.models[0];
            j["mean_kl"] = s.mean_kl;
            j["kl_se"] = s.kl_se;
            j["kl_p99"] = s.kl_p99;
            j["kl_max"] = s.kl_max;
            j["top1_agree"] = s.top1_agree;
        }
        models.push_back(std::move(j));
    }
    std::printf(
        "\nPPL = exp(mean NLL) over the scored tokens (se by the delta method); KL = "
        "KL(P_%s || P_model) in nats per token; top-1 agree = argmax equal to the first "
        "model's.\n",
        a.models[0].c_str());
    if (!a.json.empty()) {
        const nlohmann::json doc = {{"text", a.text},
                                    {"n_tokens", r.n_tokens},
                                    {"ctx", r.ctx},
                                    {"stride", r.stride},
                                    {"windows", r.windows},
                                    {"vocab_limit", tok.size()},
                                    {"runtime", kernels::runtime_description(pool)},
                                    {"models", models}};
        write_file_atomic(a.json, doc.dump(2) + "\n");
    }
}

}  // namespace

void add_perplexity(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "perplexity",
        "Sliding-window perplexity of models on a text; KL and top-1 agreement vs the first");
    auto args = std::make_shared<PerplexityArgs>();
    cmd->add_option("--model", args->models,
                    "Lance model folder; repeat to compare (the first is the reference and "
                    "supplies the tokenizer)")
        ->required();
    cmd->add_option("--text", args->text, "UTF-8 text file, tokenized as is (no chat template)")
        ->required();
    cmd->add_option("--ctx", args->ctx, "Window length in tokens (default 512)");
    cmd->add_option("--stride", args->stride, "Window advance in tokens (default ctx/2)");
    cmd->add_option("--max-tokens", args->max_tokens, "Score only the first T tokens");
    cmd->add_option("--json", args->json, "Also write the results as JSON to this file");
    cmd->add_flag("--also-bf16-activations", args->also_bf16_act,
                  "Also score every model with bf16 activations for its BF16 weights (same "
                  "weights, a second session), against the first model as run");
    cmd->add_option("--also-activations", args->also_act,
                    "Also score every INT4 model with these activation modes for its INT4 "
                    "weights, comma-separated (f32, int8, bf16; same weights, one more session "
                    "each), against the first model as run")
        ->delimiter(',');
    cmd->callback([args] { run_perplexity(*args); });
}

}  // namespace lancet::cli
