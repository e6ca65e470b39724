// `lancet run`: text understanding (chat) and image/video understanding (x2t_image, x2t_video)
// with Lance's templates, answers streamed to stdout.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/format.h"
#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "pipeline/text_generation.h"
#include "pipeline/understanding.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::cli {

namespace {

struct RunArgs {
    std::string task = "chat";
    std::string model;
    std::string prompt;
    std::string system;  // empty: the task's default
    std::string image, video, examples, preset;
    int max_new_tokens = 256;
    float temperature = 0.0f;
    float top_p = 1.0f;
    int top_k = 0;
    uint64_t seed = 42;
    bool special = false;  // special-token strings in --prompt/--system become the tokens
};

void run_chat(const RunArgs& a) {
    if (a.prompt.empty()) fail("run: --prompt is empty (or missing)");
    if (a.max_new_tokens < 1) fail("run: --max-new-tokens must be at least 1");
    auto ck = LanceCheckpoint::open(a.model);
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(a.model);
    log_info("lancet: ", kernels::runtime_description(default_pool()), "; model ", a.model);
    DecoderOptions dopt;
    dopt.lm_head = lm_head_option();
    dopt.load_gen = false;     // text only: the und expert alone
    dopt.bf16_weights = true;  // as Lance, which casts the model to bf16 at load
    dopt.logits_limit = static_cast<int64_t>(tok.size());
    const LanceWeights weights(*ck, dopt);
    DecoderSession decoder(weights);

    const std::vector<int32_t> ids32 = chat_ids(
        tok, a.system.empty() ? kDefaultSystemPrompt : a.system, {{"user", a.prompt}}, a.special);
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

void write_out(const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
}

std::string trim(const std::string& s) {
    const size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// x2t_image / x2t_video: one question about --image/--video, or every item of --examples.
void run_x2t(const RunArgs& a) {
    const bool video = a.task == "x2t_video";
    const std::string& media = video ? a.video : a.image;
    if (a.examples.empty()) {
        if (media.empty()) fail("run: --task ", a.task, " needs ", video ? "--video" : "--image");
        if (a.prompt.empty()) fail("run: --prompt (the question) is empty");
    }
    if (a.max_new_tokens < 1) fail("run: --max-new-tokens must be at least 1");
    const std::string preset = a.preset.empty() ? x2t_default_preset(video) : a.preset;
    stream_spec(preset, VisionStream::Vit);  // an unknown preset fails here
    auto ck = LanceCheckpoint::open(a.model);
    if (!ck->has_vit())
        fail(a.model, ": the checkpoint has no ViT weights (", a.task, " needs the vision tower)");
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(a.model);
    std::vector<X2tExample> items;
    if (!a.examples.empty()) {
        items = read_x2t_examples(a.examples);
    } else {
        X2tExample e;
        e.media = media;
        e.is_video = video;
        e.instruction = a.system.empty() ? x2t_default_system(video) : a.system;
        e.question = a.prompt;
        items.push_back(e);
    }
    // A single request loads its media before the (slow) weight load, so bad media fails fast.
    PreprocessResult first;
    if (a.examples.empty()) {
        first = load_x2t_media(items[0].media, video, preset);
        // The context check too (X2tRunner repeats it), before anything is loaded or printed.
        const VitConfig& v = ck->config().vision;
        const PixelTensor& px = first.pixels;
        const VitPlan plan = vit_plan(v, px.T, px.H, px.W, items[0].media.c_str());
        const X2tPrompt p =
            build_x2t_prompt(ck->config(), tok, items[0].instruction, items[0].question,
                             {plan.gt, plan.gh, plan.gw}, v.spatial_merge_size);
        check_x2t_context(ck->config(), p, px, static_cast<size_t>(a.max_new_tokens),
                          items[0].media);
    }
    log_info("lancet: ", kernels::runtime_description(default_pool()), "; model ", a.model);
    X2tOptions xo;
    xo.generate.max_new_tokens = a.max_new_tokens;
    xo.generate.sampler.temperature = a.temperature;
    xo.generate.sampler.top_p = a.top_p;
    xo.generate.sampler.top_k = a.top_k;
    xo.generate.sampler.seed = a.seed;
    X2tRunner runner(*ck, tok, xo);

    auto describe = [](const std::string& path, const PreprocessResult& r) {
        const PixelTensor& p = r.pixels;
        return path + ": " + std::to_string(r.source_width) + "x" +
               std::to_string(r.source_height) + " -> pixels [3, " + std::to_string(p.T) + ", " +
               std::to_string(p.H) + ", " + std::to_string(p.W) + "]";
    };
    auto speeds = [](const X2tAnswer& x) {
        const GenerateResult& r = x.gen;
        const double pre = r.prefill_seconds > 0 ? r.prompt_tokens / r.prefill_seconds : 0;
        const double dec = r.decode_seconds > 0 ? r.tokens.size() / r.decode_seconds : 0;
        return std::to_string(x.vit_tokens) + " ViT tokens in " + fmt("%.3f", x.vit_seconds) +
               " s; prompt " + std::to_string(r.prompt_tokens) + " tokens, prefill " +
               fmt("%.3f", r.prefill_seconds) + " s (" + fmt("%.0f", pre) + " tok/s); " +
               std::to_string(r.tokens.size()) + " new tokens, decode " + fmt("%.1f", dec) +
               " tok/s; " + (r.stopped ? "stopped at <|im_end|>" : "stopped at the token limit");
    };

    if (a.examples.empty()) {
        log_info(describe(items[0].media, first), " (", preset, ")");
        StreamDecoder stream(tok);
        const X2tAnswer x =
            runner.answer(first.pixels, items[0].instruction, items[0].question, [&](int32_t id) {
                write_out(stream.push(id));
                return true;
            });
        write_out(stream.finish() + "\n");
        log_info(speeds(x));
        return;
    }

    // --examples: every item, then the match rate and mean speeds.
    int n_run = 0, n_match = 0, n_failed = 0;
    double vit_s = 0, prefill_s = 0, decode_s = 0;
    size_t prompt_tokens = 0, new_tokens = 0;
    for (const X2tExample& e : items) {
        const std::string sys = a.system.empty() ? e.instruction : a.system;
        write_out("[" + e.key + "] " + e.question + "\n");
        PreprocessResult px;
        X2tAnswer x;
        try {
            if (e.is_video != video)
                fail(e.media, ": item is ", e.is_video ? "a video" : "an image", " but --task is ",
                     a.task);
            px = load_x2t_media(e.media, e.is_video, preset);
            log_info(describe(e.media, px));
            x = runner.answer(px.pixels, sys, e.question);
        } catch (const Error& err) {
            ++n_failed;
            write_out("  skipped: " + std::string(err.what()) + "\n");
            continue;
        }
        const bool match = trim(x.text) == trim(e.answer);
        ++n_run;
        n_match += match;
        vit_s += x.vit_seconds;
        prefill_s += x.gen.prefill_seconds;
        decode_s += x.gen.decode_seconds;
        prompt_tokens += x.gen.prompt_tokens;
        new_tokens += x.gen.tokens.size();
        write_out("  answer:   " + x.text + "\n  expected: " + e.answer +
                  "\n  exact match: " + (match ? "yes" : "no") + "\n");
        log_info("  ", speeds(x));
    }
    std::string summary = "exact match " + std::to_string(n_match) + "/" + std::to_string(n_run);
    if (n_run > 0) summary += " (" + fmt("%.1f", 100.0 * n_match / n_run) + " %)";
    if (n_failed > 0) summary += ", " + std::to_string(n_failed) + " item(s) skipped";
    write_out(summary + "\n");
    if (n_run > 0)
        write_out("speed: ViT " + fmt("%.3f", vit_s / n_run) + " s/item, prefill " +
                  fmt("%.3f", prefill_s / n_run) + " s/item (" +
                  fmt("%.0f", prefill_s > 0 ? prompt_tokens / prefill_s : 0) + " tok/s), decode " +
                  fmt("%.1f", decode_s > 0 ? new_tokens / decode_s : 0) + " tok/s (" +
                  std::to_string(new_tokens) + " tokens)\n");
    if (n_run == 0) fail(a.examples, ": no item could be run (", n_failed, " skipped)");
}

}  // namespace

void add_run(CLI::App& app) {
    auto* cmd = app.add_subcommand(
        "run",
        "Run a Lance task: chat, x2t_image, x2t_video (understanding); t2i, t2v, i2v, image_edit, "
        "video_edit (generation)");
    auto a = std::make_shared<RunArgs>();
    cmd->add_option("--task", a->task, "Task to run")
        ->check(CLI::IsMember(
            {"chat", "x2t_image", "x2t_video", "t2i", "t2v", "i2v", "image_edit", "video_edit"}))
        ->capture_default_str();
    cmd->add_option("-m,--model", a->model, "Model folder (original or AWQ)")->required();
    cmd->add_option("-p,--prompt", a->prompt,
                    "The user's message (x2t: the question; generation: the caption)");
    cmd->add_option("--system", a->system,
                    "System prompt (default: chat \"You are a helpful assistant.\", x2t the "
                    "task's instruction)");
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
    // --image, --video, --examples and --preset serve understanding and generation alike.
    auto gen = add_generation_options(cmd);
    cmd->callback([a, gen] {
        if (is_generation_task(a->task))
            return run_generation(*gen, a->task, a->model, a->prompt, a->seed);
        const MediaArgs m = media_args(*gen);
        a->image = m.image;
        a->video = m.video;
        a->examples = m.examples;
        a->preset = m.preset;
        if (a->task == "chat") {
            if (!a->image.empty() || !a->video.empty() || !a->examples.empty())
                fail(
                    "run: --image/--video/--examples need --task x2t_image, x2t_video or a "
                    "generation task");
            run_chat(*a);
        } else {
            run_x2t(*a);
        }
    });
}

}  // namespace lancet::cli
