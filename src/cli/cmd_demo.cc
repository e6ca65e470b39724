// `lancet demo`: the built-in end-to-end run on a tiny synthetic checkpoint: synthesize, calibrate,
// quantize (RTN and AWQ), compare both with the original (perplexity, KL, top-1), chat, and
// generate an image and a short clip.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/generate.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/synth.h"
#include "pipeline/calibrate.h"
#include "pipeline/perplexity.h"
#include "pipeline/quantize.h"
#include "pipeline/text_generation.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::cli {

namespace fs = std::filesystem;

namespace {

// Calibration prompts and evaluation text ship inside the binary, so the demo needs no files.
const char* kPrompts[] = {
    "Describe a quiet harbour at dawn, with fishing boats and gulls.",
    "What is the capital of France, and why is it famous?",
    "Explain in two sentences how a rainbow forms.",
    "A cat holds a poster with rainbow text \"STOP\".",
    "Write a haiku about snow falling on a city at night.",
    "List three uses of a paperclip that are not holding paper.",
    "Translate 'good morning' into Spanish, French and German.",
    "Summarise the plot of a heist movie in one paragraph.",
};
const char* kEvalText =
    "The river wound through the valley, past orchards heavy with fruit and villages whose bells "
    "rang at noon. Travellers who followed its banks for a week would reach the sea, where the "
    "water turned from green to grey and the wind smelled of salt. In the old days, merchants "
    "carried wool and wine downstream on flat boats, returning with spices, glass and news of "
    "distant wars. Today the boats carry tourists, and the mills that once ground wheat have "
    "become museums, cafes and small hotels. Yet in the early morning, when mist hangs over the "
    "water and the only sound is a heron lifting off the shallows, the valley feels much as it "
    "must have felt a thousand years ago. 1, 2, 3: numbers, punctuation; and code like f(x) = x*x.";

void run_demo(const std::string& dir) {
    std::error_code ec;
    // The demo folder is ours to replace, but only when it carries our marker.
    if (fs::exists(dir, ec) && !fs::exists(fs::path(dir) / ".lancet-demo", ec))
        fail(dir, ": exists and was not made by `lancet demo`; pick another --dir");
    fs::create_directories(dir, ec);
    if (ec) fail(dir, ": cannot create: ", ec.message());
    write_file_atomic((fs::path(dir) / ".lancet-demo").string(), "lancet demo folder\n");
    const std::string model = (fs::path(dir) / "tiny").string();
    const std::string prompts = (fs::path(dir) / "prompts.txt").string();
    const std::string stats = (fs::path(dir) / "stats.safetensors").string();
    const std::string rtn = (fs::path(dir) / "tiny-rtn").string();
    const std::string awq = (fs::path(dir) / "tiny-awq").string();

    std::printf("[1/6] synth: tiny Lance_3B_Video-layout checkpoint with outlier channels -> %s\n",
                model.c_str());
    SynthOptions so;
    so.preset = "tiny";
    so.out = model;
    so.force = true;
    synth_checkpoint(so);

    std::printf(
        "[2/6] calibrate: %zu prompts through the decoder (und path, and gen path on noisy "
        "latents) -> %s\n",
        std::size(kPrompts), stats.c_str());
    std::string lines;
    for (const char* p : kPrompts) lines += std::string(p) + "\n";
    write_file_atomic(prompts, lines);
    CalibrateOptions co;
    co.model = model;
    co.prompts = {prompts};
    co.out = stats;
    co.latent_hw = 8;
    calibrate(co);

    std::printf("[3/6] quantize: RTN (the seed's baseline) and AWQ, group size 64\n");
    QuantizeOptions qo;
    qo.src = model;
    qo.force = true;
    qo.progress = false;
    qo.method = "rtn";
    qo.out = rtn;
    quantize_checkpoint(qo);
    qo.method = "awq";
    qo.stats = stats;
    qo.out = awq;
    std::printf("%s", report_table(quantize_checkpoint(qo)).c_str());

    std::printf(
        "[4/6] perplexity of the original, RTN and AWQ on built-in text (KL vs original)\n");
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(model);
    auto ck_o = LanceCheckpoint::open(model), ck_r = LanceCheckpoint::open(rtn),
         ck_a = LanceCheckpoint::open(awq);
    DecoderOptions dopt;
    dopt.lm_head = lm_head_option();
    dopt.load_gen = false;  // text only: the und expert alone
    dopt.logits_limit = static_cast<int64_t>(tok.size());
    const LanceWeights w_o(*ck_o, dopt), w_r(*ck_r, dopt), w_a(*ck_a, dopt);
    DecoderSession d_o(w_o), d_r(w_r), d_a(w_a);
    PerplexityOptions po;
    po.ctx = 256;
    po.vocab_limit = dopt.logits_limit;
    const PerplexityResult pr = evaluate_perplexity({&d_o, &d_r, &d_a}, tok.encode(kEvalText), po);
    const char* names[] = {"original F32", "RTN int4 g64", "AWQ int4 g64"};
    std::printf(
        "  | model | PPL | mean KL vs original | top-1 agreement |\n  |---|---:|---:|---:|\n");
    for (size_t i = 0; i < pr.models.size(); ++i) {
        const ModelScore& m = pr.models[i];
        if (i == 0)
            std::printf("  | %s | %.2f | - | - |\n", names[i], m.ppl);
        else
            std::printf("  | %s | %.2f | %.4f | %.3f |\n", names[i], m.ppl, m.mean_kl,
                        m.top1_agree);
    }

    std::printf("[5/6] chat with the AWQ model (greedy, 24 tokens; a random model babbles):\n  ");
    const std::string text = render_chat(kDefaultSystemPrompt, {{"user", "Hello! Who are you?"}});
    const auto ids32 = tok.encode(text);
    GenerateOptions g;
    g.max_new_tokens = 24;
    g.stop_ids = {tok.special_id("<|im_end|>")};
    StreamDecoder stream(tok);
    const GenerateResult r = generate_text(
        d_a, ck_a->config(), std::vector<int64_t>(ids32.begin(), ids32.end()), g, [&](int32_t id) {
            const std::string piece = stream.push(id);
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            return true;
        });
    const std::string tail = stream.finish();
    std::printf("%s\n  (%zu prompt tokens, %zu new tokens, decode %.0f tok/s)\n", tail.c_str(),
                r.prompt_tokens, r.tokens.size(),
                r.decode_seconds > 0 ? r.tokens.size() / r.decode_seconds : 0.0);
    const std::string png = (fs::path(dir) / "t2i.png").string(),
                      mp4 = (fs::path(dir) / "t2v.mp4").string();
    std::printf(
        "[6/6] generate with the AWQ model: a 64x64 image and a 5-frame 32x32 clip (10 "
        "steps, CFG 4; a random model paints noise) -> %s, %s\n",
        png.c_str(), mp4.c_str());
    std::fflush(stdout);
    demo_generate(awq, model, png, mp4);
    std::printf("demo done: the models are in %s (try `lancet inspect %s`)\n", dir.c_str(),
                awq.c_str());
}

}  // namespace

void add_demo(CLI::App& app) {
    auto* cmd =
        app.add_subcommand("demo", "Run the built-in end-to-end demo on a tiny synthetic model");
    auto dir = std::make_shared<std::string>("lancet-demo");
    cmd->add_option("--dir", *dir, "Working folder for the demo's files")->capture_default_str();
    cmd->callback([dir] { run_demo(*dir); });
}

}  // namespace lancet::cli
