// `lancet bench vae`: convolution throughput on the decoder's widest and narrowest stages against
// the GEMM rate of the same weight at n = 512, then a timed decode (and encode) with the FLOPs
// executed vs what computing the causal zero frames would have cost.
#include <stdlib.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli/bench_util.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/output_dir.h"
#include "model/wan_vae.h"
#include "model/wan_vae_synth.h"
#include "pipeline/vae_codec.h"

namespace lancet::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct BenchVaeOptions {
    std::string vae, preset = "small", dtype = "f32";
    int latent = 32;  // latent side of the timed decode (pixels: 16×)
    int conv_side =
        16;  // conv bench activation side: one frame of conv_side × 2·conv_side = 512 px
    int reps = 3;
    int64_t tile = 0, overlap = 4;  // also time a tiled decode and its error vs the untiled one
    bool convs_only = false;        // the conv3d vs GEMM table alone (seconds, not minutes)
};

struct Timing {
    double wall = 0, cpu = 0;
};

template <typename F>
Timing timed(F&& f) {
    const auto t0 = Clock::now();
    const double c0 = cpu_seconds();
    f();
    return {std::chrono::duration<double>(Clock::now() - t0).count(), cpu_seconds() - c0};
}

// Medians of `reps` samples of f and g taken in turns (f, g, f, g ...), so both see the same
// load; one warm-up call of each first.
template <typename F, typename G>
std::pair<Timing, Timing> median_pair(int reps, F&& f, G&& g) {
    std::vector<double> fw, fc, gw, gc;
    f();
    g();
    for (int r = 0; r < reps; ++r) {
        const Timing a = timed(f), b = timed(g);
        fw.push_back(a.wall), fc.push_back(a.cpu), gw.push_back(b.wall), gc.push_back(b.cpu);
    }
    auto med = [](std::vector<double>& v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    return {{med(fw), med(fc)}, {med(gw), med(gc)}};
}

void run_bench_vae(const BenchVaeOptions& o) {
    if (o.reps < 1 || o.latent < 1 || o.conv_side < 1)
        fail("bench vae: sizes and --reps must be >= 1");
    std::string path = o.vae;
    std::unique_ptr<std::filesystem::path> tmp;
    if (path.empty()) {
        // A synthetic VAE of the preset in a temporary folder.
        char tmpl[] = "/tmp/lancet-bench-vae-XXXXXX";
        if (!::mkdtemp(tmpl)) fail("bench vae: cannot create a temporary folder");
        tmp = std::make_unique<std::filesystem::path>(tmpl);
        path = (*tmp / "Wan2.2_VAE.pth").string();
        write_synth_wan_vae(path, wan_vae_synth_config(o.preset),
                            o.dtype == "bf16" ? DType::BF16 : DType::F32, 1);
    } else {
        path = resolve_vae_path(path);
    }
    struct Cleanup {
        std::filesystem::path* p;
        ~Cleanup() {
            std::error_code ec;
            if (p) std::filesystem::remove_all(*p, ec);
        }
    } cleanup{tmp.get()};

    WanVaeFile f(path);
    const WanVaeConfig& cfg = f.config();
    // Every measurement twice: exact f32 activations (the weights as stored), and bf16
    // activations with the weights rounded to bf16 at load (--bf16-activations, vdpbf16ps where
    // the CPU has it); the second reports its speed-up and its relative error against the first.
    wan_vae::Context ctx;
    ctx.ops = kernels::OpContext::defaults();
    ctx.ops.bf16_act = kernels::Bf16Act::F32;
    wan_vae::Context ctx16 = ctx;
    ctx16.ops.bf16_act = kernels::Bf16Act::Bf16;
    auto rel_l2 = [](const std::vector<float>& got, const std::vector<float>& ref) {
        double num = 0, den = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
            num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
            den += double(ref[i]) * ref[i];
        }
        return std::sqrt(num / std::max(den, 1e-300));
    };
    std::printf("VAE %s: widths %lld/%lld, %s, %zu threads\n\n", path.c_str(),
                static_cast<long long>(cfg.dim), static_cast<long long>(cfg.dec_dim),
                std::string(dtype_name(f.dtype())).c_str(), ctx.ops.threads().size());

    // 1. conv3d vs GEMM on the decoder's first and last stage widths.
    std::printf(
        "| stage conv | C | pixels | act | conv3d ms | conv3d GFLOP/s | GEMM GFLOP/s (n=512) | "
        "ratio | conv3d GFLOP/CPU-s | GEMM GFLOP/CPU-s | ratio (CPU) | speed-up | rel. L2 err "
        "vs f32 |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    const auto dd = cfg.dec_dims();
    for (const std::string& p :
         {std::string("decoder.upsamples.0.upsamples.1.residual.2"),
          "decoder.upsamples." + std::to_string(cfg.stages() - 1) + ".upsamples.1.residual.2"}) {
        const wan_vae::Conv conv32 = wan_vae::load_conv(f, p);
        f.set_bf16_weights(true);
        const wan_vae::Conv conv16 = wan_vae::load_conv(f, p);
        f.set_bf16_weights(false);
        const int64_t C = conv32.w.c_in, H = o.conv_side, W = 2 * o.conv_side;
        wan_vae::Frames x(1, H, W, C), cache(2, H, W, C), y32;
        Rng r(3);
        for (float& v : x.d) v = static_cast<float>(r.normal());
        for (float& v : cache.d) v = static_cast<float>(r.normal());
        // One temporal tap's weight [C, 9·C] as a GEMM on 512 rows: the product conv3d runs
        // three times per output frame.
        const int64_t n = 512, K = 9 * C;
        std::vector<float> a(static_cast<size_t>(n * K)),
            b(static_cast<size_t>(n * conv32.w.c_out));
        for (float& v : a) v = static_cast<float>(r.normal());
        const double flop = 2.0 * static_cast<double>(H * W) * static_cast<double>(conv32.w.c_out) *
                            static_cast<double>(conv32.w.c_in * 27);
        const double gemm_flop = 2.0 * static_cast<double>(n * K * conv32.w.c_out);
        double conv32_s = 0;
        for (int mode = 0; mode < 2; ++mode) {
            const wan_vae::Context& c = mode ? ctx16 : ctx;
            const wan_vae::Conv& conv = mode ? conv16 : conv32;
            wan_vae::Frames y;
            const auto [ct, gt] = median_pair(
                o.reps, [&] { conv.run(c, x, &cache, y); },
                [&] {
                    kernels::linear(c.ops, kernels::TensorRef::contiguous(a.data(), {n, K}),
                                    conv.w.w[0], conv.w.bias.data(),
                                    kernels::TensorRef::contiguous(b.data(), {n, conv.w.c_out}));
                });
            const double conv_s = ct.wall, gemm_s = gt.wall;
            if (mode == 0) {
                conv32_s = conv_s;
                y32 = y;
            }
            std::printf(
                "| %s | %lld | %lld | %s | %.2f | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f | %s | "
                "%s |\n",
                p.c_str(), static_cast<long long>(C), static_cast<long long>(H * W),
                mode ? "bf16" : "f32", conv_s * 1e3, flop / conv_s / 1e9, gemm_flop / gemm_s / 1e9,
                (flop / conv_s) / (gemm_flop / gemm_s), flop / ct.cpu / 1e9,
                gemm_flop / gt.cpu / 1e9, (flop / ct.cpu) / (gemm_flop / gt.cpu),
                mode ? fmt("%.2fx", conv32_s / conv_s).c_str() : "",
                mode ? fmt("%.2e", rel_l2(y.d, y32.d)).c_str() : "");
        }
    }

    if (o.convs_only) return;

    // 2. decode of one latent frame of latent × latent, and the encode of that image.
    const int64_t lh = o.latent, lw = o.latent;
    std::vector<float> z(static_cast<size_t>(cfg.z_dim * lh * lw));
    Rng r(9);
    for (float& v : z) v = static_cast<float>(r.normal());
    wan_vae::Decoder dec(f);
    wan_vae::FlopCount fl;
    ctx.flops = &fl;
    std::vector<float> img;
    // "module": what Lance's PyTorch module multiplies (zero frames, and the upsample 3×3 convs
    // at the upsampled size, which Lancet runs as 2×2 phase convs of the low-res input).
    auto report = [&](const char* what, const Timing& tm) {
        std::printf(
            "%s: %.2f s (%.1f CPU-s), %.1f GFLOP executed, %.1f GFLOP with the zero frames "
            "(%.2fx cut), %.1f GFLOP in Lance's module (%.2fx), %.1f GFLOP/s, %.1f GFLOP/CPU-s\n",
            what, tm.wall, tm.cpu, 2 * fl.executed / 1e9, 2 * fl.dense / 1e9,
            fl.dense / fl.executed, 2 * fl.module / 1e9, fl.module / fl.executed,
            2 * fl.executed / tm.wall / 1e9, 2 * fl.executed / tm.cpu / 1e9);
    };
    const Timing dec_t = timed([&] { img = wan_vae::decode_all(ctx, dec, z.data(), 1, lh, lw); });
    const double dec_s = dec_t.wall;
    std::printf("\n");
    report(("decode " + std::to_string(lh) + "x" + std::to_string(lw) + " latent -> " +
            std::to_string(lh * cfg.space_factor()) + "x" +
            std::to_string(lw * cfg.space_factor()) + " image")
               .c_str(),
           dec_t);
    if (o.tile > 0) {
        std::vector<float> tiled;
        const Timing tt = timed([&] {
            tiled = wan_vae::decode_tiled(ctx, dec, z.data(), 1, lh, lw, o.tile, o.overlap);
        });
        const double tile_s = tt.wall;
        double worst = 0, sum = 0;
        for (size_t i = 0; i < img.size(); ++i) {
            const double e = std::fabs(tiled[i] - img[i]);
            worst = std::max(worst, e);
            sum += e;
        }
        std::printf(
            "tiled decode (tiles of %lld, overlap %lld latent positions): %.2f s (%.1f CPU-s), "
            "vs untiled max |diff| %.3g, mean %.3g (pixels in [-1, 1])\n",
            static_cast<long long>(o.tile), static_cast<long long>(o.overlap), tile_s, tt.cpu,
            worst, sum / static_cast<double>(img.size()));
    }
    wan_vae::Encoder enc(f);
    fl = {};
    std::vector<float> lat;
    const Timing enc_t = timed([&] {
        lat = wan_vae::encode(ctx, enc, img.data(), 1, lh * cfg.space_factor(),
                              lw * cfg.space_factor());
    });
    const double enc_s = enc_t.wall;
    report("encode of that image", enc_t);

    // 3. The same decode and encode with bf16 activations (and weights rounded to bf16).
    f.set_bf16_weights(true);
    wan_vae::Decoder dec16(f);
    wan_vae::Encoder enc16(f);
    f.set_bf16_weights(false);
    ctx16.flops = nullptr;
    std::vector<float> img16;
    const Timing dec16_t =
        timed([&] { img16 = wan_vae::decode_all(ctx16, dec16, z.data(), 1, lh, lw); });
    const double dec16_s = dec16_t.wall;
    double worst = 0;
    for (size_t i = 0; i < img.size(); ++i)
        worst = std::max(worst, std::fabs(double(img16[i]) - img[i]));
    std::printf(
        "\nbf16 activations (weights rounded to bf16): decode %.2f s, %.1f CPU-s (%.2fx the "
        "f32 path by wall, %.2fx by CPU time), image vs f32: rel. L2 %.2e, max |diff| %.3g "
        "(pixels in [-1, 1])\n",
        dec16_s, dec16_t.cpu, dec_s / dec16_s, dec_t.cpu / dec16_t.cpu, rel_l2(img16, img), worst);
    std::vector<float> lat16;
    const Timing enc16_t = timed([&] {
        lat16 = wan_vae::encode(ctx16, enc16, img.data(), 1, lh * cfg.space_factor(),
                                lw * cfg.space_factor());
    });
    const double enc16_s = enc16_t.wall;
    std::printf(
        "bf16 activations: encode %.2f s, %.1f CPU-s (%.2fx the f32 path by wall, %.2fx by CPU "
        "time), latent vs f32: rel. L2 %.2e\n",
        enc16_s, enc16_t.cpu, enc_s / enc16_s, enc_t.cpu / enc16_t.cpu, rel_l2(lat16, lat));
}

}  // namespace

void add_bench_vae(CLI::App& bench) {
    auto o = std::make_shared<BenchVaeOptions>();
    CLI::App* v = bench.add_subcommand(
        "vae", "Time the VAE: conv3d vs GEMM rate, one decode and encode with FLOPs executed");
    v->fallthrough();
    v->add_option("--vae", o->vae, "Wan2.2_VAE.pth or model folder (default: synthetic --preset)");
    v->add_option("--preset", o->preset, "Synthetic VAE widths when no --vae: tiny, small, 3b")
        ->check(CLI::IsMember({"tiny", "small", "3b"}))
        ->capture_default_str();
    v->add_option("--dtype", o->dtype, "Synthetic weights: f32 or bf16")
        ->check(CLI::IsMember({"f32", "bf16"}))
        ->capture_default_str();
    v->add_option("--latent", o->latent, "Latent side of the timed decode (default 32 = 512 px)");
    v->add_option("--conv-side", o->conv_side,
                  "Conv bench frame: side x 2·side pixels (default 16: 512 pixels)");
    v->add_option("--tile", o->tile, "Also decode in tiles of N latent positions (0: no)");
    v->add_option("--tile-overlap", o->overlap, "Overlap of --tile (default 4)");
    v->add_option("--reps", o->reps, "Timed samples per conv cell; median (default 3)");
    v->add_flag("--convs-only", o->convs_only,
                "Only the conv3d vs GEMM table (no decode or encode)");
    v->callback([o] { run_bench_vae(*o); });
}

}  // namespace lancet::cli
