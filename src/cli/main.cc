// Entry point of the `lancet` program: parses the subcommand and turns every Error into one line.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/thread_pool.h"
#include "io/temp_output.h"
#include "kernels/linear.h"
#include "kernels/ops.h"

namespace lancet::cli {
namespace {
DecoderOptions::LmHead g_lm_head = DecoderOptions::LmHead::Int4;
}
DecoderOptions::LmHead lm_head_option() { return g_lm_head; }
}  // namespace lancet::cli

int main(int argc, char** argv) {
    // Before any thread starts, so every thread inherits the blocked SIGINT/SIGTERM/SIGHUP and
    // only the cleanup thread receives them.
    lancet::install_interrupt_cleanup();
    CLI::App app{"lancet: quantize ByteDance's Lance to AWQ INT4 and run it natively"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "lancet 0.1.0");
    // Usage errors follow the one-line rule too (CLI11 would add a second "Run with --help" line).
    app.failure_message([](const CLI::App*, const CLI::Error& e) {
        return std::string("lancet: error: ") + e.what() + " (see --help)\n";
    });
    bool verbose = false, quiet = false;
    app.add_flag("-v,--verbose", verbose, "More output on stderr");
    app.add_flag("-q,--quiet", quiet, "Only errors on stderr");
    // An int, so "-1" is reported as out of range rather than wrapped to a huge size_t.
    int threads = 0;
    app.add_option("-t,--threads", threads, "Worker threads, caller included (default: all cores)")
        ->check(CLI::Range(0, 1024));
    // The default is `auto` by measurement (README, "Defaults from measurement"): W4A8 for the
    // GEMVs of decode (1.6x the f32 GEMV, +0.1% KL on the small synth's AWQ form) and, on CPUs with
    // AMX, bf16 tiles for prefill (1.4x W4A8 at pp512, 5x less KL); without AMX auto is W4A8.
    bool exact_activations = false;
    app.add_flag("--exact-activations", exact_activations,
                 "Exact f32 activations for INT4 weights and f32 attention (default: auto)");
    // bf16 activations for BF16 weights (and the VAE, its F32 weights then rounded to bf16 at
    // load, as Lance's bf16 autocast does). By default where they run on the AMX tiles (6-7.5x
    // vdpbf16ps; README, "BF16 weights with bf16 activations"), everywhere with this flag.
    bool bf16_activations = false;
    app.add_flag("--bf16-activations", bf16_activations,
                 "BF16 weights (and the VAE, its weights rounded to bf16) with activations "
                 "rounded to bf16: bf16 x bf16 dot products, f32 sums (default: auto, bf16 on "
                 "AMX tiles above 8 rows, f32 otherwise; $LANCET_BF16_ACT; exact f32 with "
                 "--exact-activations)");
    // One flag for the whole activation policy: f32 (= --exact-activations), int8 (the default
    // for INT4) or bf16 (INT4 weights dequantized to bf16 x bf16 activations, as Lance's PyTorch
    // AWQ recipe runs, and BF16 weights and the VAE as --bf16-activations: Lance's bf16 runtime;
    // README, "INT4 with bf16 activations").
    std::string activations;
    app.add_option("--activations", activations,
                   "Activations of INT4 (and BF16) weights: f32 (as --exact-activations), int8 "
                   "(W4A8) or bf16 (INT4 dequantized to bf16 x bf16 activations, "
                   "f32 sums; BF16 weights and the VAE as --bf16-activations) or auto (INT4: "
                   "bf16 on AMX above 8 rows, int8 otherwise). Default from $LANCET_ACT, else "
                   "auto")
        ->check(CLI::IsMember({"f32", "int8", "bf16", "auto"}));
    // The lm_head an INT4 checkpoint stores in BF16 runs as INT4 g64 by measurement (README,
    // "Defaults from measurement": +0.2% KL with W4A8 on the small synth's AWQ form).
    std::string lm_head = "int4";
    app.add_option("--lm-head", lm_head,
                   "lm_head of an INT4 checkpoint: int4 (quantized at load, g64, default) or "
                   "bf16 (as stored)")
        ->check(CLI::IsMember({"int4", "bf16"}));
    // auto by default: bf16 (Lance's own SDPA arithmetic) where it runs on the AMX tiles, f32
    // elsewhere, where bf16 would only be slower (README, "bf16 attention"). Exact activations
    // (--exact-activations, --activations f32) ask for exact arithmetic: f32 attention with them
    // unless --attention says otherwise.
    std::string attention;
    app.add_option("--attention", attention,
                   "Attention arithmetic: f32, bf16 (q, k, v and the probabilities rounded to "
                   "bf16, f32 softmax and sums, as Lance's bf16 SDPA; AMX tiles where present) or "
                   "auto (bf16 where it runs on AMX tiles, >= 16 query rows; f32 otherwise). "
                   "Default from $LANCET_ATTN, else auto (f32 with exact activations)")
        ->check(CLI::IsMember({"f32", "bf16", "auto"}));
    app.parse_complete_callback([&] {
        lancet::cli::g_lm_head = lm_head == "bf16" ? lancet::DecoderOptions::LmHead::Stored
                                                   : lancet::DecoderOptions::LmHead::Int4;
        if (verbose) lancet::log_level() = lancet::LogLevel::Debug;
        if (quiet) lancet::log_level() = lancet::LogLevel::Quiet;
        lancet::set_default_threads(static_cast<size_t>(threads));
        if (!activations.empty()) {
            if (exact_activations && activations != "f32")
                lancet::fail("--exact-activations and --activations ", activations,
                             " contradict each other");
            if (bf16_activations && activations == "f32")
                lancet::fail("--bf16-activations and --activations f32 contradict each other");
            exact_activations = activations == "f32";
            if (activations == "bf16") bf16_activations = true;
        }
        const char* env_act = std::getenv("LANCET_ACT");
        if (activations == "bf16")
            lancet::kernels::set_activation_mode(lancet::kernels::ActMode::Bf16);
        else if (activations == "int8")
            lancet::kernels::set_activation_mode(lancet::kernels::ActMode::Int8);
        else if (activations == "auto")
            lancet::kernels::set_activation_mode(lancet::kernels::ActMode::Auto);
        else if (exact_activations)
            lancet::kernels::set_activation_mode(lancet::kernels::ActMode::F32);
        else if (!env_act || !*env_act)
            lancet::kernels::set_activation_mode(lancet::kernels::ActMode::Auto);
        else
            (void)lancet::kernels::activation_mode();  // $LANCET_ACT decides; a bad value fails
        if (exact_activations && bf16_activations)
            lancet::fail("--exact-activations and --bf16-activations contradict each other");
        if (exact_activations)
            lancet::kernels::set_bf16_activation_mode(lancet::kernels::Bf16Act::F32);
        else if (bf16_activations)
            lancet::kernels::set_bf16_activation_mode(lancet::kernels::Bf16Act::Bf16);
        else if (const char* env = std::getenv("LANCET_BF16_ACT"); env && *env)
            (void)lancet::kernels::bf16_activation_mode();  // $LANCET_BF16_ACT; bad value fails
        else if (lancet::kernels::activation_mode() == lancet::kernels::ActMode::F32)
            lancet::kernels::set_bf16_activation_mode(lancet::kernels::Bf16Act::F32);
        else
            lancet::kernels::set_bf16_activation_mode(lancet::kernels::Bf16Act::Auto);
        if (attention == "bf16")
            lancet::kernels::set_attn_precision(lancet::kernels::AttnPrecision::Bf16);
        else if (attention == "auto")
            lancet::kernels::set_attn_precision(lancet::kernels::AttnPrecision::Auto);
        else if (attention == "f32")
            lancet::kernels::set_attn_precision(lancet::kernels::AttnPrecision::F32);
        else if (const char* env_attn = std::getenv("LANCET_ATTN"); env_attn && *env_attn)
            (void)lancet::kernels::attn_precision();  // $LANCET_ATTN decides; a bad value fails
        else
            lancet::kernels::set_attn_precision(lancet::kernels::activation_mode() ==
                                                        lancet::kernels::ActMode::F32
                                                    ? lancet::kernels::AttnPrecision::F32
                                                    : lancet::kernels::AttnPrecision::Auto);
    });

    lancet::cli::add_synth(app);
    lancet::cli::add_inspect(app);
    lancet::cli::add_demo(app);
    lancet::cli::add_tokenize(app);
    lancet::cli::add_bench(app);
    lancet::cli::add_run(app);
    lancet::cli::add_calibrate(app);
    lancet::cli::add_forward(app);
    lancet::cli::add_quantize(app);
    lancet::cli::add_stats(app);
    lancet::cli::add_perplexity(app);
    lancet::cli::add_preprocess(app);
    lancet::cli::add_vae(app);
    lancet::cli::add_sample(app);
    lancet::cli::add_compare(app);
    lancet::cli::add_serve(app);
    lancet::cli::add_batch(app);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 1;
    } catch (const lancet::Error& e) {
        lancet::hold_if_interrupted();  // an error caused by the cleanup is not the user's
        std::fprintf(stderr, "lancet: error: %s\n", e.what());
        return 1;
    } catch (const std::bad_alloc&) {
        lancet::hold_if_interrupted();
        std::fprintf(stderr, "lancet: error: out of memory\n");
        return 1;
    } catch (const std::exception& e) {
        lancet::hold_if_interrupted();
        std::fprintf(stderr, "lancet: error: %s\n", e.what());
        return 1;
    }
    lancet::hold_if_interrupted();  // the cleanup thread exits with 128 + signal
    return 0;
}
