// `lancet run --task chat`: text understanding with Lance's chat template, streamed to stdout.
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "pipeline/text_generation.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::cli {

namespace {

struct RunArgs {
    std::string task = "chat";
    std::string model;
    std::string prompt;
    std::string system = kDefaultSystemPrompt;
    int max_new_tokens = 256;
    float temperature = 0.0f;
    float top_p = 1.0f;
    int top_k = 0;
    uint64_t seed = 42;
    bool special = false;  // special-token strings in --prompt/--system become the tokens
};

void run_chat(const RunArgs& a) {
    if (a.prompt.empty()) fail("run: --prompt is empty");
    if (a.max_new_tokens < 1) fail("run: --max-new-tokens must be at least 1");
    auto ck = LanceCheckpoint::open(a.model);
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(a.model);
    log_info("lancet: ", kernels::runtime_description(default_pool()), "; model ", a.model);
    DecoderOptions dopt;
    dopt.load_gen = false;     // text only: the und expert alone
    dopt.bf16_weights = true;  // as Lance, which casts the model to bf16 at load
    dopt.logits_limit = static_cast<int64_t>(tok.size());
    const LanceWeights weights(*ck, dopt);
    DecoderSession decoder(weights);

    const std::vector<int32_t> ids32 = chat_ids(tok, a.system, {{"user", a.prompt}}, a.special);
    const std::vector<int64_t> ids(ids32.begin(), ids32.end());

    GenerateOptions g;
    g.max_new_tokens = a.max_new_tokens;
    g.stop_ids = {tok.special_id("<|im_end|>")};
    g.sampler.temperature = a.temperature;
    g.sampler.top_p = a.top_p;
    g.sampler.top_k = a.top_k;
    g.sampler.seed = a.seed;
    StreamDecoder stream(tok);
    const GenerateResult r = generate_text(decoder, ck->config(), ids, g, [&](int32_t id) {
        const std::string piece = stream.push(id);
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
        return true;
    });
    const std::string tail = stream.finish();
    std::fwrite(tail.data(), 1, tail.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    const double pre = r.prefill_seconds > 0 ? r.prompt_tokens / r.prefill_seconds : 0;
    const double dec = r.decode_seconds > 0 ? r.tokens.size() / r.decode_seconds : 0;
    log_info("prompt ", r.prompt_tokens, " tokens, prefill ", static_cast<int>(pre), " tok/s; ",
             r.tokens.size(), " new tokens, decode ", static_cast<int>(dec), " tok/s; ",
             r.stopped ? "stopped at <|im_end|>" : "stopped at the token limit");
}

}  // namespace

void add_run(CLI::App& app) {
    auto* cmd = app.add_subcommand("run", "Run a Lance task (today: chat, text understanding)");
    auto a = std::make_shared<RunArgs>();
    cmd->add_option("--task", a->task, "Task to run")
        ->check(CLI::IsMember({"chat"}))
        ->capture_default_str();
    cmd->add_option("-m,--model", a->model, "Model folder (original or AWQ)")->required();
    cmd->add_option("-p,--prompt", a->prompt, "The user's message")->required();
    cmd->add_option("--system", a->system, "System prompt")->capture_default_str();
    cmd->add_option("-n,--max-new-tokens", a->max_new_tokens, "Stop after this many new tokens")
        ->capture_default_str();
    cmd->add_option("--temperature", a->temperature, "0 = greedy (Lance's default)")
        ->check(CLI::Range(0.0f, 100.0f))
        ->capture_default_str();
    cmd->add_option("--top-p", a->top_p, "Nucleus sampling mass")
        ->check(CLI::Range(0.0f, 1.0f))
        ->capture_default_str();
    cmd->add_option("--top-k", a->top_k, "Keep the k most likely tokens (0 = all)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd->add_option("-s,--seed", a->seed, "Sampling seed")->capture_default_str();
    cmd->add_flag("--special", a->special,
                  "Special-token strings such as <|im_start|> in the prompt become special tokens "
                  "(default: plain text)");
    cmd->callback([a] { run_chat(*a); });
}

}  // namespace lancet::cli
