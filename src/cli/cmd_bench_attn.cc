// `lancet bench attention`: the op layer's attention() alone on the shapes Lance runs — the ViT's
// windows (n = 576 tokens in windows of 64) and full-attention blocks (n = 2304) at 16 heads ×
// 80 (q, k, v strided views of the qkv rows, as the ViT passes them), and decoder prefill (n = 512
// causal, 16 query / 2 kv heads × 128), the generation step's noisy block (n = 1024 against a
// 100-token prefix, 16 / 2 heads × 128, no mask inside) plus one decode row against a 512-token
// cache — in GFLOP/s against the f32 FMA probe of the same run, in each attention precision
// (--precision; bf16 also against the AMX bf16 peak where the ISA has tiles).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cli/bench_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "kernels/dispatch.h"
#include "kernels/ops.h"
#include "kernels/probe.h"

namespace lancet::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct AttnShape {
    const char* name;
    size_t n, n_cached, heads, kv_heads, hd;
    kernels::AttnMask::Kind kind;
    size_t window;  // Segments: tokens per window
};

const AttnShape kAttnShapes[] = {
    {"vit-windows", 576, 0, 16, 16, 80, kernels::AttnMask::Kind::Segments, 64},
    {"vit-full", 2304, 0, 16, 16, 80, kernels::AttnMask::Kind::None, 0},
    {"prefill-causal", 512, 0, 16, 2, 128, kernels::AttnMask::Kind::Causal, 0},
    {"gen-block", 1024, 100, 16, 2, 128, kernels::AttnMask::Kind::None, 0},
    {"decode-row", 1, 512, 16, 2, 128, kernels::AttnMask::Kind::Causal, 0},
};

struct BenchAttnOptions {
    std::vector<std::string> shapes;
    std::vector<std::string> precisions = {"f32", "bf16"};
    int reps = 3;
};

// Multiply-adds ×2 over the visible (query, key) pairs: q·k and p·v, hd each.
double attention_flops(const AttnShape& s) {
    double pairs = 0;
    switch (s.kind) {
        case kernels::AttnMask::Kind::None:
            pairs = double(s.n) * double(s.n_cached + s.n);
            break;
        case kernels::AttnMask::Kind::Causal:
            for (size_t i = 0; i < s.n; ++i) pairs += double(s.n_cached + i + 1);
            break;
        case kernels::AttnMask::Kind::Segments:
            for (size_t b = 0; b < s.n; b += s.window) {
                const double w = double(std::min(s.window, s.n - b));
                pairs += w * w;
            }
            break;
        case kernels::AttnMask::Kind::Splits:
            break;
    }
    return pairs * double(s.heads) * double(s.hd) * 4.0;
}

// f32 FMA rate of one core per CPU second (the probe on the calling thread), GFLOP/s.
double fma_per_cpu_second() {
    const size_t iters = size_t{4} << 20;
    std::vector<double> rates;
    for (int r = 0; r < 3; ++r) {
        const double c0 = cpu_seconds();
        const double flops = kernels::probe_fma(iters, 1.0f);
        rates.push_back(flops / (cpu_seconds() - c0) / 1e9);
    }
    return median(rates);
}

void run_bench_attention(const BenchAttnOptions& o) {
    if (o.reps < 1) fail("bench attention: --reps must be >= 1");
    std::vector<const AttnShape*> shapes;
    for (const auto& key : o.shapes) {
        const AttnShape* hit = nullptr;
        for (const auto& s : kAttnShapes)
            if (key == s.name) hit = &s;
        if (!hit)
            fail("bench attention: unknown shape '", key,
                 "' (expected vit-windows, vit-full, prefill-causal, gen-block or decode-row)");
        shapes.push_back(hit);
    }
    if (shapes.empty())
        for (const auto& s : kAttnShapes) shapes.push_back(&s);

    std::vector<kernels::AttnPrecision> precs;
    for (const auto& p : o.precisions) {
        if (p != "f32" && p != "bf16")
            fail("bench attention: unknown precision '", p, "' (expected f32 or bf16)");
        precs.push_back(p == "bf16" ? kernels::AttnPrecision::Bf16 : kernels::AttnPrecision::F32);
    }

    ThreadPool& pool = default_pool();
    const kernels::OpContext ctx0 = kernels::OpContext::defaults(&pool);
    std::printf("%s\n", kernels::runtime_description(pool).c_str());
    const double peak = fma_peak_gflops(pool);
    const double core = fma_per_cpu_second();
    const bool amx = ctx0.isa == kernels::Isa::Amx;
    const double amx_bf16 = amx ? amx_bf16_peak_gflops(pool) : 0.0;
    std::printf("f32 FMA probe: %.1f GFLOP/s (all threads, wall), %.1f GFLOP per CPU second\n",
                peak, core);
    if (amx)
        std::printf("AMX bf16 peak: %.1f GFLOP/s (all threads, the TDPBF16PS probe)\n", amx_bf16);
    std::printf("\n%-15s %4s %5s %6s %6s %4s %8s %9s %8s %7s %9s %8s%s\n", "shape", "prec", "n",
                "cache", "heads", "hd", "GFLOP", "ms", "GFLOP/s", "of FMA", "GF/cpu-s", "of core",
                amx ? "  of AMX" : "");
    for (const AttnShape* s : shapes)
        for (const kernels::AttnPrecision prec : precs) {
            kernels::OpContext ctx = ctx0;
            ctx.attn = prec;
            const size_t keys = s->n_cached + s->n;
            // The ViT's layout: q, k and v are strided views of the qkv linear's output rows
            // [n, 3·heads·hd] (rows 3·D apart); the decoder's: q rows [n, heads, hd], k and v a
            // cache [kv_heads, keys, hd].
            const bool vit = s->kv_heads == s->heads && s->n_cached == 0;
            const size_t D = s->heads * s->hd, kvd = s->kv_heads * s->hd;
            std::vector<float> q(vit ? s->n * 3 * D : s->n * D), kc(vit ? 0 : kvd * keys),
                vc(kc.size()), out(s->n * D);
            Rng rng(7);
            for (auto* buf : {&q, &kc, &vc})
                for (float& x : *buf) x = static_cast<float>(rng.normal());
            const auto I = [](size_t x) { return static_cast<int64_t>(x); };
            const auto view = [](float* p, std::array<int64_t, 3> shape,
                                 std::array<int64_t, 3> stride) {
                kernels::TensorRef t;
                t.ndim = 3;
                std::copy(shape.begin(), shape.end(), t.shape.begin());
                std::copy(stride.begin(), stride.end(), t.stride.begin());
                t.data = p;
                return t;
            };
            const int64_t row = I(vit ? 3 * D : D);
            const auto qr = view(q.data(), {I(s->n), I(s->heads), I(s->hd)}, {row, I(s->hd), 1});
            const auto kr =
                vit ? view(q.data() + D, {I(s->heads), I(s->n), I(s->hd)}, {I(s->hd), row, 1})
                    : view(kc.data(), {I(s->kv_heads), I(keys), I(s->hd)},
                           {I(keys * s->hd), I(s->hd), 1});
            const auto vr =
                vit ? view(q.data() + 2 * D, {I(s->heads), I(s->n), I(s->hd)}, {I(s->hd), row, 1})
                    : view(vc.data(), {I(s->kv_heads), I(keys), I(s->hd)},
                           {I(keys * s->hd), I(s->hd), 1});
            const auto outr =
                kernels::TensorRef::contiguous(out.data(), {I(s->n), I(s->heads), I(s->hd)});
            std::vector<int32_t> cu;
            kernels::AttnMask mask;
            mask.kind = s->kind;
            mask.n_cached = s->n_cached;
            if (s->kind == kernels::AttnMask::Kind::Segments) {
                for (size_t b = 0; b < s->n; b += s->window) cu.push_back(static_cast<int32_t>(b));
                cu.push_back(static_cast<int32_t>(s->n));
                mask.cu_seqlens = cu.data();
                mask.n_segments = cu.size() - 1;
            }
            kernels::AttentionScratch scratch;
            // Enough calls per sample that each takes ~0.1 s or more.
            const auto call = [&] {
                kernels::attention(ctx, qr, nullptr, kr, vr, mask, 0.0f, outr, scratch);
            };
            auto t0 = Clock::now();
            call();
            const double once = std::chrono::duration<double>(Clock::now() - t0).count();
            const int calls = std::max(1, static_cast<int>(0.1 / std::max(once, 1e-6)));
            std::vector<double> sec, cpu;
            for (int r = 0; r < o.reps; ++r) {
                t0 = Clock::now();
                const double c0 = cpu_seconds();
                for (int c = 0; c < calls; ++c) call();
                cpu.push_back((cpu_seconds() - c0) / calls);
                sec.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / calls);
            }
            const double t = median(sec), tc = median(cpu), gf = attention_flops(*s) / 1e9;
            std::printf("%-15s %4s %5zu %6zu %3zu/%-2zu %4zu %8.3f %9.3f %8.1f %7.2f %9.1f %8.2f",
                        s->name, kernels::attn_precision_name(prec), s->n, s->n_cached, s->heads,
                        s->kv_heads, s->hd, gf, t * 1e3, gf / t, gf / t / peak, gf / tc,
                        gf / tc / core);
            if (amx && prec == kernels::AttnPrecision::Bf16)
                std::printf("  %7.3f", gf / t / amx_bf16);
            std::printf("\n");
        }
    std::printf(
        "\nGFLOP = 4·hd per visible (query, key) pair and head (q·k and p·v); ms = median call; "
        "of FMA = GFLOP/s ÷ the f32 FMA probe; GF/cpu-s = GFLOP per CPU second of all threads, of "
        "core = that ÷ one core's probe per CPU second (the fraction of the FMA peak while "
        "running, robust to a busy machine); of AMX = bf16 GFLOP/s ÷ the AMX bf16 peak.\n");
}

}  // namespace

void add_bench_attention(CLI::App& bench) {
    auto o = std::make_shared<BenchAttnOptions>();
    CLI::App* c = bench.add_subcommand(
        "attention", "Time attention() on the ViT's and the decoder's shapes vs the FMA probe");
    c->fallthrough();
    c->add_option("--shapes", o->shapes,
                  "vit-windows, vit-full, prefill-causal, gen-block, decode-row (default all)")
        ->delimiter(',');
    c->add_option("--precision", o->precisions,
                  "Attention precisions to time: f32, bf16 (default both)")
        ->delimiter(',');
    c->add_option("--reps", o->reps, "Timed samples per shape; the median is reported (default 3)");
    c->callback([o] { run_bench_attention(*o); });
}

}  // namespace lancet::cli
