// x2t_image / x2t_video: Lance's prompt layout and M-RoPE positions around the ViT block, the ViT
// rows reaching the decoder (the runner's prefill equals `lancet forward` on the same packed
// sequence and vit_video), cached greedy decoding equal to re-running the whole sequence, the
// example-file runner and the one-line errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/rng.h"
#include "io/image.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "io/video.h"
#include "pipeline/understanding.h"
#include "quant/stats_file.h"
#include "test_util.h"

namespace lancet {
namespace {

namespace fs = std::filesystem;

using test::synth_tiny;

PixelTensor random_pixels(int64_t T, int64_t H, int64_t W, uint64_t seed) {
    PixelTensor p;
    p.T = T, p.H = H, p.W = W;
    p.data.resize(static_cast<size_t>(3 * T * H * W));
    Rng r(seed);
    for (float& x : p.data) x = 4.0f * r.unit_float() - 2.0f;
    return p;
}

TEST(X2tPrompt, LayoutAndPositions) {
    test::TempDir dir;
    const std::string m = synth_tiny(dir);
    auto ck = LanceCheckpoint::open(m);
    const LanceConfig& c = ck->config();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(m);
    // A video grid: 2 temporal patches of 4 x 6 patches -> 2 x 2 x 3 merged rows.
    const VisionGrid grid{2, 4, 6};
    const X2tPrompt p = build_x2t_prompt(c, tok, "Sys.", "What?", grid, 2);
    ASSERT_EQ(p.vit_rows, 12);
    const std::vector<int32_t> head =
        tok.encode("<|im_start|>system\nSys.<|im_end|>\n<|im_start|>user\n");
    const std::vector<int32_t> tail = tok.encode("What?<|im_end|>\n<|im_start|>assistant\n");
    const int64_t n_head = static_cast<int64_t>(head.size());
    ASSERT_EQ(p.ids.size(), head.size() + 14 + tail.size());
    // The ids of the whole rendered text, pads and all.
    std::string whole = "<|im_start|>system\nSys.<|im_end|>\n<|im_start|>user\n<|vision_start|>";
    for (int k = 0; k < 12; ++k) whole += "<|video_pad|>";
    whole += "<|vision_end|>What?<|im_end|>\n<|im_start|>assistant\n";
    const std::vector<int32_t> all = tok.encode(whole);
    EXPECT_EQ(std::vector<int64_t>(all.begin(), all.end()), p.ids);
    EXPECT_EQ(p.vit_begin, n_head + 1);
    EXPECT_EQ(p.ids[n_head], c.vision_start_token_id);
    EXPECT_EQ(p.ids[n_head + 13], c.vision_end_token_id);
    ASSERT_EQ(p.splits.size(), 3u);
    EXPECT_EQ(p.splits[0].len, n_head);
    EXPECT_EQ(p.splits[0].mode, SplitMode::Causal);
    EXPECT_EQ(p.splits[1].len, 14);
    EXPECT_EQ(p.splits[1].mode, SplitMode::Full);
    EXPECT_EQ(p.splits[2].len, static_cast<int64_t>(tail.size()));
    EXPECT_EQ(p.splits[2].mode, SplitMode::Causal);
    // Text (VS included) at 0..n_head on all axes; pads at (base + 2 ti, base + hi, base + wi);
    // text after the block resumes at the largest coordinate + 1 = base + 2 + 1.
    for (int64_t i = 0; i <= n_head; ++i) EXPECT_EQ(p.positions[i], (RopePosition{i, i, i}));
    const int64_t base = n_head + 1;
    for (int64_t ti = 0; ti < 2; ++ti)
        for (int64_t hi = 0; hi < 2; ++hi)
            for (int64_t wi = 0; wi < 3; ++wi)
                EXPECT_EQ(p.positions[base + ti * 6 + hi * 3 + wi],
                          (RopePosition{base + 2 * ti, base + hi, base + wi}));
    for (int64_t i = 0; i < 1 + static_cast<int64_t>(tail.size()); ++i) {
        const int64_t q = base + 3 + i;
        EXPECT_EQ(p.positions[base + 12 + i], (RopePosition{q, q, q}));
    }
    EXPECT_THROW(build_x2t_prompt(c, tok, "s", "q", {1, 3, 4}, 2), Error);
}

// The runner's prefill is `lancet forward` on the same packed sequence with vit_video (the ViT
// rows reach the decoder's pad rows), and its cached greedy decoding equals re-running the whole
// sequence for every new token with positions continuing after the block.
TEST(X2tRunner, PrefillEqualsForwardAndDecodingEqualsRecompute) {
    test::TempDir dir;
    const std::string m = synth_tiny(dir);
    auto ck = LanceCheckpoint::open(m);
    const LanceConfig& c = ck->config();
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(m);
    X2tOptions xo;
    xo.bf16_weights = false;  // `lancet forward` runs the stored F32 weights
    xo.generate.max_new_tokens = 6;
    xo.generate.stop_ids = {-1};  // never: run the full 6 tokens
    X2tRunner runner(*ck, tok, xo);
    const PixelTensor px = random_pixels(2, 56, 84, 5);
    std::vector<float> emb;
    const Batch b = runner.prompt_batch(px, "Look.", "What is it?", emb);
    const int64_t L = static_cast<int64_t>(b.size()), D = c.hidden_size, V = c.vocab_size;

    // The ViT rows sit on the pads.
    const std::vector<float> rows =
        runner.tower().forward(kernels::OpContext::defaults(), px.data.data(), 2, 56, 84);
    ASSERT_EQ(rows.size(), static_cast<size_t>(6 * D));
    const int64_t first_pad =
        std::find(b.token_ids.begin(), b.token_ids.end(), c.video_token_id) - b.token_ids.begin();
    EXPECT_EQ(0, std::memcmp(&emb[first_pad * D], rows.data(), rows.size() * 4));

    // `lancet forward` on the packed sequence (positions from get_rope_index there).
    {
        SafetensorsWriter w((dir / "in.safetensors").string());
        std::vector<uint8_t> is_gen(static_cast<size_t>(L), 0);
        std::vector<int64_t> lens, modes;
        for (const Split& s : b.splits) {
            lens.push_back(s.len);
            modes.push_back(static_cast<int64_t>(s.mode));
        }
        w.add("token_ids", DType::I64, {L});
        w.add("is_gen", DType::U8, {L});
        w.add("split_lens", DType::I64, {3});
        w.add("split_modes", DType::I64, {3});
        w.add("vit_video", DType::F32, {3, 2, 56, 84});
        w.begin();
        w.write("token_ids", b.token_ids.data(), b.token_ids.size() * 8);
        w.write("is_gen", is_gen.data(), is_gen.size());
        w.write("split_lens", lens.data(), 24);
        w.write("split_modes", modes.data(), 24);
        w.write("vit_video", px.data.data(), px.data.size() * 4);
        w.finish();
    }
    // Exact arithmetic on the CLI side: the in-process library's default.
    const auto r = test::run_lancet("--exact-activations forward --model " + m + " --input " +
                                    (dir / "in.safetensors").string() + " --out " +
                                    (dir / "out.safetensors").string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    SafetensorsFile f((dir / "out.safetensors").string());
    const TensorView got = f.view(*f.find("logits"));
    ASSERT_EQ(got.nbytes, static_cast<size_t>(L * V * 4));
    Outputs out;
    runner.decoder().forward(b, nullptr, false, out, {});
    EXPECT_EQ(0, std::memcmp(got.data, out.logits.data(), got.nbytes));
    // Without the ViT rows (plain pad embeddings) the logits differ: the rows matter.
    Batch plain = b;
    plain.embeddings = nullptr;
    Outputs out_plain;
    runner.decoder().forward(plain, nullptr, false, out_plain, {});
    EXPECT_NE(0, std::memcmp(out_plain.logits.data() + (L - 1) * V, out.logits.data() + (L - 1) * V,
                             static_cast<size_t>(V) * 4));

    // Cached greedy decoding vs re-running prompt + tokens so far (the new tokens continue at the
    // next text position after the block: last prompt position + 1, + 2, ...).
    const X2tAnswer a = runner.answer(px, "Look.", "What is it?");
    ASSERT_EQ(a.gen.tokens.size(), 6u);
    EXPECT_EQ(a.vit_tokens, 6u);
    EXPECT_EQ(a.text, tok.decode(a.gen.tokens));
    Batch full = b;
    std::vector<float> femb = emb;
    const int64_t next = b.positions.back()[0] + 1;
    std::vector<int32_t> greedy;
    for (int step = 0; step < 6; ++step) {
        Outputs o;
        ForwardOptions fo;
        fo.logits = LogitRows::Last;
        runner.decoder().forward(full, nullptr, false, o, fo);
        int32_t best = 0;
        for (int v = 1; v < V; ++v)
            if (o.logits[v] > o.logits[best]) best = v;
        greedy.push_back(best);
        const int64_t id = best, q = next + step;
        full.token_ids.push_back(id);
        full.positions.push_back({q, q, q});
        full.splits.back().len += 1;
        femb.resize(femb.size() + static_cast<size_t>(D));
        runner.decoder().embed_tokens(&id, 1, femb.data() + femb.size() - D);
        full.embeddings = femb.data();
    }
    EXPECT_EQ(a.gen.tokens, greedy);
}

TEST(RunX2t, CliAnswersExamplesAndErrors) {
    test::TempDir dir;
    const std::string m = synth_tiny(dir);
    ImageRGB8 img(90, 70);
    Rng r(3);
    for (uint8_t& v : img.rgb) v = static_cast<uint8_t>(r.next_u64() & 0xff);
    const fs::path png = dir / "pic.png";
    write_png(png.string(), img);
    const std::string base =
        "run --task x2t_image -m " + m + " --preset image_256res -n 5 --image ";

    const auto ok = test::run_lancet(base + png.string() + " -p \"What is this?\"");
    ASSERT_EQ(ok.exit_code, 0) << ok.err;
    EXPECT_EQ(std::count(ok.out.begin(), ok.out.end(), '\n'), 1) << ok.out;
    // 90x70 -> the 4:3 bucket of 224^2 (256x192) -> crop to 28: 252x168 -> 9 x 6 merged rows.
    EXPECT_NE(ok.err.find("-> pixels [3, 2, 168, 252]"), std::string::npos) << ok.err;
    EXPECT_NE(ok.err.find("54 ViT tokens"), std::string::npos) << ok.err;
    // --system replaces the instruction: a different prompt, so a different prompt length.
    const auto sys =
        test::run_lancet(base + png.string() + " -p \"What is this?\" --system \"Be brief.\"");
    ASSERT_EQ(sys.exit_code, 0) << sys.err;
    EXPECT_NE(sys.err.find("prompt "), std::string::npos);

    // Example files: paths mapped to images/<name> beside the JSON; a missing file is skipped.
    fs::create_directories(dir / "ex" / "images");
    fs::copy_file(png, dir / "ex" / "images" / "case.png");
    test::write_file(dir / "ex" / "x2t.json", R"({
  "0001": {"interleave_array": ["assets/image-understanding/cases/case.png",
           ["Look at the image carefully and answer the question.", "Q1?", "A1"]],
           "element_dtype_array": ["image", "text"]},
  "0002": {"interleave_array": ["assets/missing.png", ["Look.", "Q2?", "A2"]],
           "element_dtype_array": ["image", "text"]}
})");
    const auto ex = test::run_lancet("run --task x2t_image -m " + m +
                                     " --preset image_256res -n 3 --examples " +
                                     (dir / "ex" / "x2t.json").string());
    ASSERT_EQ(ex.exit_code, 0) << ex.err;
    EXPECT_NE(ex.out.find("[0001] Q1?"), std::string::npos) << ex.out;
    EXPECT_NE(ex.out.find("expected: A1"), std::string::npos) << ex.out;
    EXPECT_NE(ex.out.find("exact match: no"), std::string::npos) << ex.out;
    EXPECT_NE(ex.out.find("missing.png: no such file"), std::string::npos) << ex.out;
    EXPECT_NE(ex.out.find("exact match 0/1 (0.0 %), 1 item(s) skipped"), std::string::npos)
        << ex.out;
    EXPECT_NE(ex.out.find("speed: ViT "), std::string::npos) << ex.out;

    // Bad input: one line, exit 1, nothing on stdout.
    test::write_file(dir / "bad.png", "\x89PNG\r\n\x1a\n garbage");
    test::copy_without_vit(m, dir / "novit");
    struct Bad {
        std::string args, fragment;
    };
    const std::vector<Bad> bad = {
        {base + (dir / "none.png").string() + " -p q", "none.png: no such file"},
        {base + (dir / "bad.png").string() + " -p q", "bad.png"},
        {"run --task x2t_image -m " + m + " --image " + png.string() + " -p q -n 4090",
         "exceeds the model context"},
        {"run --task x2t_image -m " + (dir / "novit").string() + " --image " + png.string() +
             " -p q",
         "no ViT weights"},
        {"run --task x2t_image -m " + m + " -p q", "needs --image"},
        {"run --task chat -m " + m + " -p q --image " + png.string(), "need --task x2t"},
    };
    for (const Bad& b : bad) {
        const auto rb = test::run_lancet(b.args);
        EXPECT_EQ(rb.exit_code, 1) << b.args;
        EXPECT_NE(rb.err.find("lancet: error:"), std::string::npos) << rb.err;
        EXPECT_NE(rb.err.find(b.fragment), std::string::npos) << b.args << ": " << rb.err;
        EXPECT_EQ(std::count(rb.err.begin(), rb.err.end(), '\n'), 1) << rb.err;
        EXPECT_TRUE(rb.out.empty()) << rb.out;
    }
}

// bench vision --ttft: x2t_image's time to first token on the same pixels, split into ViT and
// prefill (84 x 84: 9 ViT tokens in the prompt).
TEST(RunX2t, BenchVisionTimeToFirstToken) {
    test::TempDir dir;
    const std::string m = synth_tiny(dir);
    const auto r =
        test::run_lancet("bench vision --model " + m + " --size 84 --reps 1 --ttft --json " +
                         (dir / "b.json").string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("time to first token (x2t_image, 84x84)"), std::string::npos) << r.out;
    const nlohmann::json rec = nlohmann::json::parse(test::read_file(dir / "b.json"));
    EXPECT_GT(rec["ttft_ms"].get<double>(), rec["ttft_vit_ms"].get<double>());
    const Qwen2Tokenizer tok = Qwen2Tokenizer::load(m);
    auto ck = LanceCheckpoint::open(m);
    const X2tPrompt p = build_x2t_prompt(ck->config(), tok, x2t_default_system(false),
                                         "What is shown in this image?", {1, 6, 6}, 2);
    EXPECT_EQ(rec["ttft_prompt_tokens"].get<size_t>(), p.ids.size());
}

#ifdef LANCET_WITH_FFMPEG
TEST(RunX2t, VideoQuestion) {
    test::TempDir dir;
    const std::string m = synth_tiny(dir);
    // 12 frames of 32x24 at 10 fps (1.2 s) -> 13 sampled at 12 fps (4k+1), padded to 14 -> 7
    // temporal patches of the 4:3 bucket of 224^2 cropped to 28: 252x168 -> 7 x 6 x 9 = 378.
    const int64_t T = 12, H = 24, W = 32;
    std::vector<float> frames(static_cast<size_t>(3 * T * H * W));
    Rng r(4);
    for (float& x : frames) x = 2.0f * r.unit_float() - 1.0f;
    VideoWriteOptions vo;
    vo.fps = 10;
    const fs::path clip = dir / "clip.mp4";
    write_mp4(clip.string(), frames.data(), T, H, W, vo);
    const auto v =
        test::run_lancet("run --task x2t_video -m " + m + " --preset image_256res -n 3 --video " +
                         clip.string() + " -p \"Where?\"");
    ASSERT_EQ(v.exit_code, 0) << v.err;
    EXPECT_NE(v.err.find("-> pixels [3, 14, 168, 252]"), std::string::npos) << v.err;
    EXPECT_NE(v.err.find("378 ViT tokens"), std::string::npos) << v.err;
}
#endif

}  // namespace
}  // namespace lancet

namespace lancet {
namespace {

double rel_err(const std::vector<float>& a, const std::vector<float>& ref) {
    double e = 0, n = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        e += (static_cast<double>(a[i]) - ref[i]) * (static_cast<double>(a[i]) - ref[i]);
        n += static_cast<double>(ref[i]) * ref[i];
    }
    return std::sqrt(e / n);
}

// calibrate on an x2t example file runs the images through the ViT: the statistics file holds
// the ViT's linears (qkv, proj, gate/up, down per block; merger mlp.0/mlp.2) with one row per
// patch (per merged token for the merger), and the und path's rows include the ViT rows. Then
// quantize --include vit uses AWQ on them: every ViT linear measured, AWQ's held-out error below
// RTN's, the fused norms keep the tower's function (its output nearer the original than RTN's).
TEST(X2tCalibrate, VitStatisticsAndAwq) {
    test::TempDir dir;
    const std::string m = synth_tiny(dir);
    fs::create_directories(dir / "ex" / "images");
    for (int k = 0; k < 2; ++k) {
        ImageRGB8 img(90 + 20 * k, 70);
        Rng r(11 + k);
        for (int y = 0; y < img.height; ++y)
            for (int x = 0; x < img.width * 3; ++x)  // smooth ramps plus noise, like a photo
                img.row(y)[x] = static_cast<uint8_t>((x * 2 + y * 3 + (r.next_u64() & 31)) & 0xff);
        write_png((dir / "ex" / "images" / ("c" + std::to_string(k) + ".png")).string(), img);
    }
    test::write_file(dir / "ex" / "x2t.json", R"({
  "0001": {"interleave_array": ["assets/c0.png", ["Look.", "Q1?", "Answer one."]],
           "element_dtype_array": ["image", "text"]},
  "0002": {"interleave_array": ["assets/c1.png", ["Look.", "Q2?", "Answer two."]],
           "element_dtype_array": ["image", "text"]}
})");
    const fs::path stats = dir / "stats.safetensors";
    const auto c =
        test::run_lancet("calibrate -m " + m + " --prompts " + (dir / "ex" / "x2t.json").string() +
                         " -o " + stats.string() + " --no-gen --vit-preset image_256res");
    ASSERT_EQ(c.exit_code, 0) << c.err;
    quant::StatsFile sf(stats.string());
    // Patches (two frames -> one temporal patch) and merged tokens of both images.
    int64_t patches = 0, merged = 0;
    for (int k = 0; k < 2; ++k) {
        const PreprocessResult p =
            load_x2t_media((dir / "ex" / "images" / ("c" + std::to_string(k) + ".png")).string(),
                           false, "image_256res");
        patches += (p.pixels.H / 14) * (p.pixels.W / 14);
        merged += (p.pixels.H / 28) * (p.pixels.W / 28);
    }
    auto ck = LanceCheckpoint::open(m);
    const VitConfig& v = ck->config().vision;
    for (int j = 0; j < v.depth; ++j) {
        const std::string b = "vit_model.blocks." + std::to_string(j) + ".";
        for (const char* n :
             {"attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
            ASSERT_TRUE(sf.has(b + n)) << b + n;
            EXPECT_EQ(sf.n_tokens(b + n), patches) << b + n;
        }
        EXPECT_EQ(sf.load(b + "mlp.down_proj").in, v.intermediate_size);
    }
    EXPECT_EQ(sf.n_tokens("vit_model.merger.mlp.0"), merged);
    EXPECT_EQ(sf.load("vit_model.merger.mlp.0").in, v.merged_dim());
    EXPECT_EQ(sf.n_tokens("vit_model.merger.mlp.2"), merged);
    // The und path saw both prompts with their ViT rows (and the answers).
    EXPECT_GT(sf.n_tokens("language_model.model.layers.0.self_attn.q_proj"), merged + 2 * 20);
    EXPECT_FALSE(sf.has("language_model.model.layers.0.self_attn.q_proj_moe_gen"));

    const fs::path awq = dir / "awq", rtn = dir / "rtn";
    const auto q = test::run_lancet("quantize --method awq --include vit --group-size 32 --stats " +
                                    stats.string() + " --src " + m + " --out " + awq.string());
    ASSERT_EQ(q.exit_code, 0) << q.err;
    const auto qr = test::run_lancet("quantize --method rtn --include vit --group-size 32 --src " +
                                     m + " --out " + rtn.string());
    ASSERT_EQ(qr.exit_code, 0) << qr.err;
    const nlohmann::json rep = read_json_file((awq / "quant_report.json").string());
    const nlohmann::json& vt = rep["by_type"]["vit"];
    EXPECT_EQ(vt["n_linears"].get<int>(), v.depth * 5 + 2);
    EXPECT_EQ(vt["n_measured"].get<int>(), v.depth * 5 + 2);
    EXPECT_LT(vt["mean_awq_error_heldout"].get<double>(),
              vt["mean_rtn_error_heldout"].get<double>());
    const nlohmann::json meta = read_json_file((awq / "awq_meta.json").string());
    EXPECT_EQ(meta["per_weight"]["vit_model.blocks.0.attn.qkv.weight"]["scheme"],
              "asym_int4_grouped_awq");
    EXPECT_EQ(meta["per_weight"]["vit_model.merger.mlp.2.weight"]["scheme"],
              "asym_int4_grouped_minmax");

    // The tower on the first calibration image: original, AWQ, RTN.
    const PreprocessResult px =
        load_x2t_media((dir / "ex" / "images" / "c0.png").string(), false, "image_256res");
    auto tower_out = [&](const std::string& folder) {
        auto k = LanceCheckpoint::open(folder);
        VisionTower t(*k);
        return t.forward(kernels::OpContext::defaults(), px.pixels.data.data(), px.pixels.T,
                         px.pixels.H, px.pixels.W);
    };
    const std::vector<float> ref = tower_out(m), ya = tower_out(awq.string()),
                             yr = tower_out(rtn.string());
    const double ea = rel_err(ya, ref), er = rel_err(yr, ref);
    EXPECT_LT(ea, er) << "AWQ " << ea << " vs RTN " << er;
    EXPECT_LT(ea, 0.5);

    // x2t runs on the AWQ folder (INT4 ViT and decoder).
    const auto run = test::run_lancet("run --task x2t_image -m " + awq.string() +
                                      " --preset image_256res -n 3 --image " +
                                      (dir / "ex" / "images" / "c0.png").string() + " -p q");
    EXPECT_EQ(run.exit_code, 0) << run.err;
    EXPECT_NE(run.err.find("54 ViT tokens"), std::string::npos) << run.err;
}

}  // namespace
}  // namespace lancet
