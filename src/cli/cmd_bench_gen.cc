// `lancet bench gen`: the cost of generation on the decoder. Prefills a t2i condition prefix
// into the two CFG caches, times the denoising steps of the size x size target block (each step:
// the noisy block of every active CFG branch against its cached prefix, no append; both branches
// in one stacked forward unless --no-cfg-batch), counts the
// FLOPs one such forward executes (linears of the gen path, attention over prefix + block, the
// latent bridge) and sets its rate against linear() at n = 512 on the gen expert's own gate
// weight measured in the same run: the GEMM rate `bench kernels` reports for that weight type.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "cli/bench_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "io/output_dir.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/lance_tensors.h"
#include "model/weight_load.h"
#include "pipeline/flow_sampler.h"
#include "pipeline/gen_tasks.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct BenchGenOptions {
    std::string model, json;
    int size = 512;  // target side in pixels (latent side size / 16)
    int steps = 3;   // timed denoising steps (all inside the CFG interval at the defaults)
    double cfg = 4.0;
    int reps = 3;               // GEMM reference samples
    bool no_cfg_batch = false;  // two forwards per CFG step (`run` stacks the branches)
};

// Multiply-adds of one noisy-block forward of n gen rows whose queries see `ctx_len` keys (the
// cached prefix plus the block itself): the gen path's seven linears per layer, q·k and p·v per
// head, and the latent bridge in and out (vae2llm, llm2vae).
double noisy_forward_macs(const LanceConfig& c, double n, double ctx_len) {
    const double H = c.hidden_size, I = c.intermediate_size, hd = c.head_dim();
    const double kv = c.num_key_value_heads * hd, heads = c.num_attention_heads;
    const double linears = H * H + 2 * H * kv + H * H + 3 * H * I;
    const double attention = 2 * heads * hd * ctx_len;
    return n * (c.num_hidden_layers * (linears + attention) + 2.0 * H * c.latent_channels);
}

void run_bench_gen(const BenchGenOptions& o) {
    if (o.size < 16 || o.size % 16 != 0 || o.size > 64 * 16)
        fail("bench gen: --size ", o.size, " must be a multiple of 16 in [16, 1024]");
    if (o.steps < 1 || o.steps > 30) fail("bench gen: --steps must be in [1, 30]");
    if (o.reps < 1) fail("bench gen: --reps must be >= 1");
    ThreadPool& pool = default_pool();
    const auto ck = LanceCheckpoint::open(o.model);
    const LanceConfig& cfg = ck->config();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(o.model);
    std::printf("lancet bench gen: %s\n", kernels::runtime_description(pool).c_str());

    DecoderOptions dopt;
    dopt.bf16_weights = true;  // as `run` holds them
    dopt.load_und = true;
    const auto t_load = Clock::now();
    LanceWeights weights(*ck, dopt);
    DecoderSession dec(weights);
    const double load_s = std::chrono::duration<double>(Clock::now() - t_load).count();

    GenTaskInput in;
    in.task = GenTask::T2I;
    in.caption =
        "A red fox standing in fresh snow at dawn, soft golden light, shallow depth of field.";
    in.lt = 1;
    in.lh = in.lw = o.size / 16;
    in.noise = flow_noise(42, static_cast<size_t>(gen_task_rows(in) * cfg.latent_channels));
    const GenSequence seq = build_gen_sequence(tok, cfg, in);
    const double n_gen = static_cast<double>(in.lh * in.lw);
    const double prefix = static_cast<double>(seq.batch.size()) - n_gen;

    FlowSamplerOptions fo;
    fo.steps = 30;  // Lance's schedule; only the first o.steps steps are run
    fo.cfg = o.cfg;
    fo.cfg_batch = !o.no_cfg_batch;
    // The sampler reports cumulative seconds after each step; its cancel check (before every
    // step) ends the run once o.steps steps are timed.
    std::vector<double> cumulative;
    fo.on_step = [&](int, int, double secs) { cumulative.push_back(secs); };
    // Seconds inside the linears, read before every step (and once after the last): a step's
    // share of them against the rest (attention, norms, RoPE, embeddings, copies).
    std::vector<double> lin_marks, cpu_marks;
    fo.cancelled = [&] {
        lin_marks.push_back(kernels::linear_seconds());
        cpu_marks.push_back(cpu_seconds());
        return cumulative.size() >= static_cast<size_t>(o.steps);
    };
    kernels::reset_linear_seconds();
    kernels::set_linear_timing(true);
    const auto t0 = Clock::now();
    try {
        flow_sample(dec, seq, fo);
    } catch (const SampleCancelled&) {
    }
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    kernels::set_linear_timing(false);
    std::vector<double> step_s;
    for (size_t k = 0; k < cumulative.size(); ++k)
        step_s.push_back(cumulative[k] - (k ? cumulative[k - 1] : 0.0));
    const double prefill_s = wall - cumulative.back();
    std::vector<double> sorted = step_s;
    std::sort(sorted.begin(), sorted.end());
    const double step = sorted[sorted.size() / 2];
    // The linears' seconds of the median step.
    const size_t median_k =
        static_cast<size_t>(std::find(step_s.begin(), step_s.end(), step) - step_s.begin());
    const double step_lin = lin_marks[median_k + 1] - lin_marks[median_k];
    const double step_cpu = cpu_marks[median_k + 1] - cpu_marks[median_k];
    const bool cfg_on = o.cfg != 1.0;  // the first steps (sigma near 1) are inside the interval
    const double forward_s = step / (cfg_on ? 2 : 1);
    const double macs = noisy_forward_macs(cfg, n_gen, prefix + n_gen);
    const double rate = 2 * macs / forward_s / 1e9;

    // The GEMM reference: linear() on x [512, hidden] with the gen expert's layer-0 gate weight.
    const PathNames names = path_names(0, true);
    const kernels::LinearWeight gw =
        load_linear(*ck, names[PathLinear::Gate], static_cast<size_t>(cfg.intermediate_size),
                    static_cast<size_t>(cfg.hidden_size), true);
    const kernels::OpContext ctx = kernels::OpContext::defaults(&pool);
    const size_t n = 512;
    std::vector<float> x(n * gw.in()), y(n * gw.out());
    Rng rng(7);
    for (float& e : x) e = rng.unit_float() - 0.5f;
    auto gemm_once = [&] {
        kernels::linear(
            ctx, kernels::TensorRef::contiguous(x.data(), {int64_t(n), int64_t(gw.in())}), gw,
            nullptr, kernels::TensorRef::contiguous(y.data(), {int64_t(n), int64_t(gw.out())}));
    };
    const double gemm = 2.0 * n * gw.out() * gw.in() / time_call(gemm_once, o.reps) / 1e9;

    std::printf("model %s: %d layers, hidden %d, MLP %d; gen weights %s; load %.1f s\n",
                o.model.c_str(), cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
                kernels::weight_type_name(gw.type()), load_s);
    std::printf("t2i %dx%d: %.0f target tokens against a %.0f-token prefix, CFG %.1f\n", o.size,
                o.size, n_gen, prefix, o.cfg);
    std::printf("prefill (both caches) %8.2f s\n", prefill_s);
    std::printf("denoising step        %8.2f s  (median of %zu; %s)\n", step, step_s.size(),
                !cfg_on           ? "one noisy-block forward"
                : !o.no_cfg_batch ? "both branches' noisy blocks in one stacked forward"
                                  : "two noisy-block forwards");
    std::printf("  CPU time            %8.2f s  (user + system, all threads; %.2f cores busy)\n",
                step_cpu, step_cpu / step);
    std::printf(
        "  in the linears      %8.2f s  (%.0f %%); attention, norms, RoPE and the rest %.2f s\n",
        step_lin, 100 * step_lin / step, step - step_lin);
    std::printf("noisy-block forward   %8.2f s  %.1f GFLOP, %.1f GFLOP/s%s\n", forward_s,
                2 * macs / 1e9, rate, cfg_on && !o.no_cfg_batch ? " (half the stacked step)" : "");
    std::printf(
        "GEMM reference: linear() n=%zu on the [%zu, %zu] %s gen gate weight: %.1f GFLOP/s; "
        "the denoising forward reaches %.2f of it\n",
        n, gw.out(), gw.in(), kernels::weight_type_name(gw.type()), gemm, rate / gemm);
    const int cfg_steps = 26;  // of Lance's 30 at shift 3.5 (0.4 < sigma <= 1)
    const double est = prefill_s + forward_s * (30 + cfg_steps);
    std::printf("30 steps at this rate: %.0f s (%d with CFG) + VAE decode; peak RSS %.0f MiB\n",
                est, cfg_steps, peak_rss_mib());
    if (!o.json.empty()) {
        nlohmann::json rec{{"bench", "gen"},
                           {"model", o.model},
                           {"size", o.size},
                           {"cfg_batch", !o.no_cfg_batch},
                           {"threads", pool.size()},
                           {"weights", kernels::weight_type_name(gw.type())},
                           {"prefix_tokens", prefix},
                           {"target_tokens", n_gen},
                           {"prefill_s", prefill_s},
                           {"step_s", step},
                           {"step_linear_s", step_lin},
                           {"step_cpu_s", step_cpu},
                           {"forward_s", forward_s},
                           {"forward_gflops", rate},
                           {"gemm_n512_gflops", gemm},
                           {"forward_vs_gemm", rate / gemm},
                           {"peak_rss_mib", peak_rss_mib()}};
        write_file_atomic(o.json, rec.dump() + "\n");
    }
}

}  // namespace

void add_bench_gen(CLI::App& bench) {
    auto o = std::make_shared<BenchGenOptions>();
    CLI::App* g = bench.add_subcommand(
        "gen", "Time t2i denoising steps (noisy block vs cached prefix) against the GEMM rate");
    g->fallthrough();
    g->add_option("--model", o->model, "Lance model folder (both experts)")->required();
    g->add_option("--size", o->size, "Target side in pixels, a multiple of 16 (default 512)");
    g->add_option("--steps", o->steps, "Denoising steps timed (default 3)");
    g->add_option("--cfg", o->cfg, "CFG scale (default 4.0; 1 = one branch)");
    g->add_option("--reps", o->reps, "GEMM reference samples; median (default 3)");
    g->add_option("--json", o->json, "Also write one JSON record to this file");
    g->add_flag("--no-cfg-batch", o->no_cfg_batch,
                "Run the two CFG branches as two forwards instead of one stacked forward");
    g->callback([o] { run_bench_gen(*o); });
}

}  // namespace lancet::cli
