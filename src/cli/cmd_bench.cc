// `lancet bench`: `kernels` times the fused linear kernels on Lance's shapes against the machine's
// streaming-read and FMA limits and against the naive dequantize-then-bf16 path; `decode` times
// prefill and greedy decoding of whole models against the same read-bandwidth roofline; `vision`
// times the ViT forward, split into linears and attention, against the GEMM rate of its weights;
// `awq` times the AWQ search (scales, then clipping) on one decoder layer's linears at Lance's
// sizes.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/bench_util.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/log.h"
#include "core/numeric.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "kernels/dispatch.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "kernels/probe.h"
#include "model/decoder.h"
#include "model/lance_checkpoint.h"
#include "model/vit.h"
#include "pipeline/decode_bench.h"
#include "pipeline/understanding.h"
#include "quant/act_stats.h"
#include "quant/awq.h"
#include "quant/awq_synth.h"
#include "quant/fusion.h"
#include "tokenizer/qwen2_tokenizer.h"

namespace lancet::cli {
namespace {

using kernels::LinearWeight;
using kernels::WeightType;
using Clock = std::chrono::steady_clock;

struct BenchShape {
    const char* name;  // the Lance linears that have this shape
    size_t out, in;    // out: all parts together
    // Fused rows: the outputs of the weights one call runs together, as the decoder calls
    // linear_same_input (q/k/v of one x); empty for a single weight.
    std::vector<size_t> parts = {};
};

// Lance's decoder linears (both experts share them) and the lm_head, as [out, in]; then the
// decoder's fused calls (a row per call as decode runs it, labelled "fused").
const BenchShape kShapes[] = {
    {"q_proj/o_proj", 2048, 2048},
    {"k_proj/v_proj", 256, 2048},
    {"gate_proj/up_proj", 11008, 2048},
    {"down_proj", 2048, 11008},
    {"lm_head", 151936, 2048},
    {"q+k+v fused", 2560, 2048, {2048, 256, 256}},
    {"gate+up fused", 22016, 2048, {11008, 11008}},
};

const BenchShape& shape_by_key(const std::string& key) {
    static const std::map<std::string, int> keys = {
        {"qo", 0},        {"q_proj", 0},  {"o_proj", 0},    {"kv", 1},          {"k_proj", 1},
        {"v_proj", 1},    {"gateup", 2},  {"gate_proj", 2}, {"up_proj", 2},     {"down", 3},
        {"down_proj", 3}, {"lm_head", 4}, {"qkv", 5},       {"gateup-fused", 6}};
    auto it = keys.find(key);
    if (it == keys.end())
        fail("bench kernels: unknown shape '", key,
             "' (expected qo, kv, gateup, down, lm_head, qkv or gateup-fused)");
    return kShapes[it->second];
}

WeightType type_by_key(const std::string& key) {
    if (key == "int4" || key == "q4") return WeightType::Q4;
    if (key == "bf16") return WeightType::BF16;
    if (key == "f32") return WeightType::F32;
    if (key == "int5") return WeightType::Int5;
    if (key == "nvfp4") return WeightType::Nvfp4;
    fail("bench kernels: unknown weight type '", key,
         "' (expected int4, int5, nvfp4, bf16 or f32)");
}

// Uniform in [lo, hi) from the seeded stream: fast, so lm_head-sized weights take well under a
// second.
float uniform(Rng& rng, float lo, float hi) { return lo + (hi - lo) * rng.unit_float(); }

LinearWeight random_weight(WeightType type, size_t out, size_t in, size_t gs, uint64_t seed) {
    Rng rng(seed);
    switch (type) {
        case WeightType::F32: {
            std::vector<float> w(out * in);
            for (auto& v : w) v = uniform(rng, -0.05f, 0.05f);
            return LinearWeight::from_f32(w.data(), out, in);
        }
        case WeightType::BF16: {
            std::vector<uint16_t> w(out * in);
            for (auto& v : w) v = f32_to_bf16(uniform(rng, -0.05f, 0.05f));
            return LinearWeight::from_bf16(w.data(), out, in);
        }
        case WeightType::Q4: {
            if (gs == 0 || in % gs != 0)
                fail("bench kernels: --group-size ", gs, " does not divide in=", in);
            std::vector<uint8_t> q(out * in / 2), z(out * (in / gs));
            std::vector<uint16_t> s(out * (in / gs));
            for (auto& v : q) v = uint8_t(rng.next_u64());
            for (auto& v : z) v = uint8_t(rng.next_u64() & 15);
            for (auto& v : s) v = f32_to_bf16(uniform(rng, 0.001f, 0.01f));
            return LinearWeight::from_awq_int4(q.data(), s.data(), z.data(), out, in, gs);
        }
        case WeightType::Int5: {
            if (gs == 0 || in % gs != 0)
                fail("bench kernels: --group-size ", gs, " does not divide in=", in);
            std::vector<uint8_t> q(out * in), z(out * (in / gs));
            std::vector<uint16_t> s(out * (in / gs));
            for (auto& v : q) v = uint8_t(rng.next_u64() & 31);
            for (auto& v : z) v = uint8_t(rng.next_u64() & 31);
            for (auto& v : s) v = f32_to_bf16(uniform(rng, 0.0005f, 0.005f));
            return LinearWeight::from_awq_int5(q.data(), s.data(), z.data(), out, in, gs);
        }
        case WeightType::Nvfp4: {
            std::vector<uint8_t> q(out * in / 2);
            std::vector<uint16_t> s(out * (in / kernels::kNvfp4Block));
            for (auto& v : q) v = uint8_t(rng.next_u64());
            for (auto& v : s) v = f32_to_bf16(uniform(rng, 0.001f, 0.01f));
            return LinearWeight::from_nvfp4(q.data(), s.data(), out, in);
        }
    }
    fail("bench kernels: bad weight type");
}

// Bytes of weight copies --cold cycles through: twice the last-level cache (servers report
// hundreds of MiB), at least 192 MiB.
size_t cold_bytes() {
    const long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return std::max<size_t>(size_t{192} << 20, llc > 0 ? 2 * size_t(llc) : 0);
}

// time_call for several functions at once, with the samples taken round-robin (rep 1 of each, then
// rep 2, ...), so that a load change on a shared machine hits every column alike and the ratios
// between them hold within one run.
std::vector<double> time_calls_interleaved(const std::vector<std::function<void()>>& fns,
                                           int reps) {
    std::vector<int> calls;
    for (const auto& f : fns) {
        const auto t0 = Clock::now();
        f();  // warm-up: page faults, caches, pool wake-up
        const double once = std::chrono::duration<double>(Clock::now() - t0).count();
        calls.push_back(std::clamp(int(2e-3 / std::max(once, 1e-7)), 1, 1000));
    }
    std::vector<std::vector<double>> samples(fns.size());
    for (int r = 0; r < reps; ++r)
        for (size_t i = 0; i < fns.size(); ++i) {
            const auto t0 = Clock::now();
            for (int c = 0; c < calls[i]; ++c) fns[i]();
            samples[i].push_back(std::chrono::duration<double>(Clock::now() - t0).count() /
                                 calls[i]);
        }
    std::vector<double> med;
    for (auto& v : samples) med.push_back(median(v));
    return med;
}

// Streaming read bandwidth of all pool threads over a buffer far larger than the LLC, on huge
// pages, in GB/s (median of passes).
double measure_read_bandwidth(ThreadPool& pool, int reps, size_t mib) {
    const size_t bytes = mib << 20;
    AlignedBuffer buf(bytes);
    float* p = buf.as<float>();
    const size_t n = bytes / sizeof(float);
    pool.parallel_for(n / 1024, [&](size_t b, size_t e) {
        for (size_t i = b * 1024; i < e * 1024; ++i) p[i] = float(i & 7);
    });
    volatile float sink = 0;
    std::vector<double> gbps;
    for (int r = 0; r < std::max(reps, 5); ++r) {
        const auto t0 = Clock::now();
        pool.parallel_for(n / 1024, [&](size_t b, size_t e) {
            sink = sink + kernels::probe_read(p + b * 1024, (e - b) * 1024);
        });
        gbps.push_back(bytes / std::chrono::duration<double>(Clock::now() - t0).count() / 1e9);
    }
    return median(gbps);
}

struct Peaks {
    double fma_gflops, int8_gops, bf16_gflops;  // bf16: 0 when the ISA has no bf16 dot
    double amx_int8_gops, amx_bf16_gflops;      // 0 unless the active ISA is amx
};

Peaks measure_peaks(ThreadPool& pool) {
    Peaks p;
    p.fma_gflops = fma_peak_gflops(pool);
    p.int8_gops =
        measure_peak(pool, [](size_t it, size_t t) { return kernels::probe_int8(it, 1 + int(t)); });
    p.bf16_gflops = measure_peak(
        pool, [](size_t it, size_t t) { return kernels::probe_bf16(it, 1.0f + float(t)); });
    // One TDPBSUD does 64x the work of one vpdpbusd: fewer iterations for the same duration.
    p.amx_int8_gops = measure_peak(
        pool, [](size_t it, size_t t) { return kernels::probe_amx_int8(it / 16, 1 + int(t)); });
    p.amx_bf16_gflops = amx_bf16_peak_gflops(pool);
    return p;
}

struct Options {
    std::vector<std::string> shapes;
    std::vector<size_t> ns = {1, 4, 16, 128, 512};
    std::vector<std::string> types = {"int4", "bf16"};
    // int8: also time int4 weights with int8 activations (W4A8); bf16: bf16 weights with bf16
    // activations (and on the amx ISA the AVX-512 vdpbf16ps kernel beside the tiles).
    std::vector<std::string> act = {"int8"};
    size_t group_size = 64;
    int reps = 5;
    bool quick = false;
    bool no_naive = false;
    bool cold = false;    // cycle through weight copies totalling >> LLC
    size_t cold_mib = 0;  // their total, MiB (0: cold_bytes())
    std::string json;
    size_t bandwidth_mib = 1024;
};

struct Cell {
    double ms = NAN, gflops = NAN, gbps = NAN;
};

// One timed column group: a weight type, its activations, and the ISA it runs on.
struct Variant {
    WeightType type;
    bool w4a8;
    std::string label;  // "int4-f32", "int4-w4a8", "int4-w4a8-vnni", "bf16", "bf16-bf16act", "f32"
    bool vnni = false;  // on the AVX-512 tier although the active ISA is amx
    bool bf16 = false;  // bf16 activations (Bf16Act::Bf16 for BF16 weights)
};

void write_json_atomically(const std::string& path, const nlohmann::json& records) {
    std::string text;
    for (const auto& r : records) text += r.dump() + "\n";
    write_file_atomic(path, text);
}

void run_kernels_bench(Options opt) {
    ThreadPool& pool = default_pool();
    // The int4-f32 columns time exact activations through linear() whatever the default is; the
    // W4A8 columns call linear_w4a8 explicitly (--act int8).
    kernels::set_activation_mode(kernels::ActMode::F32);
    if (opt.reps < 1) fail("bench kernels: --reps must be >= 1");
    if (opt.quick) {
        opt.reps = std::min(opt.reps, 3);
        if (opt.shapes.empty()) opt.shapes = {"qo", "kv", "gateup", "down"};
    }
    if (opt.shapes.empty()) opt.shapes = {"qo", "kv", "gateup", "down", "lm_head"};
    std::vector<const BenchShape*> shapes;
    for (const auto& s : opt.shapes) shapes.push_back(&shape_by_key(s));
    std::vector<WeightType> types;
    for (const auto& t : opt.types) types.push_back(type_by_key(t));
    bool act_int8 = false, act_bf16 = false;
    for (const std::string& a : opt.act) {
        if (a == "int8")
            act_int8 = true;
        else if (a == "bf16")
            act_bf16 = true;
        else if (a != "f32")
            fail("bench kernels: unknown --act '", a, "' (expected f32, int8 or bf16)");
    }
    const bool amx = kernels::active_isa() == kernels::Isa::Amx;
    std::vector<Variant> variants;
    for (WeightType t : types) {
        if (t == WeightType::BF16) {
            variants.push_back({t, false, "bf16"});
            if (act_bf16) variants.push_back({t, false, "bf16-bf16act", false, true});
            // On the amx tier bf16-bf16act runs the tiles (n >= 32); vdpbf16ps beside it.
            if (act_bf16 && amx) variants.push_back({t, false, "bf16-bf16act-vdp", true, true});
            continue;
        }
        if (t != WeightType::Q4) {
            variants.push_back({t, false, kernels::weight_type_name(t)});
            continue;
        }
        variants.push_back({t, false, "int4-f32"});
        if (act_int8) variants.push_back({t, true, "int4-w4a8"});
        // On the amx tier int4-w4a8 runs the tiles (n >= 64); the AVX-512 VNNI kernel beside it.
        if (act_int8 && amx) variants.push_back({t, true, "int4-w4a8-vnni", true});
        // INT4 dequantized to bf16 x bf16 activations (ActMode::Bf16): the tiles on amx (n >= 32),
        // the dequantize-to-bf16 blocks on vdpbf16ps beside them.
        if (act_bf16) variants.push_back({t, false, "int4-bf16", false, true});
        if (act_bf16 && amx) variants.push_back({t, false, "int4-bf16-vdp", true, true});
    }
    for (size_t n : opt.ns)
        // The upper bound keeps n x k (the activations) from wrapping for "-1" read as size_t.
        if (n == 0 || n > 65536) fail("bench kernels: --n values must be in [1, 65536], got ", n);
    const bool has_q4 = std::count(types.begin(), types.end(), WeightType::Q4) > 0;
    const bool has_int5 = std::count(types.begin(), types.end(), WeightType::Int5) > 0;
    if (has_q4 || has_int5)
        for (const BenchShape* s : shapes)
            if (opt.group_size == 0 || opt.group_size % 8 != 0 || s->in % opt.group_size != 0)
                fail("bench kernels: --group-size ", opt.group_size,
                     " must be a multiple of 8 dividing in=", s->in, " (", s->name, ")");
    if (opt.bandwidth_mib < 1) fail("bench kernels: --bandwidth-mib must be >= 1");
    std::printf("lancet bench kernels: %s\n", kernels::runtime_description(pool).c_str());
    const bool has_bf16 = std::count(types.begin(), types.end(), WeightType::BF16) > 0;
    const bool naive = has_q4 && !opt.no_naive;

    const double read_gbps = measure_read_bandwidth(pool, opt.reps, opt.bandwidth_mib);
    const Peaks peaks = measure_peaks(pool);
    const double fma_gflops = peaks.fma_gflops, int8_gops = peaks.int8_gops;
    const double amx_gops = peaks.amx_int8_gops, amx_bf16 = peaks.amx_bf16_gflops;
    // bf16-activation variants against the vdpbf16ps peak (f32 FMA where the ISA has none).
    const double bf16_gflops = peaks.bf16_gflops > 0 ? peaks.bf16_gflops : fma_gflops;
    std::printf(
        "streaming read: %.1f GB/s (median of %d passes over %zu MiB on 2 MiB pages, %zu "
        "threads); FMA peak: %.1f GFLOP/s (f32); int8 dot peak: %.1f GOP/s (%s); bf16 dot "
        "peak: %s GFLOP/s (vdpbf16ps)%s\n\n",
        read_gbps, std::max(opt.reps, 5), opt.bandwidth_mib, pool.size(), fma_gflops, int8_gops,
        kernels::probe_int8_name(),
        fmt("%.1f", peaks.bf16_gflops > 0 ? peaks.bf16_gflops : NAN).c_str(),
        amx_gops > 0 ? ("; AMX int8 peak: " + fmt("%.1f", amx_gops) +
                        " GOP/s (tdpbsud, K = 64; the W4A8 tiles run K = 32 per int8 block); AMX "
                        "bf16 peak: " +
                        fmt("%.1f", amx_bf16) + " GFLOP/s (tdpbf16ps, K = 32 pairs)")
                           .c_str()
                     : "");
    nlohmann::json records = nlohmann::json::array();
    records.push_back(
        {{"kernel", "read_bandwidth"}, {"gbps", read_gbps}, {"threads", pool.size()}});
    records.push_back({{"kernel", "fma_peak"}, {"gflops", fma_gflops}, {"threads", pool.size()}});
    records.push_back({{"kernel", "int8_peak"}, {"gops", int8_gops}, {"threads", pool.size()}});
    records.push_back(
        {{"kernel", "bf16_peak"}, {"gflops", peaks.bf16_gflops}, {"threads", pool.size()}});
    if (amx_gops > 0) {
        records.push_back(
            {{"kernel", "amx_int8_peak"}, {"gops", amx_gops}, {"threads", pool.size()}});
        records.push_back(
            {{"kernel", "amx_bf16_peak"}, {"gflops", amx_bf16}, {"threads", pool.size()}});
    }

    // Header.
    std::string head = "| shape | out x in | n |", sep = "|---|---|---:|";
    for (const Variant& v : variants) {
        const std::string& tn = v.label;
        head += " " + tn + " ms | " + tn + " GFLOP/s | " + tn + " GB/s |";
        sep += "---:|---:|---:|";
    }
    if (naive) {
        head += " naive ms |";
        sep += "---:|";
    }
    // Ratio columns, once per quantized variant (int4, int5, nvfp4).
    auto quantized = [](WeightType t) {
        return t == WeightType::Q4 || t == WeightType::Int5 || t == WeightType::Nvfp4;
    };
    for (const Variant& v : variants) {
        if (!quantized(v.type)) continue;
        if (has_bf16) {
            head += " " + v.label + " speedup vs bf16 |";
            sep += "---:|";
        }
        head += " " + v.label + " GB/s / read |";
        sep += "---:|";
        if (naive && v.type == WeightType::Q4) {
            head += " naive / " + v.label + " |";
            sep += "---:|";
        }
    }
    // Compute ratio, once per variant: GFLOP/s over the peak of the instruction its inner loop
    // uses (int8 dot for W4A8, bf16 dot for bf16 activations, f32 FMA otherwise).
    for (const Variant& v : variants) {
        head += " " + v.label + " / peak |";
        sep += "---:|";
    }
    // The W4A8 and bf16-activation variants against the AMX tile peaks too, where the CPU has
    // them (int8 for W4A8, bf16 for bf16 activations).
    for (const Variant& v : variants)
        if ((v.w4a8 || v.bf16) && amx_gops > 0) {
            head += " " + v.label + " / amx peak |";
            sep += "---:|";
        }
    std::printf("%s\n%s\n", head.c_str(), sep.c_str());
    std::fflush(stdout);

    uint64_t seed = 1;
    for (const BenchShape* s : shapes) {
        // weights[t][c]: copy c of the weight of type t. With --cold, enough copies that one
        // pass over them is cold_bytes (2x the last-level cache, at least 192 MiB), so
        // consecutive calls never find the weight in cache, as in a real forward pass over many
        // layers.
        // A fused row's copy is its parts side by side: weights[t][c * P + j] is part j of copy c.
        const size_t kColdBytes = opt.cold_mib ? opt.cold_mib << 20 : cold_bytes();
        const std::vector<size_t> parts = s->parts.empty() ? std::vector<size_t>{s->out} : s->parts;
        const size_t P = parts.size();
        std::map<WeightType, std::vector<LinearWeight>> weights;
        std::map<WeightType, size_t> copy_bytes;  // published bytes of one copy (all parts)
        for (WeightType t : types) {
            auto& v = weights[t];
            for (size_t o : parts) v.push_back(random_weight(t, o, s->in, opt.group_size, seed++));
            size_t& bytes = copy_bytes[t];
            for (const auto& w : v) bytes += w.file_bytes();
            const size_t copies =
                opt.cold ? std::clamp<size_t>(kColdBytes / bytes + 1, 1, 1024) : 1;
            while (v.size() < copies * P) v.push_back(v[v.size() - P].clone());
        }
        size_t turn = 0;  // which copy the next call uses
        auto next = [&](WeightType t) -> const LinearWeight* {
            const auto& v = weights[t];
            return &v[(turn++ % (v.size() / P)) * P];
        };
        const bool row_naive = naive && P == 1;  // the naive baseline times single weights
        LinearWeight naive_dst;
        if (row_naive) naive_dst = kernels::dequantize_to_bf16(weights[WeightType::Q4][0], pool);
        const size_t max_n = *std::max_element(opt.ns.begin(), opt.ns.end());
        AlignedBuffer xbuf(max_n * s->in * sizeof(float)), ybuf(max_n * s->out * sizeof(float));
        {
            Rng rng(seed++);
            float* x = xbuf.as<float>();
            for (size_t i = 0; i < max_n * s->in; ++i) x[i] = uniform(rng, -1.0f, 1.0f);
        }
        for (size_t n : opt.ns) {
            const double flops = 2.0 * double(n) * double(s->out) * double(s->in);
            // Every column of this row (and the naive path) timed round-robin.
            std::vector<std::function<void()>> fns;
            for (const Variant& v : variants)
                fns.push_back([&, v] {
                    const LinearWeight* ws = next(v.type);
                    const kernels::OpContext ctx{
                        &pool, v.vnni ? kernels::Isa::Avx512 : kernels::active_isa(),
                        v.w4a8   ? kernels::ActMode::Int8
                        : v.bf16 ? kernels::ActMode::Bf16
                                 : kernels::ActMode::F32,
                        v.bf16 ? kernels::Bf16Act::Bf16 : kernels::Bf16Act::F32};
                    if (P > 1) {
                        // The decoder's call: linear_same_input with the variant's activations
                        // (W4A8 at n <= 8: x quantized once, all parts in one pool job).
                        kernels::LinearOut outs[8];
                        for (size_t j = 0, o = 0; j < P; o += parts[j], ++j)
                            outs[j] = {&ws[j], nullptr, ybuf.as<float>() + n * o};
                        kernels::linear_same_input(ctx, xbuf.as<float>(), n, outs, P);
                        return;
                    }
                    kernels::linear(ctx, kernels::TensorRef::matrix(xbuf.as<float>(), n, s->in),
                                    *ws, nullptr,
                                    kernels::TensorRef::matrix(ybuf.as<float>(), n, s->out));
                });
            if (row_naive)
                fns.push_back([&] {
                    kernels::dequantize_to_bf16(*next(WeightType::Q4), naive_dst, pool);
                    kernels::linear(xbuf.as<float>(), n, naive_dst, nullptr, ybuf.as<float>(),
                                    pool);
                });
            const std::vector<double> secs = time_calls_interleaved(fns, opt.reps);
            std::vector<Cell> cells;
            for (size_t vi = 0; vi < variants.size(); ++vi) {
                const Variant& v = variants[vi];
                const WeightType t = v.type;
                const LinearWeight& w0 = weights[t][0];
                const double sec = secs[vi];
                Cell c{sec * 1e3, flops / sec / 1e9, double(copy_bytes[t]) / sec / 1e9};
                cells.push_back(c);
                records.push_back({{"kernel", "linear"},
                                   {"shape", s->name},
                                   {"weight_type", kernels::weight_type_name(t)},
                                   {"activations", v.w4a8   ? "int8"
                                                   : v.bf16 ? "bf16"
                                                            : "f32"},
                                   {"isa", kernels::isa_name(v.vnni ? kernels::Isa::Avx512
                                                                    : kernels::active_isa())},
                                   {"cold", opt.cold},
                                   {"fused_parts", parts.size()},
                                   {"group_size", w0.group_size()},
                                   {"m", s->out},
                                   {"k", s->in},
                                   {"n", n},
                                   {"threads", pool.size()},
                                   {"median_ms", c.ms},
                                   {"gflops", c.gflops},
                                   {"weight_gbps", c.gbps}});
            }
            Cell nv;
            if (row_naive) {
                const LinearWeight& q = weights[WeightType::Q4][0];
                const double sec = secs.back();
                nv = Cell{sec * 1e3, flops / sec / 1e9, double(q.file_bytes()) / sec / 1e9};
                records.push_back({{"kernel", "naive_dequant_bf16"},
                                   {"shape", s->name},
                                   {"weight_type", "int4"},
                                   {"group_size", opt.group_size},
                                   {"m", s->out},
                                   {"k", s->in},
                                   {"n", n},
                                   {"threads", pool.size()},
                                   {"median_ms", nv.ms},
                                   {"gflops", nv.gflops},
                                   {"weight_gbps", nv.gbps}});
            }
            std::string row = std::string("| ") + s->name + " | " + std::to_string(s->out) + "x" +
                              std::to_string(s->in) + " | " + std::to_string(n) + " |";
            double bf16_ms = NAN;
            for (size_t i = 0; i < variants.size(); ++i) {
                const Cell& c = cells[i];
                if (variants[i].type == WeightType::BF16) bf16_ms = c.ms;
                row += " " + fmt("%.3f", c.ms) + " | " + fmt("%.1f", c.gflops) + " | " +
                       fmt("%.1f", c.gbps) + " |";
            }
            if (naive) row += " " + fmt("%.3f", row_naive ? nv.ms : NAN) + " |";
            for (size_t i = 0; i < variants.size(); ++i) {
                if (!quantized(variants[i].type)) continue;
                if (has_bf16) row += " " + fmt("%.2fx", bf16_ms / cells[i].ms) + " |";
                row += " " + fmt("%.2f", cells[i].gbps / read_gbps) + " |";
                if (naive && variants[i].type == WeightType::Q4)
                    row += " " + fmt("%.2fx", row_naive ? nv.ms / cells[i].ms : NAN) + " |";
            }
            for (size_t i = 0; i < variants.size(); ++i)
                row += " " +
                       fmt("%.2f", cells[i].gflops / (variants[i].w4a8   ? int8_gops
                                                      : variants[i].bf16 ? bf16_gflops
                                                                         : fma_gflops)) +
                       " |";
            for (size_t i = 0; i < variants.size(); ++i)
                if ((variants[i].w4a8 || variants[i].bf16) && amx_gops > 0)
                    row += " " +
                           fmt("%.2f", cells[i].gflops / (variants[i].w4a8 ? amx_gops : amx_bf16)) +
                           " |";
            std::printf("%s\n", row.c_str());
            std::fflush(stdout);
        }
    }
    std::printf(
        "\nn = rows of x (tokens); GB/s = weight bytes in the published format / time; "
        "naive = dequantize int4 to bf16 (into a preallocated buffer), then the bf16 "
        "kernel; int4-f32 = f32 activations, int4-w4a8 = int8 activations (--act int8; on the amx "
        "ISA the AMX tiles for n >= 64, "
        "with int4-w4a8-vnni = the same arithmetic on AVX-512 VNNI beside it); bf16 = bf16 weights "
        "with f32 activations, bf16-bf16act = with bf16 activations (--act bf16; on the amx ISA "
        "the AMX tiles for n >= 32, with bf16-bf16act-vdp = vdpbf16ps beside it); int4-bf16 = int4 "
        "dequantized to bf16 x bf16 activations (--act bf16; amx: tiles for n >= 32, "
        "int4-bf16-vdp = blocks dequantized to bf16 on vdpbf16ps beside it); int5 "
        "and nvfp4 (spec 1.2, 1.3) always take f32 activations, and nvfp4's published bytes "
        "include both copies of its block scales (5.5 bits/weight; the kernel reads 5); "
        "GFLOP/s counts 2*n*out*in for every kernel; fused rows (--shapes qkv, gateup-fused: "
        "not in the default set) time the decoder's own call, linear_same_input over the parts "
        "(W4A8 at n <= 8: x quantized once, one pool job), GB/s over all parts' bytes.%s\n",
        opt.cold ? " --cold: each call reads a different copy of the weight (2x the LLC in all), "
                   "so weights come from memory, not cache."
                 : " Weights that fit the last-level cache are timed from it (see --cold).");
    if (!opt.json.empty()) write_json_atomically(opt.json, records);
}

struct DecodeOptions {
    std::vector<std::string> models;
    size_t prompt_tokens = 512, decode_tokens = 64;
    int reps = 3;
    std::string json;
    size_t bandwidth_mib = 1024;
    std::vector<size_t> streams;  // --streams: aggregate decode with these many sequences
};

void run_decode_bench(const DecodeOptions& opt) {
    ThreadPool& pool = default_pool();
    if (opt.reps < 1) fail("bench decode: --reps must be >= 1");
    if (opt.prompt_tokens < 1) fail("bench decode: --prompt-tokens must be >= 1");
    for (size_t k : opt.streams)
        if (k < 1 || k > 256) fail("bench decode: --streams counts must be within [1, 256]");
    if (opt.bandwidth_mib < 1) fail("bench decode: --bandwidth-mib must be >= 1");
    // Open every folder first so a bad one fails before any timing.
    std::vector<std::unique_ptr<LanceCheckpoint>> cks;
    for (const std::string& m : opt.models) {
        cks.push_back(LanceCheckpoint::open(m));
        const LanceConfig& c = cks.back()->config();
        const size_t ctx = static_cast<size_t>(c.max_position_embeddings);
        if (c.max_position_embeddings > 0 &&
            (opt.prompt_tokens > ctx || opt.decode_tokens > ctx - opt.prompt_tokens))
            fail("bench decode: ", opt.prompt_tokens, " prompt + ", opt.decode_tokens,
                 " decoded tokens exceed the context of ", m, " (", c.max_position_embeddings, ")");
    }
    if (!opt.json.empty()) check_not_source(opt.json);  // before the timing, not after
    std::printf("lancet bench decode: %s\n", kernels::runtime_description(pool).c_str());
    std::fflush(stdout);
    struct Row {
        std::string label;
        DecodeWeightBytes wb;
        DecodeBenchResult r;
        double rss_mib;
        std::vector<StreamsBenchResult> streams;
    };
    std::vector<Row> rows;
    for (size_t i = 0; i < cks.size(); ++i) {
        const LanceCheckpoint& ck = *cks[i];
        DecoderOptions dopt;
        dopt.lm_head = lm_head_option();
        dopt.load_gen = false;     // text only: the und expert alone
        dopt.bf16_weights = true;  // as Lance, which casts the model to bf16 at load
        std::error_code ec;
        if (std::filesystem::exists(std::filesystem::path(opt.models[i]) / "vocab.json", ec))
            dopt.logits_limit = static_cast<int64_t>(Qwen2Tokenizer::load(opt.models[i]).size());
        Row row{weight_format_label(ck), decode_weight_bytes(ck), {}, 0, {}};
        if (ck.quant_meta()) {
            // What the INT4 linears and the lm_head actually run as (the global flags).
            const kernels::ActMode am = kernels::activation_mode();
            row.label += am == kernels::ActMode::Int8 ? ", W4A8"
                         : am == kernels::ActMode::F32
                             ? ", f32 act"
                             : std::string(", ") + kernels::act_mode_name(am) + " act";
            if (dopt.lm_head == DecoderOptions::LmHead::Int4 &&
                !ck.is_quantized("language_model.lm_head")) {
                // Quantized at load to INT4 g64: codes, bf16 scales and u8 zeros per row group.
                const uint64_t V = ck.config().vocab_size, H = ck.config().hidden_size;
                row.wb.lm_head = V * H / 2 + V * (H / 64) * 3;
                row.label += ", lm_head int4";
            }
        }
        {
            // One decoder at a time: the next model's weights replace this one's.
            log_info("bench decode: ", opt.models[i]);
            const LanceWeights weights(ck, dopt);
            DecoderSession dec(weights, kernels::OpContext::defaults(&pool));
            DecodeBenchOptions bo;
            bo.prompt_tokens = opt.prompt_tokens;
            bo.decode_tokens = opt.decode_tokens;
            bo.reps = opt.reps;
            row.r = bench_decode(dec, bo);
            // Same weights, same session: the batched steps of 1, 2, 4, ... sequences.
            for (size_t k : opt.streams) row.streams.push_back(bench_decode_streams(dec, bo, k));
        }
        row.rss_mib = peak_rss_mib();
        rows.push_back(row);
    }
    // The probe's buffer comes last so it does not count in the models' peak RSS.
    const double read_gbps = measure_read_bandwidth(pool, 3, opt.bandwidth_mib);
    std::printf("streaming read: %.1f GB/s (%zu MiB on 2 MiB pages, %zu threads)\n\n", read_gbps,
                opt.bandwidth_mib, pool.size());
    nlohmann::json records = nlohmann::json::array();
    records.push_back(
        {{"kernel", "read_bandwidth"}, {"gbps", read_gbps}, {"threads", pool.size()}});
    std::printf(
        "| model | weights | prompt | prefill tok/s | decode tok/s | ms/token | linears ms | "
        "other ms | jobs/token | MB/token | GB/s | roofline | peak RSS MiB "
        "|\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < rows.size(); ++i) {
        const Row& w = rows[i];
        const double bytes = double(w.wb.total());
        const double gbps = opt.decode_tokens ? bytes * w.r.decode_tps / 1e9 : NAN;
        const double per_tok = opt.decode_tokens ? 1e3 * w.r.decode_s / opt.decode_tokens : NAN;
        const double lin_tok =
            opt.decode_tokens ? 1e3 * w.r.decode_linear_s / opt.decode_tokens : NAN;
        std::printf("| %s | %s | %zu | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f |\n",
                    opt.models[i].c_str(), w.label.c_str(), opt.prompt_tokens,
                    fmt("%.1f", w.r.prefill_tps).c_str(),
                    fmt("%.2f", opt.decode_tokens ? w.r.decode_tps : NAN).c_str(),
                    fmt("%.2f", per_tok).c_str(), fmt("%.2f", lin_tok).c_str(),
                    fmt("%.2f", per_tok - lin_tok).c_str(),
                    fmt("%.1f", opt.decode_tokens ? w.r.decode_jobs_per_token : NAN).c_str(),
                    fmt("%.2f", bytes / 1e6).c_str(), fmt("%.1f", gbps).c_str(),
                    fmt("%.2f", gbps / read_gbps).c_str(), w.rss_mib);
        records.push_back({{"kernel", "decode"},
                           {"model", opt.models[i]},
                           {"weights", w.label},
                           {"threads", pool.size()},
                           {"prompt_tokens", opt.prompt_tokens},
                           {"decode_tokens", opt.decode_tokens},
                           {"reps", opt.reps},
                           {"prefill_s", w.r.prefill_s},
                           {"prefill_tps", w.r.prefill_tps},
                           {"decode_s", w.r.decode_s},
                           {"decode_tps", w.r.decode_tps},
                           {"decode_linear_s", w.r.decode_linear_s},
                           {"decode_jobs_per_token", w.r.decode_jobs_per_token},
                           {"bytes_per_token", w.wb.total()},
                           {"bytes_linears", w.wb.linears},
                           {"bytes_norms", w.wb.norms},
                           {"bytes_lm_head", w.wb.lm_head},
                           {"bytes_embedding_row", w.wb.embedding_row},
                           {"weight_gbps", opt.decode_tokens ? gbps : 0.0},
                           {"roofline", opt.decode_tokens ? gbps / read_gbps : 0.0},
                           {"peak_rss_mib", w.rss_mib}});
    }
    std::printf(
        "\nprefill = one forward of a random-id prompt; decode = greedy steps on the KV cache "
        "(median of %d runs); ms/token = decode time per token, split into the time inside the "
        "linear kernels and the rest (norms, attention, RoPE, embedding, argmax); jobs/token = "
        "thread-pool jobs dispatched per decoded token; MB/token = "
        "und-path layer weights + norms + lm_head + one "
        "embedding row as run (an lm_head quantized at load counts as INT4 g64); GB/s = MB/token x "
        "decode tok/s; roofline = GB/s / streaming "
        "read (measured after the models); peak RSS = process maximum after each model (models "
        "run one at a time, in order).\n",
        opt.reps);
    if (!opt.streams.empty()) {
        std::printf(
            "\n| model | weights | streams | aggregate decode tok/s | per stream tok/s | x one "
            "stream | ms/step | linears ms |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
        for (size_t i = 0; i < rows.size(); ++i) {
            const Row& w = rows[i];
            // The ratio is against the batched step's own one-stream row when it was run.
            double one = 0;
            for (const auto& st : w.streams)
                if (st.streams == 1) one = st.decode_tps;
            for (const auto& st : w.streams) {
                const double steps = double(opt.decode_tokens);
                std::printf(
                    "| %s | %s | %zu | %.2f | %.2f | %s | %s | %s |\n", opt.models[i].c_str(),
                    w.label.c_str(), st.streams, st.decode_tps, st.decode_tps / double(st.streams),
                    fmt("%.2f", one > 0 ? st.decode_tps / one : NAN).c_str(),
                    fmt("%.2f", steps > 0 ? 1e3 * st.decode_s / steps : NAN).c_str(),
                    fmt("%.2f", steps > 0 ? 1e3 * st.decode_linear_s / steps : NAN).c_str());
                records.push_back({{"kernel", "decode_streams"},
                                   {"model", opt.models[i]},
                                   {"weights", w.label},
                                   {"threads", pool.size()},
                                   {"streams", st.streams},
                                   {"prompt_tokens", opt.prompt_tokens},
                                   {"decode_tokens", opt.decode_tokens},
                                   {"reps", opt.reps},
                                   {"decode_s", st.decode_s},
                                   {"decode_tps", st.decode_tps},
                                   {"decode_linear_s", st.decode_linear_s}});
            }
        }
        std::printf(
            "\nstreams = sequences decoded together by continuous batching (each prefilled alone "
            "with its own random prompt of the same length, then one decode step feeds all of "
            "them through one pass over the weights); aggregate = streams x decode tokens / "
            "median decode seconds; x one stream = aggregate / the 1-stream row; ms/step = one "
            "decode "
            "step of all streams, linears ms = its time inside the linear kernels.\n");
    }
    if (!opt.json.empty()) write_json_atomically(opt.json, records);
}

struct VisionOptions {
    std::string model, json;
    int64_t size = 672, frames = 2;
    int reps = 3;
    bool ttft = false;
};

// Time to first token of x2t_image on the same pixels: ViT + prompt embedding + prefill + the
// first greedy token, through X2tRunner as `run --task x2t_image` runs it (BF16-held weights).
void run_ttft(const VisionOptions& o, const LanceCheckpoint& ck, const std::vector<float>& video,
              nlohmann::json* rec) {
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(o.model);
    X2tOptions xo;
    xo.generate.max_new_tokens = 1;
    X2tRunner runner(ck, tok, xo);
    PixelTensor px;
    px.T = o.frames, px.H = o.size, px.W = o.size;
    px.data = video;
    const std::string sys = x2t_default_system(false), q = "What is shown in this image?";
    runner.answer(px, sys, q);  // warm-up
    std::vector<double> total, vit, prefill;
    size_t prompt = 0;
    for (int r = 0; r < o.reps; ++r) {
        const auto t0 = Clock::now();
        const X2tAnswer a = runner.answer(px, sys, q);
        total.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        vit.push_back(a.vit_seconds);
        prefill.push_back(a.gen.prefill_seconds);
        prompt = a.gen.prompt_tokens;
    }
    const double t = median(total), tv = median(vit), tp = median(prefill);
    std::printf(
        "time to first token (x2t_image, %ldx%ld): %9.1f ms = ViT %.1f ms + prefill %.1f ms "
        "(%zu prompt tokens, %.0f tok/s) + %.1f ms embedding and first token (median of %d; "
        "BF16-held weights as `run`)\n",
        long(o.size), long(o.size), t * 1e3, tv * 1e3, tp * 1e3, prompt, prompt / tp,
        (t - tv - tp) * 1e3, o.reps);
    if (rec) {
        (*rec)["ttft_ms"] = t * 1e3;
        (*rec)["ttft_vit_ms"] = tv * 1e3;
        (*rec)["ttft_prefill_ms"] = tp * 1e3;
        (*rec)["ttft_prompt_tokens"] = prompt;
    }
}

// ViT forward on random pixels of size x size x frames: total, linear and attention time, and the
// linears' GFLOP/s against linear() at n = 512 on the tower's own MLP gate weight (the GEMM rate
// `bench kernels` measures for that weight type and shape) in the same run.
void run_vision_bench(const VisionOptions& o) {
    if (o.reps < 1) fail("bench vision: --reps must be >= 1");
    ThreadPool& pool = default_pool();
    const auto ck = LanceCheckpoint::open(o.model);
    const VitConfig& v = ck->config().vision;
    const VitPlan plan = vit_plan(v, o.frames, o.size, o.size, "bench vision: --size/--frames");
    if (plan.patches() > (1 << 20))
        fail("bench vision: ", plan.patches(), " patches is more than this bench allows (2^20)");
    std::printf("lancet bench vision: %s\n", kernels::runtime_description(pool).c_str());
    VisionTower tower(*ck);
    const kernels::OpContext ctx = kernels::OpContext::defaults(&pool);
    const LinearWeight& gw = tower.gate_weight(0);
    std::printf(
        "model %s: ViT depth %d, hidden %d, %d heads, MLP %d, full attention at %zu blocks; "
        "weights %s\n",
        o.model.c_str(), v.depth, v.hidden_size, v.num_heads, v.intermediate_size,
        v.fullatt_block_indexes.size(), kernels::weight_type_name(gw.type()));
    std::vector<float> video(static_cast<size_t>(v.in_chans * o.frames * o.size * o.size));
    Rng rng(1);
    for (float& x : video) x = 4.0f * rng.unit_float() - 2.0f;

    std::vector<double> total, lin, att;
    tower.forward(ctx, video.data(), o.frames, o.size, o.size);  // warm-up
    for (int r = 0; r < o.reps; ++r) {
        const auto t0 = Clock::now();
        tower.forward(ctx, video.data(), o.frames, o.size, o.size);
        total.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        lin.push_back(tower.linear_seconds());
        att.push_back(tower.attention_seconds());
    }
    const double t = median(total), tl = median(lin), ta = median(att);
    const double flop = 2 * tower.linear_macs();

    // The GEMM reference: linear() on x [512, in] with the same weight.
    const size_t n = 512;
    std::vector<float> x(n * gw.in()), y(n * gw.out());
    for (float& e : x) e = rng.unit_float() - 0.5f;
    const double tg = time_call(
        [&] {
            kernels::linear(
                ctx, kernels::TensorRef::contiguous(x.data(), {int64_t(n), int64_t(gw.in())}), gw,
                nullptr, kernels::TensorRef::contiguous(y.data(), {int64_t(n), int64_t(gw.out())}));
        },
        o.reps);
    const double gemm = 2.0 * n * gw.out() * gw.in() / tg / 1e9;
    const double lin_rate = flop / tl / 1e9;
    std::printf(
        "input [%d, %ld, %ld, %ld]: %ld patches -> %ld tokens, %zu windows per temporal patch\n",
        v.in_chans, long(o.frames), long(o.size), long(o.size), long(plan.patches()),
        long(plan.merged()), plan.cu_window.size() - 1);
    std::printf("forward   %9.1f ms (median of %d)\n", t * 1e3, o.reps);
    std::printf("linear    %9.1f ms  %5.1f%%  %.1f GFLOP, %.1f GFLOP/s\n", tl * 1e3, 100 * tl / t,
                flop / 1e9, lin_rate);
    std::printf("attention %9.1f ms  %5.1f%%  (rope + windowed softmax attention)\n", ta * 1e3,
                100 * ta / t);
    std::printf("other     %9.1f ms  %5.1f%%  (packing, norms, activations, residual adds)\n",
                (t - tl - ta) * 1e3, 100 * (t - tl - ta) / t);
    std::printf(
        "GEMM reference: linear() n=%zu on the [%zu, %zu] %s gate weight: %.1f GFLOP/s; "
        "ViT linears reach %.2f of it\n",
        n, gw.out(), gw.in(), kernels::weight_type_name(gw.type()), gemm, lin_rate / gemm);
    nlohmann::json rec;
    if (o.ttft) run_ttft(o, *ck, video, &rec);
    if (!o.json.empty()) {
        rec.update(nlohmann::json{{"bench", "vision"},
                                  {"model", o.model},
                                  {"frames", o.frames},
                                  {"size", o.size},
                                  {"threads", pool.size()},
                                  {"weights", kernels::weight_type_name(gw.type())},
                                  {"forward_ms", t * 1e3},
                                  {"linear_ms", tl * 1e3},
                                  {"attention_ms", ta * 1e3},
                                  {"linear_gflops", lin_rate},
                                  {"gemm_n512_gflops", gemm},
                                  {"linear_vs_gemm", lin_rate / gemm}});
        write_json_atomically(o.json, nlohmann::json::array({rec}));
    }
}

struct AwqBenchOptions {
    int hidden = 2048, intermediate = 11008, heads = 16, kv_heads = 2;
    std::string method = "awq";  // awq | awq-gptq | gptq: the search alone or with error feedback
    int tokens = 2048, rows = 512, group_size = 64;
    uint64_t seed = 99;
    std::vector<std::string> groups;  // empty: all
};

void run_awq_bench(const AwqBenchOptions& opt) {
    ThreadPool& pool = default_pool();
    if (opt.hidden < 1 || opt.intermediate < 1 || opt.heads < 1 || opt.kv_heads < 1 ||
        opt.heads % opt.kv_heads != 0 || opt.hidden % opt.heads != 0)
        fail("bench awq: need --hidden divisible by --heads, --heads by --kv-heads (got ",
             opt.hidden, ", ", opt.heads, ", ", opt.kv_heads, ")");
    if (opt.tokens < 8 || opt.rows < 8) fail("bench awq: --tokens and --rows must be >= 8");
    static const char* kGroups[] = {"qkv", "o", "gateup", "down"};
    for (const std::string& g : opt.groups)
        if (std::find(std::begin(kGroups), std::end(kGroups), g) == std::end(kGroups))
            fail("bench awq: unknown group '", g, "' (expected qkv, o, gateup or down)");
    auto wanted = [&](const char* g) {
        return opt.groups.empty() ||
               std::find(opt.groups.begin(), opt.groups.end(), g) != opt.groups.end();
    };
    const int h = opt.hidden, I = opt.intermediate, hd = h / opt.heads, kv = opt.kv_heads * hd;
    std::printf(
        "lancet bench awq: hidden %d, intermediate %d, %d/%d heads, %d tokens, %d rows, "
        "group size %d, %zu threads\n",
        h, I, opt.heads, opt.kv_heads, opt.tokens, opt.rows, opt.group_size, pool.size());
    const bool fb = opt.method != "awq";
    std::printf("%-9s %6s %6s %6s %9s %9s %9s %9s %8s %8s", "group", "in", "out", "alpha",
                "RTN srch", "RTN held", "AWQ srch", "AWQ held", "wall s", "cpu s");
    if (fb) std::printf(" %9s %9s %8s", "res srch", "res held", "GPTQ s");
    std::printf("\n");
    Rng rng(opt.seed);
    quant::AwqOptions ao;
    ao.group_size = opt.group_size;
    if (opt.method == "gptq") ao.feedback = quant::AwqOptions::Feedback::Gptq;
    if (opt.method == "awq-gptq") ao.feedback = quant::AwqOptions::Feedback::AwqGptq;
    auto report = [&](const char* name, const std::vector<quant::AwqConsumer>& cons, int in,
                      const quant::LinearStats& st, const std::vector<int>* tie) {
        int out = 0;
        for (const auto& c : cons) out += c.out;
        const double cpu0 = cpu_seconds();
        const quant::AwqResult r = quant::awq_search(cons, in, &st, ao, tie);
        const double cpu = cpu_seconds() - cpu0;
        std::printf("%-9s %6d %6d %6.2f %9.4f %9.4f %9.4f %9.4f %8.2f %8.2f", name, in, out,
                    r.alpha, r.rtn.search, r.rtn.heldout, r.awq.search, r.awq.heldout, r.seconds,
                    cpu);
        if (fb)
            std::printf(" %9.4f %9.4f %8.2f", r.result.search, r.result.heldout, r.seconds_gptq);
        std::printf("\n");
        std::fflush(stdout);
    };
    // Every group's weights and statistics are drawn (in a fixed order) whether it runs or not,
    // so a group's numbers do not depend on which others were selected.
    const std::vector<float> q = quant::heavy_tailed_weights(rng, h, h),
                             k = quant::heavy_tailed_weights(rng, kv, h),
                             v = quant::heavy_tailed_weights(rng, kv, h);
    const quant::LinearStats s_h = quant::outlier_activations(rng, h, opt.tokens, opt.rows);
    if (wanted("qkv"))
        report("qkv", {{"q", q.data(), h}, {"k", k.data(), kv}, {"v", v.data(), kv}}, h, s_h,
               nullptr);
    {
        const std::vector<float> o = quant::heavy_tailed_weights(rng, h, h);
        const quant::LinearStats s_o = quant::outlier_activations(rng, h, opt.tokens, opt.rows);
        const std::vector<int> tie = quant::gqa_tie_map(opt.heads, opt.kv_heads, hd);
        if (wanted("o")) report("o(v)", {{"o", o.data(), h}}, h, s_o, &tie);
    }
    {
        const std::vector<float> gate = quant::heavy_tailed_weights(rng, I, h),
                                 up = quant::heavy_tailed_weights(rng, I, h);
        if (wanted("gateup"))
            report("gate_up", {{"gate", gate.data(), I}, {"up", up.data(), I}}, h, s_h, nullptr);
    }
    {
        const std::vector<float> down = quant::heavy_tailed_weights(rng, h, I);
        const quant::LinearStats s_d = quant::outlier_activations(rng, I, opt.tokens, opt.rows);
        if (wanted("down")) report("down(up)", {{"down", down.data(), h}}, I, s_d, nullptr);
    }
    std::printf(
        "\nerrors = ||dY||/||Y|| of seed RTN and of the AWQ result on the search and held-out "
        "rows; wall = the search's own time, cpu = process CPU time during it (all "
        "threads).\n");
}

}  // namespace

void add_bench(CLI::App& app) {
    CLI::App* bench = app.add_subcommand(
        "bench", "Measure performance (scenarios: kernels, attention, decode, vision, vae, awq)");
    bench->require_subcommand(1);
    bench->fallthrough();
    auto opt = std::make_shared<Options>();
    CLI::App* k = bench->add_subcommand(
        "kernels", "Time the linear kernels on Lance's shapes vs read bandwidth and naive dequant");
    k->fallthrough();
    k->add_option("--shapes", opt->shapes,
                  "Shapes: qo, kv, gateup, down, lm_head (default all; --quick drops lm_head); "
                  "qkv, gateup-fused: the decoder's fused calls of those weights")
        ->delimiter(',');
    k->add_option("--n", opt->ns, "Rows of x (tokens), default 1,4,16,128,512")->delimiter(',');
    k->add_option("--types", opt->types,
                  "Weight types: int4, int5, nvfp4, bf16, f32 (default int4,bf16)")
        ->delimiter(',');
    k->add_option("--group-size", opt->group_size,
                  "INT4 and INT5 group size (default 64; NVFP4 blocks are 16)");
    k->add_option("--act", opt->act,
                  "Activation modes besides f32, comma-separated: int8 (INT4 weights with int8 "
                  "activations, W4A8), bf16 (BF16 and INT4 weights with bf16 activations) "
                  "(default int8; "
                  "f32: f32 activations only)")
        ->delimiter(',');
    k->add_option("--reps", opt->reps,
                  "Timed samples per cell; the median is reported (default 5)");
    k->add_flag("--quick", opt->quick, "At most 3 reps, no lm_head unless --shapes names it");
    k->add_flag("--no-naive", opt->no_naive, "Skip the dequantize-then-bf16 baseline");
    k->add_flag(
        "--cold", opt->cold,
        "Cycle through copies of each weight (2x the LLC, >= 192 MiB) so every call streams it "
        "from memory rather than the last-level cache");
    k->add_option("--cold-mib", opt->cold_mib,
                  "With --cold: MiB of weight copies per type (default 2x the LLC, >= 192)");
    k->add_option("--bandwidth-mib", opt->bandwidth_mib,
                  "Buffer for the streaming-read probe, MiB (default 1024, >> LLC)");
    k->add_option("--json", opt->json, "Also write one JSON record per line to this file");
    k->callback([opt] { run_kernels_bench(*opt); });

    auto dopt = std::make_shared<DecodeOptions>();
    CLI::App* d = bench->add_subcommand(
        "decode", "Time prefill and greedy decoding of models vs the read-bandwidth roofline");
    d->fallthrough();
    d->add_option("--model", dopt->models, "Lance model folder; repeat for several")->required();
    d->add_option("--prompt-tokens", dopt->prompt_tokens, "Random-id prompt length (default 512)");
    d->add_option("--decode-tokens", dopt->decode_tokens, "Greedy tokens decoded (default 64)");
    d->add_option("--reps", dopt->reps,
                  "Prefill + decode runs; the median is reported (default 3)");
    d->add_option("--bandwidth-mib", dopt->bandwidth_mib,
                  "Buffer for the streaming-read probe, MiB (default 1024, >> LLC)");
    d->add_option("--streams", dopt->streams,
                  "Also time continuous batching: aggregate decode tok/s with each of these "
                  "numbers of sequences decoding together (e.g. 1,2,4,8)")
        ->delimiter(',');
    d->add_option("--json", dopt->json, "Also write one JSON record per line to this file");
    d->callback([dopt] { run_decode_bench(*dopt); });

    auto vopt = std::make_shared<VisionOptions>();
    CLI::App* vb = bench->add_subcommand(
        "vision", "Time the ViT forward (linears vs attention) against the GEMM rate");
    vb->fallthrough();
    vb->add_option("--model", vopt->model, "Lance model folder")->required();
    vb->add_option("--size", vopt->size, "Image side in pixels, a multiple of 28 (default 672)");
    vb->add_option("--frames", vopt->frames, "Frames, even (default 2: one temporal patch)");
    vb->add_option("--reps", vopt->reps, "Timed forwards; the median is reported (default 3)");
    vb->add_option("--json", vopt->json, "Also write one JSON record to this file");
    vb->add_flag("--ttft", vopt->ttft,
                 "Also time x2t_image's time to first token on the same pixels (ViT + prefill)");
    vb->callback([vopt] { run_vision_bench(*vopt); });

    add_bench_vae(*bench);
    add_bench_gen(*bench);
    add_bench_attention(*bench);

    auto aopt = std::make_shared<AwqBenchOptions>();
    CLI::App* a = bench->add_subcommand(
        "awq", "Time the AWQ search on one decoder layer's linears (synthetic, Lance 3b sizes)");
    a->fallthrough();
    a->add_option("--method", aopt->method,
                  "awq (the search alone), awq-gptq or gptq (then error feedback, as quantize)")
        ->check(CLI::IsMember({"awq", "awq-gptq", "gptq"}))
        ->capture_default_str();
    a->add_option("--groups", aopt->groups, "Groups: qkv, o, gateup, down (default all)")
        ->delimiter(',');
    a->add_option("--hidden", aopt->hidden, "Hidden size (default 2048)");
    a->add_option("--intermediate", aopt->intermediate, "MLP width (default 11008)");
    a->add_option("--heads", aopt->heads, "Attention heads (default 16)");
    a->add_option("--kv-heads", aopt->kv_heads, "Key/value heads (default 2)");
    a->add_option("--tokens", aopt->tokens, "Activation rows summarised (default 2048)");
    a->add_option("--rows", aopt->rows, "Rows kept for the search and report (default 512)");
    a->add_option("--group-size", aopt->group_size, "INT4 group size (default 64)");
    a->add_option("--seed", aopt->seed, "Seed of the synthetic weights and activations");
    a->callback([aopt] { run_awq_bench(*aopt); });
}

}  // namespace lancet::cli
